"""A versioned store for LoRA adapters: plain files in a local folder or at any fsspec URL.

The workbook trains a domain adapter (DAPT) and a task adapter (SFT) on top of it; this store keeps
every version so that a regressing adapter can be rolled back, and refuses to load an adapter into
a model it does not belong to. There is no server: any tool that reads JSON and safetensors can
read the store. Layout, one folder per adapter name::

    <root>/<name>/versions/<N>/adapter_config.json
    <root>/<name>/versions/<N>/adapter_model.safetensors
    <root>/<name>/versions/<N>/manifest.json    # written last: version N exists iff this file does
    <root>/<name>/aliases.json                  # {"production": 3, "candidate": 4}
    <root>/<name>/audit.jsonl                   # append-only: publish, promote, rollback, settle, lost, recover
    <root>/<name>/.lock                         # serialises version numbers and alias moves

Guarantees, and where they stop (docs/store_guarantees.md goes through a crash at every step):

- Versions are immutable: a publish only ever creates folder ``N+1``; nothing here rewrites one.
  Local files are also made read-only, so a stray editor save fails loudly. A manifest carries
  the sha256 of its own content and the publish record in the audit log repeats it, so an edited
  base, parent, parameter or metric fails ``verify`` like an edited weight file does.
- Publishing files that a version of the same name already holds, on the same base and parent,
  returns that version (``reused=True``) and writes nothing, so re-running a pipeline does not
  fill the store with copies.
- Local folders: a publish copies into ``<name>/.staging-<uuid>`` and renames it to
  ``versions/<N>`` under an OS file lock (``filelock``), so a version appears whole or not at all,
  and a process killed with SIGKILL releases the lock with its death.
- Every write (publish, promote, rollback, settle, ``recover``) first puts right, under the lock,
  what a killed writer left, records each repair in the audit log and returns it: an audit line
  cut short (it gets its end of line, a ``recover`` record, and is skipped by readers), the
  staging folder of a publish killed before its rename (removed), the version whose publish was
  killed before its audit line (the line is written from its manifest), a move killed before
  aliases.json (recorded as not applied). What no crash leaves (aliases.json edited or deleted,
  publish records missing from the log) is refused instead, until a person runs ``settle``.
- Version numbers are permanent: the next number is above every folder and every number the log
  has published, so a deleted version's number is never issued again, and a local publish never
  deletes a folder. A child pins its parent by the parent's manifest sha256.
- Nothing below the store's root is followed through a symbolic link, on a local filesystem:
  a link is refused by name (see :mod:`modft_utils.store.safefs`).
- Other filesystems (``memory://``, ``s3://``, ``gs://``, ``hf://``) have no atomic rename: the
  files are written straight into ``versions/<N>``, the manifest last, and readers ignore a version
  folder without one. The lock is a best-effort lock file created with exclusive create (``xb``)
  where the store supports it, else written and read back; a lock older than ``stale_lock_s``
  is taken to belong to a dead writer and broken. Two writers can still both win on a store
  without exclusive create, so keep publishes to a remote store to one machine at a time.
- Alias moves append to ``audit.jsonl`` before ``aliases.json`` is replaced; a crash between the two
  leaves an audit line for a move that did not happen, never a move without an audit line.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import socket
import stat
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from modft_utils.store import lock, recovery, safefs, tables, verify
from modft_utils.store.lock import now_iso, whoami
from modft_utils.store.records import (
    _ALIAS_RE,
    _NAME_RE,
    _VERSION_RE,
    ADAPTER_FILES,
    ALIASES_FILE,
    AUDIT_FILE,
    BASE_RECORD,
    MANIFEST,
    NAME_MAX,
    RESERVED_SELECTORS,
    AdapterRef,
    AdapterVersion,
    AuditDamage,
    AuditEvent,
    BaseIdentity,
    IncompatibleAdapterError,
    IntegrityError,
    InvalidAdapterError,
    Manifest,
    Problem,
    RegistryError,
    StoreLinkError,
    UnsettledError,
    _adapter_summary,
    _alias_history,
    _check_alias,
    _check_files,
    _check_version,
    _is_int,
    _jsonable,
    _libraries,
    _ManifestIssue,
    _parse_event,
    _sha256_fs,
    base_identity,
    base_identity_from_config_file,
    check_adapter_dir,
    check_adapter_vocab,
    check_name,
    config_sha256,
    loads_json,
    verify_version,
)

DEFAULT_ROOT = "outputs/registry"


def _copy_file(src: Path, fs, dst: str) -> None:
    """Copy one adapter file into the store (a module-level seam: tests slow it down to kill mid-copy)."""
    if isinstance(fs, LocalFileSystem):
        shutil.copyfile(src, dst)
        with open(dst, "rb+") as fh:
            os.fsync(fh.fileno())
    else:
        fs.put_file(str(src), dst)


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once its directory entry is; not every OS lets a folder be opened.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Registry:
    """A store of adapter versions at ``uri`` (a local folder or an fsspec URL)."""

    def __init__(
        self,
        uri: str | os.PathLike = DEFAULT_ROOT,
        *,
        lock_timeout: float = 60.0,
        stale_lock_s: float = 600.0,
    ) -> None:
        self.uri = str(uri)
        try:
            self.fs, root = url_to_fs(self.uri)
        except (ValueError, ImportError) as err:  # "Protocol not known: foo", "Install s3fs to access S3"
            raise RegistryError(f"registry {self.uri!r}: cannot open it ({err})") from None
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.lock_timeout = lock_timeout
        self.stale_lock_s = stale_lock_s
        if self.fs.isfile(self.root):
            raise RegistryError(f"registry {self.uri} is a file, not a folder: pass the folder that holds the adapters")

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    def _p(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _no_link(self, path: str) -> None:
        """Refuse ``path`` when it, or a folder between the root and it, is a symbolic link (local stores)."""
        if self.is_local:
            safefs.check_no_link(self.root, path)

    def _read(self, path: str) -> bytes:
        """The bytes of a store file, never read through a link; FileNotFoundError when it is absent."""
        if self.is_local:
            return safefs.read_file(self.root, path)
        return self.fs.cat_file(path)

    # ----------------------------------------------------------------- reading

    def names(self) -> list[str]:
        """Adapters with at least one visible version, sorted."""
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            base = posixpath.basename(entry["name"].rstrip("/"))
            # A folder holding only a lock or a dead publish's leftovers is not an adapter yet.
            if entry["type"] == "directory" and _NAME_RE.match(base) and len(base) <= NAME_MAX and self.versions(base):
                found.append(base)
        return sorted(found)

    def _require(self, name: str) -> None:
        if not self.versions(name):
            raise RegistryError(f"no adapter {name!r} in registry {self.uri} (adapters: {self.names() or 'none'})")

    def _version_dirs(self, name: str) -> dict[int, bool]:
        """Numbered entries of ``<name>/versions`` -> whether each is a version (a folder with its manifest file).

        Locally a link there (``versions/`` itself, a version folder, a manifest) is refused by name,
        and so is a ``versions`` that is a file.
        """
        vroot = self._p(name, "versions")
        if self.is_local:
            return self._local_version_dirs(vroot)
        try:
            paths = self.fs.find(vroot, withdirs=True, detail=True)
        except FileNotFoundError:
            return {}
        found: dict[int, bool] = {}
        for path, info in paths.items():
            rel = posixpath.relpath(path.rstrip("/"), vroot).split("/")
            if _VERSION_RE.match(rel[0]):  # anything else is a stray entry, reported by verify
                number = int(rel[0])
                found[number] = found.get(number, False) or (rel[1:] == [MANIFEST] and info.get("type") == "file")
        return found

    def _local_version_dirs(self, vroot: str) -> dict[int, bool]:
        safefs.check_no_link(self.root, vroot)
        try:
            entries = list(os.scandir(vroot))
        except FileNotFoundError:
            return {}
        except NotADirectoryError:
            raise RegistryError(f"{vroot}: a file, not the folder of versions: move it out of the store") from None
        found: dict[int, bool] = {}
        for entry in entries:
            if not _VERSION_RE.match(entry.name):
                continue
            if entry.is_symlink():
                raise safefs.link_error(entry.path)
            # A file named like a version is no version, but its number stays taken: nothing overwrites it.
            found[int(entry.name)] = False
            if entry.is_dir(follow_symlinks=False):
                manifest = posixpath.join(entry.path, MANIFEST)
                try:
                    mode = os.lstat(manifest).st_mode
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(mode):
                    raise safefs.link_error(manifest)
                found[int(entry.name)] = stat.S_ISREG(mode)
        return found

    def _stray_versions(self, name: str) -> list[str]:
        """Entries of ``<name>/versions`` not named like a version (``010``, ``3.bak``, ``³``).

        One named like a version but without its manifest (a file ``3`` too) is reported by verify as such.
        """
        try:
            entries = self.fs.ls(self._p(name, "versions"), detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = (posixpath.basename(e.rstrip("/")) for e in entries)
        return sorted(n for n in names if not _VERSION_RE.match(n))

    def versions(self, name: str) -> list[int]:
        """Visible (complete) versions of ``name``, ascending; half-written ones are ignored."""
        return sorted(n for n, visible in self._version_dirs(check_name(name)).items() if visible)

    def choices(self, name: str) -> list[tuple[str, str]]:
        """(label, reference) for every version of ``name``, newest first, labelled with its aliases.

        What a version picker offers: ``[("v3 (production)", "task@3"), ("v2", "task@2"), ...]``;
        empty when the store has no such adapter.
        """
        if not self.versions(name):
            return []
        by_version: dict[int, list[str]] = {}
        for alias, number in sorted(self.aliases(name).items()):
            by_version.setdefault(number, []).append(alias)
        return [
            (f"v{n}" + (f" ({', '.join(by_version[n])})" if n in by_version else ""), f"{name}@{n}")
            for n in reversed(self.versions(name))
        ]

    def _manifest(self, name: str, version: int) -> Manifest:
        """The manifest of an existing version folder; _ManifestIssue when it cannot be trusted."""
        raw = self._read(self._p(name, "versions", str(version), MANIFEST))
        manifest = Manifest.from_json(raw)
        if (manifest.name, manifest.version) != (name, version):
            raise _ManifestIssue(f"describes {manifest.name}@{manifest.version}")
        return manifest

    def get(self, name: str, version: int) -> AdapterVersion:
        """Version ``version`` of ``name``; RegistryError if it does not exist."""
        check_name(name)
        _check_version(name, version)
        folder = self._p(name, "versions", str(version))
        try:
            manifest = self._manifest(name, version)
        except FileNotFoundError:
            self._require(name)
            raise RegistryError(f"{name}@{version} does not exist (versions: {self.versions(name)})") from None
        except _ManifestIssue as err:
            raise IntegrityError(f"{name}@{version}: {MANIFEST}: {err}") from None
        return AdapterVersion(
            name=name,
            version=version,
            manifest=manifest,
            uri=folder if self.is_local else self.fs.unstrip_protocol(folder),
            path=Path(folder) if self.is_local else None,
            registry_uri=str(Path(self.root).resolve()) if self.is_local else self.uri,
            _fs=self.fs,
            _fs_path=folder,
        )

    def aliases(self, name: str) -> dict[str, int]:
        """The aliases of ``name`` and the versions they point at (whether those exist is not checked)."""
        path = self._p(check_name(name), ALIASES_FILE)
        try:
            raw = self._read(path)
        except FileNotFoundError:
            return {}
        try:
            data = loads_json(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            for alias, target in data.items():
                if not _ALIAS_RE.match(alias) or alias in RESERVED_SELECTORS:
                    raise ValueError(f"{alias!r} is not an alias name (must match [a-z][a-z0-9_-]*)")
                # int(true) is 1 and int(7.9) is 7: a hand edit must not quietly pick a version.
                if not _is_int(target) or target < 1:
                    raise ValueError(f"alias {alias!r} holds {json.dumps(target)}, not a version number")
            return dict(data)
        except ValueError as err:  # also JSONDecodeError and UnicodeDecodeError
            raise RegistryError(f"{path}: unreadable aliases file ({err})") from None

    def read_audit(self, name: str) -> tuple[list[tuple[int, dict[str, Any]]], list[AuditDamage]]:
        """(line number, event) for every readable line of the audit log, and the lines that are not."""
        try:
            raw = self._read(self._p(check_name(name), AUDIT_FILE))
        except FileNotFoundError:
            return [], []
        lines = raw.split(b"\n")
        if raw.endswith(b"\n"):
            lines.pop()
        events: list[tuple[int, dict[str, Any]]] = []
        damage: list[AuditDamage] = []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                events.append((lineno, _parse_event(line)))
            except ValueError as err:
                torn = lineno == len(lines) and not raw.endswith(b"\n")
                issue = (
                    f"torn: {len(line)} bytes with no end of line, cut short while being written" if torn else str(err)
                )
                damage.append(AuditDamage(lineno, issue, torn, hashlib.sha256(line).hexdigest()))
        recorded = {(e.get("line"), e.get("sha256")): lineno for lineno, e in events if e["event"] == "recover"}
        return events, [replace(d, recorded_by=recorded.get((d.line, d.sha256))) for d in damage]

    def audit(self, name: str) -> list[dict[str, Any]]:
        """Every recorded publish, promote, rollback and recover of ``name``, oldest first.

        Lines that hold no event (cut short by a crash, edited by hand) are skipped here; they are
        listed by :meth:`audit_damage`, reported by :meth:`verify`, and make :meth:`rollback`
        refuse unless a ``recover`` record accounts for them.
        """
        return [event for _, event in self.read_audit(name)[0]]

    def audit_damage(self, name: str) -> list[AuditDamage]:
        """The lines of ``name``'s audit log that hold no readable event."""
        return self.read_audit(name)[1]

    def _latest(self, name: str) -> AdapterVersion:
        self._require(name)
        return self.get(name, self.versions(name)[-1])

    def _unsettled_alias(self, name: str, alias: str) -> None:
        """Refuse to read ``alias`` while aliases.json and the audit log disagree about it in a way no crash explains.

        A reader must not follow a hand edit (or a deleted aliases.json) that no move recorded: the
        message says what the log says, what the file says, and how a person settles it.
        """
        events, _ = self.read_audit(name)
        for drift in recovery.alias_drift(self, name, events):
            if drift.alias == alias and not drift.crash:
                raise UnsettledError(f"{name}: {drift.describe(name)}")

    def _by_alias(self, name: str, alias: str) -> AdapterVersion:
        aliases = self.aliases(name)
        if alias not in aliases:
            self._unsettled_alias(name, alias)
            raise RegistryError(f"adapter {name!r} has no alias {alias!r} (aliases: {aliases or 'none'})")
        target = aliases[alias]
        if target not in self.versions(name):
            raise RegistryError(
                f"alias {alias!r} of adapter {name!r} points at version {target}, which does not exist "
                f"(versions: {self.versions(name) or 'none'}); "
                f"fix {self._p(name, ALIASES_FILE)} or promote a version"
            )
        self._unsettled_alias(name, alias)
        return self.get(name, target)

    def resolve(self, ref: str | AdapterRef) -> AdapterVersion:
        """``name`` (production alias, else latest), ``name@3``, ``name@production``, ``name@latest``, an AdapterRef.

        A pinned AdapterRef resolves only to the manifest it is pinned to (IntegrityError otherwise);
        an alias that aliases.json and the audit log disagree on is refused (UnsettledError).
        """
        if isinstance(ref, AdapterRef):
            found = self.get(ref.name, ref.version)
            if ref.manifest_sha256 not in (None, found.manifest_sha256):
                # A pinned ref names one manifest: another one under that number is not it.
                raise IntegrityError(
                    f"{ref.describe()}: {found.ref} in the store now has manifest sha256 "
                    f"{found.manifest_sha256[:16]}...: not that version"
                )
            return found
        name, sep, selector = str(ref).partition("@")
        check_name(name)
        if not sep:
            if "production" in self.aliases(name):
                return self._by_alias(name, "production")
            # A production alias that only aliases.json lost is not "no production": refuse, do not fall to latest.
            self._unsettled_alias(name, "production")
            return self._latest(name)
        if selector == "latest":
            return self._latest(name)
        if _VERSION_RE.match(selector):
            return self.get(name, int(selector))
        if _ALIAS_RE.match(selector):
            return self._by_alias(name, selector)
        raise RegistryError(
            f"cannot read {ref!r}: expected NAME, NAME@VERSION (1, 2, ... in ASCII digits), NAME@ALIAS or NAME@latest"
        )

    # ----------------------------------------------------------------- locking

    def _lock(self, name: str) -> AbstractContextManager[None]:
        """Hold the per-adapter lock that serialises version numbers and alias moves (store_lock)."""
        # The OS lock opens its file with O_TRUNC: through a planted link it would empty a file elsewhere.
        self._no_link(self._p(name, ".lock"))
        return lock.held(
            self.fs,
            self._p(name, ".lock"),
            name,
            local=self.is_local,
            timeout=self.lock_timeout,
            stale_s=self.stale_lock_s,
        )

    # ----------------------------------------------------------------- writing

    @contextmanager
    def _write_errors(self, action: str, name: str) -> Iterator[None]:
        """Turn what the filesystem refuses (read-only store, full disk, a file in the way) into a message."""
        try:
            yield
        except OSError as err:
            where = f": {err.filename}" if getattr(err, "filename", None) else ""
            raise RegistryError(f"cannot {action} {name} in registry {self.uri}: {err.strerror or err}{where}") from err

    def _append_audit(self, name: str, events: list[dict[str, Any]]) -> None:
        """Append ``events``, each on a line of its own, even after a line that a crash cut short."""
        data = "".join(json.dumps(e, sort_keys=True, allow_nan=False) + "\n" for e in events).encode()
        path = self._p(name, AUDIT_FILE)
        if self.is_local:
            # Appending mode: writes go to the end; the last byte can be read. Never through a link.
            with os.fdopen(safefs.open_append(self.root, path), "a+b") as fh:
                size = fh.seek(0, os.SEEK_END)
                if size:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        data = b"\n" + data
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            # Object stores cannot append; the lock held by every caller makes read-modify-write safe.
            try:
                old = self.fs.cat_file(path)
            except FileNotFoundError:
                old = b""
            if old and not old.endswith(b"\n"):
                old += b"\n"
            self.fs.pipe_file(path, old + data)

    def _write_aliases(self, name: str, aliases: dict[str, int]) -> None:
        data = (json.dumps(dict(sorted(aliases.items())), indent=2) + "\n").encode()
        path = self._p(name, ALIASES_FILE)
        if self.is_local:
            self._no_link(path)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            safefs.write_new(self.root, tmp, data)
            os.replace(tmp, path)  # readers see the old file or the new one, never half of one
        else:
            self.fs.pipe_file(path, data)

    def recover(self, name: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Run the repairs every write starts with (:func:`recovery.repair`) now; the records, by adapter.

        What to run after a crash when no publish, promote or rollback is due, so that ``verify``
        passes again. Like every write it refuses (UnsettledError) what no crash leaves: see :meth:`settle`.
        """
        names = [check_name(name)] if name is not None else self.names()
        if name is not None:
            self._require(name)
        done = {}
        for adapter in names:
            with self._write_errors("recover", adapter), self._lock(adapter):
                done[adapter] = recovery.repair(self, adapter)
        return done

    def _next_version(self, name: str) -> int:
        """The number the next publish gets: above every number the audit log has published, so none is issued twice.

        Locally it is also above every numbered folder, so a publish never deletes one. On an object
        store the manifest-less folder of a publish that died before its manifest (no publish
        record) is reused, so numbers stay dense; callers hold the lock, so no live writer owns it.
        """
        dirs = self._version_dirs(name)
        published = [e["version"] for e in self.audit(name) if e["event"] == "publish"]
        taken = dirs if self.is_local else [n for n, visible in dirs.items() if visible]
        return max([*taken, *published], default=0) + 1

    def _same_content(self, name: str, details: dict[str, Any]) -> int | None:
        """An intact version of ``name`` with these files, base and parent (caller holds the lock)."""
        base: BaseIdentity = details["base"]
        for number in self.versions(name):
            try:
                m = self._manifest(name, number)
            except (_ManifestIssue, FileNotFoundError):
                continue
            if (
                m.files == details["files"]
                and m.parent == details["parent"]
                and (m.base.config_sha256, m.base.revision) == (base.config_sha256, base.revision)
                # A damaged copy is not reused: the new publish stores a good one beside it.
                and not _check_files(self.fs, self._p(name, "versions", str(number)), m, name, number)
            ):
                return number
        return None

    def publish(
        self,
        name: str,
        adapter_dir: str | os.PathLike,
        *,
        base: BaseIdentity,
        parent: AdapterRef | str | None,
        params: dict[str, Any],
        data_fingerprint: str,
        metrics: dict[str, Any],
        note: str = "",
        base_vocab_size: int | None = None,
    ) -> AdapterVersion:
        """Copy the PEFT adapter in ``adapter_dir`` into the store as the next version of ``name``.

        ``parent`` is the adapter this one was trained on top of (a task adapter names its domain
        version); an alias such as ``"domain@production"`` is pinned to the version it points at
        now, and the parent is recorded with its manifest's sha256, so a different manifest under
        that number later does not pass for it. Only ``adapter_config.json`` and
        ``adapter_model.safetensors`` are stored.

        ``base_vocab_size`` is the vocabulary of the base config ``base`` was computed from, when
        known: an adapter whose token rows go beyond it (trained on a vocabulary-extended base) is
        refused.

        When an intact version of ``name`` already holds the same two files on the same base and
        parent, that version is returned with ``reused=True`` and nothing is written or recorded:
        its manifest keeps the params, metrics and note it was first published with. The returned
        version's ``repairs`` list what the publish put right first.
        """
        check_name(name)
        if not isinstance(base, BaseIdentity):
            raise RegistryError(f"base must be a BaseIdentity (from base_identity(model)), got {type(base).__name__}")
        src = Path(adapter_dir)
        adapter_config = check_adapter_dir(src)
        if base_vocab_size is not None:
            check_adapter_vocab(src, adapter_config, base_vocab_size, base.model_id or base.config_sha256[:16])
        parent_ref = self.resolve(parent).ref if parent is not None else None
        _jsonable("params", params)
        _jsonable("metrics", metrics)
        hashes = {fname: _sha256_fs(LocalFileSystem(), str(src / fname)) for fname in ADAPTER_FILES}
        details = {
            "files": hashes,
            "base": base,
            "parent": parent_ref,
            "params": dict(params),
            "data_fingerprint": str(data_fingerprint),
            "metrics": dict(metrics),
            "note": str(note),
            "created_at": now_iso(),
            "created_by": whoami(),
            "adapter": _adapter_summary(adapter_config),
            "libraries": _libraries(),
        }
        with self._write_errors("publish", name):
            if self.is_local:
                version, reused, repairs = self._publish_local(name, src, details)
            else:
                version, reused, repairs = self._publish_remote(name, src, details)
        return replace(self.get(name, version), reused=reused, repairs=tuple(repairs))

    def _copy_and_check(self, src: Path, folder: str, hashes: dict[str, str]) -> None:
        for fname in ADAPTER_FILES:
            _copy_file(src / fname, self.fs, posixpath.join(folder, fname))
        for fname in ADAPTER_FILES:
            copied = _sha256_fs(self.fs, posixpath.join(folder, fname))
            if copied != hashes[fname]:
                raise IntegrityError(
                    f"{src / fname}: changed while it was being published "
                    f"(sha256 {hashes[fname][:16]}... before, {copied[:16]}... after)"
                )

    @staticmethod
    def _publish_event(manifest: Manifest) -> dict[str, Any]:
        return {
            "event": "publish",
            "version": manifest.version,
            "at": manifest.created_at,
            "actor": manifest.created_by,
            "note": manifest.note,
            "manifest_sha256": manifest.content_sha256(),
        }

    def _publish_local(self, name: str, src: Path, details: dict[str, Any]) -> tuple[int, bool, list[dict]]:
        staging = Path(self._p(name, f".staging-{uuid.uuid4().hex}"))
        self._no_link(str(staging))
        staging.mkdir(parents=True)
        try:
            (staging / ".owner").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
            # The slow part, the copy, happens outside the lock so that promotions are not held up.
            self._copy_and_check(src, str(staging), details["files"])
            with self._lock(name):
                repairs = recovery.repair(self, name)
                existing = self._same_content(name, details)
                if existing is not None:
                    shutil.rmtree(staging)
                    return existing, True, repairs
                version = self._next_version(name)
                manifest = Manifest(name=name, version=version, **details)
                with open(staging / MANIFEST, "w", encoding="utf-8") as fh:
                    fh.write(manifest.to_json())
                    fh.flush()
                    os.fsync(fh.fileno())
                (staging / ".owner").unlink()
                for path in staging.iterdir():
                    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                target = Path(self._p(name, "versions", str(version)))
                self._no_link(str(target))
                target.parent.mkdir(parents=True, exist_ok=True)
                if os.path.lexists(target):
                    # _next_version is above every folder: something appeared under the lock. Never delete it.
                    raise RegistryError(f"{target}: already exists; not publishing over it")
                os.rename(staging, target)
                _fsync_dir(target.parent)
                self._append_audit(name, [self._publish_event(manifest)])
        except BaseException:
            if not staging.is_symlink():
                shutil.rmtree(staging, ignore_errors=True)
            raise
        return version, False, repairs

    def _publish_remote(self, name: str, src: Path, details: dict[str, Any]) -> tuple[int, bool, list[dict]]:
        # No rename on object stores: hold the lock for the whole write and put the manifest last.
        with self._lock(name):
            repairs = recovery.repair(self, name)
            existing = self._same_content(name, details)
            if existing is not None:
                return existing, True, repairs
            version = self._next_version(name)
            folder = self._p(name, "versions", str(version))
            if self.fs.exists(folder):
                # A publish that died before its manifest: _next_version is above every published number.
                self.fs.rm(folder, recursive=True)
            self._copy_and_check(src, folder, details["files"])
            manifest = Manifest(name=name, version=version, **details)
            self.fs.pipe_file(posixpath.join(folder, MANIFEST), manifest.to_json().encode())
            self._append_audit(name, [self._publish_event(manifest)])
        return version, False, repairs

    def promote(
        self,
        name: str,
        version: int | str,
        alias: str = "production",
        *,
        reason: str,
        actor: str | None = None,
    ) -> AuditEvent:
        """Point ``alias`` at ``version`` (a number, or another alias to copy); returns the audit event.

        The event's ``repairs`` list what the promote put right first.
        """
        check_name(name)
        _check_alias(alias)
        if not reason or not str(reason).strip():
            raise RegistryError("a promotion needs a reason: it is kept in the audit log")
        self._require(name)
        with self._write_errors("promote", name), self._lock(name):
            repairs = recovery.repair(self, name)
            target = self.resolve(f"{name}@{version}").version
            return AuditEvent(self._move_alias(name, alias, target, "promote", reason, actor), repairs)

    def rollback(self, name: str, alias: str = "production", *, reason: str, actor: str | None = None) -> AuditEvent:
        """Move ``alias`` back to the version it held before; each call goes one step further back.

        The event's ``repairs`` list what the rollback put right first.
        """
        check_name(name)
        _check_alias(alias)
        if not reason or not str(reason).strip():
            raise RegistryError("a rollback needs a reason: it is kept in the audit log")
        self._require(name)  # before the lock, which would create the adapter's folder
        with self._write_errors("roll back", name), self._lock(name):
            repairs = recovery.repair(self, name)
            event = self._move_alias(name, alias, self.rollback_target(name, alias), "rollback", reason, actor)
            return AuditEvent(event, repairs)

    def rollback_target(self, name: str, alias: str = "production") -> int:
        """The version :meth:`rollback` would move ``alias`` to; RegistryError when there is none.

        What a confirmation shows before a rollback ("task@production: 4 -> 3"). A line of the
        audit log that holds no event and that no ``recover`` record accounts for may have been
        a move of this alias, so the history cannot be trusted: that is an error naming the line.
        A torn last line is not: it is recorded by the rollback's own recovery first.
        """
        check_name(name)
        _check_alias(alias)
        self._require(name)
        events, damage = self.read_audit(name)
        unexplained = [d for d in damage if d.recorded_by is None and not d.torn]
        if unexplained:
            raise RegistryError(
                f"{name}@{alias}: cannot trust the alias history: {self._p(name, AUDIT_FILE)}: {unexplained[0]}; "
                "fix or delete that line by hand (it may have been a move of this alias), then roll back"
            )
        history = _alias_history(events, alias)
        if not history:
            raise RegistryError(
                f"{name}@{alias}: no earlier version to roll back to (now at {self.aliases(name).get(alias, 'nothing')})"
            )
        target = history[-1]
        if target not in self.versions(name):
            raise RegistryError(
                f"{name}@{alias}: would roll back to version {target}, which does not exist "
                f"(versions: {self.versions(name)})"
            )
        return target

    # ----------------------------------------------------------------- settling

    def _require_known(self, name: str) -> None:
        """Refuse a name with neither versions nor an audit log (settle must not create adapter folders)."""
        check_name(name)
        try:
            self._read(self._p(name, AUDIT_FILE))
        except FileNotFoundError:
            self._require(name)

    @staticmethod
    def _need_reason(reason: str, what: str) -> None:
        if not reason or not str(reason).strip():
            raise RegistryError(f"{what} needs a reason: it is kept in the audit log")

    def settle(self, name: str, alias: str, to: int | None, *, reason: str, actor: str | None = None) -> AuditEvent:
        """A person's decision about an alias that aliases.json and the audit log disagree on: point it at ``to``.

        The one write that goes ahead while the store holds something no crash explains (every
        other write refuses with UnsettledError). ``to`` is a version, or None to remove the alias.
        The ``settle`` record keeps what the file said (``from``), what the log said (``logged``)
        and the reason; rollback afterwards treats it as a promote from the logged version.
        """
        _check_alias(alias)
        if to is not None:
            _check_version(name, to)
        self._need_reason(reason, "settling an alias")
        self._require_known(name)
        with self._write_errors("settle", name), self._lock(name):
            repairs = recovery.repair(self, name, block=False)
            aliases = self.aliases(name)
            events, _ = self.read_audit(name)
            drift = next((d for d in recovery.alias_drift(self, name, events) if d.alias == alias), None)
            if drift is None:
                raise RegistryError(
                    f"{name}@{alias}: {ALIASES_FILE} and the audit log agree (at {aliases.get(alias, 'nothing')}): "
                    "nothing to settle; move it with promote or rollback"
                )
            if to is not None and to not in self.versions(name):
                raise RegistryError(f"{name}@{to} does not exist (versions: {self.versions(name) or 'none'})")
            event = {
                "event": "settle",
                "alias": alias,
                "from": drift.file,
                "logged": drift.logged,
                "logged_line": drift.line,
                "to": to,
                "at": now_iso(),
                "actor": actor or whoami(),
                "reason": str(reason),
            }
            self._append_audit(name, [event])
            if to is None:
                aliases.pop(alias, None)
            else:
                aliases[alias] = to
            self._write_aliases(name, aliases)
            return AuditEvent(event, repairs)

    def adopt_versions(
        self, name: str, *, reason: str, actor: str | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Write the publish records that the audit log lacks, from the manifests, as a person's decision.

        For versions that no crash explains the lack of (the log edited, or deleted): the records are
        marked ``settled`` with the reason, so nobody mistakes them for the original lines. Returns
        (the records written, the repairs made first).
        """
        self._need_reason(reason, "adopting versions")
        self._require(name)
        with self._write_errors("settle", name), self._lock(name):
            repairs = recovery.repair(self, name, block=False)
            events, _ = self.read_audit(name)
            todo = [n for n, crash in recovery.unrecorded_versions(self, name, events) if not crash]
            if not todo:
                raise RegistryError(f"every version of {name!r} has its publish record: nothing to adopt")
            settled = {"at": now_iso(), "actor": actor or whoami(), "reason": str(reason)}
            records = [
                {**recovery.publish_record_from_manifest(self, name, number), "settled": settled} for number in todo
            ]
            self._append_audit(name, records)
            return records, repairs

    def record_lost(self, name: str, version: int, *, reason: str, actor: str | None = None) -> AuditEvent:
        """Record that published version ``version`` is gone for good, so ``verify`` stops failing on it.

        Its number stays taken: it is never issued again. Refused while the version is still there.
        """
        _check_version(name, version)
        self._need_reason(reason, "recording a lost version")
        self._require_known(name)
        with self._write_errors("settle", name), self._lock(name):
            repairs = recovery.repair(self, name, block=False)
            events, _ = self.read_audit(name)
            if not any(e["event"] == "publish" and e["version"] == version for _, e in events):
                raise RegistryError(f"{name}@{version}: the audit log never published it: nothing to record as lost")
            if version in self.versions(name):
                raise RegistryError(f"{name}@{version} is still in the store: only a version that is gone can be lost")
            if any(e["event"] == "lost" and e["version"] == version for _, e in events):
                raise RegistryError(f"{name}@{version} is already recorded as lost")
            event = {"event": "lost", "version": version, "at": now_iso(), "actor": actor or whoami(), "reason": reason}
            self._append_audit(name, [event])
            return AuditEvent(event, repairs)

    def _move_alias(
        self, name: str, alias: str, target: int, kind: str, reason: str, actor: str | None
    ) -> dict[str, Any]:
        """Record the move in the audit log, then point the alias (caller holds the lock)."""
        aliases = self.aliases(name)
        event = {
            "event": kind,
            "alias": alias,
            "from": aliases.get(alias),
            "to": target,
            "at": now_iso(),
            "actor": actor or whoami(),
            "reason": str(reason),
        }
        self._append_audit(name, [event])
        aliases[alias] = target
        self._write_aliases(name, aliases)
        return event

    def note(self, name: str, event: str, *, reason: str, actor: str | None = None, **details: Any) -> dict[str, Any]:
        """Record an action taken outside the store on adapter ``name`` (e.g. a server switching it off)
        in its audit log, with actor, reason and time; returns the event. Aliases do not move."""
        check_name(name)
        if event in ("publish", "promote", "rollback", "settle", "lost", "recover"):
            raise RegistryError(f"note: {event!r} is the store's own event; use {event}() to perform it")
        if not reason or not str(reason).strip():
            raise RegistryError(f"a {event} note needs a reason: it is kept in the audit log")
        self._require(name)
        _jsonable("note details", details)
        entry = {**details, "event": event, "at": now_iso(), "actor": actor or whoami(), "reason": str(reason)}
        with self._write_errors(event, name), self._lock(name):
            self._append_audit(name, [entry])
        return entry

    # ----------------------------------------------------------------- checking

    def verify(self, name: str | None = None) -> list[Problem]:
        """Every fault in the store (of ``name``, or of all adapters), [] when intact: see :func:`verify.verify`."""
        return verify.verify(self, name)

    def verify_notes(self, name: str | None = None) -> list[str]:
        """What :meth:`verify` accepts but a person should know: recovered audit lines, unsealed manifests."""
        return verify.verify_notes(self, name)

    # ----------------------------------------------------------------- tables

    def list_table(self) -> str:
        """One row per version of every adapter: aliases, creation, parent, metrics, weights sha."""
        return tables.list_table(self)

    def show_table(self, ref: str | AdapterRef) -> str:
        """Everything recorded about one version, then the last alias moves of its adapter."""
        return tables.show_table(self, ref)


__all__ = [
    "AdapterRef",
    "AdapterVersion",
    "AuditDamage",
    "AuditEvent",
    "BASE_RECORD",
    "BaseIdentity",
    "DEFAULT_ROOT",
    "IncompatibleAdapterError",
    "IntegrityError",
    "InvalidAdapterError",
    "Manifest",
    "Problem",
    "Registry",
    "RegistryError",
    "StoreLinkError",
    "UnsettledError",
    "base_identity",
    "base_identity_from_config_file",
    "check_adapter_dir",
    "config_sha256",
    "verify_version",
]

"""A versioned store for LoRA adapters: plain files in a local folder or at any fsspec URL.

The workbook trains a domain adapter (DAPT) and a task adapter (SFT) on top of it; this store keeps
every version so that a regressing adapter can be rolled back, and refuses to load an adapter into
a model it does not belong to. There is no server: any tool that reads JSON and safetensors can
read the store. Layout, one folder per adapter name::

    <root>/<name>/versions/<N>/adapter_config.json
    <root>/<name>/versions/<N>/adapter_model.safetensors
    <root>/<name>/versions/<N>/manifest.json    # written last: version N exists iff this file does
    <root>/<name>/aliases.json                  # {"production": 3, "candidate": 4}
    <root>/<name>/audit.jsonl                   # append-only: publish, promote, rollback, recover
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
- Every write (publish, promote, rollback, ``recover``) first puts right, under the lock, what a
  killed writer left, and records each repair in the audit log: an audit line cut short (it
  gets its end of line, a ``recover`` record, and is skipped by readers), the staging folder of a
  publish killed before its rename (removed), a version whose publish was killed before its
  audit line (the line is written from its manifest).
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

from modft_utils.store import lock, recovery, tables, verify
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
    BaseIdentity,
    IncompatibleAdapterError,
    IntegrityError,
    InvalidAdapterError,
    Manifest,
    Problem,
    RegistryError,
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
        """Numbered version folders of ``name`` -> whether each has its manifest (is visible)."""
        vroot = self._p(name, "versions")
        try:
            paths = self.fs.find(vroot, withdirs=True)
        except FileNotFoundError:
            return {}
        found: dict[int, bool] = {}
        for path in paths:
            rel = posixpath.relpath(path.rstrip("/"), vroot).split("/")
            if _VERSION_RE.match(rel[0]):  # anything else is a stray entry, reported by verify
                number = int(rel[0])
                found[number] = found.get(number, False) or rel[1:] == [MANIFEST]
        return found

    def _stray_versions(self, name: str) -> list[str]:
        """Entries of ``<name>/versions`` that are not version folders (``010``, ``3.bak``, ``³``)."""
        try:
            entries = self.fs.ls(self._p(name, "versions"), detail=False)
        except FileNotFoundError:
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
        raw = self.fs.cat_file(self._p(name, "versions", str(version), MANIFEST))
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
            raw = self.fs.cat_file(path)
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
            raw = self.fs.cat_file(self._p(check_name(name), AUDIT_FILE))
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

    def _by_alias(self, name: str, alias: str) -> AdapterVersion:
        aliases = self.aliases(name)
        if alias not in aliases:
            raise RegistryError(f"adapter {name!r} has no alias {alias!r} (aliases: {aliases or 'none'})")
        target = aliases[alias]
        if target not in self.versions(name):
            raise RegistryError(
                f"alias {alias!r} of adapter {name!r} points at version {target}, which does not exist "
                f"(versions: {self.versions(name) or 'none'}); "
                f"fix {self._p(name, ALIASES_FILE)} or promote a version"
            )
        return self.get(name, target)

    def resolve(self, ref: str | AdapterRef) -> AdapterVersion:
        """``name`` (production alias, else latest), ``name@3``, ``name@production``, ``name@latest``."""
        if isinstance(ref, AdapterRef):
            return self.get(ref.name, ref.version)
        name, sep, selector = str(ref).partition("@")
        check_name(name)
        if not sep:
            if "production" in self.aliases(name):
                return self._by_alias(name, "production")
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
            with open(path, "a+b") as fh:  # a+: writes go to the end; the last byte can be read
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
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # readers see the old file or the new one, never half of one
        else:
            self.fs.pipe_file(path, data)

    def recover(self, name: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Run the repairs every write starts with (:func:`recovery.repair`) now; the records, by adapter.

        What to run after a crash when no publish, promote or rollback is due, so that ``verify``
        passes again.
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
        # Only visible versions count: the folder of a publish that died before its manifest is
        # reused, so numbers stay dense. Callers hold the lock, so no live writer owns that folder.
        dirs = self._version_dirs(name)
        return max((n for n, visible in dirs.items() if visible), default=0) + 1

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
    ) -> AdapterVersion:
        """Copy the PEFT adapter in ``adapter_dir`` into the store as the next version of ``name``.

        ``parent`` is the adapter this one was trained on top of (a task adapter names its domain
        version); an alias such as ``"domain@production"`` is pinned to the version it points at
        now. Only ``adapter_config.json`` and ``adapter_model.safetensors`` are stored.

        When an intact version of ``name`` already holds the same two files on the same base and
        parent, that version is returned with ``reused=True`` and nothing is written or recorded:
        its manifest keeps the params, metrics and note it was first published with.
        """
        check_name(name)
        if not isinstance(base, BaseIdentity):
            raise RegistryError(f"base must be a BaseIdentity (from base_identity(model)), got {type(base).__name__}")
        src = Path(adapter_dir)
        adapter_config = check_adapter_dir(src)
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
                version, reused = self._publish_local(name, src, details)
            else:
                version, reused = self._publish_remote(name, src, details)
        return replace(self.get(name, version), reused=reused)

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

    def _publish_local(self, name: str, src: Path, details: dict[str, Any]) -> tuple[int, bool]:
        staging = Path(self._p(name, f".staging-{uuid.uuid4().hex}"))
        staging.mkdir(parents=True)
        try:
            (staging / ".owner").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
            # The slow part, the copy, happens outside the lock so that promotions are not held up.
            self._copy_and_check(src, str(staging), details["files"])
            with self._lock(name):
                recovery.repair(self, name)
                existing = self._same_content(name, details)
                if existing is not None:
                    shutil.rmtree(staging)
                    return existing, True
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
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    shutil.rmtree(target)  # a manifest-less leftover, invisible to readers
                os.rename(staging, target)
                _fsync_dir(target.parent)
                self._append_audit(name, [self._publish_event(manifest)])
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version, False

    def _publish_remote(self, name: str, src: Path, details: dict[str, Any]) -> tuple[int, bool]:
        # No rename on object stores: hold the lock for the whole write and put the manifest last.
        with self._lock(name):
            recovery.repair(self, name)
            existing = self._same_content(name, details)
            if existing is not None:
                return existing, True
            version = self._next_version(name)
            folder = self._p(name, "versions", str(version))
            if self.fs.exists(folder):
                self.fs.rm(folder, recursive=True)
            self._copy_and_check(src, folder, details["files"])
            manifest = Manifest(name=name, version=version, **details)
            self.fs.pipe_file(posixpath.join(folder, MANIFEST), manifest.to_json().encode())
            self._append_audit(name, [self._publish_event(manifest)])
        return version, False

    def promote(
        self,
        name: str,
        version: int | str,
        alias: str = "production",
        *,
        reason: str,
        actor: str | None = None,
    ) -> dict[str, Any]:
        """Point ``alias`` at ``version`` (a number, or another alias to copy); returns the audit event."""
        check_name(name)
        _check_alias(alias)
        if not reason or not str(reason).strip():
            raise RegistryError("a promotion needs a reason: it is kept in the audit log")
        self._require(name)
        with self._write_errors("promote", name), self._lock(name):
            recovery.repair(self, name)
            target = self.resolve(f"{name}@{version}").version
            return self._move_alias(name, alias, target, "promote", reason, actor)

    def rollback(
        self, name: str, alias: str = "production", *, reason: str, actor: str | None = None
    ) -> dict[str, Any]:
        """Move ``alias`` back to the version it held before; each call goes one step further back."""
        check_name(name)
        _check_alias(alias)
        if not reason or not str(reason).strip():
            raise RegistryError("a rollback needs a reason: it is kept in the audit log")
        self._require(name)  # before the lock, which would create the adapter's folder
        with self._write_errors("roll back", name), self._lock(name):
            recovery.repair(self, name)
            return self._move_alias(name, alias, self.rollback_target(name, alias), "rollback", reason, actor)

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
    "base_identity",
    "base_identity_from_config_file",
    "check_adapter_dir",
    "config_sha256",
    "verify_version",
]

"""A versioned store for LoRA adapters: plain files in a local folder or at any fsspec URL.

The workbook trains a domain adapter (DAPT) and a task adapter (SFT) on top of it; this store keeps
every version so that a regressing adapter can be rolled back, and refuses to load an adapter into
a model it does not belong to. There is no server: any tool that reads JSON and safetensors can
read the store. Layout, one folder per adapter name::

    <root>/<name>/versions/<N>/adapter_config.json
    <root>/<name>/versions/<N>/adapter_model.safetensors
    <root>/<name>/versions/<N>/manifest.json    # written last: version N exists iff this file does
    <root>/<name>/aliases.json                  # {"production": 3, "candidate": 4}
    <root>/<name>/audit.jsonl                   # append-only: publish, promote, rollback
    <root>/<name>/.lock                         # serialises version numbers and alias moves

Guarantees, and where they stop:

- Versions are immutable: a publish only ever creates folder ``N+1``; nothing here rewrites one.
  Local files are also made read-only, so a stray editor save fails loudly.
- Local folders: a publish copies into ``<name>/.staging-<uuid>`` and renames it to
  ``versions/<N>`` under an OS file lock (``filelock``), so a version appears whole or not at all,
  and a process killed with SIGKILL releases the lock with its death. Staging folders of dead
  processes are removed by the next publish.
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

import argparse
import getpass
import hashlib
import json
import os
import posixpath
import re
import shutil
import socket
import stat
import sys
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

DEFAULT_ROOT = "outputs/registry"
FORMAT = 1
MANIFEST = "manifest.json"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)
# Any of these could be a pickle, and unpickling runs arbitrary code; PEFT itself falls back to
# adapter_model.bin when the safetensors file is missing.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
RESERVED_SELECTORS = ("latest",)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]*\Z")
# Keys of config.to_json_string(use_diff=False) that change with how a model was loaded or which
# library saved it, not with which weights it has: dtype, a 4-bit load, the folder it came from.
# Keys starting with "_" (_name_or_path, _commit_hash, _attn_implementation...) are dropped too.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "name_or_path",
        "dtype",
        "torch_dtype",
        "architectures",
        "quantization_config",
        "attn_implementation",
        "experts_implementation",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)
# A staging folder with no owner record may be one that is being created right now.
_ORPHAN_STAGING_S = 3600.0
_LOCK_POLL_S = 0.1


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message names the adapter, version or file."""


class IntegrityError(RegistryError):
    """Stored files differ from what their manifest recorded."""


class InvalidAdapterError(RegistryError):
    """An adapter folder that must not be published or loaded (pickle, missing or broken file)."""


class IncompatibleAdapterError(RegistryError):
    """An adapter that does not belong to this model: other base, other parent, other shapes."""


@dataclass(frozen=True)
class BaseIdentity:
    """Which base model an adapter was trained on.

    ``config_sha256`` is the sha256 of the base config without load-time keys (see
    :func:`config_sha256`). Two bases match when their config hashes match and, where both
    revisions are known, the revisions match; ``model_id`` is shown but not compared, because the
    same base is often reached through different paths (a hub id here, a local folder there).
    A config hash cannot tell apart two checkpoints of one architecture: pin ``revision`` for those.
    """

    model_id: str
    revision: str | None
    config_sha256: str

    def matches(self, other: BaseIdentity) -> bool:
        if self.config_sha256 != other.config_sha256:
            return False
        return self.revision is None or other.revision is None or self.revision == other.revision

    def __str__(self) -> str:
        return f"model_id={self.model_id!r} revision={self.revision!r} config_sha256={self.config_sha256}"


@dataclass(frozen=True)
class AdapterRef:
    """One concrete adapter version, written ``name@version``."""

    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Manifest:
    """Everything recorded about one version; stored as ``manifest.json`` next to the adapter."""

    name: str
    version: int
    files: dict[str, str]  # file name -> sha256 of its bytes
    base: BaseIdentity
    parent: AdapterRef | None  # a task adapter records the domain version it was trained on
    params: dict[str, Any]
    data_fingerprint: str
    metrics: dict[str, Any]
    note: str
    created_at: str  # UTC, ISO 8601
    created_by: str  # user@host
    adapter: dict[str, Any]  # peft_type, r, lora_alpha, targets: read from adapter_config.json
    libraries: dict[str, str]
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse a manifest; raise ValueError (with the reason) on anything malformed."""
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"not JSON ({err})") from None
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, this code reads format {FORMAT}")
        try:
            parent = raw["parent"]
            manifest = cls(
                name=str(raw["name"]),
                version=int(raw["version"]),
                files={str(k): str(v) for k, v in raw["files"].items()},
                base=BaseIdentity(**raw["base"]),
                parent=None if parent is None else AdapterRef(str(parent["name"]), int(parent["version"])),
                params=dict(raw["params"]),
                data_fingerprint=str(raw["data_fingerprint"]),
                metrics=dict(raw["metrics"]),
                note=str(raw["note"]),
                created_at=str(raw["created_at"]),
                created_by=str(raw["created_by"]),
                adapter=dict(raw["adapter"]),
                libraries=dict(raw["libraries"]),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ValueError(f"missing or malformed field ({type(err).__name__}: {err})") from None
        if set(manifest.files) != set(ADAPTER_FILES):
            raise ValueError(f"lists files {sorted(manifest.files)}, expected {list(ADAPTER_FILES)}")
        return manifest


@dataclass(frozen=True)
class AdapterVersion:
    """A published version: its manifest and where its files are.

    ``path`` is the local folder, or None when the store is remote; :meth:`local_copy` gives a
    local folder in both cases (downloading and verifying a remote version into a cache).
    """

    name: str
    version: int
    manifest: Manifest
    uri: str
    path: Path | None
    registry_uri: str = field(repr=False)
    _fs: Any = field(repr=False, compare=False)
    _fs_path: str = field(repr=False, compare=False)

    @property
    def ref(self) -> AdapterRef:
        return AdapterRef(self.name, self.version)

    def local_copy(self, cache_dir: str | os.PathLike | None = None) -> Path:
        """A local folder holding this version's files, verified against the manifest.

        Remote versions are downloaded once into ``cache_dir`` (default ``$MODFT_REGISTRY_CACHE``
        or ``~/.cache/modft/registry``); a cached copy that no longer verifies is fetched again.
        """
        if self.path is not None:
            return self.path
        base = Path(
            cache_dir
            or os.environ.get("MODFT_REGISTRY_CACHE")
            or Path.home() / ".cache" / "modft" / "registry"
        )
        target = (
            base / hashlib.sha256(self.registry_uri.encode()).hexdigest()[:16] / self.name / str(self.version)
        )
        local = LocalFileSystem()
        if target.is_dir() and not _check_files(local, str(target), self.manifest, self.name, self.version):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".download-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for fname in (*ADAPTER_FILES, MANIFEST):
                self._fs.get_file(posixpath.join(self._fs_path, fname), str(tmp / fname))
            _raise_problems(_check_files(local, str(tmp), self.manifest, self.name, self.version))
            if target.exists():
                shutil.rmtree(target)
            try:
                os.rename(tmp, target)
            except OSError:
                # Another process finished the same download first; keep its copy if it verifies.
                _raise_problems(_check_files(local, str(target), self.manifest, self.name, self.version))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target


@dataclass(frozen=True)
class Problem:
    """One integrity problem found by :meth:`Registry.verify`."""

    adapter: str
    version: int | None
    file: str
    issue: str

    def __str__(self) -> str:
        where = self.adapter if self.version is None else f"{self.adapter}@{self.version}"
        return f"{where}: {self.file}: {self.issue}"


# --------------------------------------------------------------------------- base identity


def config_sha256(config) -> str:
    """sha256 of a transformers config without the keys that change with how it was loaded."""
    full = json.loads(config.to_json_string(use_diff=False))
    canonical = json.dumps(_strip_volatile(full), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _strip_volatile(value: Any) -> Any:
    # Sub-configs (text_config, vision_config, ...) carry the same load-time keys.
    if isinstance(value, dict):
        return {
            k: _strip_volatile(v)
            for k, v in value.items()
            if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS
        }
    if isinstance(value, list):
        return [_strip_volatile(v) for v in value]
    return value


def base_identity(model, *, model_id: str | None = None, revision: str | None = None) -> BaseIdentity:
    """The identity of ``model``'s base (a plain model or a PeftModel around one).

    ``model_id`` defaults to the config's ``_name_or_path`` and ``revision`` to the hub commit
    the config came from, when transformers recorded one.
    """
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    return BaseIdentity(
        model_id=model_id if model_id is not None else str(getattr(config, "_name_or_path", "") or ""),
        revision=revision if revision is not None else getattr(config, "_commit_hash", None),
        config_sha256=config_sha256(config),
    )


def base_identity_from_config_file(
    path: str | os.PathLike, *, model_id: str, revision: str | None = None
) -> BaseIdentity:
    """The identity of a base from its ``config.json`` (a file or the folder holding it), no weights.

    The config is instantiated with its model class's defaults, so the hash equals
    :func:`base_identity` of a model loaded from the same folder.
    """
    from transformers import AutoConfig

    path = Path(path)
    if not path.exists():
        raise RegistryError(f"base config {path} does not exist")
    config = AutoConfig.from_pretrained(str(path))
    return BaseIdentity(model_id=model_id, revision=revision, config_sha256=config_sha256(config))


# --------------------------------------------------------------------------- adapter folders


def _sha256_fs(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pickle_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))


def check_adapter_dir(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """Validate a PEFT adapter folder and return its parsed ``adapter_config.json``.

    Refuses a folder holding a pickle, one without ``adapter_config.json`` or with an unparsable
    one, and a missing, truncated or unreadable ``adapter_model.safetensors`` (its header is
    opened with ``safe_open``, which checks that the tensors it lists fit in the file).
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise InvalidAdapterError(f"adapter folder {folder} does not exist")
    pickles = _pickle_files(folder)
    if pickles:
        raise InvalidAdapterError(
            f"{folder / pickles[0]}: refusing an adapter folder holding a pickle {pickles}; "
            "save with safe_serialization=True and remove the pickle"
        )
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        nested = sorted(str(p.parent.relative_to(folder)) for p in folder.glob(f"*/{CONFIG_FILE}"))
        # PEFT saves an adapter not named "default" into a subfolder named after it.
        hint = f" (found one in subfolder(s) {nested}: pass that folder)" if nested else ""
        raise InvalidAdapterError(f"{config_path}: missing; not a PEFT adapter folder{hint}")
    try:
        adapter_config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidAdapterError(f"{config_path}: not valid JSON ({err})") from None
    if not isinstance(adapter_config, dict) or "peft_type" not in adapter_config:
        raise InvalidAdapterError(f"{config_path}: has no 'peft_type'; not a PEFT adapter config")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise InvalidAdapterError(f"{weights}: missing")
    try:
        with safe_open(str(weights), framework="numpy") as fh:
            keys = list(fh.keys())
            for key in keys:
                fh.get_slice(key).get_shape()
    except (SafetensorError, OSError, ValueError) as err:
        raise InvalidAdapterError(f"{weights}: unreadable or truncated safetensors file ({err})") from None
    if not keys:
        raise InvalidAdapterError(f"{weights}: holds no tensors")
    return adapter_config


def _adapter_summary(adapter_config: Mapping[str, Any]) -> dict[str, Any]:
    targets = adapter_config.get("target_modules")
    return {
        "peft_type": adapter_config.get("peft_type"),
        "r": adapter_config.get("r"),
        "lora_alpha": adapter_config.get("lora_alpha"),
        "target_modules": sorted(targets) if isinstance(targets, list) else targets,
        "target_parameters": adapter_config.get("target_parameters"),
        "base_model_name_or_path": adapter_config.get("base_model_name_or_path"),
    }


def _libraries() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("peft", "transformers", "safetensors", "torch"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found


def _copy_file(src: Path, fs, dst: str) -> None:
    """Copy one adapter file into the store (a module-level seam: tests slow it down to kill mid-copy)."""
    if isinstance(fs, LocalFileSystem):
        shutil.copyfile(src, dst)
        with open(dst, "rb+") as fh:
            os.fsync(fh.fileno())
    else:
        fs.put_file(str(src), dst)


def _check_files(fs, folder: str, manifest: Manifest, name: str, version: int) -> list[Problem]:
    """Problems with the files of one version folder against ``manifest``; empty when intact."""
    problems = []
    try:
        present = {posixpath.basename(p.rstrip("/")) for p in fs.ls(folder, detail=False)}
    except FileNotFoundError:
        return [Problem(name, version, folder, "version folder is missing")]
    for fname, expected in sorted(manifest.files.items()):
        if fname not in present:
            problems.append(Problem(name, version, fname, "missing"))
            continue
        actual = _sha256_fs(fs, posixpath.join(folder, fname))
        if actual != expected:
            problems.append(
                Problem(
                    name,
                    version,
                    fname,
                    f"sha256 mismatch: manifest {expected[:16]}..., file {actual[:16]}...",
                )
            )
    for extra in sorted(present - set(manifest.files) - {MANIFEST}):
        kind = "pickle file" if extra.lower().endswith(PICKLE_SUFFIXES) else "file"
        problems.append(Problem(name, version, extra, f"extra {kind} not listed in the manifest"))
    return problems


def _raise_problems(problems: list[Problem]) -> None:
    if problems:
        raise IntegrityError("; ".join(str(p) for p in problems))


def verify_version(version: AdapterVersion) -> None:
    """Re-hash every file of ``version`` where it is stored; raise IntegrityError naming the file."""
    _raise_problems(
        _check_files(version._fs, version._fs_path, version.manifest, version.name, version.version)
    )


# --------------------------------------------------------------------------- small helpers


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _whoami() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # getpass raises varied errors in containers with no passwd entry
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RegistryError(f"invalid adapter name {name!r}: use letters, digits, '_', '-', '.'")
    return name


def _check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS_RE.match(alias):
        raise RegistryError(f"invalid alias {alias!r}: must match [a-z][a-z0-9_-]*")
    if alias in RESERVED_SELECTORS:
        raise RegistryError(f"alias {alias!r} is reserved: it always means the highest version")
    return alias


def _jsonable(what: str, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise RegistryError(f"{what} must be JSON-serialisable: {err}") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def _alias_history(events: list[dict[str, Any]], alias: str) -> list[int]:
    """Versions ``alias`` held before its current one, oldest first, replaying promotes and rollbacks."""
    stack: list[int] = []
    for event in events:
        if event.get("alias") != alias:
            continue
        if event.get("event") == "promote":
            if event.get("from") is not None and event.get("from") != event.get("to"):
                stack.append(int(event["from"]))
        elif event.get("event") == "rollback" and stack:
            stack.pop()
    return stack


# --------------------------------------------------------------------------- the store


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
        self.fs, root = url_to_fs(self.uri)
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.lock_timeout = lock_timeout
        self.stale_lock_s = stale_lock_s

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
            if entry["type"] == "directory" and _NAME_RE.match(base) and self.versions(base):
                found.append(base)
        return sorted(found)

    def _require(self, name: str) -> None:
        if not self.versions(name):
            raise RegistryError(
                f"no adapter {name!r} in registry {self.uri} (adapters: {self.names() or 'none'})"
            )

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
            if rel[0].isdigit():
                number = int(rel[0])
                found[number] = found.get(number, False) or rel[1:] == [MANIFEST]
        return found

    def versions(self, name: str) -> list[int]:
        """Visible (complete) versions of ``name``, ascending; half-written ones are ignored."""
        return sorted(n for n, visible in self._version_dirs(_check_name(name)).items() if visible)

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

    def get(self, name: str, version: int) -> AdapterVersion:
        """Version ``version`` of ``name``; RegistryError if it does not exist."""
        _check_name(name)
        folder = self._p(name, "versions", str(int(version)))
        try:
            raw = self.fs.cat_file(posixpath.join(folder, MANIFEST))
        except FileNotFoundError:
            self._require(name)
            raise RegistryError(
                f"{name}@{version} does not exist (versions: {self.versions(name)})"
            ) from None
        try:
            manifest = Manifest.from_json(raw)
        except ValueError as err:
            raise IntegrityError(f"{name}@{version}: {MANIFEST}: unreadable manifest: {err}") from None
        if (manifest.name, manifest.version) != (name, int(version)):
            raise IntegrityError(
                f"{name}@{version}: {MANIFEST}: describes {manifest.name}@{manifest.version}"
            )
        return AdapterVersion(
            name=name,
            version=int(version),
            manifest=manifest,
            uri=folder if self.is_local else self.fs.unstrip_protocol(folder),
            path=Path(folder) if self.is_local else None,
            registry_uri=str(Path(self.root).resolve()) if self.is_local else self.uri,
            _fs=self.fs,
            _fs_path=folder,
        )

    def aliases(self, name: str) -> dict[str, int]:
        """The aliases of ``name`` and the versions they point at (as stored; not checked)."""
        path = self._p(_check_name(name), "aliases.json")
        try:
            raw = self.fs.cat_file(path)
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return {str(k): int(v) for k, v in data.items()}
        except (ValueError, TypeError, UnicodeDecodeError) as err:
            raise RegistryError(f"{path}: unreadable aliases file ({err})") from None

    def audit(self, name: str) -> list[dict[str, Any]]:
        """Every recorded publish, promote and rollback of ``name``, oldest first."""
        path = self._p(_check_name(name), "audit.jsonl")
        try:
            text = self.fs.cat_file(path).decode()
        except FileNotFoundError:
            return []
        events = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RegistryError(f"{path}: line {lineno} is not JSON ({err})") from None
        return events

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
                f"fix {self._p(name, 'aliases.json')} or promote a version"
            )
        return self.get(name, target)

    def resolve(self, ref: str | AdapterRef) -> AdapterVersion:
        """``name`` (production alias, else latest), ``name@3``, ``name@production``, ``name@latest``."""
        if isinstance(ref, AdapterRef):
            return self.get(ref.name, ref.version)
        name, sep, selector = str(ref).partition("@")
        _check_name(name)
        if not sep:
            if "production" in self.aliases(name):
                return self._by_alias(name, "production")
            return self._latest(name)
        if selector == "latest":
            return self._latest(name)
        if selector.isdigit():
            return self.get(name, int(selector))
        if _ALIAS_RE.match(selector):
            return self._by_alias(name, selector)
        raise RegistryError(f"cannot read {ref!r}: expected NAME, NAME@VERSION, NAME@ALIAS or NAME@latest")

    # ----------------------------------------------------------------- locking

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """Hold the per-adapter lock that serialises version numbers and alias moves."""
        path = self._p(name, ".lock")
        if self.is_local:
            from filelock import FileLock, Timeout

            Path(path).parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(path, timeout=self.lock_timeout)
            try:
                lock.acquire()
            except Timeout:
                raise RegistryError(
                    f"could not take {path} within {self.lock_timeout:g} s: "
                    f"another publish or promote of {name!r} is running"
                ) from None
            try:
                yield
            finally:
                lock.release()
        else:
            token = self._acquire_remote_lock(path, name)
            try:
                yield
            finally:
                try:
                    if json.loads(self.fs.cat_file(path)).get("token") == token:
                        self.fs.rm(path)
                except (FileNotFoundError, ValueError):
                    pass

    def _acquire_remote_lock(self, path: str, name: str) -> str:
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.lock_timeout
        while True:
            record = json.dumps(
                {"token": token, "owner": _whoami(), "pid": os.getpid(), "at": time.time()}
            ).encode()
            try:
                with self.fs.open(path, "xb") as fh:
                    fh.write(record)
                created = True
            except FileExistsError:
                created = False
            except (ValueError, NotImplementedError):
                # No exclusive create on this store: check, write, then read back below.
                created = not self.fs.exists(path)
                if created:
                    self.fs.pipe_file(path, record)
            if created:
                try:
                    if json.loads(self.fs.cat_file(path)).get("token") == token:
                        return token
                except (FileNotFoundError, ValueError):
                    pass
            else:
                try:
                    held = json.loads(self.fs.cat_file(path))
                except (FileNotFoundError, ValueError):
                    held = None
                if held is not None and time.time() - float(held.get("at", 0)) > self.stale_lock_s:
                    self.fs.rm(path)  # its writer died holding it: no heartbeat refreshes a lock this old
                    continue
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"could not take lock {self.fs.unstrip_protocol(path)} for {name!r} "
                    f"within {self.lock_timeout:g} s; "
                    "if no publish or promote is running, delete that file"
                )
            time.sleep(_LOCK_POLL_S)

    # ----------------------------------------------------------------- writing

    def _append_audit(self, name: str, event: dict[str, Any]) -> None:
        line = json.dumps(event, sort_keys=True) + "\n"
        path = self._p(name, "audit.jsonl")
        if self.is_local:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            # Object stores cannot append; the lock held by every caller makes read-modify-write safe.
            try:
                old = self.fs.cat_file(path)
            except FileNotFoundError:
                old = b""
            self.fs.pipe_file(path, old + line.encode())

    def _write_aliases(self, name: str, aliases: dict[str, int]) -> None:
        data = (json.dumps(dict(sorted(aliases.items())), indent=2) + "\n").encode()
        path = self._p(name, "aliases.json")
        if self.is_local:
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # readers see the old file or the new one, never half of one
        else:
            self.fs.pipe_file(path, data)

    def _clean_stale_staging(self, name: str) -> None:
        """Remove staging folders left by publishes that died (SIGKILL, power loss)."""
        folder = Path(self._p(name))
        if not folder.is_dir():
            return
        host = socket.gethostname()
        for staging in folder.glob(".staging-*"):
            try:
                owner = json.loads((staging / ".owner").read_text())
                stale = owner.get("host") == host and not _pid_alive(int(owner["pid"]))
            except (OSError, ValueError, KeyError, TypeError):
                try:
                    stale = time.time() - staging.stat().st_mtime > _ORPHAN_STAGING_S
                except OSError:
                    continue
            if stale:
                shutil.rmtree(staging, ignore_errors=True)

    def _next_version(self, name: str) -> int:
        # Only visible versions count: the folder of a publish that died before its manifest is
        # reused, so numbers stay dense. Callers hold the lock, so no live writer owns that folder.
        dirs = self._version_dirs(name)
        return max((n for n, visible in dirs.items() if visible), default=0) + 1

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
        """
        _check_name(name)
        if not isinstance(base, BaseIdentity):
            raise RegistryError(
                f"base must be a BaseIdentity (from base_identity(model)), got {type(base).__name__}"
            )
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
            "created_at": _now(),
            "created_by": _whoami(),
            "adapter": _adapter_summary(adapter_config),
            "libraries": _libraries(),
        }
        if self.is_local:
            version = self._publish_local(name, src, details)
        else:
            version = self._publish_remote(name, src, details)
        return self.get(name, version)

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

    def _publish_local(self, name: str, src: Path, details: dict[str, Any]) -> int:
        self._clean_stale_staging(name)
        staging = Path(self._p(name, f".staging-{uuid.uuid4().hex}"))
        staging.mkdir(parents=True)
        try:
            (staging / ".owner").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
            # The slow part, the copy, happens outside the lock so that promotions are not held up.
            self._copy_and_check(src, str(staging), details["files"])
            with self._lock(name):
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
                self._append_audit(
                    name,
                    {
                        "event": "publish",
                        "version": version,
                        "at": details["created_at"],
                        "actor": details["created_by"],
                        "note": details["note"],
                    },
                )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version

    def _publish_remote(self, name: str, src: Path, details: dict[str, Any]) -> int:
        # No rename on object stores: hold the lock for the whole write and put the manifest last.
        with self._lock(name):
            version = self._next_version(name)
            folder = self._p(name, "versions", str(version))
            if self.fs.exists(folder):
                self.fs.rm(folder, recursive=True)
            self._copy_and_check(src, folder, details["files"])
            manifest = Manifest(name=name, version=version, **details)
            self.fs.pipe_file(posixpath.join(folder, MANIFEST), manifest.to_json().encode())
            self._append_audit(
                name,
                {
                    "event": "publish",
                    "version": version,
                    "at": details["created_at"],
                    "actor": details["created_by"],
                    "note": details["note"],
                },
            )
        return version

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
        _check_name(name)
        _check_alias(alias)
        if not reason or not str(reason).strip():
            raise RegistryError("a promotion needs a reason: it is kept in the audit log")
        self._require(name)
        with self._lock(name):
            target = self.resolve(f"{name}@{version}").version
            return self._move_alias(name, alias, target, "promote", reason, actor)

    def rollback(
        self, name: str, alias: str = "production", *, reason: str, actor: str | None = None
    ) -> dict[str, Any]:
        """Move ``alias`` back to the version it held before; each call goes one step further back."""
        _check_name(name)
        _check_alias(alias)
        if not reason or not str(reason).strip():
            raise RegistryError("a rollback needs a reason: it is kept in the audit log")
        self._require(name)  # before the lock, which would create the adapter's folder
        with self._lock(name):
            return self._move_alias(name, alias, self.rollback_target(name, alias), "rollback", reason, actor)

    def rollback_target(self, name: str, alias: str = "production") -> int:
        """The version :meth:`rollback` would move ``alias`` to; RegistryError when there is none.

        What a confirmation shows before a rollback ("task@production: 4 -> 3").
        """
        _check_name(name)
        _check_alias(alias)
        self._require(name)
        history = _alias_history(self.audit(name), alias)
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

    def _move_alias(self, name: str, alias: str, target: int, kind: str, reason: str, actor: str | None) -> dict[str, Any]:
        """Record the move in the audit log, then point the alias (caller holds the lock)."""
        aliases = self.aliases(name)
        event = {
            "event": kind,
            "alias": alias,
            "from": aliases.get(alias),
            "to": target,
            "at": _now(),
            "actor": actor or _whoami(),
            "reason": str(reason),
        }
        self._append_audit(name, event)
        aliases[alias] = target
        self._write_aliases(name, aliases)
        return event

    # ----------------------------------------------------------------- checking

    def verify(self, name: str | None = None) -> list[Problem]:
        """Re-hash every file of every version (of ``name``, or of all adapters); [] when intact."""
        names = [_check_name(name)] if name is not None else self.names()
        problems: list[Problem] = []
        for adapter in names:
            dirs = self._version_dirs(adapter)
            if name is not None and not any(dirs.values()):
                problems.append(Problem(adapter, None, "", f"no such adapter in registry {self.uri}"))
                continue
            for number in sorted(n for n, visible in dirs.items() if visible):
                try:
                    version = self.get(adapter, number)
                except IntegrityError as err:
                    problems.append(Problem(adapter, number, MANIFEST, f"unreadable manifest ({err})"))
                    continue
                problems += _check_files(self.fs, version._fs_path, version.manifest, adapter, number)
            try:
                aliases = self.aliases(adapter)
            except RegistryError as err:
                problems.append(Problem(adapter, None, "aliases.json", str(err)))
                aliases = {}
            visible = {n for n, ok in dirs.items() if ok}
            for alias, target in sorted(aliases.items()):
                if target not in visible:
                    problems.append(
                        Problem(
                            adapter,
                            None,
                            "aliases.json",
                            f"alias {alias!r} points at version {target}, which does not exist",
                        )
                    )
            try:
                self.audit(adapter)
            except RegistryError as err:
                problems.append(Problem(adapter, None, "audit.jsonl", str(err)))
        return problems

    # ----------------------------------------------------------------- tables

    def list_table(self) -> str:
        """One row per version of every adapter: aliases, creation, parent, metrics, weights sha."""
        rows = []
        for name in self.names():
            by_version: dict[int, list[str]] = {}
            try:
                for alias, target in self.aliases(name).items():
                    by_version.setdefault(target, []).append(alias)
            except RegistryError:
                pass  # shown by verify; the versions are still worth listing
            for number in self.versions(name):
                aliases = ",".join(sorted(by_version.get(number, []))) or "-"
                try:
                    m = self.get(name, number).manifest
                except IntegrityError:
                    rows.append([name, str(number), aliases, "?", "?", "(unreadable manifest)", "?"])
                    continue
                rows.append(
                    [
                        name,
                        str(number),
                        aliases,
                        _short_time(m.created_at),
                        str(m.parent) if m.parent else "-",
                        _format_values(m.metrics, limit=3) or "-",
                        m.files[WEIGHTS_FILE][:12],
                    ]
                )
        if not rows:
            return f"registry {self.uri} is empty"
        return _table(["NAME", "VERSION", "ALIASES", "CREATED (UTC)", "PARENT", "METRICS", "SHA256"], rows)

    def show_table(self, ref: str | AdapterRef) -> str:
        """Everything recorded about one version, then the last alias moves of its adapter."""
        v = self.resolve(ref)
        m = v.manifest
        aliases = sorted(a for a, target in self.aliases(v.name).items() if target == v.version)
        lora = m.adapter
        targets = lora.get("target_parameters") or lora.get("target_modules")
        rows = [
            ["adapter", str(v.ref)],
            ["aliases", ", ".join(aliases) or "-"],
            ["location", v.uri],
            ["created", f"{m.created_at} by {m.created_by}"],
            ["base", m.base.model_id or "-"],
            ["base revision", m.base.revision or "-"],
            ["base config", f"sha256 {m.base.config_sha256}"],
            ["parent", str(m.parent) if m.parent else "- (trained on the bare base)"],
            [
                "lora",
                f"{lora.get('peft_type')} r={lora.get('r')} alpha={lora.get('lora_alpha')} targets={targets}",
            ],
            ["data", m.data_fingerprint or "-"],
            ["params", _format_values(m.params) or "-"],
            ["metrics", _format_values(m.metrics) or "-"],
            ["note", m.note or "-"],
        ]
        rows += [[f"sha256 {fname}", sha] for fname, sha in sorted(m.files.items())]
        rows += [["libraries", " ".join(f"{k}={val}" for k, val in sorted(m.libraries.items()))]]
        text = _table(["FIELD", "VALUE"], rows)
        moves = [e for e in self.audit(v.name) if e.get("event") in ("promote", "rollback")]
        if moves:
            text += "\n\n" + _table(
                ["WHEN (UTC)", "EVENT", "ALIAS", "FROM", "TO", "BY", "REASON"],
                [
                    [
                        _short_time(e.get("at", "")),
                        str(e.get("event")),
                        str(e.get("alias")),
                        str(e.get("from") or "-"),
                        str(e.get("to")),
                        str(e.get("actor")),
                        str(e.get("reason")),
                    ]
                    for e in moves[-10:]
                ],
            )
        return text


def _short_time(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def _format_values(values: Mapping[str, Any], limit: int | None = None) -> str:
    items = sorted(values.items())[:limit] if limit else sorted(values.items())
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- loading


def _lora_keys_mismatch(peft_model, weights: Path, adapter_name: str) -> tuple[list[str], list[str]]:
    """Adapter weights PEFT expected but the file lacks, and tensors in the file PEFT did not use.

    ``get_peft_model_state_dict`` yields exactly the keys ``save_pretrained`` would write for this
    adapter in this model; comparing it with the file gives the adapter-filtered
    ``missing_keys``/``unexpected_keys`` of a load result, also for ``PeftModel.from_pretrained``,
    which does not return one (and only warns).
    """
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    expected = set(
        get_peft_model_state_dict(peft_model, adapter_name=adapter_name, save_embedding_layers=False)
    )
    with safe_open(str(weights), framework="numpy") as fh:
        in_file = set(fh.keys())
    return sorted(expected - in_file), sorted(in_file - expected)


def _strip_lora_layers(model) -> None:
    """Undo a ``PeftModel.from_pretrained`` that already wrapped ``model``'s layers in place."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    replaced: list[str] = []
    for mod_name, module in list(model.named_modules()):
        wrapper = isinstance(module, AuxiliaryTrainingWrapper)  # trainable-token rows around an embedding
        if not (wrapper or isinstance(module, BaseTunerLayer)) or any(mod_name.startswith(r + ".") for r in replaced):
            continue
        parent_name, _, child = mod_name.rpartition(".")
        original = module.original_module if wrapper else module.get_base_layer()
        setattr(model.get_submodule(parent_name) if parent_name else model, child, original)
        replaced.append(mod_name)
    if "peft_config" in vars(model):
        del model.peft_config


def _discard(model, adapter_name: str, was_peft: bool) -> None:
    """Leave ``model`` as it was before a failed load."""
    if was_peft:
        if adapter_name in getattr(model, "peft_config", {}):
            model.delete_adapter(adapter_name)
    else:
        _strip_lora_layers(model)


def load_adapter_into(
    model,
    version: AdapterVersion,
    adapter_name: str,
    *,
    base: BaseIdentity,
    force_parent: bool = False,
    active_parent: AdapterRef | None = None,
):
    """Load a registry version into ``model`` as frozen adapter ``adapter_name``; return the PeftModel.

    Checks, in order: every file's sha256 against the manifest, no pickle, the manifest's base
    identity against ``base``, the recorded parent against ``active_parent`` (skipped with
    ``force_parent``), then loads with PEFT and turns shape mismatches and missing or unexpected
    adapter weights, which PEFT only warns about, into errors. On any failure the model is left as
    it was. ``model`` may be a plain transformers model or a PeftModel holding other adapters.
    """
    from peft import PeftModel

    from .adapters import ensure_peft_fixes

    ensure_peft_fixes()
    label = f"adapter {adapter_name!r} ({version.ref})"
    path = version.local_copy()
    pickles = _pickle_files(path)
    if pickles:
        raise InvalidAdapterError(
            f"{label}: {path / pickles[0]}: refusing to load a folder holding a pickle {pickles}"
        )
    _raise_problems(
        _check_files(LocalFileSystem(), str(path), version.manifest, version.name, version.version)
    )
    trained_on = version.manifest.base
    if not trained_on.matches(base):
        raise IncompatibleAdapterError(
            f"{label} was trained on a different base:\n"
            f"  adapter's base: {trained_on}\n"
            f"  this model:     {base}"
        )
    expected_parent = version.manifest.parent
    if expected_parent is not None and expected_parent != active_parent:
        message = (
            f"{label} was trained on top of {expected_parent}, "
            f"but the active parent is {active_parent or 'none'}"
        )
        if not force_parent:
            raise IncompatibleAdapterError(
                message + "; load that parent first, or pass force_parent=True to load it anyway"
            )
        warnings.warn(message + " (loading anyway: force_parent=True)", stacklevel=2)

    was_peft = isinstance(model, PeftModel)
    if was_peft and adapter_name in model.peft_config:
        raise RegistryError(f"{label}: an adapter named {adapter_name!r} is already loaded in this model")
    try:
        with warnings.catch_warnings():
            # PEFT's missing-keys warning is replaced by the error below.
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            if was_peft:
                model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=False)
                peft_model = model
            else:
                peft_model = PeftModel.from_pretrained(
                    model, str(path), adapter_name=adapter_name, is_trainable=False
                )
    except Exception as err:
        _discard(model, adapter_name, was_peft)
        detail = " ".join(line.strip() for line in str(err).strip().splitlines()[:3])
        raise IncompatibleAdapterError(
            f"{label} does not fit this model (rank or shape mismatch?): {type(err).__name__}: {detail}"
        ) from err
    missing, unexpected = _lora_keys_mismatch(peft_model, path / WEIGHTS_FILE, adapter_name)
    if missing or unexpected:
        _discard(model, adapter_name, was_peft)
        raise IncompatibleAdapterError(
            f"{label} does not fit this model: {len(missing)} adapter weight(s) missing from {WEIGHTS_FILE} "
            f"{missing[:3]}, {len(unexpected)} unexpected in it {unexpected[:3]}"
        )
    return peft_model


# --------------------------------------------------------------------------- command line


def add_registry_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``registry {list,show,publish,promote,rollback,verify}`` to an argparse subparsers object."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        default=DEFAULT_ROOT,
        metavar="URI",
        help=f"registry folder or fsspec URL (default: {DEFAULT_ROOT})",
    )

    reg = subparsers.add_parser(
        "registry", help="versioned store of LoRA adapters", description=__doc__.split("\n\n")[0]
    )
    sub = reg.add_subparsers(dest="registry_command", metavar="COMMAND", required=True)
    sub.add_parser("list", parents=[common], help="every version of every adapter")
    p = sub.add_parser("show", parents=[common], help="one version in detail")
    p.add_argument("ref", metavar="NAME[@VERSION|@ALIAS]")
    p = sub.add_parser("publish", parents=[common], help="store an adapter folder as the next version")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "adapter_dir", metavar="DIR", help="folder with adapter_config.json and adapter_model.safetensors"
    )
    p.add_argument("--parent", metavar="REF", help="adapter this one was trained on, e.g. domain@production")
    p.add_argument(
        "--base-config",
        metavar="PATH",
        help="base config.json (or its folder); default: <base_model_name_or_path>/config.json",
    )
    p.add_argument(
        "--base-revision", metavar="REV", help="hub revision of the base, when it came from the hub"
    )
    p.add_argument("--params", default="{}", metavar="JSON", help="training parameters, a JSON object")
    p.add_argument("--metrics", default="{}", metavar="JSON", help="evaluation metrics, a JSON object")
    p.add_argument("--data-fingerprint", default="", metavar="SHA", help="fingerprint of the training data")
    p.add_argument("--note", default="")
    p = sub.add_parser("promote", parents=[common], help="point an alias at a version")
    p.add_argument("name", metavar="NAME")
    p.add_argument("version", metavar="VERSION", help="a version number, or an alias whose version to take")
    p.add_argument("--alias", default="production")
    p.add_argument("--reason", required=True)
    p.add_argument("--actor", help="who (default: user@host)")
    p = sub.add_parser("rollback", parents=[common], help="move an alias back to its previous version")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--alias", default="production")
    p.add_argument("--reason", required=True)
    p.add_argument("--actor", help="who (default: user@host)")
    p = sub.add_parser("verify", parents=[common], help="re-hash every stored file; exit 1 on any problem")
    p.add_argument("name", nargs="?", metavar="NAME")
    reg.set_defaults(func=registry_main)
    return reg


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise RegistryError(f"{option}: not JSON ({err})") from None
    if not isinstance(value, dict):
        raise RegistryError(f"{option}: expected a JSON object, got {type(value).__name__}")
    return value


def _cli_publish(reg: Registry, args: argparse.Namespace) -> int:
    adapter_config = check_adapter_dir(args.adapter_dir)
    model_id = str(adapter_config.get("base_model_name_or_path") or "")
    config_path = args.base_config
    if config_path is None:
        guess = Path(model_id) / "config.json" if model_id else None
        if guess is None or not guess.is_file():
            raise RegistryError(
                f"--base-config is needed: base_model_name_or_path {model_id!r} in "
                f"{Path(args.adapter_dir) / CONFIG_FILE} is not a local folder with a config.json"
            )
        config_path = guess
    base = base_identity_from_config_file(config_path, model_id=model_id, revision=args.base_revision)
    v = reg.publish(
        args.name,
        args.adapter_dir,
        base=base,
        parent=args.parent,
        params=_json_object(args.params, "--params"),
        data_fingerprint=args.data_fingerprint,
        metrics=_json_object(args.metrics, "--metrics"),
        note=args.note,
    )
    print(f"published {v.ref} at {v.uri} (weights sha256 {v.manifest.files[WEIGHTS_FILE][:12]})")
    return 0


def registry_main(args: argparse.Namespace) -> int:
    """Run one ``registry`` subcommand parsed by :func:`add_registry_commands`; return the exit code."""
    reg = Registry(args.registry)
    try:
        command = args.registry_command
        if command == "list":
            print(reg.list_table())
        elif command == "show":
            print(reg.show_table(args.ref))
        elif command == "publish":
            return _cli_publish(reg, args)
        elif command in ("promote", "rollback"):
            if command == "promote":
                e = reg.promote(args.name, args.version, args.alias, reason=args.reason, actor=args.actor)
            else:
                e = reg.rollback(args.name, args.alias, reason=args.reason, actor=args.actor)
            before = e["from"] if e["from"] is not None else "-"
            print(f"{args.name}@{e['alias']}: {before} -> {e['to']} ({command} by {e['actor']})")
        elif command == "verify":
            problems = reg.verify(args.name)
            for problem in problems:
                print(f"MISMATCH {problem}")
            if problems:
                print(f"{len(problems)} problem(s) in registry {reg.uri}", file=sys.stderr)
                return 1
            names = [args.name] if args.name else reg.names()
            count = sum(len(reg.versions(n)) for n in names)
            print(f"ok: {count} version(s) of {len(names)} adapter(s) verified in {reg.uri}")
        else:
            raise RegistryError(f"unknown registry command {command!r}")
    except RegistryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "AdapterRef",
    "AdapterVersion",
    "BaseIdentity",
    "DEFAULT_ROOT",
    "IncompatibleAdapterError",
    "IntegrityError",
    "InvalidAdapterError",
    "Manifest",
    "Problem",
    "Registry",
    "RegistryError",
    "add_registry_commands",
    "base_identity",
    "base_identity_from_config_file",
    "check_adapter_dir",
    "config_sha256",
    "load_adapter_into",
    "registry_main",
    "verify_version",
]

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

import argparse
import getpass
import hashlib
import json
import math
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
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

DEFAULT_ROOT = "outputs/registry"
FORMAT = 2
# Format 1 manifests, written before a manifest carried its own sha256, are still read.
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"
AUDIT_FILE = "audit.jsonl"
ALIASES_FILE = "aliases.json"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)
# Written beside an adapter by adapters.save_adapter (not stored): the base it was trained on.
BASE_RECORD = "base_identity.json"
# Any of these could be a pickle, and unpickling runs arbitrary code; PEFT itself falls back to
# adapter_model.bin when the safetensors file is missing.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
RESERVED_SELECTORS = ("latest",)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
# An adapter name is a folder name; 255 bytes is the usual limit, and paths get long on object stores.
NAME_MAX = 100
_ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]*\Z")
# ASCII only and no leading zero: str.isdigit() also takes '٣' and '³', and '03' would name version 3
# through a folder that is not called 3.
_VERSION_RE = re.compile(r"[1-9][0-9]*\Z")
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


class _ManifestIssue(ValueError):
    """Why a manifest cannot be trusted; the caller adds which version it belongs to."""


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not standard JSON")


def _loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses NaN and Infinity: Python writes them by default, other readers fail on them."""
    return json.loads(text, parse_constant=_reject_constant)


def _canonical_sha256(value: Any) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    ).hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # true and false are ints to Python


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

    @property
    def sealed(self) -> bool:
        """Whether the stored manifest carries the sha256 of its own content (format 2 on)."""
        return self.format >= 2

    def content_sha256(self) -> str:
        """sha256 of this manifest's canonical JSON: what ``manifest_sha256`` and the publish record hold."""
        return _canonical_sha256(asdict(self))

    def to_json(self) -> str:
        body = asdict(self)
        body["manifest_sha256"] = _canonical_sha256(body)
        return json.dumps(body, indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse a manifest; raise ValueError (with the reason) on anything malformed or edited."""
        try:
            raw = _loads(text)
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, NaN
            raise _ManifestIssue(f"unreadable manifest: not JSON ({err})") from None
        if not isinstance(raw, dict):
            raise _ManifestIssue("unreadable manifest: not a JSON object")
        fmt = raw.get("format")
        if not _is_int(fmt) or fmt not in READABLE_FORMATS:
            raise _ManifestIssue(f"unreadable manifest: format {fmt!r}, this code reads formats {READABLE_FORMATS}")
        if fmt >= 2:
            recorded = raw.pop("manifest_sha256", None)
            actual = _canonical_sha256(raw)
            if recorded != actual:
                raise _ManifestIssue(
                    f"edited after it was published: its content hashes to {actual[:16]}..., "
                    f"its manifest_sha256 says {str(recorded)[:16]}..."
                )
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
                format=fmt,
            )
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise _ManifestIssue(
                f"unreadable manifest: missing or malformed field ({type(err).__name__}: {err})"
            ) from None
        if set(manifest.files) != set(ADAPTER_FILES):
            raise _ManifestIssue(
                f"unreadable manifest: lists files {sorted(manifest.files)}, expected {list(ADAPTER_FILES)}"
            )
        return manifest


@dataclass(frozen=True)
class AdapterVersion:
    """A published version: its manifest and where its files are.

    ``path`` is the local folder, or None when the store is remote; :meth:`local_copy` gives a
    local folder in both cases (downloading and verifying a remote version into a cache).
    ``reused`` is True when :meth:`Registry.publish` found these files already stored as this version.
    """

    name: str
    version: int
    manifest: Manifest
    uri: str
    path: Path | None
    registry_uri: str = field(repr=False)
    _fs: Any = field(repr=False, compare=False)
    _fs_path: str = field(repr=False, compare=False)
    reused: bool = field(default=False, compare=False)

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


@dataclass(frozen=True)
class AuditDamage:
    """A line of ``audit.jsonl`` that holds no readable event.

    ``torn`` marks the last line of the file when it has no end of line: a write that was cut
    short (a crash mid-append, a full disk). ``recorded_by`` is the line of the ``recover``
    record that a later write added for it, or None while nobody has.
    """

    line: int
    issue: str
    torn: bool
    sha256: str
    recorded_by: int | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.issue}"


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
    if len(name) > NAME_MAX:
        raise RegistryError(
            f"invalid adapter name {name[:20]!r}... ({len(name)} characters): at most {NAME_MAX} characters, "
            "as it names a folder"
        )
    return name


def _check_version(name: str, version: Any) -> int:
    if not _is_int(version) or version < 1:
        raise RegistryError(f"{name}@{version!r}: a version is a whole number from 1")
    return version


def _check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS_RE.match(alias):
        raise RegistryError(f"invalid alias {alias!r}: must match [a-z][a-z0-9_-]*")
    if alias in RESERVED_SELECTORS:
        raise RegistryError(f"alias {alias!r} is reserved: it always means the highest version")
    return alias


def _non_finite(value: Any, where: str) -> str | None:
    """Where in ``value`` a NaN or infinity sits (``metrics['f1']``), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} is {value!r}"
    if isinstance(value, Mapping):
        children = ((f"{where}[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        children = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((found for path, v in children if (found := _non_finite(v, path))), None)


def _jsonable(what: str, value: Any) -> None:
    found = _non_finite(value, what)
    if found:
        raise RegistryError(
            f"{found}: a manifest is standard JSON, which has no NaN or Infinity; "
            "leave the value out or record it as null"
        )
    try:
        json.dumps(value, allow_nan=False)
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


def _parse_event(raw: bytes) -> dict[str, Any]:
    """One audit line as an event; ValueError saying why it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})") from None
    try:
        event = _loads(text)
    except ValueError as err:
        raise ValueError(f"not JSON ({err})") from None
    if not isinstance(event, dict):
        raise ValueError(f"not a JSON object ({text[:40]!r})")
    kind = event.get("event")
    if not isinstance(kind, str):
        raise ValueError(f"a JSON object with no 'event' name ({text[:40]!r})")
    if kind == "publish":
        ok = _is_int(event.get("version"))
    elif kind in ("promote", "rollback"):
        ok = (
            isinstance(event.get("alias"), str)
            and _is_int(event.get("to"))
            and (event.get("from") is None or _is_int(event.get("from")))
        )
    else:
        ok = True
    if not ok:
        raise ValueError(f"malformed {kind} event ({text[:60]!r})")
    return event


def _unapplied_moves(events: list[tuple[int, dict[str, Any]]]) -> set[int]:
    """Lines of moves that a ``recover`` record says never reached aliases.json."""
    return {e["move_line"] for _, e in events if e["event"] == "recover" and _is_int(e.get("move_line"))}


def _last_moves(events: list[tuple[int, dict[str, Any]]]) -> dict[str, tuple[int, dict[str, Any]]]:
    """The last move that took effect, per alias: (line, event)."""
    unapplied = _unapplied_moves(events)
    last: dict[str, tuple[int, dict[str, Any]]] = {}
    for lineno, event in events:
        if event["event"] in ("promote", "rollback") and lineno not in unapplied:
            last[event["alias"]] = (lineno, event)
    return last


def _alias_history(events: list[tuple[int, dict[str, Any]]], alias: str) -> list[int]:
    """Versions ``alias`` held before its current one, oldest first, replaying promotes and rollbacks.

    ``events`` are (line, event) pairs; moves that never reached aliases.json are left out.
    """
    unapplied = _unapplied_moves(events)
    stack: list[int] = []
    for lineno, event in events:
        if event.get("alias") != alias or lineno in unapplied:
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
        try:
            self.fs, root = url_to_fs(self.uri)
        except (ValueError, ImportError) as err:  # "Protocol not known: foo", "Install s3fs to access S3"
            raise RegistryError(f"registry {self.uri!r}: cannot open it ({err})") from None
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.lock_timeout = lock_timeout
        self.stale_lock_s = stale_lock_s
        if self.fs.isfile(self.root):
            raise RegistryError(
                f"registry {self.uri} is a file, not a folder: pass the folder that holds the adapters"
            )

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
            if (
                entry["type"] == "directory"
                and _NAME_RE.match(base)
                and len(base) <= NAME_MAX
                and self.versions(base)
            ):
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

    def _manifest(self, name: str, version: int) -> Manifest:
        """The manifest of an existing version folder; _ManifestIssue when it cannot be trusted."""
        raw = self.fs.cat_file(self._p(name, "versions", str(version), MANIFEST))
        manifest = Manifest.from_json(raw)
        if (manifest.name, manifest.version) != (name, version):
            raise _ManifestIssue(f"describes {manifest.name}@{manifest.version}")
        return manifest

    def get(self, name: str, version: int) -> AdapterVersion:
        """Version ``version`` of ``name``; RegistryError if it does not exist."""
        _check_name(name)
        _check_version(name, version)
        folder = self._p(name, "versions", str(version))
        try:
            manifest = self._manifest(name, version)
        except FileNotFoundError:
            self._require(name)
            raise RegistryError(
                f"{name}@{version} does not exist (versions: {self.versions(name)})"
            ) from None
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
        path = self._p(_check_name(name), ALIASES_FILE)
        try:
            raw = self.fs.cat_file(path)
        except FileNotFoundError:
            return {}
        try:
            data = _loads(raw)
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

    def _read_audit(self, name: str) -> tuple[list[tuple[int, dict[str, Any]]], list[AuditDamage]]:
        """(line number, event) for every readable line of the audit log, and the lines that are not."""
        try:
            raw = self.fs.cat_file(self._p(_check_name(name), AUDIT_FILE))
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
                issue = f"torn: {len(line)} bytes with no end of line, cut short while being written" if torn else str(err)
                damage.append(AuditDamage(lineno, issue, torn, hashlib.sha256(line).hexdigest()))
        recorded = {
            (e.get("line"), e.get("sha256")): lineno for lineno, e in events if e["event"] == "recover"
        }
        return events, [replace(d, recorded_by=recorded.get((d.line, d.sha256))) for d in damage]

    def audit(self, name: str) -> list[dict[str, Any]]:
        """Every recorded publish, promote, rollback and recover of ``name``, oldest first.

        Lines that hold no event (cut short by a crash, edited by hand) are skipped here; they are
        listed by :meth:`audit_damage`, reported by :meth:`verify`, and make :meth:`rollback`
        refuse unless a ``recover`` record accounts for them.
        """
        return [event for _, event in self._read_audit(name)[0]]

    def audit_damage(self, name: str) -> list[AuditDamage]:
        """The lines of ``name``'s audit log that hold no readable event."""
        return self._read_audit(name)[1]

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
        _check_name(name)
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

    @contextmanager
    def _write_errors(self, action: str, name: str) -> Iterator[None]:
        """Turn what the filesystem refuses (read-only store, full disk, a file in the way) into a message."""
        try:
            yield
        except OSError as err:
            where = f": {err.filename}" if getattr(err, "filename", None) else ""
            raise RegistryError(
                f"cannot {action} {name} in registry {self.uri}: {err.strerror or err}{where}"
            ) from err

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

    def _dead_leftovers(self, name: str) -> list[Path]:
        """Staging folders and alias temp files that no live writer owns (local stores; caller holds the lock)."""
        folder = Path(self._p(name))
        if not self.is_local or not folder.is_dir():
            return []
        host = socket.gethostname()
        dead = []
        for staging in folder.glob(".staging-*"):
            if (staging / MANIFEST).exists():
                # The manifest is written under the lock, which we hold: its writer died after it.
                dead.append(staging)
                continue
            try:
                owner = json.loads((staging / ".owner").read_text())
                stale = owner.get("host") == host and not _pid_alive(int(owner["pid"]))
            except (OSError, ValueError, KeyError, TypeError):
                # No owner record yet may mean it is being created right now.
                try:
                    stale = time.time() - staging.stat().st_mtime > _ORPHAN_STAGING_S
                except OSError:
                    continue
            if stale:
                dead.append(staging)
        # aliases.json is only replaced under the lock, so a temp file seen now belongs to a dead writer.
        dead += folder.glob(f"{ALIASES_FILE}.*.tmp")
        return sorted(dead)

    def _recover(self, name: str) -> list[dict[str, Any]]:
        """Put right what killed writers left, record each repair in the audit log; return the records.

        The caller holds the lock. Repairs: a torn last audit line gets its end of line and a
        ``recover`` record (readers then skip it); dead staging folders and alias temp files are
        removed; a version whose publish died before its audit line gets that line, from its
        manifest, marked ``recovered``; a move whose writer died after its audit line but before
        aliases.json changed gets a record saying it did not take effect (rollback then skips it).
        """
        now, actor = _now(), _whoami()
        records: list[dict[str, Any]] = []
        events, damage = self._read_audit(name)
        for d in damage:
            if d.torn and d.recorded_by is None:
                records.append(
                    {"event": "recover", "issue": "torn audit line skipped: a write was cut short",
                     "line": d.line, "sha256": d.sha256, "at": now, "actor": actor}
                )
        for leftover in self._dead_leftovers(name):
            if leftover.is_dir():
                shutil.rmtree(leftover)
                issue = "removed the staging folder of an interrupted publish"
            else:
                leftover.unlink()
                issue = "removed the temporary aliases file of an interrupted promote or rollback"
            records.append({"event": "recover", "issue": issue, "folder": leftover.name, "at": now, "actor": actor})
        published = {e["version"] for _, e in events if e["event"] == "publish"}
        for number in self.versions(name):
            if number in published:
                continue
            record: dict[str, Any] = {"event": "publish", "version": number}
            try:
                m = self._manifest(name, number)
                record.update(at=m.created_at, actor=m.created_by, note=m.note)
                if m.sealed:
                    record["manifest_sha256"] = m.content_sha256()
            except (_ManifestIssue, FileNotFoundError):
                pass  # verify names the manifest; the version still gets its publish record
            record["recovered"] = f"the publish was interrupted before its audit line; recorded {now} by {actor}"
            records.append(record)
        for alias, lineno, _ in self._moves_not_applied(name, events):
            records.append(
                {"event": "recover", "issue": "move not applied: aliases.json does not show it (its writer died first, or the file was edited)",
                 "move_line": lineno, "alias": alias, "at": now, "actor": actor}
            )
        if records:
            self._append_audit(name, records)
        return records

    def _moves_not_applied(
        self, name: str, events: list[tuple[int, dict[str, Any]]]
    ) -> list[tuple[str, int, int | None]]:
        """(alias, line, where aliases.json has it) for last moves that aliases.json does not show.

        A promote or rollback appends its audit line, then replaces aliases.json; a crash between
        the two leaves a recorded move that did not happen. An unreadable aliases.json is left to
        verify and to the next promote, which refuses it by name.
        """
        try:
            aliases = self.aliases(name)
        except RegistryError:
            return []
        return [
            (alias, lineno, aliases.get(alias))
            for alias, (lineno, event) in sorted(_last_moves(events).items())
            if aliases.get(alias) != event["to"]
        ]

    def recover(self, name: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Run the repairs every write starts with (see :meth:`_recover`) now; the records, by adapter.

        What to run after a crash when no publish, promote or rollback is due, so that ``verify``
        passes again.
        """
        names = [_check_name(name)] if name is not None else self.names()
        if name is not None:
            self._require(name)
        done = {}
        for adapter in names:
            with self._write_errors("recover", adapter), self._lock(adapter):
                done[adapter] = self._recover(adapter)
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
                self._recover(name)
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
            self._recover(name)
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
        _check_name(name)
        _check_alias(alias)
        if not reason or not str(reason).strip():
            raise RegistryError("a promotion needs a reason: it is kept in the audit log")
        self._require(name)
        with self._write_errors("promote", name), self._lock(name):
            self._recover(name)
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
        with self._write_errors("roll back", name), self._lock(name):
            self._recover(name)
            return self._move_alias(name, alias, self.rollback_target(name, alias), "rollback", reason, actor)

    def rollback_target(self, name: str, alias: str = "production") -> int:
        """The version :meth:`rollback` would move ``alias`` to; RegistryError when there is none.

        What a confirmation shows before a rollback ("task@production: 4 -> 3"). A line of the
        audit log that holds no event and that no ``recover`` record accounts for may have been
        a move of this alias, so the history cannot be trusted: that is an error naming the line.
        A torn last line is not: it is recorded by the rollback's own recovery first.
        """
        _check_name(name)
        _check_alias(alias)
        self._require(name)
        events, damage = self._read_audit(name)
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
        self._append_audit(name, [event])
        aliases[alias] = target
        self._write_aliases(name, aliases)
        return event

    # ----------------------------------------------------------------- checking

    def _require_store(self) -> None:
        if not self.fs.isdir(self.root):
            raise RegistryError(f"registry {self.uri} does not exist: nothing to verify (is the path right?)")

    def verify(self, name: str | None = None) -> list[Problem]:
        """Re-hash every file and manifest of every version (of ``name``, or of all adapters); [] when intact.

        Also checks each manifest against its publish record, the aliases, the audit log (a line
        that holds no event and is not accounted for by a ``recover`` record), and the entries of
        ``versions/``. A store that does not exist or holds no version is an error, not a pass.
        """
        self._require_store()
        if name is not None:
            self._require(_check_name(name))
            names = [name]
        else:
            names = self.names()
            if not names:
                raise RegistryError(f"registry {self.uri} holds no adapter version: nothing to verify")
        problems: list[Problem] = []
        for adapter in names:
            events, damage = self._read_audit(adapter)
            publish_records: dict[int, list[tuple[int, str | None]]] = {}
            for lineno, e in events:
                if e["event"] == "publish":
                    publish_records.setdefault(e["version"], []).append((lineno, e.get("manifest_sha256")))
            for number in self.versions(adapter):
                try:
                    manifest = self._manifest(adapter, number)
                except _ManifestIssue as err:
                    problems.append(Problem(adapter, number, MANIFEST, str(err)))
                    continue
                folder = self._p(adapter, "versions", str(number))
                problems += _check_files(self.fs, folder, manifest, adapter, number)
                problems += self._check_publish_record(adapter, manifest, publish_records.get(number, []))
            for stray in self._stray_versions(adapter):
                problems.append(
                    Problem(adapter, None, f"versions/{stray}",
                            "not a version folder (those are named 1, 2, 3, ...); move it out of the store")
                )
            try:
                aliases = self.aliases(adapter)
            except RegistryError as err:
                problems.append(Problem(adapter, None, ALIASES_FILE, str(err)))
                aliases = {}
            visible = set(self.versions(adapter))
            for alias, target in sorted(aliases.items()):
                if target not in visible:
                    problems.append(
                        Problem(
                            adapter,
                            None,
                            ALIASES_FILE,
                            f"alias {alias!r} points at version {target}, which does not exist",
                        )
                    )
            for alias, lineno, now_at in self._moves_not_applied(adapter, events):
                problems.append(
                    Problem(
                        adapter, None, ALIASES_FILE,
                        f"alias {alias!r} is at {now_at if now_at is not None else 'nothing'} but its last move "
                        f"({AUDIT_FILE} line {lineno}) does not show there: its writer died in between; the next "
                        f"write, or `modft registry recover {adapter}`, records that it did not take effect",
                    )
                )
            for d in damage:
                if d.recorded_by is None:
                    hint = (
                        f"; the next write, or `modft registry recover {adapter}`, records and skips it"
                        if d.torn
                        else "; fix or delete that line by hand"
                    )
                    problems.append(Problem(adapter, None, AUDIT_FILE, f"{d}{hint}"))
        return problems

    @staticmethod
    def _check_publish_record(
        name: str, manifest: Manifest, records: list[tuple[int, str | None]]
    ) -> list[Problem]:
        if not records:
            return [
                Problem(
                    name, manifest.version, AUDIT_FILE,
                    "no publish record: the publish was interrupted after its version appeared; "
                    f"the next write, or `modft registry recover {name}`, records it",
                )
            ]
        sealed = [(lineno, sha) for lineno, sha in records if sha]
        actual = manifest.content_sha256()
        if manifest.sealed and sealed and all(sha != actual for _, sha in sealed):
            lineno, sha = sealed[-1]
            return [
                Problem(
                    name, manifest.version, MANIFEST,
                    f"not the manifest recorded when it was published ({AUDIT_FILE} line {lineno}: "
                    f"sha256 {sha[:16]}..., now {actual[:16]}...)",
                )
            ]
        return []

    def verify_notes(self, name: str | None = None) -> list[str]:
        """What :meth:`verify` accepts but a person should know: recovered audit lines, unsealed manifests."""
        notes = []
        for adapter in [name] if name is not None else self.names():
            for d in self.audit_damage(adapter):
                if d.recorded_by is not None:
                    notes.append(f"{adapter}: {AUDIT_FILE}: {d}; skipped (recorded by line {d.recorded_by})")
            for number in self.versions(adapter):
                try:
                    manifest = self._manifest(adapter, number)
                except _ManifestIssue:
                    continue
                if not manifest.sealed:
                    notes.append(
                        f"{adapter}@{number}: {MANIFEST}: format {manifest.format}, written before manifests "
                        "carried their own sha256: its base, parent, params and metrics are not checked"
                    )
        return notes

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
                    # Shown, not skipped: the version is there; verify says what is wrong with it.
                    rows.append([name, str(number), aliases, "?", "?", "(manifest does not verify)", "?"])
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
            exists = "" if self.fs.isdir(self.root) else " (no folder yet)"
            return f"registry {self.uri} is empty{exists}"
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
        events, damage = self._read_audit(v.name)
        moves = [e for _, e in events if e["event"] in ("promote", "rollback")]
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
        for d in damage:
            text += f"\nnote: {AUDIT_FILE} {d}; skipped" + (
                f" (recorded by line {d.recorded_by})" if d.recorded_by else ": run `modft registry verify`"
            )
        return text


def _short_time(iso: Any) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):  # a hand-edited log may hold anything here
        return str(iso)


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
    """Add ``registry {list,show,publish,promote,rollback,verify,recover}`` to an argparse subparsers object."""
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
        help="base config.json (or its folder); default: the base of the run folder holding DIR "
        "(vocabulary extension included), else <base_model_name_or_path>/config.json",
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
    p = sub.add_parser(
        "recover", parents=[common], help="record and clean up what a killed publish, promote or rollback left"
    )
    p.add_argument("name", nargs="?", metavar="NAME")
    reg.set_defaults(func=registry_main)
    return reg


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = _loads(text)
    except json.JSONDecodeError as err:
        raise RegistryError(f"{option}: not JSON ({err})") from None
    except ValueError as err:  # NaN, Infinity
        raise RegistryError(f"{option}: {err}") from None
    if not isinstance(value, dict):
        raise RegistryError(f"{option}: expected a JSON object, got {type(value).__name__}")
    return value


# A run folder: what `modft run` and the notebooks write (config.prepare_run_dir). Adapters sit
# at <run>/adapters/<name>/adapter, so the run is a few levels up, never more.
RUN_PROFILE = "profile.resolved.json"
_RUN_DEPTH = 4


def _run_folder(adapter_dir: Path) -> Path | None:
    """The run folder an adapter was saved in, or None when it is not inside one."""
    for parent in list(adapter_dir.resolve().parents)[:_RUN_DEPTH]:
        if (parent / RUN_PROFILE).is_file():
            return parent
    return None


def _run_base_identity(run: Path, base_path: str, revision: str | None) -> BaseIdentity:
    """The base an adapter of run folder ``run`` was trained on: the run's model, with its vocabulary extension.

    Notebook 01 may extend the vocabulary (``<run>/tokenizer/vocab_extension.json``); every later
    load in the run applies it, which changes the config (more rows, the extension's hash). The
    model is rebuilt here on the meta device, so this costs no memory, and extended exactly as
    ``modeling.load_base`` extends it.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .vocab import VocabError, load_decision

    try:
        profile = _loads((run / RUN_PROFILE).read_text(encoding="utf-8"))
        model_spec = profile["model"]
        model_id, revision = str(model_spec["id"]), revision or model_spec.get("revision")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RegistryError(f"{run / RUN_PROFILE}: cannot read the run's model from it ({err})") from None
    try:
        ext = load_decision(run)
    except VocabError as err:
        raise RegistryError(f"cannot tell which base this adapter was trained on: {err}") from None
    try:
        config = AutoConfig.from_pretrained(base_path, revision=revision)
    except Exception as err:  # noqa: BLE001 - missing folder, offline hub, unknown architecture
        raise RegistryError(
            f"cannot read the config of base {base_path!r} (base_model_name_or_path of the adapter, in run "
            f"{run}): {str(err).splitlines()[0]}; pass --base-config"
        ) from None
    if ext is None or not ext.words:
        return BaseIdentity(model_id=model_id, revision=revision, config_sha256=config_sha256(config))
    from .vocab import extend_model

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    extend_model(model, ext)
    return base_identity(model, model_id=model_id, revision=revision)


def _base_record(adapter_dir: Path) -> BaseIdentity | None:
    """The base identity ``adapters.save_adapter`` recorded beside the adapter, or None."""
    path = adapter_dir / BASE_RECORD
    if not path.is_file():
        return None
    try:
        raw = _loads(path.read_text(encoding="utf-8"))
        return BaseIdentity(str(raw["model_id"]), raw["revision"], str(raw["config_sha256"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RegistryError(f"{path}: unreadable base record ({err}); pass --base-config") from None


def _cli_base(args: argparse.Namespace, adapter_config: Mapping[str, Any]) -> tuple[BaseIdentity, str]:
    """The identity of the base the adapter was trained on, and where it came from (for the message).

    Sources, first wins: --base-config, the run folder holding the adapter, the adapter's own
    base record. Every source present must name the same base config, or the publish is refused;
    with none, ``<base_model_name_or_path>/config.json`` is taken (an adapter trained elsewhere).
    """
    adapter_dir = Path(args.adapter_dir)
    base_path = str(adapter_config.get("base_model_name_or_path") or "")
    run = _run_folder(adapter_dir)
    sources: list[tuple[str, BaseIdentity]] = []
    if args.base_config is not None:
        sources.append((f"--base-config {args.base_config}", base_identity_from_config_file(
            args.base_config, model_id=base_path, revision=args.base_revision)))
    if run is not None:
        sources.append((f"run folder {run}", _run_base_identity(run, base_path, args.base_revision)))
    record = _base_record(adapter_dir)
    if record is not None:
        sources.append((str(adapter_dir / BASE_RECORD), record))
    if not sources:
        guess = Path(base_path) / "config.json" if base_path else None
        if guess is None or not guess.is_file():
            raise RegistryError(
                f"--base-config is needed: base_model_name_or_path {base_path!r} in "
                f"{adapter_dir / CONFIG_FILE} is not a local folder with a config.json, and {adapter_dir} "
                f"has no {BASE_RECORD} and is not inside a run folder"
            )
        sources.append((str(guess), base_identity_from_config_file(guess, model_id=base_path, revision=args.base_revision)))
    (label, identity), *others = sources
    if any(other.config_sha256 != identity.config_sha256 for _, other in others):
        width = max(len(src) for src, _ in sources) + 1
        raise RegistryError(
            f"{label} is not the base this adapter was trained on:\n"
            + "\n".join(f"  {src + ':':<{width}} {base}" for src, base in sources)
        )
    return identity, label


def _cli_publish(reg: Registry, args: argparse.Namespace) -> int:
    params = _json_object(args.params, "--params")
    metrics = _json_object(args.metrics, "--metrics")
    _check_name(args.name)
    adapter_config = check_adapter_dir(args.adapter_dir)
    base, source = _cli_base(args, adapter_config)
    v = reg.publish(
        args.name,
        args.adapter_dir,
        base=base,
        parent=args.parent,
        params=params,
        data_fingerprint=args.data_fingerprint,
        metrics=metrics,
        note=args.note,
    )
    if v.reused:
        print(
            f"{v.ref} already holds these files (same base and parent): nothing published; "
            f"its manifest keeps what it was published with ({v.manifest.created_at}, note {v.manifest.note!r})"
        )
    else:
        print(
            f"published {v.ref} at {v.uri} (weights sha256 {v.manifest.files[WEIGHTS_FILE][:12]}; "
            f"base from {source})"
        )
    return 0


def _cli_verify(reg: Registry, name: str | None) -> int:
    problems = reg.verify(name)
    for problem in problems:
        print(f"MISMATCH {problem}")
    for note in reg.verify_notes(name):
        print(f"note: {note}")
    if problems:
        print(f"{len(problems)} problem(s) in registry {reg.uri}", file=sys.stderr)
        return 1
    names = [name] if name else reg.names()
    count = sum(len(reg.versions(n)) for n in names)
    print(f"ok: {count} version(s) of {len(names)} adapter(s) verified in {reg.uri}")
    return 0


def _cli_recover(reg: Registry, name: str | None) -> int:
    done = reg.recover(name)
    for adapter, records in done.items():
        for r in records:
            if r["event"] == "publish":
                print(f"{adapter}: recorded the interrupted publish of {adapter}@{r['version']}")
            elif "move_line" in r:
                print(f"{adapter}: recorded that the move of {r['alias']!r} at audit line {r['move_line']} did not take effect")
            elif "line" in r:
                print(f"{adapter}: recorded torn audit line {r['line']} (skipped from now on)")
            else:
                print(f"{adapter}: {r['issue']} ({r['folder']})")
    if not any(done.values()):
        print(f"nothing to recover in registry {reg.uri}")
    return 0


def registry_main(args: argparse.Namespace) -> int:
    """Run one ``registry`` subcommand parsed by :func:`add_registry_commands`; return the exit code."""
    try:
        reg = Registry(args.registry)
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
            return _cli_verify(reg, args.name)
        elif command == "recover":
            return _cli_recover(reg, args.name)
        else:
            raise RegistryError(f"unknown registry command {command!r}")
    except RegistryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a read the filesystem refused; writes are turned into RegistryError
        print(f"error: registry {args.registry}: {err}", file=sys.stderr)
        return 1
    return 0


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
    "add_registry_commands",
    "base_identity",
    "base_identity_from_config_file",
    "check_adapter_dir",
    "config_sha256",
    "load_adapter_into",
    "registry_main",
    "verify_version",
]

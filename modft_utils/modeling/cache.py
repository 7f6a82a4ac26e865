"""Content-keyed cache folders: hashing files, and building a folder once, atomically.

Both the tiny base and converted GGUF checkpoints are cached under ``cache_dir`` in folders named
after what they were built from; :func:`build_once` makes a half-built folder impossible to mistake
for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_once(folder: Path, marker: str, build) -> dict[str, Any]:
    """``folder`` built by ``build(staging_folder)`` unless it is complete already; its marker's JSON.

    ``build`` writes into a staging folder beside ``folder`` (``marker`` last), which is then renamed
    into place: a build that dies halfway is never mistaken for a finished one, and of two
    concurrent builders the loser's copy is discarded.
    """
    if not (folder / marker).is_file():
        staging = folder.parent / f".staging-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            build(staging)
            try:
                os.rename(staging, folder)
            except OSError:
                if not (folder / marker).is_file():  # not a concurrent builder winning the race
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return json.loads((folder / marker).read_text(encoding="utf-8"))

"""Which process this is when a run is launched data-parallel with Accelerate.

``accelerate launch`` (or ``torchrun``) starts one process per device and sets ``RANK`` and
``WORLD_SIZE``; papermill's kernels inherit them, so the Trainer inside a notebook joins the same
process group. Everything that writes shared files (metrics, adapters, executed notebooks) asks
here whether it is the process that should.
"""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """True in a single-process run and in rank 0 of a data-parallel one."""
    return rank() == 0

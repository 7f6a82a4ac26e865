"""The user's outputs/ is not the suite's: a snapshot before the run, compared after it.

Every test that runs a profile points its store, cache and runs at a temporary folder
(``isolated`` in conftest.py). A test that forgets would publish into the user's registry or build
into their cache after `make run`; conftest.py fails the whole run when outputs/ changed, naming
what changed, so the next slip is caught the first time it happens.
"""

from __future__ import annotations

from pathlib import Path

Snapshot = dict[str, tuple[int, int]]  # path relative to outputs/ -> (size, mtime in ns)


def snapshot(outputs: Path) -> Snapshot:
    """Every file and link under ``outputs`` (links not followed), with its size and modification time."""
    if not outputs.exists():
        return {}
    out: Snapshot = {}
    for path in sorted(outputs.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        st = path.lstat()
        out[path.relative_to(outputs).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def changes(before: Snapshot, after: Snapshot, limit: int = 10) -> list[str]:
    """What a run did to outputs/: added, removed and modified files, at most ``limit`` named."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    modified = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    lines = [f"added {k}" for k in added] + [f"removed {k}" for k in removed] + [f"modified {k}" for k in modified]
    more = len(lines) - limit
    return lines[:limit] + ([f"... and {more} more"] if more > 0 else [])

"""Results of a run: one flat ``metrics.json`` per run folder, written by every notebook.

Keys are dotted (``dapt.ppl_domain``); each notebook adds its own and keeps the others. Writes go
to a temporary file renamed over the old one, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modft_utils.distributed import is_main

METRICS_FILE = "metrics.json"


def _plain(value: Any) -> Any:
    """JSON-safe: tensors and numpy scalars become Python numbers; NaN/inf are refused."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"refusing to record a non-finite number: {value}")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def record(run_dir: str | os.PathLike, values: Mapping[str, Any], *, show: bool = True) -> dict[str, Any]:
    """Merge ``values`` into the run's ``metrics.json`` and show them; returns what was written."""

    new = {k: _plain(v) for k, v in values.items()}
    if not is_main():  # data-parallel ranks compute the same figures; rank 0 writes them
        return new
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    metrics = load_metrics(run)
    metrics.update(new)
    fd, tmp = tempfile.mkstemp(dir=run, prefix=".metrics-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(dict(sorted(metrics.items())), fh, indent=2)
        fh.write("\n")
    os.replace(tmp, run / METRICS_FILE)
    if show:
        print(metrics_table(new))
    return new


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def metrics_table(metrics: Mapping[str, Any], keys: list[str] | None = None) -> str:
    """A two-column text table of metrics (nested values are left out)."""
    keys = keys or [k for k, v in metrics.items() if not isinstance(v, (dict, list))]
    if not keys:
        return "(no metrics)"
    width = max(len(k) for k in keys)
    return "\n".join(f"{k:<{width}}  {_fmt(metrics[k])}" for k in keys)


def summary(values: Mapping[str, Any], digits: int = 2) -> None:
    """Print values rounded to ``digits`` decimals: the lines nbval compares across machines."""
    for key, value in values.items():
        if isinstance(value, float):
            value = round(value, digits)
        print(f"{key}: {value}")

"""Headless runs: the numbered notebooks executed in order by papermill into one run folder.

Every notebook gets the same three parameters (profile, run_dir, overrides), so a run is the
profile plus its overrides, and the executed notebooks beside ``metrics.json`` show how each
number was produced.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modft_utils import data, modeling, record, runs
from modft_utils.config import Profile, load_profile, new_run_id
from modft_utils.distributed import rank, world_size
from modft_utils.errors import ModftError

NOTEBOOKS = ("01_data_prep", "02_dapt", "03_sft", "04_compose", "05_rollback")


def notebooks_dir() -> Path:
    """The numbered notebooks: beside the package in a checkout, or MODFT_NOTEBOOKS."""
    env = os.environ.get("MODFT_NOTEBOOKS")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "notebooks"
    if not (path / f"{NOTEBOOKS[0]}.ipynb").is_file():
        raise FileNotFoundError(f"notebooks not found in {path}; set MODFT_NOTEBOOKS to the notebooks/ folder")
    return path


class RunError(ModftError, ValueError):
    """A run that cannot start as asked (unknown notebook, a notebook that cannot run in parallel)."""


class NotebookFailed(ModftError, RuntimeError):
    def __init__(self, notebook: str, executed: Path, reason: str):
        super().__init__(f"notebook {notebook} failed: {reason}\n  executed copy with the error: {executed}")
        self.notebook, self.executed, self.reason = notebook, executed, reason


@dataclass
class RunResult:
    run_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def select(names: list[str] | None) -> list[str]:
    """Notebook names from prefixes: ``["01", "03_sft"]`` -> the matching numbered notebooks."""
    if not names:
        return list(NOTEBOOKS)
    chosen = []
    for name in names:
        hits = [nb for nb in NOTEBOOKS if nb == name or nb.startswith(name)]
        if len(hits) != 1:
            raise RunError(f"notebook {name!r} matches {hits or 'none'} of {list(NOTEBOOKS)}")
        chosen.append(hits[0])
    return [nb for nb in NOTEBOOKS if nb in chosen]


# The real-weights profile at a micro size: the paths `make run` takes (GGUF conversion, 4-bit loading,
# training, composition, exports, the drills), a few steps each. Its numbers are invariants, not quality.
MICRO = {
    "data.sft_eval_size": 10,
    "dapt.eval_blocks": 4,
    "dapt.train.max_steps": 2,
    "dapt.train.batch_size": 2,
    "dapt.train.eval_steps": 2,
    "dapt.train.warmup_steps": 0,
    "dapt.train.logging_steps": 1,
    "sft.train.max_steps": 6,
    "sft.train.batch_size": 2,
    "sft.train.eval_steps": 6,
    "sft.train.warmup_steps": 0,
    "sft.train.learning_rate": 1.0e-3,
    "sft.train.logging_steps": 1,
    "sft.max_new_tokens": 8,
    "compose.eval_examples": 4,
    "compose.closed_book_examples": 4,  # 64 by default: 4 stacks x 64 closed-book generations in notebook 04
    "compose.switch_repeats": 20,
    "rollback.candidate_steps": 2,
    "rollback.probe_examples": 2,
}


def run_notebooks(
    profile_path: str | os.PathLike,
    *,
    run_dir: str | os.PathLike | None = None,
    notebooks: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    log_output: bool = False,
    progress: bool = True,
    echo=print,
) -> RunResult:
    """Validate the profile, then execute the chosen notebooks in order into the run folder.

    The profile is checked before any kernel starts; a failing notebook stops the run, and its
    executed copy (with the traceback) stays in ``run_dir/notebooks``.
    """
    import papermill as pm

    overrides = dict(overrides or {})
    profile: Profile = load_profile(profile_path, overrides)
    modeling.preflight(profile)
    data.validate_inputs(profile)
    chosen = select(notebooks)

    parallel_ok = {"02_dapt", "03_sft"}
    if world_size() > 1 and set(chosen) - parallel_ok:
        raise RunError(
            f"data-parallel launch ({world_size()} processes) runs the training notebooks 02 and 03 only; "
            f"{sorted(set(chosen) - parallel_ok)} write shared files: run them in one process, e.g. "
            "`modft run --notebooks 01` first, then `accelerate launch -m modft_utils.cli run --notebooks 02 03 --run-dir ...`"
        )
    run = runs.folder(run_dir or profile.resolve(profile.runs_dir) / new_run_id(profile))
    if "01_data_prep" in chosen or not run.resolved_profile.is_file():
        run.create(profile)  # 01 starts the run (a folder without 01 still gets its profile: 02 then names 01)
    else:
        runs.continue_run(run, profile)  # refused here, before any kernel, when the run is another profile's
    src = notebooks_dir()
    result = RunResult(run.dir)
    params = {"profile": str(Path(profile_path).resolve()), "run_dir": str(run), "overrides": overrides}

    # Under `accelerate launch` every rank executes the notebook; each keeps its own executed copy.
    nb_dir = run.notebooks() if world_size() == 1 else run.notebooks(rank())
    nb_dir.mkdir(parents=True, exist_ok=True)
    for nb in chosen:
        out = nb_dir / f"{nb}.ipynb"
        echo(f"[modft] {nb} ...")
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(src / f"{nb}.ipynb"),
                str(out),
                parameters=params,
                cwd=str(src),
                log_output=log_output,
                progress_bar=progress,
                stdout_file=None,
            )
        except pm.PapermillExecutionError as exc:
            raise NotebookFailed(nb, out, f"{exc.ename}: {exc.evalue}") from None
        seconds = time.perf_counter() - start
        result.seconds[nb] = seconds
        echo(f"[modft] {nb} done in {seconds:.1f} s")
    record.record(run, {f"run.seconds.{nb}": round(s, 1) for nb, s in result.seconds.items()}, show=False)
    result.metrics = record.load_metrics(run)
    return result


def strip_for_baseline(path: Path) -> None:
    """Keep only outputs nbval checks (cells marked ``# NBVAL_CHECK_OUTPUT``) in a notebook.

    Other outputs (progress bars, timings, paths, widgets) change on every run and would make the
    committed notebooks noisy; execution counts stay, since nbval rejects outputs without one.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.metadata.get("tags") == []:
            del cell.metadata["tags"]
        if cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" not in cell.source:
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)  # widget state of one session: large, and not what nbval checks
    nbformat.write(nb, path)


def make_baseline(*, echo=print) -> None:
    """Re-execute the committed notebooks top to bottom with their own defaults, as nbval will,
    and keep only the checked outputs: baselines are regenerated, never edited by hand."""
    import papermill as pm

    src = notebooks_dir()
    for nb in NOTEBOOKS:
        echo(f"[modft] baseline {nb}")
        path = src / f"{nb}.ipynb"
        pm.execute_notebook(str(path), str(path), cwd=str(src), progress_bar=False)
        strip_for_baseline(path)

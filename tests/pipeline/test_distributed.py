"""Data-parallel training through the stock launcher, on CPU: two processes, one run folder.

`accelerate launch` on GPU machines and `torchrun` here both start one process per device with
RANK/WORLD_SIZE set; the papermill kernels inherit them and the Trainer joins the process group
(gloo on CPU). No distribution code of ours beyond deciding which rank writes shared files.
"""

import json
import shutil
import subprocess
import sys

import pytest

from modft_utils import runner


@pytest.mark.slow
def test_dapt_notebook_runs_data_parallel_on_two_processes(root, tmp_path, isolated):
    profile = root / "params" / "tiny.yaml"
    run = tmp_path / "run"
    small = {"dapt.train.max_steps": 4, "dapt.train.warmup_steps": 0, "dapt.train.eval_steps": 4, "dapt.eval_blocks": 8}
    runner.run_notebooks(profile, run_dir=run, notebooks=["01"], overrides={**isolated, **small}, progress=False)
    torchrun = shutil.which("torchrun", path=str(__import__("pathlib").Path(sys.executable).parent)) or "torchrun"
    proc = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "-m",
            "modft_utils.cli",
            "run",
            "--profile",
            str(profile),
            "--notebooks",
            "02",
            "--run-dir",
            str(run),
            "--quiet",
            *(arg for key, value in {**isolated, **small}.items() for arg in ("--set", f"{key}={value}")),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dapt.world_size"] == 2
    assert metrics["dapt.steps"] == 4
    assert metrics["dapt.ppl_domain"] < metrics["dapt.ppl_base"]
    for rank in (0, 1):
        assert (run / "notebooks" / f"rank{rank}" / "02_dapt.ipynb").is_file()
    adapter = run / "adapters" / "domain" / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"] or {
        "adapter_config.json",
        "adapter_model.safetensors",
    } <= {p.name for p in adapter.iterdir()}


def test_notebooks_that_write_shared_files_refuse_a_parallel_launch(root, tmp_path, isolated_args):
    env = {**__import__("os").environ, "RANK": "0", "WORLD_SIZE": "2"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "modft_utils.cli",
            "run",
            "--profile",
            str(root / "params" / "tiny.yaml"),
            "--notebooks",
            "01",
            "02",
            "--run-dir",
            str(tmp_path / "run"),
            *isolated_args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2
    assert "runs the training notebooks 02 and 03 only" in proc.stderr and "01_data_prep" in proc.stderr

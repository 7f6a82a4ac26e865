"""Runs that survive interruption: a training process killed mid-run resumes from its newest
checkpoint and ends with the same adapter as a run that was never interrupted."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import default_data_collator

from modft_utils import adapters, evaluate, modeling, upstream_fixes
from modft_utils.config import LoraSpec, TrainSpec
from modft_utils.modeling import BaseRef

# 16 steps over 24 examples in batches of 4: checkpoint-8 falls mid-way through the second epoch,
# so resuming has to restore the epoch's shuffle as well as skip the batches already seen.
STEPS, SAVE_EVERY, KILL_AFTER = 16, 4, 8

# The child trains adapter "domain" of the micro base. With "gate" its collator stops at the 11th
# batch (checkpoint-8 complete, step 9 done and about to be lost, checkpoint-12 not reached) and
# touches a marker for the parent to kill it on: the kill lands mid-run every time, whatever the speed.
_CHILD = """
import json, pathlib, sys, time
import torch
from datasets import Dataset
from transformers import default_data_collator
from modft_utils import adapters, evaluate, modeling
from modft_utils.config import LoraSpec, TrainSpec, load_profile
from modft_utils.modeling import BaseRef

profile_path, out_dir, mode, result_path = sys.argv[1:5]
steps, save_every = int(sys.argv[5]), int(sys.argv[6])
profile = load_profile(profile_path, check_paths=False)
g = torch.Generator().manual_seed(0)
ids = ((torch.randint(0, 90, (24, 1), generator=g) + torch.arange(24)) % 90 + 2).tolist()
data = Dataset.from_dict({"input_ids": ids, "labels": ids})
calls = 0

def collate(rows):
    global calls
    calls += 1
    if mode == "gate" and calls == 11:
        pathlib.Path(out_dir, "gate").write_text("blocked")
        time.sleep(120)
    return default_data_collator(rows)

model = modeling.load_base(profile, BaseRef(profile.model.id))
model = adapters.add_adapter(model, "domain", modeling.lora_config(LoraSpec(r=4, alpha=8)))
spec = TrainSpec(max_steps=steps, batch_size=4, eval_steps=steps, logging_steps=1, warmup_steps=2,
                 learning_rate=5e-2, save_steps=save_every, seed=0)
res = adapters.train_adapter(model, "domain", data, evaluate.held_out_nll(data.select(range(4))), spec, out_dir, collate,
                          progress=False, resume=(mode == "resume"))
pathlib.Path(result_path).write_text(json.dumps({"resumed_from": res.resumed_from, "steps": res.steps}))
"""


def _child(script: Path, profile, out: Path, mode: str, tag: str) -> subprocess.Popen:
    # One thread each: two children run side by side on a small machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    argv = [
        sys.executable,
        str(script),
        profile.source,
        str(out),
        mode,
        str(out.parent / f"{tag}.json"),
        str(STEPS),
        str(SAVE_EVERY),
    ]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, what: str) -> None:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{what} run failed ({proc.returncode}):\n{output[-3000:]}"


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _blocks(n=24, length=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = ((torch.randint(0, 90, (n, 1), generator=g) + torch.arange(length)) % 90 + 2).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _spec(**kw):
    base = dict(max_steps=8, batch_size=4, eval_steps=8, logging_steps=1, warmup_steps=0, learning_rate=5e-2, seed=0)
    return TrainSpec(**{**base, **kw})


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_killed_run_resumes_to_the_uninterrupted_adapter(micro_profile, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    killed.mkdir()
    # The reference run shares the machine with the run that gets killed: it only has to finish.
    reference = _child(script, micro_profile, straight, "plain", "straight")
    proc = _child(script, micro_profile, killed, "gate", "killed")
    try:
        deadline = time.monotonic() + 240
        while not (killed / "gate").exists():
            if proc.poll() is not None:
                pytest.fail(
                    f"the run to interrupt exited ({proc.returncode}) before it could be killed:\n"
                    f"{proc.stdout.read()[-3000:]}"
                )
            assert time.monotonic() < deadline, "the run to interrupt never reached step 9"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    ckpts = killed / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-4", f"checkpoint-{KILL_AFTER}"]
    assert not (killed / "adapter").exists() and not (tmp_path / "killed.json").exists()
    at_checkpoint = load_file(str(ckpts / f"checkpoint-{KILL_AFTER}" / "domain" / "adapter_model.safetensors"))

    _finish(_child(script, micro_profile, killed, "resume", "resumed"), "resumed")
    _finish(reference, "uninterrupted")

    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed == {"resumed_from": str(ckpts / f"checkpoint-{KILL_AFTER}"), "steps": STEPS}
    assert json.loads((tmp_path / "straight.json").read_text()) == {"resumed_from": None, "steps": STEPS}
    got, want = _adapter(killed), _adapter(straight)
    assert got.keys() == want.keys() and got
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    print(f"max abs diff, resumed vs uninterrupted: {_max_diff(got, want):.3g}")
    # Not a vacuous pass: the steps after the checkpoint moved the adapter far beyond the tolerance.
    assert _max_diff(want, at_checkpoint) > 1e-3


def _stack(profile):
    """Base + a frozen, non-trivial "domain" adapter + a fresh "task" adapter, as notebook 03 trains it."""
    model = modeling.load_base(profile, BaseRef(profile.model.id))
    model = adapters.add_adapter(model, "domain", modeling.lora_config(LoraSpec(r=4, alpha=8)))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B.domain" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    model = adapters.add_adapter(model, "task", modeling.lora_config(LoraSpec(r=2, alpha=4)))
    adapters.activate(model, ["domain", "task"], trainable="task")
    return model


def _train_task(model, spec, out):
    held_out = evaluate.held_out_nll(_blocks(4, seed=1))
    return adapters.train_adapter(model, "task", _blocks(), held_out, spec, out, default_data_collator, progress=False)


def test_resume_restores_only_the_adapter_being_trained(micro_profile, tmp_path):
    spec = _spec(save_steps=4)
    straight = _stack(micro_profile)
    domain = adapters.fingerprint(adapters.adapter_state(straight, "domain"))
    want = _train_task(straight, spec, tmp_path / "a")
    assert want.resumed_from is None
    # A run folder as an interruption after step 4 leaves it: only the first checkpoint.
    ckpt = tmp_path / "a" / "checkpoints" / "checkpoint-4"
    # The checkpoint holds the adapter being trained and nothing else: the frozen domain adapter is saved already.
    assert sorted(p.parent.name for p in ckpt.glob("*/adapter_model.safetensors")) == ["task"]
    at_checkpoint = load_file(str(ckpt / "task" / "adapter_model.safetensors"))
    shutil.copytree(ckpt, tmp_path / "b" / "checkpoints" / "checkpoint-4")
    model = _stack(micro_profile)
    got = _train_task(model, spec, tmp_path / "b")
    assert got.resumed_from == str(tmp_path / "b" / "checkpoints" / "checkpoint-4")
    assert got.steps == want.steps == 8 and got.frozen_unchanged == {"domain": True}
    assert adapters.fingerprint(adapters.adapter_state(model, "domain")) == domain
    a, b = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    print(f"max abs diff, resumed vs uninterrupted (task): {_max_diff(b, a):.3g}")
    assert _max_diff(a, at_checkpoint) > 1e-3


def test_no_checkpoints_when_save_steps_is_zero(micro_profile, tmp_path):
    model = modeling.load_base(micro_profile, BaseRef(micro_profile.model.id))
    model = adapters.add_adapter(model, "domain", modeling.lora_config(LoraSpec(r=4, alpha=8)))
    spec = _spec(max_steps=2, eval_steps=2, save_steps=0)
    result = adapters.train_adapter(
        model,
        "domain",
        _blocks(8),
        evaluate.held_out_nll(_blocks(4, seed=1)),
        spec,
        tmp_path,
        default_data_collator,
        progress=False,
    )
    assert result.resumed_from is None and result.steps == 2
    assert not list(tmp_path.glob("checkpoints/checkpoint-*"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("keep, kept", [(2, [4, 6]), (3, [2, 4, 6])])
def test_keep_checkpoints_bounds_what_stays_on_disk(micro_profile, tmp_path, keep, kept):
    # A calibration curve scores every checkpoint after training; the default keeps the newest two.
    model = modeling.load_base(micro_profile, BaseRef(micro_profile.model.id))
    model = adapters.add_adapter(model, "domain", modeling.lora_config(LoraSpec(r=4, alpha=8)))
    spec = _spec(max_steps=6, eval_steps=6, save_steps=2, keep_checkpoints=keep)
    adapters.train_adapter(model, "domain", _blocks(8), None, spec, tmp_path, default_data_collator, progress=False)
    steps = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoints/checkpoint-*"))
    assert steps == kept


def test_a_checkpoint_cut_short_is_not_resumed_from(tmp_path):
    # trainer_state.json is the last file the Trainer writes into a checkpoint.
    for step, complete in [(4, True), (8, False)]:
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        if complete:
            (ckpt / "trainer_state.json").write_text("{}")
    assert upstream_fixes.last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert upstream_fixes.last_complete_checkpoint(tmp_path / "missing") is None

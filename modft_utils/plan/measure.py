"""Measuring the peak memory of real QLoRA training steps on CPU, to check the planner's arithmetic.

:func:`measure_training_peak` builds a randomly initialised copy of a local base, then runs
``python -m modft_utils.plan.measure`` in a fresh process (a process's peak only rises), which loads it in
4-bit through ``modeling.load_base``, adds the adapters through :mod:`modft_utils.adapters.state` and trains a
few steps; the peak resident-memory growth over its post-import baseline is the measurement.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

from modft_utils import adapters
from modft_utils.config import Profile
from modft_utils.modeling import REPO_ROOT, BaseRef, PlanError, head_loss, load_base, lora_config, read_model_config


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _step(model, ids):
    # The loss as train_adapter takes it on packed blocks: through the chunked head where the model has one.
    head = head_loss.head_of(model)
    if head is None:
        loss = model(input_ids=ids, labels=ids).loss
    else:
        loss = head_loss.batch_loss(head, {"input_ids": ids, "labels": ids})
    loss.backward()
    return loss


def measure_in_this_process(args: dict[str, Any]) -> dict[str, Any]:
    """The measuring side, run in a fresh process (``python -m modft_utils.plan.measure ARGS_JSON``)."""
    import gc

    import bitsandbytes  # noqa: F401 - imported before the baseline on purpose, with the rest
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    torch.manual_seed(0)
    profile = Profile.model_validate_json(args["profile"])
    # Warm-up on a one-layer copy of the architecture, through the same loading and training code:
    # the first step pages in tens of MiB of library code (file-backed RSS), which is not memory the
    # training step's tensors need and which the plan does not price. Without it the code pages
    # counted as a fixed ~38 MiB on the tiny profile, whatever the batch.
    if args["warmup_base"]:
        warm = adapters.add_adapter(
            load_base(profile, BaseRef(args["warmup_base"])), "domain", lora_config(profile.dapt.lora)
        )
        warm.train()
        _step(warm, torch.randint(2, args["vocab"], (2, 16)))
        torch.optim.AdamW([p for p in warm.parameters() if p.requires_grad], lr=1e-4).step()
        del warm
        gc.collect()
    baseline = _status("VmRSS")
    baseline_file = _status("RssFile")
    try:  # reset the high-water mark so import-time peaks do not count
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    model = load_base(profile, BaseRef(args["base"]))
    after_load = _status("VmRSS")
    model = adapters.add_adapter(model, "domain", lora_config(profile.dapt.lora))
    if args["stage"] == "sft":
        model = adapters.add_adapter(model, "task", lora_config(profile.sft.lora))
        adapters.activate(model, ["domain", "task"], trainable="task")
    else:
        adapters.activate(model, ["domain"], trainable="domain")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if args["checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(2, args["vocab"], (args["batch"], args["seq"]))
    peaks, losses = [], []
    for _ in range(args["steps"]):
        loss = _step(model, ids)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        peaks.append(_status("VmHWM"))
    return {
        "baseline_rss": baseline,
        "after_load_rss": after_load,
        "hwm": _status("VmHWM"),
        "hwm_per_step": peaks,
        "hwm_reset": reset,
        "trainable_params": sum(p.numel() for p in trainable),
        "losses": losses,
        "threads": torch.get_num_threads(),
        "library_pages_during_steps": _status("RssFile") - baseline_file,
    }


def measure_training_peak(
    profile: Profile,
    *,
    stage: Literal["dapt", "sft"] = "sft",
    steps: int = 2,
    checkpointing: bool | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    malloc_mmap_threshold: int | None = 65536,
    warmup: bool = True,
    timeout: float = 600,
) -> dict[str, Any]:
    """Peak resident-memory growth of real QLoRA training steps of a local base, on CPU.

    A fresh Python process imports torch/transformers/peft/bitsandbytes, takes its resident memory
    as the baseline (and resets the high-water mark), loads the base in 4-bit through
    ``modeling.load_base``, adds the adapters (for SFT the frozen domain adapter too), and runs
    ``steps`` AdamW steps at the profile's batch and sequence length. ``measured_bytes`` is the
    high-water mark (VmHWM) minus the baseline. A subprocess because a process's peak only rises.
    Only for bases that need no download (``tiny``, a local folder or a local GGUF file): the weights
    are random, which changes no size.

    ``malloc_mmap_threshold`` (glibc's ``MALLOC_MMAP_THRESHOLD_``) makes every allocation of that
    many bytes or more its own mapping, returned to the system when freed, so resident memory follows
    the live tensors. With glibc's default (None) freed blocks stay in the heap and are reused
    imperfectly: measured on the tiny profile, the peak then grows from step to step and ends near
    twice the live-tensor peak, a property of the CPU allocator, not of the training step.

    ``warmup`` first trains one step of a one-layer copy of the architecture, so the library code
    the first step pages in (about 30 MiB of file-backed RSS here) is resident before the baseline:
    it is the process's, not the step's. ``library_pages_during_steps`` reports what still came in.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if not Path("/proc/self/status").exists():
        raise PlanError("measure_training_peak reads /proc/self/status and needs Linux")
    spec = profile.model
    if spec.id != "tiny" and not spec.gguf_file and not profile.resolve(spec.id).exists():
        raise PlanError(f"measure_training_peak builds the base locally; {spec.id!r} is not a local base")
    config = read_model_config(profile)
    section = profile.dapt if stage == "dapt" else profile.sft
    batch = batch_size or section.train.batch_size
    seq = seq_len or (profile.data.block_size if stage == "dapt" else profile.data.max_sft_tokens)
    ckpt = section.train.gradient_checkpointing if checkpointing is None else checkpointing
    with tempfile.TemporaryDirectory(prefix="modft-measure-") as tmp:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(Path(tmp) / "base")
        if warmup:
            one_layer = copy.deepcopy(config)
            one_layer.num_hidden_layers = 1
            AutoModelForCausalLM.from_config(one_layer).save_pretrained(Path(tmp) / "warmup")
        args = {
            "profile": profile.model_dump_json(),
            "base": str(Path(tmp) / "base"),
            "stage": stage,
            "batch": batch,
            "seq": seq,
            "steps": steps,
            "checkpointing": ckpt,
            "vocab": config.vocab_size,
            "warmup_base": str(Path(tmp) / "warmup") if warmup else None,
        }
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
        if malloc_mmap_threshold is not None:
            env["MALLOC_MMAP_THRESHOLD_"] = str(malloc_mmap_threshold)
        proc = subprocess.run(
            [sys.executable, "-m", "modft_utils.plan.measure", json.dumps(args)],
            cwd=str(REPO_ROOT),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"training-step measurement failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(
        stage=stage,
        batch=batch,
        seq=seq,
        checkpointing=ckpt,
        steps=steps,
        malloc_mmap_threshold=malloc_mmap_threshold,
        measured_bytes=result["hwm"] - result["baseline_rss"],
    )
    return result


if __name__ == "__main__":
    print(json.dumps(measure_in_this_process(json.loads(sys.argv[1]))))

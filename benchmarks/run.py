"""Benchmarks of the default profile: each figure beside its reference, measured in one process.

    python -m benchmarks.run            # full mode: a few minutes on 2 cores
    python -m benchmarks.run --quick    # every measurement shrunk: well under 90 s

Writes ``benchmarks/results.json`` (a list of entries: name, value, unit, reference, ratio, goal,
meets_goal) and ``benchmarks/RESULTS.md``. Each comparison runs both sides in this one process,
warmed up and interleaved, so drift of the machine cancels. Benchmarks are not tests: nothing here
asserts a speed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = Path(__file__).resolve().parent


def entry(name, value, unit, reference, goal, meets_goal, *, ratio=None, note="", skipped=False):
    """One row of results.json; ``ratio`` defaults to value / reference."""
    if ratio is None and isinstance(value, (int, float)) and isinstance(reference, (int, float)) and reference:
        ratio = value / reference
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "reference": reference,
        "ratio": None if ratio is None else float(ratio),
        "goal": goal,
        "meets_goal": bool(meets_goal),
        "skipped": skipped,
        "note": note,
    }


def outputs_root() -> Path:
    """Where runs are looked for: the user's outputs/, or under `make test` the suite's own folder
    (tests never read the user's outputs/)."""
    env = os.environ.get("MODFT_TEST_OUTPUTS")
    return Path(env) if env else ROOT / "outputs"


def cache_override() -> dict:
    """Under `make test` the benchmark's bases go where the tests keep theirs, not into outputs/."""
    env = os.environ.get("MODFT_TEST_OUTPUTS")
    return {"cache_dir": str(Path(env) / "cache")} if env else {}


class Bench:
    """Everything the measurements share: profile, base, tokenizer, prepared data, a temp folder."""

    def __init__(self, quick: bool, tmp: Path):
        import torch  # noqa: F401

        from modft_utils import config, data, modeling

        self.quick = quick
        self.tmp = tmp
        self.profile = config.load_profile(ROOT / "params" / "tiny.yaml", cache_override())
        self.base = modeling.ensure_base(self.profile, progress=False)
        self.tokenizer = modeling.load_tokenizer(self.base)
        self.run_dir = tmp / "run"
        (self.run_dir / "data").mkdir(parents=True)
        t = time.perf_counter()
        self.dapt = data.prepare_dapt(self.profile, self.tokenizer, self.run_dir, progress=False)
        self.sft = data.prepare_sft(self.profile, self.tokenizer, self.run_dir, progress=False)
        self.prep_seconds = time.perf_counter() - t

    def steps(self, quick: int, full: int) -> int:
        return quick if self.quick else full


# ----------------------------------------------------------------------------- 1. training overhead


def _spec(section, steps: int):
    # No evaluation or logging inside the timed window: only training steps are compared.
    return section.train.model_copy(update={"max_steps": steps, "eval_steps": 10**6, "logging_steps": 10**6})


def _bare_loop(model, blocks, batch: int, steps: int, lr: float) -> tuple[int, float]:
    """Tokens and seconds of forward + backward + AdamW step on the model's trainable parameters."""
    import torch

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    n = len(blocks)
    start = time.perf_counter()
    for i in range(steps):
        idx = [(i * batch + j) % n for j in range(batch)]
        ids = torch.tensor(blocks[idx]["input_ids"])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    model.eval()
    return steps * batch * ids.shape[1], seconds


def _train_only_seconds(result) -> float:
    # The Trainer evaluates once at the last step; that is not training throughput.
    return result.train_seconds - sum(h.get("eval_runtime", 0.0) for h in result.log_history)


def bench_overhead(b: Bench) -> list[dict]:
    """Per-step cost of train_adapter against a bare loop: the tokens/s of the steps between a short
    and a long run of each, so what a call costs once (the Trainer's setup, which starts with a full
    gc.collect) cancels; that fixed cost is reported beside it."""
    from transformers import default_data_collator

    from modft_utils import adapters, modeling

    prof = b.profile
    model = modeling.load_base(prof, b.base)
    model = adapters.add_adapter(model, "domain", modeling.lora_config(prof.dapt.lora))
    batch, lr = prof.dapt.train.batch_size, prof.dapt.train.learning_rate
    blocks = b.dapt.train_blocks
    short, long = b.steps(2, 20), b.steps(8, 60)  # quick: enough steps between that jitter cannot flip the sign

    def ours(n: int) -> tuple[int, float]:
        adapters.activate(model, ["domain"], trainable="domain")
        r = adapters.train_adapter(
            model,
            "domain",
            blocks,
            None,  # no held-out measurement inside the timed steps
            _spec(prof.dapt, n),
            b.tmp / f"ovh{time.monotonic_ns()}",
            default_data_collator,
            compute_dtype=prof.model.compute_dtype,
            progress=False,
            resume=False,
        )
        return r.tokens_seen, _train_only_seconds(r)

    def bare(n: int) -> tuple[int, float]:
        adapters.activate(model, ["domain"], trainable="domain")
        return _bare_loop(model, blocks, batch, n, lr)

    def per_step(run) -> tuple[float, float]:
        """(tokens/s of the steps between ``short`` and ``long``, seconds a call costs besides its steps)."""
        (t1, s1), (t2, s2) = run(short), run(long)
        step_s = (s2 - s1) / (long - short)
        return (t2 - t1) / (s2 - s1), s2 - long * step_s

    ours(2), bare(2)  # warm-up
    ours_runs, bare_runs = [], []
    for _ in range(1 if b.quick else 3):  # interleaved so drift hits both
        ours_runs.append(per_step(ours))
        bare_runs.append(per_step(bare))
    o, r = max(t for t, _ in ours_runs), max(t for t, _ in bare_runs)
    fixed = min(f for _, f in ours_runs)
    return [
        entry(
            "training overhead: train_adapter vs bare PyTorch loop (DAPT tokens/s)",
            round(o),
            "tokens/s",
            round(r),
            ">= 0.95",
            o / r >= 0.95,
            ratio=o / r,
            note=(
                f"steps {short + 1}-{long} of {batch}x{prof.data.block_size} (a {long}-step run less a {short}-step one), "
                f"best of {len(ours_runs)}; runs: ours {[round(t) for t, _ in ours_runs]}, "
                f"bare {[round(t) for t, _ in bare_runs]}; train_adapter also costs {fixed:.2f} s once per call "
                "(the Trainer's setup)"
            ),
        )
    ]


# ----------------------------------------------------------------------------- 2. vs the plain recipe


def _plain_model(b: Bench, lora_spec):
    """Stock recipe: BitsAndBytesConfig(load_in_4bit=True), the model's default experts kernel, PEFT defaults."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(
        b.base.name_or_path, quantization_config=BitsAndBytesConfig(load_in_4bit=True)
    )
    cfg = LoraConfig(
        r=lora_spec.r,
        lora_alpha=lora_spec.alpha,
        lora_dropout=lora_spec.dropout,
        target_modules=list(lora_spec.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def _plain_train(model, dataset, collator, spec, out: Path) -> tuple[float, float]:
    """(seconds, training loss) of a plain Trainer with defaults but batch, steps and lr."""
    import torch
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out),
        max_steps=spec.max_steps,
        per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=10**6,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    start = time.perf_counter()
    res = trainer.train()
    return time.perf_counter() - start, float(res.training_loss)


def _useful_tokens(dataset, batch: int, steps: int) -> float:
    lengths = [len(x) for x in dataset["input_ids"]]
    return sum(lengths) / len(lengths) * batch * steps


# The DAPT row compares with the plain recipe a user writes, which packs too (transformers' run_clm
# groups texts into blocks): its goal is to be no slower on CPU. SFT's plain recipe pads every example
# to data.max_sft_tokens, which length-grouped dynamic padding beats.
SPEED_GOALS = {"dapt": 1.0, "sft": 1.5}


def bench_plain_recipe(b: Bench) -> list[dict]:
    import gc

    rows = []
    for stage in ("dapt", "sft"):
        rows.append(_plain_recipe_row(b, stage, steps=b.steps(3, 50), warm=2))
        gc.collect()  # the stage's two models went with its frame: free them before the next stage loads its own
    return rows


def _plain_recipe_row(b: Bench, stage: str, *, steps: int, warm: int) -> dict:
    """One stage trained by our train_adapter and by the plain Trainer + PEFT recipe, in this process."""
    from transformers import DataCollatorForSeq2Seq, default_data_collator

    from modft_utils import adapters, data, modeling

    prof = b.profile
    section = getattr(prof, stage)
    ds = b.dapt.train_blocks if stage == "dapt" else b.sft.train
    ours_collator = default_data_collator if stage == "dapt" else data.sft_collator(b.tokenizer)
    plain_collator = (
        default_data_collator
        if stage == "dapt"
        else DataCollatorForSeq2Seq(
            b.tokenizer, padding="max_length", max_length=prof.data.max_sft_tokens, label_pad_token_id=-100
        )
    )

    ours_model = modeling.load_base(prof, b.base)
    ours_model = adapters.add_adapter(ours_model, "domain", modeling.lora_config(prof.dapt.lora))
    name = "domain"
    if stage == "sft":
        ours_model = adapters.add_adapter(ours_model, "task", modeling.lora_config(prof.sft.lora))
        name = "task"
    plain_model = _plain_model(b, section.lora)

    def run_ours(n: int):
        adapters.activate(ours_model, ["domain", "task"] if stage == "sft" else ["domain"], trainable=name)
        r = adapters.train_adapter(
            ours_model,
            name,
            ds,
            None,
            _spec(section, n),
            b.tmp / f"{stage}{time.monotonic_ns()}",
            ours_collator,
            compute_dtype=prof.model.compute_dtype,
            progress=False,
            resume=False,
        )
        return _train_only_seconds(r), r.train_loss

    def run_plain(n: int):
        return _plain_train(plain_model, ds, plain_collator, _spec(section, n), b.tmp / f"plain{time.monotonic_ns()}")

    run_ours(warm), run_plain(warm)
    (os_, ol), (ps, pl) = run_ours(steps), run_plain(steps)
    tokens = _useful_tokens(ds, section.train.batch_size, steps)
    o, p = tokens / os_, tokens / ps
    goal = SPEED_GOALS[stage]
    pad = (
        "; both pack (the plain recipe as run_clm does): the goal is no slower"
        if stage == "dapt"
        else "; plain pads to data.max_sft_tokens and trains one LoRA (ours: task on top of frozen domain)"
    )
    return entry(
        f"{stage.upper()} speed: ours vs plain Trainer + PEFT (useful tokens/s)",
        round(o),
        "tokens/s",
        round(p),
        f">= {goal}",
        o / p >= goal,
        note=f"{steps} steps x batch {section.train.batch_size} after {warm} warm-up steps; final training loss ours "
        f"{ol:.3f} vs plain {pl:.3f} (ours: warm-up + cosine, plain: linear){pad}",
    )


# ----------------------------------------------------------------------------- 3. packing efficiency


def bench_packing(b: Bench) -> list[dict]:
    import torch
    from transformers import Trainer, default_data_collator

    from modft_utils import adapters, data

    prof = b.profile
    pad_id = b.tokenizer.pad_token_id
    n_batches = b.steps(8, 60)
    rows = []
    # DAPT: packed blocks through the collator the notebook uses.
    blocks = b.dapt.train_blocks
    bs = prof.dapt.train.batch_size
    real = total = 0
    for i in range(min(n_batches, len(blocks) // bs)):
        batch = default_data_collator([blocks[j] for j in range(i * bs, (i + 1) * bs)])
        real += int((batch["input_ids"] != pad_id).sum())
        total += batch["input_ids"].numel()
    rows.append(
        entry(
            "DAPT packing: non-padding share of batch tokens",
            round(real / total, 4),
            "share",
            1.0,
            ">= 0.99",
            real / total >= 0.99,
            note="packed blocks; reference: the ideal (no padding)",
        )
    )
    # SFT: the Trainer's own dataloader, as adapters.training_arguments configures it for the profile
    # (sft.train.group_by_length), with our collator; and with the random sampler for comparison.
    args = adapters.training_arguments(
        prof.sft.train, b.tmp / "pack", compute_dtype=prof.model.compute_dtype, progress=False
    )
    trainer = Trainer(
        model=torch.nn.Linear(1, 1),
        args=args,
        train_dataset=b.sft.train,
        eval_dataset=b.sft.eval_tokenized,
        data_collator=data.sft_collator(b.tokenizer),
    )

    def share(trainer) -> float:
        real = total = 0
        for i, batch in enumerate(trainer.get_train_dataloader()):
            if i >= n_batches:
                break
            real += int(batch["attention_mask"].sum())
            total += batch["attention_mask"].numel()
        return real / total

    ours = share(trainer)
    lengths = [len(x) for x in b.sft.train["input_ids"]]
    naive = sum(lengths) / (len(lengths) * prof.data.max_sft_tokens)
    sampler = args.train_sampling_strategy
    rows.append(
        entry(
            f"SFT padding: non-padding share of batch tokens (sft_collator, {sampler} sampler)",
            round(ours, 4),
            "share",
            round(naive, 4),
            ">= 0.90",
            ours >= 0.90,
            note=f"{n_batches} batches of {prof.sft.train.batch_size}; reference: right-padding to data.max_sft_tokens={prof.data.max_sft_tokens}",
        )
    )
    trainer.args.train_sampling_strategy = "random"
    shuffled = share(trainer)
    rows.append(
        entry(
            "SFT padding with the random sampler instead (same collator)",
            round(shuffled, 4),
            "share",
            round(naive, 4),
            "report",
            True,
            note="what sft.train.group_by_length: false gives",
        )
    )
    return rows


# ----------------------------------------------------------------------------- 4. stack switch


def _scaled_profile(prof, base_dir: Path):
    model = prof.model.model_copy(update={"id": str(base_dir), "tiny": None})
    return prof.model_copy(update={"model": model})


def _build_variant(b: Bench, name: str, **changes) -> Path:
    """A random-weight MiniMax-M2 base of the tiny profile's config with ``changes``, saved to the temp folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(b.base.name_or_path)
    for k, v in changes.items():
        setattr(cfg, k, v)
    out = b.tmp / name
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    return out


def bench_switch(b: Bench) -> list[dict]:
    from modft_utils import adapters, modeling
    from modft_utils.adapters import stack

    prof = b.profile
    t = prof.model.tiny
    larger = _build_variant(
        b,
        "larger",
        hidden_size=2 * t.hidden_size,
        num_hidden_layers=2 * t.num_hidden_layers,
        head_dim=2 * t.head_dim,
        intermediate_size=2 * t.intermediate_size,
    )
    repeats = b.steps(200, 2000)
    reloads = b.steps(1, 3)
    rows, switch = [], {}
    wider = _build_variant(
        b, "wider", hidden_size=2 * t.hidden_size, head_dim=2 * t.head_dim, intermediate_size=2 * t.intermediate_size
    )
    variants = (
        ("tiny", b.base.name_or_path),
        ("larger (2x layers, 2x hidden)", str(larger)),
        ("wider (2x hidden, same layers)", str(wider)),
    )
    for label, path in variants:
        p = prof if label == "tiny" else _scaled_profile(prof, Path(path))
        base = modeling.BaseRef(path)
        model = modeling.load_base(p, base)
        model = adapters.add_adapter(model, "domain", modeling.lora_config(p.dapt.lora))
        model = adapters.add_adapter(model, "task", modeling.lora_config(p.sft.lora), seed=1)
        saved = {n: adapters.save_adapter(model, n, b.tmp / f"{label.split()[0]}-{n}") for n in ("domain", "task")}
        stacks = [["domain"], ["domain", "task"], []]
        adapters.time_switch(model, stacks, 20)  # warm-up (builds the layer index)
        # Best of several means: a switch takes microseconds, so one busy moment would dominate a single mean.
        ms = min(adapters.time_switch(model, stacks, repeats) for _ in range(b.steps(2, 5)))
        times = []
        for _ in range(reloads):
            start = time.perf_counter()
            m = modeling.load_base(p, base)
            m = stack.load_adapter(m, saved["domain"], "domain")
            m = stack.load_adapter(m, saved["task"], "task")
            adapters.activate(m, ["domain", "task"])
            times.append((time.perf_counter() - start) * 1000)
            del m
        reload_ms = min(times)
        switch[label] = ms
        if label == "tiny":
            rows += _stack_switch_rows(b, p, base, saved, reload_ms, repeats)
        params = sum(x.numel() for x in model.parameters())
        rows.append(
            entry(
                f"stack switch vs reload base + 2 adapters, {label} base",
                round(ms, 4),
                "ms",
                round(reload_ms, 1),
                "<= 0.001",
                ms / reload_ms <= 0.001,
                note=f"best of several means of {repeats} activate() calls; reload best of {reloads}; {params:,} stored params",
            )
        )
        del model
        gc.collect()
    tiny_ms, big_ms, wide_ms = switch.values()
    rows.append(
        entry(
            "stack switch flat across sizes: larger / tiny base",
            round(big_ms, 4),
            "ms",
            round(tiny_ms, 4),
            "<= 1.5 (flat)",
            big_ms / tiny_ms <= 1.5,
            note="activate() rewrites one list all LoRA layers share: the larger base has 2x the layers",
        )
    )
    rows.append(
        entry(
            "stack switch, wider / tiny base (same layer count, ~3x the weights)",
            round(wide_ms, 4),
            "ms",
            round(tiny_ms, 4),
            "report",
            True,
            note="isolates weight size from layer count",
        )
    )
    return rows


def _stack_switch_rows(b: Bench, prof, base, saved: dict, reload_ms: float, repeats: int) -> list[dict]:
    """AdapterStack.use (store references resolved, parents checked) and disable/enable, both loaded."""
    from modft_utils import modeling
    from modft_utils.adapters import AdapterStack
    from modft_utils.store import registry

    model = modeling.load_base(prof, base)
    identity = registry.base_identity(model, model_id=base.name_or_path)
    store = registry.Registry(b.tmp / "switch-store")
    for name, parent in (("domain", None), ("task", "domain@1")):
        store.publish(name, saved[name], base=identity, parent=parent, params={}, data_fingerprint="", metrics={})
    stack = AdapterStack(model, store, identity)
    cycle = [("domain@1", "task@1"), ("domain@1",), ()]
    for refs in cycle:  # loads both versions once; what follows only switches
        stack.use(*refs)

    def mean_ms(step) -> float:
        start = time.perf_counter()
        for i in range(repeats):
            step(i)
        return (time.perf_counter() - start) * 1000 / repeats

    use_ms = min(mean_ms(lambda i: stack.use(*cycle[i % len(cycle)])) for _ in range(b.steps(2, 5)))
    stack.use("domain@1", "task@1")
    toggle_ms = min(
        mean_ms(lambda i: stack.disable("task") if i % 2 == 0 else stack.enable("task")) for _ in range(b.steps(2, 5))
    )
    return [
        entry(
            f"AdapterStack.{what} vs reload base + 2 adapters, tiny base",
            round(ms, 4),
            "ms",
            round(reload_ms, 1),
            "<= 0.001",
            ms / reload_ms <= 0.001,
            note=f"best of several means of {repeats} calls, versions already loaded; {detail}",
        )
        for what, ms, detail in (
            ("use", use_ms, "store references resolved and parents checked on every call"),
            ("disable / enable", toggle_ms, "the task adapter off and back on at its place"),
        )
    ]


# ----------------------------------------------------------------------------- 5. 4-bit memory


def bench_memory(b: Bench) -> list[dict]:
    from modft_utils import modeling

    prof = b.profile
    rows = []
    m = modeling.load_base(prof, b.base)
    mem = modeling.memory_vs_bf16(m)
    del m
    q = mem["quantizable_bytes_4bit"] / mem["quantizable_bytes_bf16"]
    f = mem["footprint_4bit_bytes"] / mem["footprint_bf16_bytes"]
    rows.append(
        entry(
            "4-bit memory, tiny base: attention + experts vs bf16",
            mem["quantizable_bytes_4bit"],
            "bytes",
            mem["quantizable_bytes_bf16"],
            "<= 0.30",
            q <= 0.30,
        )
    )
    rows.append(
        entry(
            "4-bit memory, tiny base: whole model vs bf16",
            mem["footprint_4bit_bytes"],
            "bytes",
            mem["footprint_bf16_bytes"],
            "report",
            True,
            note="fp32 embeddings and lm_head dominate the tiny base",
        )
    )
    # MiniMax-M2's proportions: experts ~98% of the weights (many experts, wide expert FFN, small vocab).
    experts = b.steps(32, 64)
    variant = _build_variant(
        b,
        "proportioned",
        num_hidden_layers=2,
        num_local_experts=experts,
        intermediate_size=256,
        vocab_size=512,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    from transformers import AutoConfig

    from modft_utils.modeling import count_params

    counts = count_params(AutoConfig.from_pretrained(variant))
    share = counts["experts"] / counts["total"]
    m = modeling.load_base(_scaled_profile(prof, variant), modeling.BaseRef(str(variant)))
    mem = modeling.memory_vs_bf16(m)
    del m
    q = mem["quantizable_bytes_4bit"] / mem["quantizable_bytes_bf16"]
    f = mem["footprint_4bit_bytes"] / mem["footprint_bf16_bytes"]
    rows.append(
        entry(
            "4-bit memory, MiniMax-M2-proportioned base: attention + experts vs bf16",
            mem["quantizable_bytes_4bit"],
            "bytes",
            mem["quantizable_bytes_bf16"],
            "<= 0.30",
            q <= 0.30,
            note=f"{experts} experts x ffn 256, vocab 512: experts {share:.1%} of {counts['total']:,} params",
        )
    )
    rows.append(
        entry(
            "4-bit memory, MiniMax-M2-proportioned base: whole model vs bf16",
            mem["footprint_4bit_bytes"],
            "bytes",
            mem["footprint_bf16_bytes"],
            "<= 0.32",
            f <= 0.32,
            note="get_memory_footprint() vs every weight at 2 bytes",
        )
    )
    return rows


# ----------------------------------------------------------------------------- 6. planner accuracy


def bench_planner(b: Bench) -> list[dict]:
    from modft_utils import plan

    if not hasattr(plan, "measure_training_peak"):
        return [
            entry(
                "planner accuracy",
                None,
                "bytes",
                None,
                "within 15%",
                False,
                skipped=True,
                note="plan.measure_training_peak is not available",
            )
        ]
    from modft_utils import config

    rows = []
    # The tiny MoE (fused 4-bit experts) and, in full mode, the dense real-weights base.
    cases = [("tiny", b.profile, stage) for stage in (("sft",) if b.quick else ("dapt", "sft"))]
    if not b.quick:
        real = config.load_profile(ROOT / "params" / "smollm2.yaml", cache_override())
        cases += [("smollm2", real, stage) for stage in ("dapt", "sft")]
    for name, profile, stage in cases:
        measured = plan.measure_training_peak(profile, stage=stage, steps=1 if b.quick else 2)
        planned = plan.plan(profile, stage=stage).training_bytes
        got = measured["measured_bytes"]
        rows.append(
            entry(
                f"planner accuracy, {name} {stage.upper()} step: plan.training_bytes vs measured peak RSS growth",
                planned,
                "bytes",
                got,
                "within 15% (0.85-1.15)",
                0.85 <= planned / got <= 1.15,
                note=f"batch {measured['batch']} x {measured['seq']} tokens, {measured['steps']} step(s), CPU resident-memory "
                f"high-water mark; measured - planned = {(got - planned) / 2**20:.1f} MiB",
            )
        )
    return rows


# ----------------------------------------------------------------------------- 7. data prep throughput


def bench_data_prep(b: Bench) -> list[dict]:
    from modft_utils import data
    from modft_utils.data import CleanConfig, clean_corpus

    prof = b.profile
    rows_all = data.load_rows(prof.data.dapt, prof)["train"]["text"]
    texts = rows_all[:3000] if b.quick else rows_all
    tok = b.tokenizer
    cfg = CleanConfig(
        normalization=prof.data.normalization,
        section_headings=prof.data.section_headings,
        min_chars=prof.data.min_doc_chars,
        near_dup_threshold=prof.data.near_dup_threshold,
    )

    def scrub(text):
        new, spans = data.scrub_pii_with_spans(text)
        return new, len(spans)

    def pipeline():
        start = time.perf_counter()
        docs, _ = clean_corpus(texts, cfg, scrub)
        ids = tok(docs, add_special_tokens=False)["input_ids"]
        blocks = data.pack(ids, prof.data.block_size, tok.eos_token_id)
        return time.perf_counter() - start, docs, len(blocks) * prof.data.block_size

    def bare(docs):
        start = time.perf_counter()
        n = sum(len(x) for x in tok(docs, add_special_tokens=False)["input_ids"])
        return time.perf_counter() - start, n

    pipeline(), bare(texts[:200])  # warm-up
    p_sec, docs, p_tokens = pipeline()
    b_sec, b_tokens = bare(docs)
    start = time.perf_counter()
    for d in docs:
        data.scrub_pii(d)
    s_sec = time.perf_counter() - start
    ours, ref = p_tokens / p_sec, b_tokens / b_sec
    return [
        entry(
            "data prep: clean + scrub + tokenize + pack vs bare fast-tokenizer batch call (tokens/s)",
            round(ours),
            "tokens/s",
            round(ref),
            "report",
            True,
            note=f"{len(texts):,} raw rows -> {len(docs):,} docs, {p_tokens:,} packed tokens",
        ),
        entry(
            "PII scrubber time vs tokenizer time on the same documents",
            round(s_sec, 3),
            "s",
            round(b_sec, 3),
            "<= 3.0",
            s_sec / b_sec <= 3.0,
            note="scrub_pii per document vs one batched tokenizer call",
        ),
    ]


# ----------------------------------------------------------------------------- 8. end to end


# (profile, the command that runs it, goal in seconds of notebooks on 2 cores)
END_TO_END = (("smollm2", "make run", 480), ("tiny", "make run PROFILE=params/tiny.yaml", 300))


def bench_end_to_end(b: Bench) -> list[dict]:
    """The five notebooks as `make run` runs them, on the default profile (smollm2) and the tiny one
    beside it, bases already cached: fresh runs in full mode; quick mode reads the newest run folder of
    each profile instead, where there is one."""
    rows = []
    for name, command, goal in END_TO_END:
        figure = f"end to end, {name}: seconds of the five notebooks ({command})"
        if b.quick:
            found = _newest_run_seconds(name)
            if found is None:
                rows.append(
                    entry(
                        figure,
                        None,
                        "s",
                        goal,
                        f"<= {goal} s",
                        False,
                        skipped=True,
                        note=f"quick mode runs no notebooks and found no {outputs_root()}/runs/*-{name}-*/metrics.json "
                        "with run.seconds.*",
                    )
                )
                continue
            source, secs = found
            source = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source
        else:
            from modft_utils import runner

            start = time.perf_counter()
            result = runner.run_notebooks(
                ROOT / "params" / f"{name}.yaml",
                run_dir=b.tmp / f"e2e-{name}",
                overrides={"registry": str(b.tmp / f"e2e-{name}-registry"), **cache_override()},
                progress=False,
            )
            wall = time.perf_counter() - start
            secs = {k: v for k, v in result.metrics.items() if k.startswith("run.seconds.")}
            dtype = result.metrics.get("compose.compute_dtype", "?")
            source = f"a fresh run by this benchmark ({wall:.0f} s wall with kernel starts, compute {dtype})"
        total = sum(secs.values())
        rows.append(
            entry(
                figure,
                round(total, 1),
                "s",
                goal,
                f"<= {goal} s",
                total <= goal,
                note=f"{source}: " + ", ".join(f"{k[12:]} {v:.0f}" for k, v in secs.items()),
            )
        )
    return rows


def _newest_run_seconds(profile_name: str) -> tuple[Path, dict[str, float]] | None:
    """The newest run folder of ``profile_name`` that recorded its notebooks' seconds, and those seconds."""
    runs = (outputs_root() / "runs").glob(f"*-{profile_name}-*/metrics.json")
    for path in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True):
        secs = {k: v for k, v in json.loads(path.read_text()).items() if k.startswith("run.seconds.")}
        if secs:
            return path.parent, secs
    return None


# ----------------------------------------------------------------------------- scoring


def _newest_real_run() -> Path | None:
    """The newest `make run` folder of the real-weights profile that holds both adapters."""
    runs = sorted((outputs_root() / "runs").glob("*-smollm2-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next(
        (
            r
            for r in runs
            if all((r / "adapters" / n / "adapter" / "adapter_config.json").is_file() for n in ("domain", "task"))
        ),
        None,
    )


def bench_scoring(b: Bench) -> list[dict]:
    """Scoring the held-out questions on real weights: evaluate.generate vs a plain batched generate.

    Same model, prompts, batch size and max_new_tokens, both in this process; the stack is
    base + domain + task from the newest `make run` of params/smollm2.yaml when there is one (the
    bare base otherwise, and in quick mode).
    """
    from modft_utils import adapters, config, data, evaluate, modeling
    from modft_utils.adapters import stack

    prof = config.load_profile(ROOT / "params" / "smollm2.yaml", cache_override())
    base = modeling.ensure_base(prof, progress=False)
    tok = modeling.load_tokenizer(base)
    run = b.tmp / "scoring"
    (run / "data").mkdir(parents=True)
    examples = data.prepare_sft(prof, tok, run, progress=False).eval_examples[
        : 6 if b.quick else prof.data.sft_eval_size
    ]
    model = modeling.load_base(prof, base)
    trained = None if b.quick else _newest_real_run()
    stack_label = "base"
    if trained is not None:
        for name in ("domain", "task"):
            model = stack.load_adapter(model, trained / "adapters" / name / "adapter", name)
        adapters.activate(model, ["domain", "task"])
        stack_label = f"base + domain + task of {trained.name}"
    prompts = [e["prompt"] for e in examples]
    kw = {"max_new_tokens": prof.sft.max_new_tokens, "batch_size": prof.sft.eval_batch_size}
    evaluate.generate(model, tok, prompts[:2], **kw)  # warm-up: first-call allocations count for neither
    evaluate.generate_plain(model, tok, prompts[:2], **kw)
    t = time.perf_counter()
    ours = evaluate.generate(model, tok, prompts, **kw)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    plain = evaluate.generate_plain(model, tok, prompts, **kw)
    t_plain = time.perf_counter() - t
    refs = {e["id"]: e["answers"] for e in examples}
    s_ours = data.squad_metrics({e["id"]: a for e, a in zip(examples, ours)}, refs)
    s_plain = data.squad_metrics({e["id"]: a for e, a in zip(examples, plain)}, refs)
    same = sum(o == p for o, p in zip(ours, plain)) / len(prompts)
    gap = max(abs(s_ours["exact_match"] - s_plain["exact_match"]), abs(s_ours["f1"] - s_plain["f1"]))
    note = f"{len(prompts)} questions, {stack_label}; ours {t_ours:.1f} s, plain {t_plain:.1f} s"
    return [
        entry(
            "scoring speed on real weights: questions/s, ours vs plain batched generate",
            len(prompts) / t_ours,
            "q/s",
            len(prompts) / t_plain,
            ">= 1.25",
            t_plain / t_ours >= 1.25,
            note=note,
        ),
        entry(
            "scoring answers identical to plain generate",
            same,
            "share",
            1.0,
            ">= 0.99",
            same >= 0.99,
            note=f"EM {s_ours['exact_match']:.1f} vs {s_plain['exact_match']:.1f}, F1 {s_ours['f1']:.1f} vs {s_plain['f1']:.1f}",
        ),
        entry("scoring EM/F1 gap to plain generate (points)", gap, "points", 0.0, "<= 0.5", gap <= 0.5, ratio=None),
    ]


# ----------------------------------------------------------------------------- serving


def _served_run(root: Path, profile_file: str, label: str):
    """A run folder and a store of random adapters (no training) on ``profile_file``'s base.

    domain@1, and task@1 and task@2 both trained on domain@1; production is domain@1 + task@1. Returns
    (run folder, store, profile, base ref).
    """
    from modft_utils import adapters, config, modeling, runs
    from modft_utils.store import Registry, base_identity

    tmp = root / f"serve-{label}"
    overrides = {**cache_override(), "registry": str(tmp / "registry"), "runs_dir": str(tmp / "runs")}
    profile = config.load_profile(ROOT / "params" / profile_file, overrides)
    run = runs.folder(tmp / "runs" / "served").create(profile)
    base = modeling.ensure_base(profile, progress=False)
    model = modeling.load_base(profile, base)
    identity = base_identity(model, model_id=profile.model.id, revision=base.revision)
    store = Registry(profile.registry_uri())
    for seed, (name, parent) in enumerate((("domain", None), ("task", "domain@1"), ("task", "domain@1")), start=1):
        spec = profile.dapt.lora if name == "domain" else profile.sft.lora
        model = adapters.add_adapter(model, f"a{seed}", modeling.lora_config(spec), seed=seed, b_std=0.02)
        folder = adapters.save_adapter(model, f"a{seed}", tmp / "adapters" / f"a{seed}")
        store.publish(name, folder, base=identity, parent=parent, params={}, data_fingerprint="", metrics={})
    store.promote("domain", 1, reason="benchmark")
    store.promote("task", 1, reason="benchmark")
    del model
    gc.collect()
    return run, store, profile, base


class _Load:
    """Client threads that send chat completions to a server.

    Each answer is recorded as (start, end, completion tokens, system_fingerprint, text, question).
    """

    def __init__(self, url: str, questions: list[str], max_tokens: int) -> None:
        self.url, self.questions, self.max_tokens = url, questions, max_tokens
        self.records: list[tuple[float, float, int, str, str, str]] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def _client(self):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=300)

    def ask(self, client, question: str) -> None:
        t0 = time.perf_counter()
        try:
            r = client.chat.completions.create(
                model="base+domain+task", messages=[{"role": "user", "content": question}], max_tokens=self.max_tokens
            )
        except Exception as err:  # noqa: BLE001 - a failed request is counted, never hidden
            with self._lock:
                self.failures.append(f"{type(err).__name__}: {err}")
            return
        with self._lock:
            self.records.append(
                (t0, time.perf_counter(), r.usage.completion_tokens, r.system_fingerprint, r.choices[0].message.content,
                 question)
            )  # fmt: skip

    def fixed(self, clients: int, requests: int) -> float:
        """``requests`` questions shared out over ``clients`` threads; completion tokens/s over the wall time."""
        self.records.clear()
        share = [self.questions[i % len(self.questions)] for i in range(requests)]

        made = [self._client() for _ in range(clients)]  # made before the clock starts (tens of ms each)
        ready = threading.Barrier(clients + 1)

        def work(k: int) -> None:
            ready.wait()
            for q in share[k::clients]:
                self.ask(made[k], q)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
        for th in threads:
            th.start()
        ready.wait()
        t = time.perf_counter()
        for th in threads:
            th.join()
        return sum(r[2] for r in self.records) / (time.perf_counter() - t)

    def until(self, clients: int, stop: threading.Event) -> threading.Thread:
        """``clients`` threads asking without pause until ``stop`` is set (joined by the returned thread)."""

        def work(k: int) -> None:
            client = self._client()
            i = k
            while not stop.is_set():
                self.ask(client, self.questions[i % len(self.questions)])
                i += clients

        threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
        for th in threads:
            th.start()
        joiner = threading.Thread(target=lambda: [th.join() for th in threads])
        joiner.start()
        return joiner


def _generate_one(model, tok, prompt: str, max_tokens: int) -> tuple[str, int]:
    """One request the plain way: ``model.generate`` on one prompt, greedy; (text, new tokens)."""
    import torch

    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        got = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, num_beams=1, pad_token_id=pad)
    new = got[0, ids["input_ids"].shape[1] :]
    return tok.decode(new, skip_special_tokens=True), int(new.numel())


def _serve_rows(b: Bench, profile_file: str, label: str) -> list[dict]:
    from modft_utils import modeling
    from modft_utils.adapters import AdapterStack
    from modft_utils.data import prompt_format
    from modft_utils.data.tasks import Conversation, prompt_text
    from modft_utils.serve import ServerProcess
    from modft_utils.store import base_identity

    run, store, profile, base = _served_run(b.tmp, profile_file, label)
    rows_file = b.run_dir / "data" / "sft_eval.jsonl"
    questions = [json.loads(line)["question"] for line in rows_file.read_text(encoding="utf-8").splitlines()]
    questions = questions[: b.steps(8, 32)]
    max_tokens = 16
    requests = b.steps(8, 64)
    server = ServerProcess(["--run", str(run), "--poll", "0.5", "--log", str(b.tmp / f"serve-{label}.jsonl")],
                           b.tmp / f"serve-{label}.log")  # fmt: skip
    out: list[dict] = []
    with server:
        load = _Load(server.url, questions, max_tokens)
        load.fixed(2, 4)  # warm-up
        one = load.fixed(1, requests)
        eight = load.fixed(8, requests)
        served = {r[5]: r[4] for r in load.records}
        batch_s = sum(r[1] - r[0] for r in load.records) / len(load.records)  # one request = one batch here
        out.append(
            entry(
                f"serving, {label}: completion tokens/s, 8 concurrent clients vs 1",
                round(eight, 1),
                "tokens/s",
                round(one, 1),
                ">= 3.0",
                eight / one >= 3.0 and not load.failures,
                note=f"{requests} chat completions of {max_tokens} tokens each way, one server process; "
                f"{len(load.failures)} failed",
            )
        )
        # The notebooks' way, in this process while the server idles: one model.generate per request.
        model = modeling.load_base(profile, base)
        tok = modeling.load_tokenizer(base)
        stack = AdapterStack(model, store, base_identity(model, model_id=profile.model.id, revision=base.revision))
        stack.use("domain@production", "task@production")
        fmt = prompt_format(profile, tok)
        prompts = [prompt_text(Conversation("q", (("user", q), ("assistant", ""))), tok, fmt) for q in questions]
        _generate_one(stack.model, tok, prompts[0], max_tokens)  # warm-up
        t = time.perf_counter()
        answers = [_generate_one(stack.model, tok, p, max_tokens) for p in prompts]
        loop = sum(n for _, n in answers) / (time.perf_counter() - t)
        same = sum(served.get(q, "").strip() == a.strip() for q, (a, _) in zip(questions, answers))
        out.append(
            entry(
                f"serving, {label}: served (8 clients) vs a plain model.generate loop per request, tokens/s",
                round(eight, 1),
                "tokens/s",
                round(loop, 1),
                ">= 1.0, same answers",
                eight >= loop and same == len(questions),
                note=f"{same} of {len(questions)} answers identical (greedy, {max_tokens} tokens)",
            )
        )
        del stack, model
        gc.collect()

        # Following the store, under one continuous load of 8 clients: segments without alias moves
        # alternate with segments in which the task alias moves (promote task@2, roll back to task@1), so
        # the machine's drift falls on both alike. A response's tokens are spread over its duration and
        # counted by its overlap with each segment (batches of 8 end together: counting whole responses
        # by where they end made a segment of a few batches jump by a batch).
        cycles = b.steps(2, 10)
        segments = b.steps(2, 5)  # of each kind
        length = max(b.steps(1.5, 3.0), 3 * batch_s)  # a few batches per segment
        spacing = length / (2 * cycles / segments)
        stop = threading.Event()
        load.records.clear()
        joiner = load.until(8, stop)
        time.sleep(max(1.0, 2 * batch_s))  # the clients are in their stride
        windows: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        moves: list[tuple[float, int]] = []
        for k in range(2 * segments):
            moving = k % 2 == 1
            t = time.perf_counter()
            if moving:
                for _ in range(cycles // segments):
                    for move in ("promote", "rollback"):
                        moved = time.perf_counter()
                        if move == "promote":
                            store.promote("task", 2, reason="benchmark: alias follow")
                        else:
                            store.rollback("task", reason="benchmark: alias follow")
                        moves.append((moved, store.aliases("task")["production"]))
                        time.sleep(max(0.0, moved + spacing - time.perf_counter()))
            time.sleep(max(0.0, t + length - time.perf_counter()))
            windows[moving].append((t, time.perf_counter()))
        time.sleep(2 * batch_s + 1.0)  # the last move is followed too
        stop.set()
        joiner.join()

        def rate(moving: bool) -> float:
            spans = windows[moving]
            tokens = sum(
                r[2] * max(0.0, min(r[1], z) - max(r[0], a)) / max(r[1] - r[0], 1e-9)
                for r in load.records
                for a, z in spans
            )
            return tokens / sum(z - a for a, z in spans)

        steady, during = rate(False), rate(True)
        # A move is followed when a response names its version. A version the next move replaced before
        # a batch could start on it is never named (moves come faster than batches on a slow base):
        # counted apart, not as a latency.
        follow, superseded = [], 0
        ends = [m for m, _ in moves[1:]] + [float("inf")]
        for (moved, version), until in zip(moves, ends):
            named = [
                end
                for _, end, _, fp, _, _ in load.records
                if moved <= end <= until + 3 * batch_s and fp.endswith(f"+task@{version}")
            ]
            if named:
                follow.append(min(named) - moved)
            else:
                superseded += 1
        follow.sort()
        p50, worst = (follow[len(follow) // 2], follow[-1]) if follow else (float("inf"), float("inf"))
        out += [
            entry(
                f"serving, {label}: alias follow, promote or rollback -> first response naming it (p50)",
                round(p50, 3),
                "s",
                2.0,
                "<= 2 s (p50 and max)",
                p50 <= 2.0 and worst <= 2.0,
                ratio=None,
                note=f"max {worst:.3f} s over {len(follow)} moves under 8 clients' load ({superseded} more replaced "
                f"before a batch ran on them); a batch of 8 took "
                f"{batch_s:.2f} s (a move reaches the batch after the one in flight); server polls every 0.5 s",
            ),
            entry(
                f"serving, {label}: tokens/s while the task alias moves ({cycles} promote + rollback) vs steady",
                round(during, 1),
                "tokens/s",
                round(steady, 1),
                ">= 0.95",
                during >= 0.95 * steady and not load.failures,
                note=f"8 clients; {segments} segments of {length:.1f} s with {len(moves)} moves in all, "
                f"interleaved with {segments} without; {len(load.failures)} failed requests",
            ),
        ]
    return out


def bench_serve(b: Bench) -> list[dict]:
    """The server as a process on 127.0.0.1, driven by the openai client: tiny, and smollm2 in full mode."""
    rows = _serve_rows(b, "tiny.yaml", "tiny")
    if not b.quick:
        rows += _serve_rows(b, "smollm2.yaml", "smollm2")
    return rows


# ----------------------------------------------------------------------------- roofline

# The matmul shapes of SmolLM2-135M (hidden 576, MLP 1536, vocabulary 49,152) at 1,024 tokens, and a
# square one: the machine's peak is the best of them, measured in this run.
MATMUL_SHAPES = ((1024, 576, 576), (1024, 576, 1536), (1024, 1536, 576), (1024, 576, 49152), (2048, 2048, 2048))


def matmul_gflops(m: int, k: int, n: int, dtype, device: str = "cpu", repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of one (m x k) @ (k x n) matmul (2mkn FLOPs)."""
    import torch

    a = torch.randn(m, k, device=device).to(dtype)
    w = torch.randn(k, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.mm(a, w)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, w)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


def machine_peak(device: str = "cpu", repeats: int = 5) -> dict[str, tuple[float, tuple[int, int, int]]]:
    """{"float32"|"bfloat16": (best GFLOP/s, its shape)} over MATMUL_SHAPES, the two dtypes interleaved."""
    import torch

    best: dict[str, tuple[float, tuple[int, int, int]]] = {}
    for shape in MATMUL_SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            g = matmul_gflops(*shape, dtype, device, repeats)
            name = str(dtype).removeprefix("torch.")
            if g > best.get(name, (0.0, shape))[0]:
                best[name] = (g, shape)
    return best


def matmul_params(model) -> int:
    """Weights one token's forward multiplies by: every nn.Linear (4-bit ones, LoRA's, the LM head)."""
    import torch

    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def _roofline_entry(what: str, gflops: float, peak: dict, note: str) -> dict:
    top = max(peak, key=lambda d: peak[d][0])
    shares = ", ".join(f"{100 * gflops / g:.0f}% of the {d} peak ({g:.0f})" for d, (g, _) in peak.items())
    return entry(
        f"roofline, smollm2: {what}, useful GFLOP/s vs the machine's {top} matmul peak",
        round(gflops, 1),
        "GFLOP/s",
        round(peak[top][0], 1),
        "report",
        True,
        note=f"{shares}; {note}",
    )


def bench_roofline(b: Bench) -> list[dict]:
    """Useful FLOP/s of a DAPT step, an SFT step and scoring on the default profile (smollm2), each as a
    share of this machine's matmul peak measured in the same run.

    Useful work: 4 FLOPs per matmul weight per token for a LoRA training step on a frozen base (the
    forward, and the backward to the activations; recomputation not counted), 2 for a forward (scoring:
    every prompt token and every generated one); padding not counted.
    """
    import torch

    from modft_utils import machine

    # Where CUDA is, the base loads onto the GPU (modeling.load_base), so the steps are measured against
    # the GPU's own peak, and every row says so.
    cuda = torch.cuda.is_available()
    peak = machine_peak("cuda" if cuda else "cpu", repeats=b.steps(2, 5))
    if cuda:
        where = f"on {torch.cuda.get_device_name(0)}"
    else:
        bf16_hw = sorted(machine.cpu_flags() & machine.CPU_BF16_FLAGS)
        where = f"{torch.get_num_threads()} threads; CPU bf16 instructions: {', '.join(bf16_hw) or 'none'}"
    rows = [
        entry(
            f"machine matmul peak{', GPU' if cuda else ''}, {d}",
            round(g, 1),
            "GFLOP/s",
            round(peak["float32"][0], 1),
            "report",
            True,
            note=f"best of {len(MATMUL_SHAPES)} shapes (best {s[0]}x{s[1]}x{s[2]}), {where}",
        )
        for d, (g, s) in peak.items()
    ]
    if b.quick:  # the peak only: the steps below load and train SmolLM2 (about a minute per dtype)
        return rows
    # float32, and beside it what `compute_dtype: auto` picks on this machine, when that differs.
    dtypes = list(dict.fromkeys(["float32", machine.native_compute_dtype()]))
    for dtype in dtypes:
        rows += _roofline_rows(b, dtype, peak, gpu=cuda)
    return rows


def _smollm2_prepared(b: Bench, folder: str, overrides: dict | None = None):
    """(profile, base, tokenizer, DAPT data, SFT data) of params/smollm2.yaml, prepared in ``b.tmp/folder``."""
    from modft_utils import config, data, modeling

    prof = config.load_profile(ROOT / "params" / "smollm2.yaml", {**cache_override(), **(overrides or {})})
    base = modeling.ensure_base(prof, progress=False)
    tok = modeling.load_tokenizer(base)
    run = b.tmp / folder
    (run / "data").mkdir(parents=True)
    return (
        prof,
        base,
        tok,
        data.prepare_dapt(prof, tok, run, progress=False),
        data.prepare_sft(prof, tok, run, progress=False),
    )


def _training_stages(dapt, sft, tok):
    """(stage, adapter it trains, training set, collator): DAPT, then SFT on top of the domain adapter."""
    from transformers import default_data_collator

    from modft_utils import data

    return (
        ("dapt", "domain", dapt.train_blocks, default_data_collator),
        ("sft", "task", sft.train, data.sft_collator(tok)),
    )


def _roofline_rows(b: Bench, dtype: str, peak: dict, *, gpu: bool = False) -> list[dict]:
    """The DAPT step, SFT step and scoring rows of SmolLM2 computing in ``dtype``; with ``gpu``, each
    training step's peak GPU memory against what `modft plan` prices for it, too."""
    import torch

    from modft_utils import adapters, evaluate, modeling, plan

    prof, base, tok, dapt, sft = _smollm2_prepared(b, f"roofline-{dtype}", {"model.compute_dtype": dtype})
    steps, warm = 3, 1
    rows = []
    model = modeling.load_base(prof, base)
    model = adapters.add_adapter(model, "domain", modeling.lora_config(prof.dapt.lora))
    for stage, name, ds, collator in _training_stages(dapt, sft, tok):
        section = getattr(prof, stage)
        if stage == "sft":
            model = adapters.add_adapter(model, "task", modeling.lora_config(prof.sft.lora))
        params = matmul_params(model)
        results = []
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        for n in (warm, steps):  # the first warms up; training leaves every adapter frozen
            adapters.activate(model, ["domain", "task"] if stage == "sft" else ["domain"], trainable=name)
            results.append(
                adapters.train_adapter(
                    model,
                    name,
                    ds,
                    None,
                    _spec(section, n),
                    b.tmp / f"roofline-{dtype}" / f"{stage}-{n}",
                    collator,
                    compute_dtype=dtype,
                    progress=False,
                    resume=False,
                )  # fmt: skip
            )
        seconds = _train_only_seconds(results[-1])
        tokens = _useful_tokens(ds, section.train.batch_size, steps)
        rows.append(
            _roofline_entry(
                f"{stage.upper()} step, compute {dtype}{', GPU' if gpu else ''}",
                4 * params * tokens / seconds / 1e9,
                peak,
                f"{steps} steps x batch {section.train.batch_size}, {tokens / steps:.0f} useful tokens a step, "
                f"{seconds / steps:.2f} s a step, {params / 1e6:.1f}M matmul weights",
            )
        )
        if gpu:
            measured = torch.cuda.max_memory_allocated()
            planned = plan.plan(prof, stage=stage).training_bytes
            rows.append(
                entry(
                    f"GPU memory, smollm2 {stage.upper()} step, compute {dtype}: plan.training_bytes vs peak allocated",
                    planned,
                    "bytes",
                    measured,
                    "within 15% (0.85-1.15)",
                    0.85 <= planned / measured <= 1.15,
                    note=f"torch.cuda.max_memory_allocated over {warm + steps} steps of batch {section.train.batch_size}, "
                    f"the base loaded since before the first; measured - planned = {(measured - planned) / 2**20:.1f} MiB",
                )
            )
    examples = sft.eval_examples[:32]
    prompts = [e["prompt"] for e in examples]
    kw = {"max_new_tokens": prof.sft.max_new_tokens, "batch_size": prof.sft.eval_batch_size, "one_line": False}
    evaluate.generate(model, tok, prompts[:2], **kw)
    t = time.perf_counter()
    answers = evaluate.generate(model, tok, prompts, **kw)
    seconds = time.perf_counter() - t
    tokens = sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts) + sum(
        len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers
    )
    params = matmul_params(model)
    rows.append(
        _roofline_entry(
            f"scoring (evaluate.generate, base + domain + task), compute {dtype}{', GPU' if gpu else ''}",
            2 * params * tokens / seconds / 1e9,
            peak,
            f"{len(prompts)} questions, {tokens:,} prompt + generated tokens in {seconds:.1f} s",
        )
    )
    return rows


# ----------------------------------------------------------------------------- where a step's time goes

# torch.profiler op names, by what they do: the first pattern an op's name contains decides.
PROFILE_CATEGORIES = (
    ("4-bit dequantize", ("bitsandbytes", "dequantize", "4bit")),
    ("attention (sdpa)", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul")),
    ("LM-head loss (log-softmax, NLL)", ("log_softmax", "nll_loss", "cross_entropy", "chunkedheadloss")),
    ("optimizer (AdamW)", ("_foreach", "adamw", "lerp", "addcdiv", "addcmul")),
    ("copies and casts", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone", "aten::cat")),
    ("elementwise (norms, activations, RoPE, adds)", ("aten::",)),
)


def profile_step(model, batches, *, lr: float) -> dict:
    """One profiled training step per batch after a warm-up one: forward, backward and AdamW, timed by
    phase, and torch.profiler's self CPU time per op grouped by PROFILE_CATEGORIES.

    What no op accounts for (``wall - ops``) is Python and framework overhead between ops. The loop is
    train_adapter's work without the Trainer around it (bench_overhead measures that wrapper at >= 0.95).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    from modft_utils.modeling import head_loss

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    phases = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    head = head_loss.head_of(model)

    def loss_of(batch):
        # As AdapterTrainer.compute_loss: packed LM batches through the chunked head, the rest the model's own.
        if head is None or not head_loss.is_lm_batch(batch):
            return model(**batch).loss
        return head_loss.batch_loss(head, batch)

    def step(batch, timed: bool) -> None:
        t0 = time.perf_counter()
        loss = loss_of(batch)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if timed:
            for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[k] += v

    step(batches[0], False)  # warm-up: AdamW's state and first-call allocations
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for batch in batches[1:]:
            step(batch, True)
        wall = time.perf_counter() - start
    model.eval()
    by_category = dict.fromkeys([c for c, _ in PROFILE_CATEGORIES], 0.0)
    for ev in prof.key_averages():
        name = ev.key.lower()
        for category, patterns in PROFILE_CATEGORIES:
            if any(p.lower() in name for p in patterns):
                by_category[category] += ev.self_cpu_time_total / 1e6
                break
    ops = sum(by_category.values())
    n = len(batches) - 1
    return {
        "steps": n,
        "wall_s": wall,
        "phases_s": phases,
        "categories_s": by_category,
        "overhead_s": max(0.0, wall - ops),
        "per_step_s": wall / n,
    }


def profile_table(result: dict) -> str:
    """The profile as a Markdown table: seconds per step and share of the step, by category."""
    n, wall = result["steps"], result["wall_s"]
    rows = [*result["categories_s"].items(), ("Python and framework overhead (no op)", result["overhead_s"])]
    lines = ["| where | s per step | share |", "|---|---|---|"]
    for what, seconds in sorted(rows, key=lambda r: -r[1]):
        lines.append(f"| {what} | {seconds / n:.3f} | {100 * seconds / wall:.0f}% |")
    phases = ", ".join(f"{k} {v / n:.2f} s" for k, v in result["phases_s"].items())
    lines.append(f"| whole step ({phases}) | {wall / n:.3f} | 100% |")
    return "\n".join(lines)


def bench_step_profile(b: Bench) -> list[dict]:
    """Where a DAPT and an SFT step of the default profile (smollm2, in the dtype `auto` picks here) spend
    their time: the table is printed, and each row's note carries it in short. Quick mode profiles the
    tiny profile instead (seconds, no SmolLM2 load)."""
    import torch

    from modft_utils import adapters, modeling

    if b.quick:
        prof, base, tok, dapt, sft = b.profile, b.base, b.tokenizer, b.dapt, b.sft
        label = "tiny"
    else:
        prof, base, tok, dapt, sft = _smollm2_prepared(b, "step-profile")
        label = "smollm2"
    steps = b.steps(1, 3)
    model = modeling.load_base(prof, base)
    model = adapters.add_adapter(model, "domain", modeling.lora_config(prof.dapt.lora))
    rows = []
    for stage, name, ds, collator in _training_stages(dapt, sft, tok):
        section = getattr(prof, stage)
        if stage == "sft":
            model = adapters.add_adapter(model, "task", modeling.lora_config(prof.sft.lora))
        adapters.activate(model, ["domain", "task"] if stage == "sft" else ["domain"], trainable=name)
        size = section.train.batch_size
        if stage == "sft":  # batches of similar length, as group_by_length gives the Trainer
            lengths = [len(ids) for ids in ds["input_ids"]]
            order = sorted(range(len(ds)), key=lengths.__getitem__)
            ds = ds.select(order[len(order) // 2 :] + order[: len(order) // 2])
        batches = [collator([ds[i] for i in range(k * size, (k + 1) * size)]) for k in range(steps + 1)]
        result = profile_step(model, batches, lr=section.train.learning_rate)
        table = profile_table(result)
        print(f"step profile, {label} {stage.upper()} ({prof.model.compute_dtype}, {torch.get_num_threads()} threads):\n"
              f"{table}", file=sys.stderr)  # fmt: skip
        shares = {k: v / result["wall_s"] for k, v in result["categories_s"].items()}
        shares["overhead"] = result["overhead_s"] / result["wall_s"]
        top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v >= 0.01)
        rows.append(
            entry(
                f"step profile, {label}: {stage.upper()} step in {prof.model.compute_dtype}, share of the step in matmuls",
                round(shares["matmul"], 3),
                "share",
                None,
                "report",
                True,
                note=f"{result['per_step_s']:.2f} s a step, batch {size}, {steps} profiled step(s) after a warm-up; "
                f"self CPU time by op: {top}",
            )
        )
    return rows


def bench_head_loss(b: Bench) -> list[dict]:
    """A DAPT step through train_adapter with the chunked LM-head loss (modeling.head_loss) against the
    model's own loss (the batch's whole logits), alternating rounds in one process, same batches. Quick
    mode times the tiny profile."""
    from modft_utils import adapters, modeling
    from modft_utils.modeling import head_loss

    if b.quick:
        prof, base, tok, dapt, sft, label = b.profile, b.base, b.tokenizer, b.dapt, b.sft, "tiny"
    else:
        prof, base, tok, dapt, sft = _smollm2_prepared(b, "head-loss")
        label = "smollm2"
    steps, rounds = b.steps(2, 4), b.steps(1, 2)
    model = adapters.add_adapter(modeling.load_base(prof, base), "domain", modeling.lora_config(prof.dapt.lora))
    stage, name, ds, collator = _training_stages(dapt, sft, tok)[0]
    plain_head = head_loss.head_of
    seconds = {"chunked head": [], "model": []}
    paths = {}
    for r in range(rounds + 1):  # round 0 warms both up
        for path in seconds:
            head_loss.head_of = plain_head if path == "chunked head" else (lambda model, **kw: None)
            try:
                adapters.activate(model, ["domain"], trainable=name)
                result = adapters.train_adapter(
                    model, name, ds, None, _spec(prof.dapt, steps), b.tmp / "head-loss" / f"{path}-{r}", collator,
                    compute_dtype=prof.model.compute_dtype, progress=False, resume=False,
                )  # fmt: skip
            finally:
                head_loss.head_of = plain_head
            paths[path] = result.loss_path
            if r:
                seconds[path].append(_train_only_seconds(result) / steps)
    ours, theirs = min(seconds["chunked head"]), min(seconds["model"])
    return [
        entry(
            f"DAPT step, {label}: chunked LM-head loss vs the model's own (s a step)",
            round(ours, 3),
            "s",
            round(theirs, 3),
            "<= 0.95",
            ours / theirs <= 0.95 and paths["chunked head"] == "chunked head",
            note=f"best of {rounds} alternating rounds of {steps} steps, batch {prof.dapt.train.batch_size} x "
            f"{prof.data.block_size} tokens, {prof.model.compute_dtype}; loss paths taken: {paths}",
        )
    ]


# ----------------------------------------------------------------------------- GPU


def bench_gpu(b: Bench) -> list[dict]:
    import torch

    if not torch.cuda.is_available():
        return [
            entry(
                "GPU benchmarks",
                None,
                "",
                None,
                "n/a",
                False,
                skipped=True,
                note="no GPU was available (torch.cuda.is_available() is False): skipped",
            )
        ]
    return [
        entry(
            "GPU",
            torch.cuda.get_device_name(0),
            "",
            None,
            "n/a",
            True,
            note="the measurements above ran with CUDA: the roofline rows (', GPU') against this GPU's matmul peak, "
            "with each training step's peak memory against `modft plan`",
        )
    ]


def bench_vllm(b: Bench) -> list[dict]:
    """vLLM serving the exports, answers against the live stack (`make vllm-check`; see vllm_check.py)."""
    from benchmarks import vllm_check

    return vllm_check.rows(log=lambda msg: print(msg, file=sys.stderr))


# run only when named in --only: it builds vLLM's own environment (minutes, 3.5 GB) the first time
OPT_IN = {"bench_vllm"}

BENCHES = [
    bench_overhead,
    bench_plain_recipe,
    bench_packing,
    bench_switch,
    bench_memory,
    bench_planner,
    bench_data_prep,
    bench_scoring,
    bench_serve,
    bench_roofline,
    bench_step_profile,
    bench_head_loss,
    bench_end_to_end,
    bench_gpu,
    bench_vllm,
]


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.4g}" if abs(x) < 1000 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def write_markdown(results: list[dict], meta: dict, path: Path) -> None:
    lines = [
        "# Benchmarks (`params/tiny.yaml`; the scoring and planner rows also `params/smollm2.yaml`)",
        "",
        f"Written by `python -m benchmarks.run{' --quick' if meta['quick'] else ''}` on {meta['when']} "
        f"({meta['machine']}; torch {meta['torch']}, {meta['threads']} threads; {meta['seconds']:.0f} s). "
        "Both sides of each comparison ran in the same process, warmed up.",
        *(
            (
                f"Re-measured with `--only {' '.join(m['only'])} --merge` on {m['when']}: "
                if m["only"]
                else f"Re-measured by earlier `--merge` runs, the last on {m['when']}: "
            )
            + ", ".join(f"`{n}`" for n in m["rows"])
            + "."
            for m in meta.get("merges", [])
        ),
        *(["The other rows are from the run above."] if meta.get("merges") else []),
        "",
        "| figure | value | reference | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        met = "skipped" if r["skipped"] else ("yes" if r["meets_goal"] else "**no**")
        unit = f" {r['unit']}" if r["unit"] and r["value"] is not None else ""
        ref_unit = f" {r['unit']}" if r["unit"] and r["reference"] is not None else ""
        lines.append(
            f"| {r['name']} | {_fmt(r['value'])}{unit} | {_fmt(r['reference'])}{ref_unit} | "
            f"{_fmt(r['ratio'])} | {r['goal']} | {met} |"
        )
    lines += ["", "Notes:", ""]
    lines += [f"- {r['name']}: {r['note']}" for r in results if r["note"]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


LEGACY_MERGE_KEYS = ("only", "merged_when", "merged_rows")


def merge_results(old: list[dict], new: list[dict], rerun: set[str]) -> list[dict]:
    """``old`` rows with the ``new`` ones in their places (by name) and the rest of ``new`` after them.

    An old row that a re-run function measured (its ``bench``) but no longer produces, a renamed figure
    say, is dropped: otherwise it would stay beside its new name, with older numbers.
    """
    fresh = {r["name"]: r for r in new}
    merged = []
    for row in old:
        if row["name"] in fresh:
            merged.append(fresh.pop(row["name"]))
        elif row.get("bench") not in rerun:
            merged.append(row)
    return merged + list(fresh.values())


def merge_history(old_meta: dict, only: list[str], when: str, rows: list[str]) -> list[dict]:
    """Every ``--merge`` with the rows it re-measured; a row measured again counts only under its latest.

    meta.json written before merges were kept one by one held a single ``merged_rows`` list under the
    last merge's date, whatever run measured each row: it becomes one entry without an ``only``.
    """
    history = [dict(m) for m in old_meta.get("merges", [])]
    if old_meta.get("merged_rows"):
        history.insert(0, {"only": [], "when": old_meta["merged_when"], "rows": list(old_meta["merged_rows"])})
    now = set(rows)
    history = [{**m, "rows": [r for r in m["rows"] if r not in now]} for m in history]
    return [m for m in history if m["rows"]] + [{"only": only, "when": when, "rows": sorted(now)}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shrink every measurement (well under 90 s)")
    parser.add_argument("--out", default=str(OUT_DIR), help="folder for results.json and RESULTS.md")
    parser.add_argument("--only", nargs="*", help="run only these benchmark functions (e.g. bench_packing)")
    parser.add_argument(
        "--merge", action="store_true", help="with --only: replace those rows in the existing results, keep the others"
    )
    args = parser.parse_args(argv)
    import torch
    import transformers

    start = time.perf_counter()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="modft-bench-") as tmp:
        b = Bench(args.quick, Path(tmp))
        for fn in BENCHES:
            if (args.only and fn.__name__ not in args.only) or (fn.__name__ in OPT_IN and not args.only):
                continue
            t = time.perf_counter()
            try:
                rows = fn(b)
            except Exception as exc:  # one failing measurement must not hide the others
                traceback.print_exc()
                rows = [
                    entry(
                        fn.__name__,
                        None,
                        "",
                        None,
                        "n/a",
                        False,
                        skipped=True,
                        note=f"failed: {type(exc).__name__}: {exc}",
                    )
                ]
            print(f"{fn.__name__}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
            for r in rows:
                r["bench"] = fn.__name__  # which function measured it: a --merge that re-runs it replaces them all
                print(
                    f"  {r['name']}: {_fmt(r['value'])} vs {_fmt(r['reference'])} (ratio {_fmt(r['ratio'])}, goal {r['goal']}, "
                    f"{'skipped' if r['skipped'] else 'met' if r['meets_goal'] else 'MISSED'})",
                    file=sys.stderr,
                )
            results.extend(rows)
            gc.collect()
    meta = {
        "quick": args.quick,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge and (out / "results.json").is_file():
        measured_now = [r["name"] for r in results]
        old = json.loads((out / "results.json").read_text(encoding="utf-8"))
        old_meta = (
            json.loads((out / "meta.json").read_text(encoding="utf-8")) if (out / "meta.json").is_file() else meta
        )
        results = merge_results(old, results, set(args.only or []))
        merges = merge_history(old_meta, args.only or [], meta["when"], measured_now)
        meta = {k: v for k, v in old_meta.items() if k not in LEGACY_MERGE_KEYS} | {"merges": merges}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_markdown(results, meta, out / "RESULTS.md")
    print(
        f"wrote {out / 'results.json'} and {out / 'RESULTS.md'} in {time.perf_counter() - start:.0f} s", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

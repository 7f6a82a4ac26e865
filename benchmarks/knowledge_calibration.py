"""How many exposures storing a fact takes: closed-book probe EM against DAPT exposures, on a real base.

``python -m benchmarks.knowledge_calibration [--profile params/smollm2.yaml] [--steps 210] [--points 3]``

The DAPT corpus is the sample's six harbour-pilot registers alone (``data/sample/knowledge_probe/
registers.jsonl``: every entry a fact dense paragraph), so each step shows many probe facts and the
curve costs minutes, not hours. One domain adapter is trained for ``--steps``; at ``--points`` evenly
spaced checkpoints (the Trainer's own) a task adapter learns closed-book answering on the probe's
``train`` pilots over that checkpoint, and the ``probe`` pilots are asked. Base + task (no domain
adapter) is the floor. The exposures per fact are counted from the blocks actually trained on
(:class:`modft_utils.data.ExposureCounter`), the same count notebook 02 reports for a profile.

Every step is a function of the package: the profile and data go through ``runs.open_run``,
``data.prepare_*``, ``adapters.train_adapter`` and ``evaluate.task_scores``, as in the notebooks.
Writes ``benchmarks/knowledge_calibration.json``; ``docs/knowledge.md`` keeps the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTERS = ROOT / "data/sample/knowledge_probe/registers.jsonl"
QUESTIONS = ROOT / "data/sample/knowledge_probe/questions.jsonl"
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def calibrate(
    profile_path: str,
    *,
    steps: int,
    points: int,
    rank: int,
    lr: float,
    modules: list[str],
    sft_steps: int,
    probe_questions: int,
    replay_share: float,
    replay_file: str,
    work: Path,
    replay_label: str | None = None,
    replay_loss: str = "text",
) -> dict:
    from transformers import default_data_collator

    from modft_utils import adapters, data, evaluate, modeling, runs
    from modft_utils.data.sft import sft_collator, tokenize_closed_book

    save_every = max(1, steps // points)
    overrides = {
        "data.dapt.train_file": str(REGISTERS),
        "data.knowledge_probe": str(QUESTIONS),
        "dapt.lora.r": rank,
        "dapt.lora.alpha": 2 * rank,
        "dapt.lora.target_modules": modules,
        "dapt.train.max_steps": steps,
        "dapt.train.learning_rate": lr,
        "dapt.train.warmup_steps": min(10, steps // 10),
        "dapt.train.save_steps": save_every,
        "dapt.train.keep_checkpoints": points,  # every point of the curve is scored after training
        "dapt.train.eval_steps": steps,
        "compose.closed_book_examples": probe_questions,
        "data.replay_share": replay_share,
        "data.replay_file": replay_file if replay_share else None,
        "data.replay_loss": replay_loss if replay_share else "text",
        "registry": str(work / "registry"),
        "cache_dir": str(ROOT / "outputs/cache"),
        "runs_dir": str(work / "runs"),
    }
    run = runs.open_run(profile_path, work / "run", overrides, fresh=True, progress=False)
    prof, tokenizer = run.profile, run.tokenizer
    cleaned = data.clean_dapt(prof, progress=False)
    dapt = data.prepare_dapt(prof, tokenizer, run, cleaned, progress=False)
    probe = data.prepare_knowledge_probe(prof, cleaned.train_docs, run)
    fmt = data.prompt_format(prof, tokenizer)
    rows = [
        tokenize_closed_book(q.question, q.answers[0], tokenizer, prof.data.max_sft_tokens, fmt) for q in probe.train
    ]
    from datasets import Dataset

    sft_train = Dataset.from_list(rows)
    asked = data.prepare_closed_book(prof, tokenizer, run, cleaned.train_docs, probe)
    counter = data.ExposureCounter(tokenizer, probe.facts())
    medians: list[float] = []

    def count(input_ids) -> None:
        counter(input_ids)
        medians.append(statistics.median(counter.counts))

    sft_spec = prof.sft.train.model_copy(
        update={
            "max_steps": sft_steps,
            "eval_steps": sft_steps,
            "save_steps": 0,
            "warmup_steps": min(5, sft_steps // 10),
        }
    )

    def task_then_score(model, stack: list[str], name: str) -> dict:
        model = adapters.add_adapter(model, name, modeling.lora_config(prof.sft.lora))
        adapters.activate(model, [*stack, name], trainable=name)
        start = time.perf_counter()
        adapters.train_adapter(
            model,
            name,
            sft_train,
            None,  # scored by task_scores below
            sft_spec,
            work / name,
            sft_collator(tokenizer),
            compute_dtype=prof.model.compute_dtype,
            progress=False,
        )
        scores = evaluate.task_scores(model, tokenizer, asked, max_new_tokens=prof.sft.max_new_tokens)
        return {"exact_match": scores["exact_match"], "f1": scores["f1"], "seconds": time.perf_counter() - start}

    generic = data.load_generic_blocks(prof, tokenizer, prof.dapt.eval_blocks)

    def perplexities(model) -> dict:
        """Forgetting beside storing: the stack's perplexity on prose outside the domain and on held-out wikitext."""
        return {
            "generic_ppl": evaluate.perplexity(model, generic),
            "domain_ppl": evaluate.perplexity(model, dapt.eval_blocks.select(range(prof.dapt.eval_blocks))),
        }

    model = modeling.load_base(prof, run.base)
    base_ppl = perplexities(model)
    floor = task_then_score(model, [], "task_floor")
    model = adapters.add_adapter(model, "domain", modeling.domain_lora_config(prof, run.base, model))
    adapters.activate(model, ["domain"], trainable="domain")
    start = time.perf_counter()
    result = adapters.train_adapter(
        model,
        "domain",
        dapt.train_blocks,
        evaluate.held_out_nll(dapt.eval_blocks.select(range(min(16, len(dapt.eval_blocks))))),
        prof.dapt.train,
        work / "domain",
        default_data_collator,
        compute_dtype=prof.model.compute_dtype,
        progress=False,
        on_batch=count,
    )
    dapt_seconds = time.perf_counter() - start
    # The training loss near each point: whether the registers were memorized at all, beside whether
    # the task adapter could extract what was memorized.
    train_losses = dict(adapters.loss_curves(result.log_history)["train"])
    curve = []
    for ckpt in sorted((work / "domain/checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(ckpt.name.split("-")[1])
        model = modeling.load_base(prof, run.base)
        model = adapters.load_adapter(model, ckpt / "domain", "domain")  # a checkpoint keeps each adapter in its folder
        adapters.activate(model, ["domain"])
        ppl = perplexities(model)
        point = task_then_score(model, ["domain"], f"task_{step}")
        point.update(ppl)
        point.update(
            dapt_steps=step,
            exposures_median=medians[step - 1],
            dapt_train_loss=train_losses[max(s for s in train_losses if s <= step)],
            dapt_tokens=step * prof.dapt.train.batch_size * prof.data.block_size,
        )
        curve.append(point)
        print(json.dumps(point), flush=True)
    return {
        "profile": prof.name,
        "corpus": str(REGISTERS.relative_to(ROOT)),
        "train_blocks": len(dapt.train_blocks),
        "replay_share": replay_share,
        "replay_file": (replay_label or str(Path(replay_file).resolve().relative_to(ROOT))) if replay_share else None,
        "replay_blocks": dapt.replay_blocks,
        "replay_loss": prof.data.replay_loss,
        "base": base_ppl,
        "probe_questions": len(asked),
        "train_questions": len(probe.train),
        "lora": {"r": rank, "alpha": 2 * rank, "target_modules": modules},
        "learning_rate": lr,
        "batch_size": prof.dapt.train.batch_size,
        "block_size": prof.data.block_size,
        "dapt_seconds": dapt_seconds,
        "dapt_tokens_per_second": result.tokens_per_second,
        "compute_dtype": prof.model.compute_dtype,
        "sft_steps": sft_steps,
        "floor_base_task": floor,
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=str(ROOT / "params/smollm2.yaml"))
    parser.add_argument("--steps", type=int, default=210)
    parser.add_argument("--points", type=int, default=3)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--modules", default=",".join(MODULES))
    parser.add_argument("--sft-steps", type=int, default=60)
    parser.add_argument("--probe-questions", type=int, default=120)
    parser.add_argument(
        "--replay-share", type=float, default=0.0, help="share of DAPT blocks that are replay text (0: none)"
    )
    parser.add_argument(
        "--replay-file",
        default=str(ROOT / "data/sample/wikitext/train.jsonl"),
        help="the replay text: by default the whole sample domain corpus, the registers' 5%% share of it included",
    )
    parser.add_argument(
        "--replay-self",
        type=int,
        default=0,
        help="replay this many texts sampled from the base itself (modft_utils.data.write_base_samples) instead of --replay-file",
    )
    parser.add_argument(
        "--replay-loss",
        choices=["text", "distill"],
        default="text",
        help="data.replay_loss: the replay blocks' own tokens, or the base's next-token distributions on them (KL)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/knowledge_calibration.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        label = None
        if args.replay_self:
            from modft_utils import config, data

            prof = config.load_profile(args.profile, {"cache_dir": str(ROOT / "outputs/cache")})
            args.replay_file = str(data.write_base_samples(prof, Path(tmp) / "replay_self.jsonl", args.replay_self))
            label = f"{args.replay_self} texts sampled from the base (--replay-self)"
        out = calibrate(
            args.profile,
            steps=args.steps,
            points=args.points,
            rank=args.rank,
            lr=args.lr,
            modules=args.modules.split(","),
            sft_steps=args.sft_steps,
            probe_questions=args.probe_questions,
            replay_share=args.replay_share,
            replay_file=args.replay_file,
            work=Path(tmp),
            replay_label=label,
            replay_loss=args.replay_loss,
        )
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "curve"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``modft`` command: run the workbook headlessly, validate profiles, manage the adapter store.

    modft run --profile params/smollm2.yaml [--notebooks 01 02] [--set dapt.train.max_steps=20]
    modft validate --profile params/minimax_m2.yaml
    modft params
    modft registry list|show|publish|promote|rollback|verify ...
    modft baseline
"""

from __future__ import annotations

import argparse
import os
import sys

from .config import ProfileError, describe, load_profile, parse_override
from .data import DataError
from .plan import add_plan_command
from .registry import add_registry_commands
from .runner import RunError


def _overrides(items: list[str] | None) -> dict:
    return dict(parse_override(item) for item in items or [])


def _cmd_run(args) -> int:
    from . import record
    from .runner import NotebookFailed, run_notebooks

    try:
        result = run_notebooks(
            args.profile, run_dir=args.run_dir, notebooks=args.notebooks, overrides=_overrides(args.set),
            log_output=args.log_output, progress=not args.quiet,
        )
    except NotebookFailed as exc:
        print(f"[modft] FAILED: {exc}", file=sys.stderr)
        return 1
    keys = [k for k in SUMMARY_KEYS if k in result.metrics]
    print("\n[modft] metrics")
    print(record.metrics_table(result.metrics, keys))
    print("\n[modft] seconds per notebook: " + ", ".join(f"{nb} {s:.0f}" for nb, s in result.seconds.items())
          + f" (total {sum(result.seconds.values()):.0f})")
    print(f"[modft] outputs: {result.run_dir}")
    print("[modft]   metrics.json, notebooks/ (executed), adapters/, figures/")
    return 0


SUMMARY_KEYS = [
    "data.dapt_train_tokens", "data.sft_train_examples", "data.pii_replacements", "data.tokens_per_word",
    "dapt.ppl_base", "dapt.ppl_domain", "sft.em_domain", "sft.em_stack", "sft.f1_domain", "sft.f1_stack",
    "sft.answer_nll_domain", "sft.answer_nll_stack", "sft.domain_adapter_unchanged", "compose.switch_ms",
    "rollback.max_abs_logit_diff_task_off", "rollback.max_abs_logit_diff_all_off",
]


def _cmd_validate(args) -> int:
    from .data import validate_inputs
    from .modeling import preflight

    profile = load_profile(args.profile, _overrides(args.set))
    # The base's config is read here, so a model.id typo fails now and not in notebook 01. The GPU
    # check is left out: a profile is validated wherever it is written; `modft run` checks the device.
    spec = profile.model
    preflight(profile.model_copy(update={"model": spec.model_copy(update={"requires_cuda": False})}))
    rows = validate_inputs(profile)
    gpu = "; needs a CUDA GPU to run" if spec.requires_cuda else ""
    print(f"{profile.source}: profile {profile.name!r} is valid (model {spec.id}); "
          f"{len(rows)} local data file(s), {sum(rows.values()):,} rows read{gpu}")
    return 0


def _cmd_params(args) -> int:
    rows = describe()
    width = max(len(r[0]) for r in rows)
    for key, typ, default, help_text in rows:
        print(f"{key:<{width}}  {typ:<10} {default:<14} {help_text}")
    return 0


def _cmd_baseline(args) -> int:
    from .runner import make_baseline

    make_baseline()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modft", description="Modular fine-tuning workbook: DAPT + SFT adapters on a 4-bit base.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the numbered notebooks headlessly with papermill")
    run.add_argument("--profile", default="params/smollm2.yaml", help="profile YAML (default: params/smollm2.yaml)")
    run.add_argument("--notebooks", nargs="*", help="subset by number or name, e.g. 01 02 (default: all five)")
    run.add_argument("--run-dir", help="run folder (default: <runs_dir>/<time>-<profile>-<host>)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a profile key, e.g. dapt.train.max_steps=20")
    run.add_argument("--log-output", action="store_true", help="stream cell output to the console")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)

    val = sub.add_parser("validate", help="check a profile without loading anything")
    val.add_argument("--profile", required=True)
    val.add_argument("--set", action="append", metavar="KEY=VALUE")
    val.set_defaults(func=_cmd_validate)

    prm = sub.add_parser("params", help="list every profile key with its type, default and meaning")
    prm.set_defaults(func=_cmd_params)

    base = sub.add_parser("baseline", help="regenerate the outputs nbval checks in the committed notebooks")
    base.set_defaults(func=_cmd_baseline)

    add_registry_commands(sub)
    add_plan_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ProfileError, DataError, RunError) as exc:
        print(f"modft: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``modft`` command: run the workbook headlessly, validate profiles, manage the adapter store.

    modft run --profile params/smollm2.yaml [--notebooks 01 02] [--set dapt.train.max_steps=20]
    modft validate --profile params/minimax_m2.yaml
    modft params
    modft registry list|show|publish|promote|rollback|settle|verify|recover ...
    modft plan --profile params/minimax_m2.yaml --gpu-memory 24GiB --gpus 1
    modft baseline
    modft serve [--run DIR] [--stack NAME=domain@production+task@candidate]

Every subcommand is a thin layer over the package: the store's operations are
:class:`modft_utils.store.registry.Registry`'s, the plan is :func:`modft_utils.plan.planner.plan`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modft_utils import plan, record, runs
from modft_utils.config import ProfileError, describe, load_profile, parse_override
from modft_utils.data import validate_inputs, write_base_samples
from modft_utils.errors import ModftError
from modft_utils.modeling import PlanError, preflight
from modft_utils.runner import NotebookFailed, make_baseline, run_notebooks
from modft_utils.serve.command import add_export_command, add_serve_command
from modft_utils.store import (
    BASE_RECORD,
    CONFIG_FILE,
    DEFAULT_ROOT,
    WEIGHTS_FILE,
    BaseIdentity,
    Registry,
    RegistryError,
    UnsettledError,
    base_identity_from_config_file,
    check_adapter_dir,
    check_name,
    loads_json,
    read_base_record,
    recovery,
    registry,
    vocab_size_of_config_file,
)


def _overrides(items: list[str] | None) -> dict:
    return dict(parse_override(item) for item in items or [])


def _cmd_run(args) -> int:

    try:
        result = run_notebooks(
            args.profile,
            run_dir=args.run_dir,
            notebooks=args.notebooks,
            overrides=_overrides(args.set),
            log_output=args.log_output,
            progress=not args.quiet,
        )
    except NotebookFailed as exc:
        print(f"[modft] FAILED: {exc}", file=sys.stderr)
        return 1
    keys = [k for k in SUMMARY_KEYS if k in result.metrics]
    print("\n[modft] metrics")
    print(record.metrics_table(result.metrics, keys))
    print(
        "\n[modft] seconds per notebook: "
        + ", ".join(f"{nb} {s:.0f}" for nb, s in result.seconds.items())
        + f" (total {sum(result.seconds.values()):.0f})"
    )
    print(f"[modft] outputs: {result.run_dir}")
    print("[modft]   metrics.json, notebooks/ (executed), adapters/, figures/")
    return 0


SUMMARY_KEYS = [
    "data.dapt_train_tokens",
    "data.sft_train_examples",
    "data.pii_replacements",
    "data.tokens_per_word",
    "dapt.ppl_base",
    "dapt.ppl_domain",
    "sft.em_domain",
    "sft.em_stack",
    "sft.f1_domain",
    "sft.f1_stack",
    "sft.answer_nll_domain",
    "sft.answer_nll_stack",
    "sft.domain_adapter_unchanged",
    "compose.switch_ms",
    "rollback.max_abs_logit_diff_task_off",
    "rollback.max_abs_logit_diff_all_off",
]


def _cmd_validate(args) -> int:

    profile = load_profile(args.profile, _overrides(args.set))
    # The base's config is read here, so a model.id typo fails now and not in notebook 01. The GPU
    # check is left out: a profile is validated wherever it is written; `modft run` checks the device.
    spec = profile.model
    preflight(profile.model_copy(update={"model": spec.model_copy(update={"requires_cuda": False})}))
    rows = validate_inputs(profile)
    gpu = "; needs a CUDA GPU to run" if spec.requires_cuda else ""
    print(
        f"{profile.source}: profile {profile.name!r} is valid (model {spec.id}); "
        f"{len(rows)} local data file(s), {sum(rows.values()):,} rows read{gpu}"
    )
    return 0


def _cmd_base_samples(args) -> int:
    profile = load_profile(args.profile, _overrides(args.set))
    out = write_base_samples(profile, args.out, args.texts, new_tokens=args.new_tokens, seed=args.seed)
    rows = len(out.read_text().splitlines())
    print(f"{out}: {rows} texts sampled from {profile.model.id} (seed {args.seed}); use it as data.replay_file")
    return 0


def _cmd_params(args) -> int:
    rows = describe()
    width = max(len(r[0]) for r in rows)
    for key, typ, default, help_text in rows:
        print(f"{key:<{width}}  {typ:<10} {default:<14} {help_text}")
    return 0


def _cmd_baseline(args) -> int:

    make_baseline()
    return 0


# --------------------------------------------------------------------------- modft registry


def add_registry_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``registry {list,show,publish,promote,rollback,settle,verify,recover}`` to an argparse subparsers object."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        default=DEFAULT_ROOT,
        metavar="URI",
        help=f"registry folder or fsspec URL (default: {DEFAULT_ROOT})",
    )

    reg = subparsers.add_parser(
        "registry", help="versioned store of LoRA adapters", description=registry.__doc__.split("\n\n")[0]
    )
    sub = reg.add_subparsers(dest="registry_command", metavar="COMMAND", required=True)
    sub.add_parser("list", parents=[common], help="every version of every adapter")
    p = sub.add_parser("show", parents=[common], help="one version in detail")
    p.add_argument("ref", metavar="NAME[@VERSION|@ALIAS]")
    p = sub.add_parser("publish", parents=[common], help="store an adapter folder as the next version")
    p.add_argument("name", metavar="NAME")
    p.add_argument("adapter_dir", metavar="DIR", help="folder with adapter_config.json and adapter_model.safetensors")
    p.add_argument("--parent", metavar="REF", help="adapter this one was trained on, e.g. domain@production")
    p.add_argument(
        "--base-config",
        metavar="PATH",
        help="base config.json (or its folder); default: the base of the run folder holding DIR "
        "(vocabulary extension included), else <base_model_name_or_path>/config.json",
    )
    p.add_argument("--base-revision", metavar="REV", help="hub revision of the base, when it came from the hub")
    p.add_argument("--params", default="{}", metavar="JSON", help="training parameters, a JSON object")
    p.add_argument("--metrics", default="{}", metavar="JSON", help="evaluation metrics, a JSON object")
    p.add_argument("--data-fingerprint", default="", metavar="SHA", help="fingerprint of the training data")
    p.add_argument("--note", default="")
    p = sub.add_parser("promote", parents=[common], help="point an alias at a version")
    p.add_argument("name", metavar="NAME")
    p.add_argument("version", metavar="VERSION", help="a version number, or an alias whose version to take")
    p.add_argument("--alias", default="production")
    p.add_argument("--reason", required=True)
    p.add_argument("--actor", help="who (default: user@host)")
    p = sub.add_parser("rollback", parents=[common], help="move an alias back to its previous version")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--alias", default="production")
    p.add_argument("--reason", required=True)
    p.add_argument("--actor", help="who (default: user@host)")
    p = sub.add_parser(
        "settle",
        parents=[common],
        help="record a person's decision where the store holds what no crash leaves (writes wait for it)",
        description="Settle what `verify` says no crash explains: an alias that aliases.json and the audit "
        "log disagree on (NAME ALIAS --to VERSION|none), versions missing from the log (NAME --adopt), "
        "or a published version that is gone for good (NAME --lost VERSION).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("alias", nargs="?", metavar="ALIAS", help="the alias to settle")
    p.add_argument("--to", metavar="VERSION", help="the version the alias is to hold, or 'none' to remove it")
    p.add_argument("--adopt", action="store_true", help="write the missing publish records from the manifests")
    p.add_argument("--lost", type=int, metavar="VERSION", help="record that this published version is gone")
    p.add_argument("--reason", required=True)
    p.add_argument("--actor", help="who (default: user@host)")
    p = sub.add_parser("verify", parents=[common], help="re-hash every stored file; exit 1 on any problem")
    p.add_argument("name", nargs="?", metavar="NAME")
    p = sub.add_parser(
        "recover", parents=[common], help="record and clean up what a killed publish, promote or rollback left"
    )
    p.add_argument("name", nargs="?", metavar="NAME")
    reg.set_defaults(func=registry_main)
    return reg


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = loads_json(text)
    except json.JSONDecodeError as err:
        raise RegistryError(f"{option}: not JSON ({err})") from None
    except ValueError as err:  # NaN, Infinity
        raise RegistryError(f"{option}: {err}") from None
    if not isinstance(value, dict):
        raise RegistryError(f"{option}: expected a JSON object, got {type(value).__name__}")
    return value


def _cli_base(args: argparse.Namespace, adapter_config: Mapping[str, Any]) -> tuple[BaseIdentity, str, int | None]:
    """The identity of the base the adapter was trained on, where it came from, and that config's vocab_size.

    Sources, first wins: --base-config, the run folder holding the adapter, the adapter's own
    base record. Every source present must name the same base config, or the publish is refused;
    with none, ``<base_model_name_or_path>/config.json`` is taken (an adapter trained elsewhere).
    The vocab_size is known when the identity comes from a config file; the publish then refuses an
    adapter whose token rows go beyond it (one trained on a vocabulary-extended base).
    """
    adapter_dir = Path(args.adapter_dir)
    base_path = str(adapter_config.get("base_model_name_or_path") or "")
    run = runs.folder_of_adapter(adapter_dir)
    sources: list[tuple[str, BaseIdentity]] = []
    vocab_size = None
    if args.base_config is not None:
        sources.append(
            (
                f"--base-config {args.base_config}",
                base_identity_from_config_file(args.base_config, model_id=base_path, revision=args.base_revision),
            )
        )
        vocab_size = vocab_size_of_config_file(args.base_config)
    if run is not None:
        sources.append((f"run folder {run}", runs.trained_base_identity(run, base_path, args.base_revision)))
    record = read_base_record(adapter_dir)
    if record is not None:
        sources.append((str(adapter_dir / BASE_RECORD), record))
    if not sources:
        guess = Path(base_path) / "config.json" if base_path else None
        if guess is None or not guess.is_file():
            raise RegistryError(
                f"--base-config is needed: base_model_name_or_path {base_path!r} in "
                f"{adapter_dir / CONFIG_FILE} is not a local folder with a config.json, and {adapter_dir} "
                f"has no {BASE_RECORD} and is not inside a run folder"
            )
        sources.append(
            (str(guess), base_identity_from_config_file(guess, model_id=base_path, revision=args.base_revision))
        )
        vocab_size = vocab_size_of_config_file(guess)
    (label, identity), *others = sources
    if any(other.config_sha256 != identity.config_sha256 for _, other in others):
        width = max(len(src) for src, _ in sources) + 1
        raise RegistryError(
            f"{label} is not the base this adapter was trained on:\n"
            + "\n".join(f"  {src + ':':<{width}} {base}" for src, base in sources)
        )
    return identity, label, vocab_size


def _print_repairs(name: str, repairs: Sequence[Mapping[str, Any]]) -> None:
    """Every repair a write made before its own action: nothing changes in the store unseen."""
    for repair in repairs:
        print(f"repaired {recovery.describe(name, dict(repair))}")


def _cli_publish(reg: Registry, args: argparse.Namespace) -> int:
    params = _json_object(args.params, "--params")
    metrics = _json_object(args.metrics, "--metrics")
    check_name(args.name)
    adapter_config = check_adapter_dir(args.adapter_dir)
    base, source, vocab_size = _cli_base(args, adapter_config)
    v = reg.publish(
        args.name,
        args.adapter_dir,
        base=base,
        parent=args.parent,
        params=params,
        data_fingerprint=args.data_fingerprint,
        metrics=metrics,
        note=args.note,
        base_vocab_size=vocab_size,
    )
    _print_repairs(args.name, v.repairs)
    if v.reused:
        print(
            f"{v.ref} already holds these files (same base and parent): nothing published; "
            f"its manifest keeps what it was published with ({v.manifest.created_at}, note {v.manifest.note!r})"
        )
    else:
        print(
            f"published {v.ref} at {v.uri} (weights sha256 {v.manifest.files[WEIGHTS_FILE][:12]}; base from {source})"
        )
    return 0


def _cli_verify(reg: Registry, name: str | None) -> int:
    problems = reg.verify(name)
    for problem in problems:
        print(f"MISMATCH {problem}")
    for note in reg.verify_notes(name):
        print(f"note: {note}")
    if problems:
        print(f"{len(problems)} problem(s) in registry {reg.uri}", file=sys.stderr)
        return 1
    names = [name] if name else reg.names()
    count = sum(len(reg.versions(n)) for n in names)
    print(f"ok: {count} version(s) of {len(names)} adapter(s) verified in {reg.uri}")
    return 0


def _cli_recover(reg: Registry, name: str | None) -> int:
    # One adapter at a time: one that waits for a person does not keep the others from being repaired.
    rc, repaired = 0, False
    for adapter in [name] if name is not None else reg.names():
        try:
            records = reg.recover(adapter)[adapter]
        except UnsettledError as err:
            print(f"error: {err}", file=sys.stderr)
            rc = 1
            continue
        for r in records:
            print(recovery.describe(adapter, r))
        repaired = repaired or bool(records)
    if not repaired and rc == 0:
        print(f"nothing to recover in registry {reg.uri}")
    return rc


def _cli_settle(reg: Registry, args: argparse.Namespace) -> int:
    modes = [args.alias is not None, args.adopt, args.lost is not None]
    if sum(modes) != 1:
        raise RegistryError("settle one thing at a time: NAME ALIAS --to VERSION, NAME --adopt, or NAME --lost VERSION")
    if args.alias is not None:
        if args.to is None:
            raise RegistryError(f"settle {args.name} {args.alias}: --to VERSION (or --to none) is needed")
        if args.to != "none" and not args.to.isdecimal():
            raise RegistryError(f"--to {args.to!r}: a version number, or 'none' to remove the alias")
        to = None if args.to == "none" else int(args.to)
        e = reg.settle(args.name, args.alias, to, reason=args.reason, actor=args.actor)
        _print_repairs(args.name, e.repairs)
        was = e["from"] if e["from"] is not None else "-"
        logged = e["logged"] if e["logged"] is not None else "-"
        print(
            f"{args.name}@{args.alias}: settled at {to if to is not None else '- (removed)'} "
            f"(aliases.json had {was}, the log {logged}; by {e['actor']})"
        )
    elif args.adopt:
        records, repairs = reg.adopt_versions(args.name, reason=args.reason, actor=args.actor)
        _print_repairs(args.name, repairs)
        print(f"{args.name}: recorded the publish of version(s) {[r['version'] for r in records]} from their manifests")
    else:
        e = reg.record_lost(args.name, args.lost, reason=args.reason, actor=args.actor)
        _print_repairs(args.name, e.repairs)
        print(f"{args.name}@{args.lost}: recorded as lost (its number is never issued again)")
    return 0


def registry_main(args: argparse.Namespace) -> int:
    """Run one ``registry`` subcommand parsed by :func:`add_registry_commands`; return the exit code."""
    try:
        reg = Registry(args.registry)
        command = args.registry_command
        if command == "list":
            print(reg.list_table())
        elif command == "show":
            print(reg.show_table(args.ref))
        elif command == "publish":
            return _cli_publish(reg, args)
        elif command in ("promote", "rollback"):
            if command == "promote":
                e = reg.promote(args.name, args.version, args.alias, reason=args.reason, actor=args.actor)
            else:
                e = reg.rollback(args.name, args.alias, reason=args.reason, actor=args.actor)
            _print_repairs(args.name, e.repairs)
            before = e["from"] if e["from"] is not None else "-"
            print(f"{args.name}@{e['alias']}: {before} -> {e['to']} ({command} by {e['actor']})")
        elif command == "verify":
            return _cli_verify(reg, args.name)
        elif command == "recover":
            return _cli_recover(reg, args.name)
        elif command == "settle":
            return _cli_settle(reg, args)
        else:
            raise RegistryError(f"unknown registry command {command!r}")
    except RegistryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a read the filesystem refused; writes are turned into RegistryError
        print(f"error: registry {args.registry}: {err}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- modft plan


def _cmd_plan(args) -> int:
    try:
        profile = load_profile(args.profile, check_paths=False)
        result = plan.plan(
            profile,
            gpu_memory=args.gpu_memory,
            gpus=args.gpus,
            experts_4bit=not args.stock_experts,
            stage=args.stage,
            config_path=args.config,
        )
    except (PlanError, ProfileError) as exc:
        print(f"modft plan: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.table())
    return 1 if args.check and not result.fits else 0


def add_plan_command(subparsers) -> argparse.ArgumentParser:
    """Add ``modft plan``: print the memory plan of a profile (no weights are downloaded)."""
    p = subparsers.add_parser("plan", help="will this profile's training fit on this GPU? (reads configs only)")
    p.add_argument("--profile", required=True, help="profile YAML, e.g. params/minimax_m2.yaml")
    p.add_argument("--gpu-memory", help="memory per GPU, e.g. 24GiB, 80GB (default: the profile's, else 24GiB)")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs (device_map='auto' splits whole layers)")
    p.add_argument("--stage", choices=("dapt", "sft", "both"), default="both", help="which training phase(s)")
    p.add_argument(
        "--stock-experts",
        action="store_true",
        help="price the fused experts as stock bitsandbytes leaves them (16-bit), not 4-bit",
    )
    p.add_argument("--config", help="a local config.json to use instead of the profile's base (offline hub ids)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 when it does not fit")
    p.set_defaults(func=_cmd_plan)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modft", description="Modular fine-tuning workbook: DAPT + SFT adapters on a 4-bit base."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the numbered notebooks headlessly with papermill")
    run.add_argument("--profile", default="params/smollm2.yaml", help="profile YAML (default: params/smollm2.yaml)")
    run.add_argument("--notebooks", nargs="*", help="subset by number or name, e.g. 01 02 (default: all five)")
    run.add_argument("--run-dir", help="run folder (default: <runs_dir>/<time>-<profile>-<host>)")
    run.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a profile key, e.g. dapt.train.max_steps=20"
    )
    run.add_argument("--log-output", action="store_true", help="stream cell output to the console")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)

    val = sub.add_parser("validate", help="check a profile without loading anything")
    val.add_argument("--profile", required=True)
    val.add_argument("--set", action="append", metavar="KEY=VALUE")
    val.set_defaults(func=_cmd_validate)

    smp = sub.add_parser(
        "base-samples", help="sample general text from the profile's base, as a replay file (data.replay_file)"
    )
    smp.add_argument("--profile", required=True)
    smp.add_argument("--out", required=True, help="JSON-lines file to write ({'text': ...} per line)")
    smp.add_argument("--texts", type=int, default=224, help="how many texts (default: 224)")
    smp.add_argument("--new-tokens", type=int, default=160, help="tokens sampled per text (default: 160)")
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--set", action="append", metavar="KEY=VALUE")
    smp.set_defaults(func=_cmd_base_samples)

    prm = sub.add_parser("params", help="list every profile key with its type, default and meaning")
    prm.set_defaults(func=_cmd_params)

    base = sub.add_parser("baseline", help="regenerate the outputs nbval checks in the committed notebooks")
    base.set_defaults(func=_cmd_baseline)

    add_registry_commands(sub)
    add_plan_command(sub)
    add_serve_command(sub)
    add_export_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModftError as exc:  # every error of ours, whichever part raised it: one line, no traceback
        print(f"modft: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

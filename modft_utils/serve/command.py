"""``modft serve`` (and ``python -m modft_utils.serve``): what to serve, then the server.

With no arguments it serves what the newest ``make run`` produced: the newest run folder under the
default profile's ``runs_dir`` that holds a ``profile.resolved.json``, with that run's profile, base
(vocabulary extension included) and store. ``--run``, ``--profile`` and ``--registry`` choose otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from modft_utils import modeling, runs
from modft_utils.adapters import AdapterStack, active_adapters
from modft_utils.config import Profile, ProfileError, load_profile
from modft_utils.data import prompt_format
from modft_utils.errors import ModftError
from modft_utils.serve import targets
from modft_utils.serve.engine import Engine, Loaded, ServeError
from modft_utils.serve.export import EXPORT_RECORD, dequantized_loader
from modft_utils.serve.server import Settings, create_app
from modft_utils.serve.stacks import StackSpec, default_stacks, parse_stack, stack_specs
from modft_utils.store import Registry, base_identity

# what `make run` runs (the Makefile's PROFILE), found from any working folder
DEFAULT_PROFILE = str(modeling.REPO_ROOT / "params" / "smollm2.yaml")
ADMIN_TOKEN_ENV = "MODFT_ADMIN_TOKEN"
REQUEST_LOG = Path("serve") / "requests.jsonl"  # inside the run folder, unless --log

log = logging.getLogger("modft.serve")


@dataclass
class Target:
    """What a server serves: a run folder, its profile, and the store its stacks follow."""

    run: runs.RunFolder
    profile: Profile
    registry: Registry


def add_target_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--run, --profile and --registry: which run, profile and store (``modft serve`` and ``modft export``)."""
    p.add_argument(
        "--run", metavar="DIR", help="run folder to serve (default: the newest under the profile's runs_dir)"
    )
    p.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help="profile whose runs_dir holds the runs (default: params/smollm2.yaml); the run's own profile is served",
    )
    p.add_argument("--registry", metavar="URI", help="store the stacks follow (default: the run's profile's registry)")
    return p


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``modft serve``."""
    add_target_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--stack",
        action="append",
        default=[],
        metavar="NAME=REFS",
        help="add or replace a named stack, e.g. canary=domain@production+task@candidate (repeatable)",
    )
    p.add_argument("--no-default-stacks", action="store_true", help="serve only the --stack stacks")
    p.add_argument("--poll", type=float, default=0.5, metavar="S", help="seconds between reads of the aliases (0.5)")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together at most (8)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch waits for more requests (10)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting or decoding at most; then 429 (64)")
    p.add_argument("--max-tokens", type=int, default=256, help="the most tokens a request may ask for (256)")
    p.add_argument("--default-max-tokens", type=int, default=64, help="tokens for a request that sets none (64)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body; then 413 (1 MiB)")
    p.add_argument("--log", metavar="PATH", help=f"JSON-lines request log (default: <run>/{REQUEST_LOG})")
    p.add_argument("--log-prompts", action="store_true", help="write prompt text to the request log (off by default)")
    p.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help=f"file holding the admin bearer token (or set {ADMIN_TOKEN_ENV}); without one there are no admin routes",
    )
    p.add_argument("--actor", default=None, help="who the audit log names for admin actions (default: this user)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--engine",
        default="embedded",
        choices=("embedded", "vllm"),
        help="who decodes: this process (embedded, the default) or a running vLLM (--engine-url)",
    )
    p.add_argument("--engine-url", metavar="URL", help="the vLLM server to drive, e.g. http://127.0.0.1:8001")
    p.add_argument(
        "--engine-wait",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds to wait for vLLM to answer at start (600)",
    )
    p.add_argument(
        "--engine-export",
        metavar="DIR",
        help="the `modft export --target vllm` folder whose base that vLLM serves "
        "(default: <run>/exports/vllm-base+domain+task, where `modft export --target vllm` writes)",
    )
    return p


def add_serve_command(subparsers) -> argparse.ArgumentParser:
    """Add ``serve`` to the CLI's subparsers (``modft serve ...``)."""
    p = subparsers.add_parser("serve", help="serve the stacks over the OpenAI HTTP API, following the store's aliases")
    add_arguments(p)
    p.set_defaults(func=serve_main)
    return p


def newest_run(profile_path: str | os.PathLike) -> Path:
    """The newest run folder under ``profile_path``'s runs_dir that holds a resolved profile."""
    profile = load_profile(profile_path, check_paths=False)
    runs_dir = profile.resolve(profile.runs_dir)
    found = sorted(
        (p.stat().st_mtime, d)
        for d in (runs_dir.iterdir() if runs_dir.is_dir() else [])
        if (p := d / runs.RESOLVED_PROFILE).is_file()
    )
    if not found:
        raise ProfileError(
            f"no run to serve in {runs_dir} (runs_dir of {profile_path}): run `make run` first, or pass --run DIR"
        )
    return found[-1][1]


def target(args: argparse.Namespace) -> Target:
    """The run, profile and store ``args`` choose."""
    place = runs.folder(args.run if args.run else newest_run(args.profile))
    profile = runs.read_resolved(place)
    return Target(place, profile, Registry(args.registry or profile.registry_uri()))


def run_base(run: runs.RunFolder, profile: Profile):
    """The run's base, with the vocabulary extension notebook 01 recorded for it (as ``runs.open_run``)."""
    return modeling.ensure_base(profile, modeling.load_decision(run.vocab_extension), progress=False)


def loader(run: runs.RunFolder, profile: Profile):
    """What the worker calls to load the base: as ``runs.open_run`` does for notebooks 02-05."""

    def load() -> Loaded:
        base = run_base(run, profile)
        model = modeling.load_base(profile, base)
        model.eval()
        tokenizer = modeling.load_tokenizer(base)
        identity = base_identity(model, model_id=profile.model.id, revision=base.revision)  # = Run.base_identity
        window = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
        return Loaded(
            model,
            tokenizer,
            identity,
            prompt_format(profile, tokenizer),
            int(window),
            describe=f"run {run}, base {base.name_or_path} ({identity.config_sha256[:8]})",
        )

    return load


def admin_token(args: argparse.Namespace) -> str | None:
    """The admin token from --admin-token-file or the environment; None when neither gives one."""
    if args.admin_token_file:
        try:
            token = Path(args.admin_token_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ProfileError(f"--admin-token-file {args.admin_token_file}: {err.strerror}") from None
        if not token:
            raise ProfileError(f"--admin-token-file {args.admin_token_file} is empty")
        return token
    return os.environ.get(ADMIN_TOKEN_ENV, "").strip() or None


def make_engine(args: argparse.Namespace, what: Target, specs: list[StackSpec], actor: str) -> Engine:
    """The embedded engine, or with ``--engine vllm`` the one that drives a running vLLM (``serve.remote``)."""
    if args.engine == "embedded":
        for option in ("engine_url", "engine_export"):
            if getattr(args, option):
                raise ProfileError(f"--{option.replace('_', '-')} needs --engine vllm")
        return Engine(
            loader(what.run, what.profile),
            what.registry,
            specs,
            max_batch=args.max_batch,
            batch_wait_s=args.batch_wait_ms / 1000,
            max_queue=args.max_queue,
            poll_s=args.poll,
        )
    from modft_utils.serve.remote import VllmEngine

    if not args.engine_url:
        raise ProfileError("--engine vllm needs --engine-url, the vLLM server to drive (e.g. http://127.0.0.1:8001)")
    exports = what.run.dir / "exports"
    return VllmEngine(
        loader(what.run, what.profile),
        what.registry,
        specs,
        engine_url=args.engine_url,
        engine_export=args.engine_export or exports / "vllm-base+domain+task",
        work_dir=exports / "vllm-engine",
        actor=actor,
        max_queue=args.max_queue,
        poll_s=args.poll,
        connect_wait_s=args.engine_wait,
    )


def serve_main(args: argparse.Namespace) -> int:
    """Run the server until interrupted; our errors are raised for the caller to print (as cli.main does)."""
    import uvicorn  # the server's own dependency: the rest of the CLI runs without it

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    what = target(args)
    specs = stack_specs(args.stack, defaults=not args.no_default_stacks)
    actor = args.actor or f"modft-serve@{os.uname().nodename}"
    engine = make_engine(args, what, specs, actor)
    settings = Settings(
        max_tokens=args.max_tokens,
        default_max_tokens=args.default_max_tokens,
        max_body_bytes=args.max_body_bytes,
        request_log=Path(args.log) if args.log else what.run.dir / REQUEST_LOG,
        log_prompts=args.log_prompts,
        admin_token=admin_token(args),
        actor=actor,
    )
    app = create_app(engine, settings, what.registry)
    log.info(
        "serving run %s, store %s, stacks %s on http://%s:%d (admin routes: %s)",
        what.run,
        what.registry.uri,
        ", ".join(str(s) for s in specs),
        args.host,
        args.port,
        "on" if settings.admin_token else "off",
    )
    # uvicorn listens on a thread of its own from the start (/health answers, /ready says "loading"),
    # while the worker thread loads the base and then decodes: see Engine.start for why one thread does both.
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False))
    http = threading.Thread(target=server.run, name="modft-serve-http", daemon=True)

    def stop(signum, frame) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    http.start()
    try:
        engine.start()
        while http.is_alive():
            http.join(0.5)
    except KeyboardInterrupt:
        server.should_exit = True
        http.join(10)
    finally:
        engine.stop()
    if not server.started:  # the port was taken, or the address cannot be bound: uvicorn said why
        raise ServeError(f"could not listen on {args.host}:{args.port}")
    return 0


DTYPES = ("float32", "bfloat16", "float16")  # torch dtype names `modft export --dtype` takes


def add_export_command(subparsers) -> argparse.ArgumentParser:
    """Add ``export`` to the CLI's subparsers (``modft export --target vllm ...``)."""
    p = subparsers.add_parser(
        "export", help="write a stack of store versions for an engine (vllm, peft, merged), linted first"
    )
    add_target_arguments(p)
    p.add_argument("--target", required=True, choices=targets.TARGETS, help="the engine the export is for")
    p.add_argument(
        "--stack",
        default="base+domain+task",
        metavar="STACK",
        help="a stack name the server knows (base+domain+task, the default), NAME=REFS, or REFS "
        "(domain@production+task@3)",
    )
    p.add_argument("--out", metavar="DIR", help="folder to write (default: <run>/exports/<target>-<stack>)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the base's weights written (float32)")
    p.set_defaults(func=export_main)
    return p


def export_spec(text: str) -> StackSpec:
    """``--stack`` of ``modft export``: a default stack's name, ``NAME=REFS`` or bare ``REFS``."""
    named = {s.name: s for s in default_stacks()}
    if text in named:
        return named[text]
    return parse_stack(text if "=" in text else f"stack={text}")


def export_from_store(
    target_name: str, what: Target, spec: StackSpec, out_dir: str | os.PathLike, *, dtype: str = "float32"
) -> Path:
    """Export stack ``spec`` of ``what``'s store for ``target_name``: what ``modft export`` does.

    The versions are resolved and linted before the base loads; the live stack is then composed
    through the one checked loader (hashes, base identity, parents) and exported from it.
    """
    import torch

    versions = [what.registry.resolve(ref) for ref in spec.refs]
    findings = targets.lint(target_name, {v.name: v.local_copy() for v in versions})
    if findings:
        raise targets.LintError(target_name, findings)
    loaded = loader(what.run, what.profile)()
    stack = AdapterStack(loaded.model, what.registry, loaded.base)
    stack.use(*versions)
    names = active_adapters(stack.model)  # the adapter names in the model, in stack order
    return targets.export_stack(
        target_name,
        stack.model,
        names,
        out_dir,
        adapter_dirs=stack.adapter_dirs() if names else {},
        dense_loader=dequantized_loader(what.profile, run_base(what.run, what.profile)),
        tokenizer=loaded.tokenizer,
        versions=versions,
        base_identity=loaded.base,
        served_name=spec.name,
        dtype=getattr(torch, dtype),
        max_len=loaded.window,
    )


def export_main(args: argparse.Namespace) -> int:
    """``modft export``: write the export, then say what it holds and how to serve it."""
    what = target(args)
    spec = export_spec(args.stack)
    out = Path(args.out) if args.out else what.run.dir / "exports" / f"{args.target}-{spec.name}"
    path = export_from_store(args.target, what, spec, out, dtype=args.dtype)
    record = json.loads((path / EXPORT_RECORD).read_text(encoding="utf-8"))
    refs = ", ".join(v["ref"] for v in record["versions"]) or "the bare base"
    print(f"exported {spec.name} ({refs}) for {args.target} to {path}")
    if record.get("launch"):
        env = [f"{k}={shlex.quote(v)}" for k, v in record.get("launch_env", {}).items()]
        print("serve it with:\n  " + " ".join([*env, *(shlex.quote(a) for a in record["launch"])]))
        if env:
            print(
                f"then follow the store through it: modft serve --engine vllm --engine-url URL --engine-export {path}"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m modft_utils.serve``: the same options as ``modft serve``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = add_arguments(argparse.ArgumentParser(prog="modft serve", description=__doc__)).parse_args(argv)
    try:
        return serve_main(args)
    except ModftError as exc:
        print(f"modft serve: {exc}", file=sys.stderr)
        return 2

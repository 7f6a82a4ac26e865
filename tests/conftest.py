"""Shared fixtures. Hub access is switched off for the whole suite so a hidden download fails loudly."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `make test` runs one pytest-xdist worker per core. Each worker, and everything it starts (notebook
# kernels, `modft run`, torchrun), gets its share of the cores: two torch processes that each start a
# thread per core were measured up to 16x slower on a 2-core machine than one of them alone.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS_PER_WORKER = max(1, (os.cpu_count() or 1) // WORKERS)
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(THREADS_PER_WORKER)

import functools  # noqa: E402
import sys  # noqa: E402
from pathlib import Path, PurePosixPath  # noqa: E402

import guard  # noqa: E402
import pytest  # noqa: E402

_OUTPUTS_BEFORE = pytest.StashKey[dict]()

ROOT = Path(__file__).resolve().parent.parent
USER_OUTPUTS = ROOT / "outputs"


# What shares a costly session or module fixture runs on one worker, as one unit. The notebook chain
# is one: nbval executes the committed notebooks cell by cell in one kernel, and test_pipeline reads
# the run they leave. Every other module is a unit of its own. The costliest units go first, so the
# workers finish at about the same time.
CHAIN = "notebook-chain"
COSTLIEST_FIRST = (
    "test_real_weights.py",
    CHAIN,
    "test_task_formats.py",
    "test_benchmarks.py",
    "test_serve.py",
    "test_distributed.py",
    "test_browser.py",
)


def work_unit(nodeid: str) -> str:
    """The unit a test belongs to, from its node id (all pytest-xdist's scheduler sees of it)."""
    name = PurePosixPath(nodeid.split("::", 1)[0]).name
    return CHAIN if name.endswith(".ipynb") or name == "test_pipeline.py" else name


@pytest.hookimpl(optionalhook=True)  # a plain `pytest` without pytest-xdist still runs
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist hands each worker whole units (work_unit), in the order collected.

    Not xdist's own ``--dist loadgroup``: its ``xdist_group`` marks rewrite ``item._nodeid``, which
    pytest 9.2 no longer reads (pytest-dev/pytest-xdist#1386), so every test became a unit of its own
    and the notebook cells were spread over both workers. A canary in tests/canaries/test_upstream_fixes.py
    fails once that is fixed.
    """
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def __init__(self, config, log=None):
            super().__init__(config, log)
            config.option.loadscopereorder = False  # keep the costliest-first order of collection

        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the controller (or a plain run), not each xdist worker
        session.config.stash[_OUTPUTS_BEFORE] = guard.snapshot(USER_OUTPUTS)


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when any test read-wrote the user's outputs/ (see tests/guard.py)."""
    before = session.config.stash.get(_OUTPUTS_BEFORE, None)
    if before is None:
        return
    changed = guard.changes(before, guard.snapshot(USER_OUTPUTS))
    if changed:
        print(
            f"\nThe suite changed the user's {USER_OUTPUTS} (a test ran a profile without the `isolated` "
            "store, cache and runs):\n  " + "\n  ".join(changed),
            file=sys.stderr,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config):
    if WORKERS > 1:
        import torch

        torch.set_num_threads(THREADS_PER_WORKER)


def pytest_collection_modifyitems(config, items):
    """Units costliest first (a stable sort: nbval cells keep their order); tests marked ``gpu``
    skipped, saying so, where there is no CUDA."""
    rank = {unit: i for i, unit in enumerate(COSTLIEST_FIRST)}
    items.sort(key=lambda item: rank.get(work_unit(item.nodeid), len(rank)))

    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here); runs on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def test_outputs(tmp_path_factory) -> Path:
    """Where tests keep outputs they share (the built tiny base, the converted GGUF base): never the
    user's outputs/. `make test` points MODFT_TEST_OUTPUTS at one folder for the pytest run and the
    nbval pass, so each base is built once per `make test`."""
    env = os.environ.get("MODFT_TEST_OUTPUTS")
    path = Path(env) if env else tmp_path_factory.mktemp("outputs")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def isolated(tmp_path, test_outputs) -> dict[str, str]:
    """Profile overrides that keep a test's store and runs in its temporary folder and its bases in the
    suite's shared cache: pass them to every profile a test runs (``isolated_args`` for the CLI)."""
    return {
        "registry": str(tmp_path / "registry"),
        "runs_dir": str(tmp_path / "runs"),
        "cache_dir": str(test_outputs / "cache"),
    }


@pytest.fixture
def isolated_args(isolated) -> list[str]:
    """The same overrides as ``modft run`` arguments (``--set key=value``)."""
    return [arg for key, value in isolated.items() for arg in ("--set", f"{key}={value}")]


class TinyProfile:
    """params/tiny.yaml as the notebooks get it: the profile now, its base and tokenizer when first asked
    for (the base is built once, in the suite's cache, and only by tests that use it)."""

    def __init__(self, root: Path, cache: Path):
        from modft_utils.config import load_profile

        self.profile = load_profile(root / "params" / "tiny.yaml", {"cache_dir": str(cache)})

    @functools.cached_property
    def base(self):
        from modft_utils import modeling

        return modeling.ensure_base(self.profile, progress=False)

    @functools.cached_property
    def tokenizer(self):
        from modft_utils import modeling

        return modeling.load_tokenizer(self.base)


@pytest.fixture(scope="session")
def tiny(root, test_outputs) -> TinyProfile:
    """The tiny profile, its base and tokenizer: ``tiny.profile``, ``tiny.base``, ``tiny.tokenizer``."""
    return TinyProfile(root, test_outputs / "cache")


@pytest.fixture(scope="session")
def micro_base_dir(tmp_path_factory) -> Path:
    """The micro MiniMax-M2 (native architecture, fused experts) at its default shape: seconds to build."""
    from micro import save_micro_base

    return save_micro_base(tmp_path_factory.mktemp("micro_base"))


@pytest.fixture(scope="session")
def micro_tokenizer():
    """A word-level tokenizer over the micro base's 96-token vocabulary (pad 0, EOS 1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "\n"] + [f"w{i}" for i in range(3, 96)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def micro_store(tmp_path_factory):
    """The store tests' micro base, adapters for it and a wider base's adapter (tests/micro.py)."""
    from micro import store_bases

    return store_bases(tmp_path_factory)


@pytest.fixture(scope="session")
def micro_profile(tmp_path_factory, micro_base_dir, root):
    """A profile over the micro base, validated by the same loader as the shipped profiles."""
    import yaml

    from modft_utils.config import load_profile

    d = tmp_path_factory.mktemp("profile")
    sample = root / "data" / "sample"
    tree = {
        "name": "micro",
        "model": {"id": str(micro_base_dir), "compute_dtype": "float32", "experts_implementation": "eager"},
        "data": {
            "dapt": {
                "train_file": str(sample / "wikitext" / "train.jsonl"),
                "validation_file": str(sample / "wikitext" / "validation.jsonl"),
            },
            "sft": {
                "train_file": str(sample / "squad" / "train.jsonl"),
                "validation_file": str(sample / "squad" / "validation.jsonl"),
            },
        },
        "dapt": {
            "lora": {"r": 4, "alpha": 8},
            "train": {"max_steps": 4, "batch_size": 4, "eval_steps": 4, "logging_steps": 1, "warmup_steps": 0},
        },
        "sft": {
            "lora": {"r": 2, "alpha": 4},
            "train": {"max_steps": 4, "batch_size": 4, "eval_steps": 4, "logging_steps": 1, "warmup_steps": 0},
        },
        "registry": str(d / "registry"),
        "cache_dir": str(d / "cache"),
    }
    path = d / "micro.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_profile(path, check_paths=False)


def _random_adapter(model, name, spec, seed):
    """Add LoRA adapter ``name`` with random non-zero lora_B (PEFT starts it at zero), so it
    changes the logits like a trained adapter would, without spending training steps."""
    from modft_utils import adapters, modeling

    return adapters.add_adapter(model, name, modeling.lora_config(spec), seed=seed, b_std=0.1)


@pytest.fixture(scope="session")
def random_adapter():
    return _random_adapter


@pytest.fixture(scope="session")
def pipeline(root, tmp_path_factory, test_outputs):
    """All five notebooks on the tiny profile, once per session: ``run_dir``, ``metrics``, ``registry``.

    Under `make test`, nbval runs first and executes the committed notebooks top to bottom with their
    own defaults (the tiny profile, a run folder and store inside the suite's copy, MODFT_SHARED_RUN
    and MODFT_SHARED_REGISTRY); the pipeline assertions read that run instead of running the same
    chain a second time. Run without it (pytest tests/...), the fixture runs the notebooks itself.
    """
    from types import SimpleNamespace

    from modft_utils import record, runner

    shared = os.environ.get("MODFT_SHARED_RUN")
    if shared and (Path(shared) / "metrics.json").is_file():
        metrics = record.load_metrics(shared)
        if COMPLETE_RUN_KEY in metrics:  # every notebook ran (05 records this last)
            return SimpleNamespace(
                run_dir=Path(shared), metrics=metrics, registry=Path(os.environ["MODFT_SHARED_REGISTRY"])
            )
    tmp = tmp_path_factory.mktemp("pipeline")
    overrides = {"registry": str(tmp / "registry"), "cache_dir": str(test_outputs / "cache")}
    result = runner.run_notebooks(
        root / "params" / "tiny.yaml", run_dir=tmp / "run", overrides=overrides, progress=False
    )
    return SimpleNamespace(run_dir=result.run_dir, metrics=result.metrics, registry=tmp / "registry")


COMPLETE_RUN_KEY = "rollback.max_abs_logit_diff_after_domain_rollback"

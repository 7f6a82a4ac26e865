"""Shared fixtures. Hub access is switched off for the whole suite so a hidden download fails loudly."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.fixture(scope="session")
def micro_base_dir(tmp_path_factory) -> Path:
    """A micro MiniMax-M2 (native architecture, fused experts) saved as a model folder: seconds to build."""
    import torch
    from transformers import MiniMaxM2Config, MiniMaxM2ForCausalLM

    torch.manual_seed(0)
    cfg = MiniMaxM2Config(
        hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, num_local_experts=4, num_experts_per_tok=2, vocab_size=96, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=1, pad_token_id=0, tie_word_embeddings=False,
    )
    out = tmp_path_factory.mktemp("micro_base")
    MiniMaxM2ForCausalLM(cfg).save_pretrained(out)
    return out


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
            "dapt": {"train_file": str(sample / "wikitext" / "train.jsonl"), "validation_file": str(sample / "wikitext" / "validation.jsonl")},
            "sft": {"train_file": str(sample / "squad" / "train.jsonl"), "validation_file": str(sample / "squad" / "validation.jsonl")},
        },
        "dapt": {"lora": {"r": 4, "alpha": 8}, "train": {"max_steps": 4, "batch_size": 4, "eval_steps": 4, "logging_steps": 1, "warmup_steps": 0}},
        "sft": {"lora": {"r": 2, "alpha": 4}, "train": {"max_steps": 4, "batch_size": 4, "eval_steps": 4, "logging_steps": 1, "warmup_steps": 0}},
        "registry": str(d / "registry"),
        "cache_dir": str(d / "cache"),
    }
    path = d / "micro.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_profile(path, check_paths=False)


def _random_adapter(model, name, spec, seed):
    """Add LoRA adapter ``name`` with random non-zero lora_B (PEFT starts it at zero), so it
    changes the logits like a trained adapter would, without spending training steps."""
    import torch

    from modft_utils import adapters, modeling

    model = adapters.add_adapter(model, name, modeling.lora_config(spec), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if f"lora_B.{name}." in key:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.fixture(scope="session")
def random_adapter():
    return _random_adapter


@pytest.fixture(scope="session")
def pipeline(root, tmp_path_factory, test_outputs):
    """All five notebooks on the tiny profile, once per session, into a temporary run folder and store."""
    from modft_utils import runner

    tmp = tmp_path_factory.mktemp("pipeline")
    overrides = {"registry": str(tmp / "registry"), "cache_dir": str(test_outputs / "cache")}
    return runner.run_notebooks(root / "params" / "tiny.yaml", run_dir=tmp / "run", overrides=overrides, progress=False)

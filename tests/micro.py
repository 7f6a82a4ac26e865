"""The micro MiniMax-M2 bases the tests build: one config factory, one way to save and load them.

Each test module asks for the shape it needs (the quantization tests want 128-wide layers, the store
tests two bases of different width) through ``micro_config(**overrides)``; everything else is shared.
"""

from __future__ import annotations

from pathlib import Path

MICRO_DEFAULTS = dict(
    hidden_size=32,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    num_local_experts=4,
    num_experts_per_tok=2,
    vocab_size=96,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=1,
    pad_token_id=0,
    tie_word_embeddings=False,
)


def micro_config(**overrides):
    """A MiniMax-M2 config (native architecture, fused experts) of seconds-to-build size."""
    from transformers import MiniMaxM2Config

    return MiniMaxM2Config(**{**MICRO_DEFAULTS, **overrides})


def save_micro_base(folder: Path, **overrides) -> Path:
    """A randomly initialised micro base (seed 0) saved as a model folder."""
    import torch
    from transformers import MiniMaxM2ForCausalLM

    torch.manual_seed(0)
    MiniMaxM2ForCausalLM(micro_config(**overrides)).save_pretrained(folder)
    return folder


def load_micro_base(folder: Path, **kwargs):
    from transformers import MiniMaxM2ForCausalLM

    return MiniMaxM2ForCausalLM.from_pretrained(folder, **kwargs).eval()


# ----------------------------------------------------------------- the store tests' bases and adapters

TOKENS = [[1, 5, 9, 13, 17, 21], [2, 6, 10, 14, 18, 63]]
# The store's micro bases: default width, and a wider one whose adapters must not fit the first.
STORE_BASE = dict(
    intermediate_size=32, vocab_size=64, eos_token_id=2, pad_token_id=None, max_position_embeddings=196608
)


def save_store_base(folder: Path, hidden_size: int = 32) -> Path:
    return save_micro_base(folder, hidden_size=hidden_size, **STORE_BASE)


def load_store_base(folder: Path):
    return load_micro_base(folder)


def save_store_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A rank-4 LoRA on q/v whose B matrices are random, so that it changes the logits."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        load_store_base(base_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen))
    model.save_pretrained(out)
    return out


def store_logits(model):
    import torch

    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits


def store_bases(tmp_path_factory):
    """A tiny base on disk, two adapters for it, and an adapter for a wider base (the store tests' ``tiny``)."""
    from types import SimpleNamespace

    from modft_utils.store import base_identity

    root = tmp_path_factory.mktemp("tiny")
    base_dir = save_store_base(root / "base")
    other_dir = save_store_base(root / "other_base", hidden_size=48)
    base = load_store_base(base_dir)
    return SimpleNamespace(
        base_dir=base_dir,
        base_id=base_identity(base),
        base_logits=store_logits(base),
        other_id=base_identity(load_store_base(other_dir)),
        domain=save_store_adapter(base_dir, root / "domain", seed=1),
        task=save_store_adapter(base_dir, root / "task", seed=2),
        other=save_store_adapter(other_dir, root / "other_adapter", seed=3),
        # More domain adapters with other weights: publishing the same files twice gives one version.
        more=[save_store_adapter(base_dir, root / f"domain_{seed}", seed=seed) for seed in (4, 5)],
    )

"""The base model: which one a profile names, loading it in 4-bit, LoRA configs.

A base is a hub id, a local folder, a GGUF file (:mod:`modft_utils.modeling.gguf`) or the tiny offline stand-in
(:mod:`modft_utils.modeling.tiny`, built once into the cache); all of them then go through the same
``from_pretrained`` call that loads ``MiniMaxAI/MiniMax-M2`` in the real profile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from modft_utils.config import Profile, ProfileError, check_device
from modft_utils.modeling import gguf
from modft_utils.modeling.basecfg import PlanError, read_model_config
from modft_utils.modeling.cache import build_once
from modft_utils.modeling.quant import quantize_experts
from modft_utils.modeling.tiny import TINY_MARKER, build_tiny_base, tiny_cache_key
from modft_utils.modeling.vocab import (
    VocabExtension,
    extend_model,
    extend_tokenizer,
    trainable_token_indices,
)
from modft_utils.upstream_fixes import contiguous_lm_head_input, keep_cpu_4bit_exact


@dataclass
class BaseRef:
    """What ``from_pretrained`` is called with: a hub id (plus revision) or a local folder."""

    name_or_path: str
    revision: str | None = None
    build_info: dict[str, Any] = field(default_factory=dict)
    vocab_extension: VocabExtension | None = None  # domain tokens this run added (see modft_utils.modeling.vocab)

    def extended(self, ext: VocabExtension | None) -> BaseRef:
        """The same base with ``ext`` applied by every later tokenizer and model load."""
        return replace(self, vocab_extension=ext if ext is not None and ext.words else None)

    @property
    def new_token_ids(self) -> list[int]:
        return self.vocab_extension.token_ids if self.vocab_extension else []


def preflight(profile: Profile) -> None:
    """Refuse, before anything is downloaded or loaded, a base this profile cannot load.

    Checks: a CUDA GPU where the profile requires one; a model config that can be read (a typo in
    ``model.id`` fails here, not after a download); and no bitsandbytes 4-bit on a checkpoint that
    is already quantized (MiniMax-M2 is published in FP8), which transformers cannot stack.
    """

    check_device(profile)
    if profile.model.id == "tiny":
        return
    if profile.model.gguf_file:
        # A missing, cut or unsupported file is named here (a conversion of the same bytes was checked).
        gguf.read_config(gguf.locate(profile), profile.resolve(profile.cache_dir))
        return  # transformers dequantizes GGUF itself: 4-bit then applies to plain float weights

    try:
        cfg = read_model_config(profile)
    except PlanError as exc:
        raise ProfileError(f"{profile.source}: model.id {profile.model.id!r}: {exc}") from None
    quant = getattr(cfg, "quantization_config", None)
    if quant and profile.model.load_in_4bit:
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else getattr(quant, "quant_method", "?")
        raise ProfileError(
            f"{profile.source}: model.id {profile.model.id!r} is a pre-quantized checkpoint ({method}); "
            "bitsandbytes 4-bit (model.load_in_4bit) cannot be applied on top of it. Either point model.id at a "
            "bf16 copy of the weights (dequantize once, e.g. load with transformers' FineGrainedFP8Config"
            "(dequantize=True) and save_pretrained), or set model.load_in_4bit: false to train on the "
            f"{method} checkpoint as published (see `modft plan` for the memory that needs)."
        )


def ensure_base(profile: Profile, extension: VocabExtension | None = None, *, progress: bool = True) -> BaseRef:
    """Return what to load for this profile's base, building the tiny base once if it asks for one.

    With ``extension`` (the one notebook 01 recorded for a run, if any), the tokenizer and every
    model loaded from the ref are the extended ones.

    The tiny base is cached under ``cache_dir`` keyed by its spec, corpus and library versions, and
    written aside then renamed, so a build that dies halfway is never mistaken for a finished one.
    """
    base = _plain_base(profile, progress)
    return base.extended(extension) if extension is not None else base


def _plain_base(profile: Profile, progress: bool) -> BaseRef:
    preflight(profile)
    spec = profile.model
    if spec.gguf_file:
        folder, info = gguf.converted_folder(profile, progress=progress)
        return BaseRef(str(folder), None, info)
    if spec.id != "tiny":
        local = profile.resolve(spec.id)
        if local.is_dir():
            if not (local / "config.json").is_file():
                raise ProfileError(f"model.id: {local} is a folder without config.json, not a model folder")
            return BaseRef(str(local), spec.revision)
        return BaseRef(spec.id, spec.revision)
    corpus = profile.resolve(spec.tiny.generic_corpus)
    cache = profile.resolve(profile.cache_dir) / f"tiny-minimax-m2-{tiny_cache_key(spec.tiny, corpus)}"
    info = build_once(cache, TINY_MARKER, lambda staging: build_tiny_base(spec.tiny, corpus, staging, progress))
    return BaseRef(str(cache), None, info)


def load_tokenizer(base: BaseRef):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base.name_or_path, revision=base.revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if base.vocab_extension is not None:
        extend_tokenizer(tok, base.vocab_extension)
    return tok


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def quantization_config(profile: Profile):
    """The bitsandbytes config QLoRA uses; None when the profile keeps the base in full precision."""
    from transformers import BitsAndBytesConfig

    spec = profile.model
    if not spec.load_in_4bit:
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.quant_type,
        bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype=_dtype(spec.compute_dtype),
    )


def load_base(profile: Profile, base: BaseRef, *, load_in_4bit: bool | None = None):
    """Load the frozen base: the same call for the tiny base and for ``MiniMaxAI/MiniMax-M2``.

    In 4-bit, bitsandbytes quantizes the ``nn.Linear`` layers (attention) while loading; the
    fused experts, which it leaves in 16-bit, are then stored in NF4 by :mod:`modft_utils.modeling.quant`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    spec = profile.model
    quant = quantization_config(profile) if (spec.load_in_4bit if load_in_4bit is None else load_in_4bit) else None
    kwargs: dict[str, Any] = {
        "revision": base.revision,
        "dtype": _dtype(spec.compute_dtype),
        "attn_implementation": spec.attn_implementation,
    }
    if quant is not None:
        kwargs["quantization_config"] = quant
    if spec.experts_implementation:
        kwargs["experts_implementation"] = spec.experts_implementation
    if spec.device_map:
        kwargs["device_map"] = spec.device_map
    elif torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(base.name_or_path, **kwargs)
    if base.vocab_extension is not None:
        extend_model(model, base.vocab_extension)
    keep_cpu_4bit_exact(model)
    contiguous_lm_head_input(model)
    if quant is not None and spec.experts_4bit:
        quantize_experts(
            model,
            quant_type=spec.quant_type,
            compute_dtype=_dtype(spec.compute_dtype),
            compress_statistics=spec.double_quant,
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def lora_config(spec, *, task_type: str = "CAUSAL_LM", trainable_tokens: dict[str, list[int]] | None = None):
    """A PEFT LoraConfig from a profile's ``lora`` section.

    ``trainable_tokens`` (from :func:`modft_utils.modeling.vocab.trainable_token_indices`) also trains those
    embedding rows: the domain adapter learns the tokens a vocabulary extension added.
    """
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        bias="none",
        task_type=task_type,
        trainable_token_indices=trainable_tokens or None,
    )


def domain_lora_config(profile: Profile, base: BaseRef, model):
    """The domain adapter's config: LoRA, plus the embedding rows of the tokens this run added."""
    return lora_config(profile.dapt.lora, trainable_tokens=trainable_token_indices(model, base.vocab_extension))


def load_merged(path: str | os.PathLike, profile: Profile):
    """A merged export (base + adapters in one full model), in the dtype it was saved in."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": "auto"}
    if profile.model.experts_implementation:
        kwargs["experts_implementation"] = profile.model.experts_implementation
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    contiguous_lm_head_input(model)
    model.eval()
    return model

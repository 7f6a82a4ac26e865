"""The base model: building the tiny offline stand-in, loading any base in 4-bit, LoRA configs.

The tiny base is the MiniMax-M2 architecture itself (transformers' native ``minimax_m2``: same module
names, fused MoE experts), scaled down, given a byte-level BPE tokenizer trained here and a brief
pretraining on generic prose, then saved as an ordinary Hugging Face model folder. From then on it
goes through exactly the ``from_pretrained`` call that loads ``MiniMaxAI/MiniMax-M2`` in the real
profile.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import Profile, ProfileError, TinyBaseSpec
from .vocab import VocabExtension, extend_model, extend_tokenizer, load_decision, trainable_token_indices

TINY_MARKER = "modft_base.json"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


@dataclass
class BaseRef:
    """What ``from_pretrained`` is called with: a hub id (plus revision) or a local folder."""

    name_or_path: str
    revision: str | None = None
    build_info: dict[str, Any] = field(default_factory=dict)
    vocab_extension: VocabExtension | None = None  # domain tokens this run added (see modft_utils.vocab)

    def extended(self, ext: VocabExtension | None) -> "BaseRef":
        """The same base with ``ext`` applied by every later tokenizer and model load."""
        return replace(self, vocab_extension=ext if ext is not None and ext.words else None)

    @property
    def new_token_ids(self) -> list[int]:
        return self.vocab_extension.token_ids if self.vocab_extension else []


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tiny_cache_key(spec: TinyBaseSpec, generic_corpus: Path) -> str:
    """Same spec + same corpus + same library versions -> same cached base."""
    import tokenizers
    import torch
    import transformers

    payload = {
        "spec": spec.model_dump(mode="json", exclude={"generic_corpus"}),
        "corpus_sha256": sha256_file(generic_corpus),
        "versions": [transformers.__version__, tokenizers.__version__, torch.__version__.split("+")[0]],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _read_texts(path: Path) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'text' field ({exc})") from exc
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE (the family MiniMax-M2's own tokenizer belongs to), wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def tiny_config(spec: TinyBaseSpec, tokenizer):
    from transformers import MiniMaxM2Config

    return MiniMaxM2Config(
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        num_local_experts=spec.num_local_experts,
        num_experts_per_tok=spec.num_experts_per_tok,
        vocab_size=len(tokenizer),
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def _pretrain(model, blocks, spec: TinyBaseSpec, progress: bool) -> list[float]:
    """A short full pretraining on generic text, so adapters have a language model to adapt."""
    import torch
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, spec.pretrain_steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, spec.pretrain_steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses = []
    for _ in tqdm(range(spec.pretrain_steps), desc="pretraining tiny base", disable=not progress):
        idx = torch.randint(0, blocks.shape[0], (spec.pretrain_batch_size,), generator=gen)
        batch = blocks[idx]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 4))
    model.eval()
    return losses


def build_tiny_base(spec: TinyBaseSpec, generic_corpus: Path, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Train the tokenizer, build and pretrain the tiny MiniMax-M2, and save both to ``out_dir``."""
    import torch
    from transformers import MiniMaxM2ForCausalLM

    start = time.perf_counter()
    texts = _read_texts(generic_corpus)
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    torch.manual_seed(0)
    model = MiniMaxM2ForCausalLM(tiny_config(spec, tokenizer))
    model.config.use_cache = True
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(tokenizer.eos_token_id)
    n_blocks = len(ids) // spec.pretrain_seq_len
    blocks = torch.tensor(ids[: n_blocks * spec.pretrain_seq_len]).view(n_blocks, spec.pretrain_seq_len)
    losses = _pretrain(model, blocks, spec, progress) if spec.pretrain_steps else []
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "kind": "tiny-minimax-m2",
        "spec": spec.model_dump(mode="json"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "pretrain_tokens": spec.pretrain_steps * spec.pretrain_batch_size * spec.pretrain_seq_len,
        "pretrain_loss_first": losses[0] if losses else None,
        "pretrain_loss_last": losses[-1] if losses else None,
        "pretrain_losses": losses,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (out_dir / TINY_MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def preflight(profile: Profile) -> None:
    """Refuse, before anything is downloaded or loaded, a base this profile cannot load.

    Checks: a CUDA GPU where the profile requires one; a model config that can be read (a typo in
    ``model.id`` fails here, not after a download); and no bitsandbytes 4-bit on a checkpoint that
    is already quantized (MiniMax-M2 is published in FP8), which transformers cannot stack.
    """
    from .config import check_device

    check_device(profile)
    if profile.model.id == "tiny":
        return
    if profile.model.gguf_file:
        from . import gguf

        gguf.read_config(gguf.locate(profile))  # a missing, cut or unsupported file is named here
        return  # transformers dequantizes GGUF itself: 4-bit then applies to plain float weights
    from .plan import PlanError, read_model_config

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


def ensure_base(profile: Profile, run_dir: str | os.PathLike | None = None, *, progress: bool = True) -> BaseRef:
    """Return what to load for this profile's base, building the tiny base once if it asks for one.

    With ``run_dir``, the vocabulary extension notebook 01 recorded for that run (if any) comes
    with it, so the tokenizer and every model loaded from the ref are the extended ones.

    The tiny base is cached under ``cache_dir`` keyed by its spec, corpus and library versions, and
    written aside then renamed, so a build that dies halfway is never mistaken for a finished one.
    """
    base = _plain_base(profile, progress)
    return base.extended(load_decision(run_dir)) if run_dir is not None else base


def _plain_base(profile: Profile, progress: bool) -> BaseRef:
    preflight(profile)
    spec = profile.model
    if spec.gguf_file:
        from . import gguf

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


def build_once(folder: Path, marker: str, build) -> dict[str, Any]:
    """``folder`` built by ``build(staging_folder)`` unless it is complete already; its marker's JSON.

    ``build`` writes into a staging folder beside ``folder`` (``marker`` last), which is then renamed
    into place: a build that dies halfway is never mistaken for a finished one, and of two
    concurrent builders the loser's copy is discarded.
    """
    if not (folder / marker).is_file():
        staging = folder.parent / f".staging-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            build(staging)
            try:
                os.rename(staging, folder)
            except OSError:
                if not (folder / marker).is_file():  # not a concurrent builder winning the race
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return json.loads((folder / marker).read_text(encoding="utf-8"))


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
    fused experts, which it leaves in 16-bit, are then stored in NF4 by :mod:`modft_utils.quant`.
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
    _keep_cpu_4bit_exact(model)
    if quant is not None and spec.experts_4bit:
        from .quant import quantize_experts

        quantize_experts(model, quant_type=spec.quant_type, compute_dtype=_dtype(spec.compute_dtype),
                         compress_statistics=spec.double_quant)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _keep_cpu_4bit_exact(model) -> None:
    """Keep bitsandbytes' CPU inference on the same dequantize-and-matmul path as training.

    On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights on the first no-grad forward for
    a bf16 kernel, and ``state_dict()`` (which PEFT's ``save_pretrained`` calls) unpacks them
    again lossily: measured here, the base's logits moved by up to 3.1 after two saves. With the
    repacking off, eval equals training numerics bit for bit and saving changes nothing, which the
    rollback invariants (logit difference exactly 0) depend on. On the tiny base it was no slower.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def lora_config(spec, *, task_type: str = "CAUSAL_LM", trainable_tokens: dict[str, list[int]] | None = None):
    """A PEFT LoraConfig from a profile's ``lora`` section.

    ``trainable_tokens`` (from :func:`modft_utils.vocab.trainable_token_indices`) also trains those
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
    model.eval()
    return model

"""The tiny offline base: the MiniMax-M2 architecture itself, scaled down, built once here.

transformers' native ``minimax_m2`` (same module names, fused MoE experts), given a byte-level BPE
tokenizer trained here and a brief pretraining on generic prose, then saved as an ordinary Hugging
Face model folder. From then on it goes through exactly the ``from_pretrained`` call that loads
``MiniMaxAI/MiniMax-M2`` in the real profile. It cannot learn the tasks (it has read too little);
it is the fast architecture and invariant profile of the tests.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from modft_utils.config import TinyBaseSpec
from modft_utils.modeling.cache import sha256_file

TINY_MARKER = "modft_base.json"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


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

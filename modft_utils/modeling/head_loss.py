"""The language-modeling loss without the whole-batch logits: the frozen LM head applied a chunk of
tokens at a time.

A causal LM's loss materializes ``tokens x vocabulary`` logits, upcasts them to float32, and keeps the
log-softmax and its gradient for backward: for SmolLM2 (vocabulary 49,152) a DAPT batch of 8 x 128
tokens is three tensors of 200 MB. On CPU every fresh tensor that large is page-faulted in at first
touch, so the head and its loss cost about 0.5 s of a 2.2 s bf16 step on a 2-core Xeon with AMX
(measured standalone: 506 ms, against 259 ms here at 128-token chunks; `make bench`'s step profile).

With the head frozen (a LoRA adapter never trains it) the loss's only gradient is the one for the
hidden states, ``(softmax - onehot) @ W``, so each chunk's gradient is computed in the forward, while
its logits are at hand, and kept (``tokens x hidden``: 1.2% of the logits here). Backward only scales it.
This is the "fused linear cross-entropy" of Liger-Kernel and of Apple's Cut Cross-Entropy, for CPU and
GPU alike in plain PyTorch.

:func:`head_of` decides whether a model's loss is exactly ``cross_entropy(lm_head(decoder(x)))`` (the
architectures whose forward is known to be that, with a plain bias-free frozen head and no router loss);
anything else keeps the model's own loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Best of 64 / 128 / 256 / 512 on SmolLM2's head in bf16 (259 ms against 294 / 333 / 400 per batch of
# 8 x 128 tokens): a chunk's float32 logits (25 MB) stay near the cache and are reused by the allocator.
CHUNK_TOKENS = 128

# Architectures whose *ForCausalLM.forward is ``lm_head(decoder(...).last_hidden_state)`` and whose loss is
# transformers' ForCausalLMLoss on it (no logit scaling or soft-capping), read in transformers 5.x.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "minimax_m2", "mixtral", "qwen3_moe"})


@dataclass(frozen=True)
class Head:
    """A causal LM split into its decoder (returns ``last_hidden_state``) and the frozen head's weight."""

    decoder: torch.nn.Module
    weight: torch.Tensor


def head_of(model, *, training: bool = True) -> Head | None:
    """The decoder and frozen head of ``model`` (a PeftModel or a bare causal LM), or None where the
    model's loss is anything but cross-entropy on a plain head: another architecture, a head with a bias,
    an adapter-wrapped head (vocabulary extension, LoRA on ``lm_head``), router losses on, or for
    ``training`` a head that would need its own gradient."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    head, decoder = getattr(base, "lm_head", None), getattr(base, "model", None)
    if config is None or getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    if type(head) is not torch.nn.Linear or head.bias is not None or (training and head.weight.requires_grad):
        return None
    if getattr(config, "output_router_logits", False) or decoder is None:
        return None
    return Head(decoder, head.weight)


class _ChunkedHeadLoss(torch.autograd.Function):
    """Summed next-token NLL of ``hidden @ weight.T`` against ``labels`` (-100 ignored), divided by
    ``denominator``; the hidden states' gradient is computed chunk by chunk in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, denominator, chunk):
        needs_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(hidden) if needs_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            rows = labels[start : start + chunk]
            valid = rows != -100
            target = rows.clamp(min=0)
            logits = (hidden[start : start + chunk] @ weight.t()).float()
            log_probs = torch.log_softmax(logits, dim=-1)
            del logits
            total -= (log_probs.gather(1, target[:, None]).squeeze(1) * valid).sum()
            if needs_grad:
                probs = log_probs.exp_()  # d(NLL)/d(logits) = softmax - onehot, per valid row
                probs[torch.arange(probs.shape[0], device=probs.device), target] -= 1.0
                probs *= (valid.to(probs.dtype) / denominator)[:, None]
                grad[start : start + chunk] = probs.to(hidden.dtype) @ weight
        if needs_grad:
            ctx.save_for_backward(grad)
        return total / denominator

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None, None


def causal_lm_loss(
    head: Head,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_items: int | torch.Tensor | None = None,
    chunk: int = CHUNK_TOKENS,
) -> torch.Tensor:
    """transformers' causal-LM loss (labels shifted by one, -100 ignored; summed over ``num_items`` when
    given, as the Trainer passes it under gradient accumulation, else the mean) from the decoder's
    ``hidden`` states ``(batch, seq, hidden)``, without the batch's whole logits."""
    shifted = F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1).to(hidden.device)
    flat = hidden.reshape(-1, hidden.shape[-1])
    if num_items is None:
        denominator = (shifted != -100).sum().clamp(min=1).to(torch.float32)
    else:
        denominator = torch.as_tensor(num_items, dtype=torch.float32, device=hidden.device)
    return _ChunkedHeadLoss.apply(flat, head.weight, shifted, denominator, chunk)


def decoder_hidden(head: Head, input_ids, attention_mask=None) -> torch.Tensor:
    """The decoder's last hidden state, without a KV cache (none is wanted in training or scoring blocks)."""
    return head.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def is_lm_batch(batch) -> bool:
    """A packed language-modeling batch (``input_ids``, ``labels``, maybe ``attention_mask``): the loss
    reads every position. Batches that keep the head to some positions (``logits_to_keep``) are not."""
    return "labels" in batch and not set(batch) - {"input_ids", "attention_mask", "labels"}


def batch_loss(head: Head, batch, *, num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """:func:`causal_lm_loss` of a language-modeling batch, the decoder run on it first."""
    hidden = decoder_hidden(head, batch["input_ids"], batch.get("attention_mask"))
    return causal_lm_loss(head, hidden, batch["labels"], num_items=num_items)


def nll_sum(head: Head, input_ids, labels, attention_mask=None) -> tuple[float, int]:
    """(summed next-token NLL, predicted tokens) of one batch, as ``cross_entropy(reduction="sum")`` on
    the model's logits gives it; for scoring (no gradient)."""
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    return float(batch_loss(head, batch, num_items=1)), int((labels[:, 1:] != -100).sum())

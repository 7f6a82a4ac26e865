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

Distilled replay (``data.replay_loss: distill``) goes the same way: a replay row's tokens count the KL
divergence from a teacher's next-token distribution (the stack below the adapter in training, run
without gradient) instead of their own cross-entropy, the gradient again computed chunk by chunk.

:func:`head_of` decides whether a model's loss is exactly ``cross_entropy(lm_head(decoder(x)))`` (the
architectures whose forward is known to be that, with a plain bias-free frozen head and no router loss);
anything else keeps the model's own loss.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """Summed over rows, each weighted by ``row_weights`` (0: not counted) and divided by ``denominator``:
    the next-token NLL of ``hidden @ weight.T`` against ``targets``, or with ``teacher`` (decoder states)
    the KL divergence from ``softmax(teacher @ weight.T)`` to it. The hidden states' gradient
    (``softmax - onehot`` or ``softmax(student) - softmax(teacher)``, through the head) is computed chunk
    by chunk in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, row_weights, teacher, denominator, chunk):
        needs_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(hidden) if needs_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            rows = row_weights[start : start + chunk]
            logits = (hidden[start : start + chunk] @ weight.t()).float()
            log_probs = torch.log_softmax(logits, dim=-1)
            del logits
            if teacher is None:
                target = targets[start : start + chunk]
                total -= (log_probs.gather(1, target[:, None]).squeeze(1) * rows).sum()
            else:
                log_teacher = torch.log_softmax((teacher[start : start + chunk] @ weight.t()).float(), dim=-1)
                teacher_probs = log_teacher.exp()
                # In place: each fresh chunk-sized tensor is another 25 MB to page in (SmolLM2, 128 tokens).
                total += (log_teacher.sub_(log_probs).mul_(teacher_probs).sum(-1) * rows).sum()
                del log_teacher
            if needs_grad:
                probs = log_probs.exp_()
                if teacher is None:
                    probs[torch.arange(probs.shape[0], device=probs.device), target] -= 1.0
                else:
                    probs.sub_(teacher_probs)
                probs *= (rows / denominator)[:, None]
                grad[start : start + chunk] = probs.to(hidden.dtype) @ weight
        if needs_grad:
            ctx.save_for_backward(grad)
        return total / denominator

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None, None, None, None


def _shifted(labels: torch.Tensor, device) -> torch.Tensor:
    """Each position's next-token label, flat (the last position of a sequence predicts nothing: -100)."""
    return F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1).to(device)


def _token_weights(labels: torch.Tensor, device, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Each flat position's weight in the loss: 0 where its next token is not labelled, else its row's
    weight (default 1)."""
    weights = (_shifted(labels, device) != -100).to(torch.float32)
    if row_weights is not None:
        weights = weights * row_weights.to(device, torch.float32).repeat_interleave(labels.shape[-1])
    return weights


def _denominator(labels: torch.Tensor, num_items, device) -> torch.Tensor:
    if num_items is None:
        return (_shifted(labels, device) != -100).sum().clamp(min=1).to(torch.float32)
    return torch.as_tensor(num_items, dtype=torch.float32, device=device)


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
    flat = hidden.reshape(-1, hidden.shape[-1])
    denominator = _denominator(labels, num_items, hidden.device)
    targets = _shifted(labels, hidden.device).clamp(min=0)
    weights = _token_weights(labels, hidden.device)
    return _ChunkedHeadLoss.apply(flat, head.weight, targets, weights, None, denominator, chunk)


def causal_lm_kl(
    head: Head,
    hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_items: int | torch.Tensor | None = None,
    row_weights: torch.Tensor | None = None,
    chunk: int = CHUNK_TOKENS,
) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions at every position whose next token is
    labelled (the positions :func:`causal_lm_loss` scores), each sequence's weighted by ``row_weights``
    (default 1), summed over ``num_items`` or averaged; the teacher's decoder states are given (computed
    without gradient), the head is the shared frozen one."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    teacher = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).to(hidden.dtype)
    weights = _token_weights(labels, hidden.device, row_weights)
    denominator = _denominator(labels, num_items, hidden.device)
    return _ChunkedHeadLoss.apply(flat, head.weight, None, weights, teacher, denominator, chunk)


def decoder_hidden(head: Head, input_ids, attention_mask=None) -> torch.Tensor:
    """The decoder's last hidden state, without a KV cache (none is wanted in training or scoring blocks)."""
    return head.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def is_lm_batch(batch) -> bool:
    """A packed language-modeling batch (``input_ids``, ``labels``, maybe ``attention_mask`` and the
    ``replay`` row flags of distilled replay): the loss reads every position. Batches that keep the head
    to some positions (``logits_to_keep``) are not."""
    return "labels" in batch and not set(batch) - {"input_ids", "attention_mask", "labels", "replay"}


# (input_ids, attention_mask or None) -> the teacher's decoder states, computed without gradient.
Teacher = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def batch_loss(
    head: Head, batch, *, num_items: int | torch.Tensor | None = None, teacher: Teacher | None = None
) -> torch.Tensor:
    """:func:`causal_lm_loss` of a language-modeling batch, the decoder run on it first.

    Rows with a positive ``batch["replay"]`` are distilled instead: their tokens count
    :func:`causal_lm_kl` from ``teacher``'s next-token distributions, not the cross-entropy of the text,
    over the same denominator, times the row's ``replay`` value (data.replay_weight; at 1 a replayed
    token weighs what it would as text)."""
    ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch["labels"]
    hidden = decoder_hidden(head, ids, mask)
    replay = batch.get("replay")
    if replay is None or not bool(replay.any()):
        return causal_lm_loss(head, hidden, labels, num_items=num_items)
    if teacher is None:
        raise ValueError("the batch has replay rows to distil but no teacher was given")
    denominator = _denominator(labels, num_items, hidden.device)
    replay = replay.to(ids.device)
    distilled = replay > 0
    with torch.no_grad():
        teacher_hidden = teacher(ids[distilled], None if mask is None else mask[distilled])
    loss = causal_lm_kl(
        head, hidden[distilled], teacher_hidden, labels[distilled], num_items=denominator, row_weights=replay[distilled]
    )
    if not bool(distilled.all()):
        kept = ~distilled
        loss = loss + causal_lm_loss(head, hidden[kept], labels[kept], num_items=denominator)
    return loss


def logits_batch_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    replay: torch.Tensor | None,
    *,
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`batch_loss` from whole-batch logits, for models :func:`head_of` refuses: cross-entropy on
    the text rows, KL from ``teacher_logits`` (the whole batch's) on the rows flagged in ``replay``."""
    shifted = _shifted(labels, logits.device)
    valid = (shifted != -100).to(torch.float32)
    log_student = torch.log_softmax(logits.float().reshape(-1, logits.shape[-1]), dim=-1)
    per_token = -log_student.gather(1, shifted.clamp(min=0)[:, None]).squeeze(1)
    if replay is not None and teacher_logits is not None:
        log_teacher = torch.log_softmax(teacher_logits.float().reshape(-1, logits.shape[-1]), dim=-1)
        kl = ((log_teacher - log_student) * log_teacher.exp()).sum(-1)
        weights = replay.to(torch.float32).to(logits.device)[:, None].expand(labels.shape).reshape(-1)
        per_token = torch.where(weights > 0, kl * weights, per_token)
    return (per_token * valid).sum() / _denominator(labels, num_items, logits.device)


def nll_sum(head: Head, input_ids, labels, attention_mask=None) -> tuple[float, int]:
    """(summed next-token NLL, predicted tokens) of one batch, as ``cross_entropy(reduction="sum")`` on
    the model's logits gives it; for scoring (no gradient)."""
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    return float(batch_loss(head, batch, num_items=1)), int((labels[:, 1:] != -100).sum())

"""Held-out evaluation: domain perplexity, SQuAD exact match / F1, answer-token NLL, logit parity.

Every function takes the model as it is: which adapters are active is set by the caller through
:mod:`modft_utils.adapters`, so the same function scores base, base+domain and the full stack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .squad import squad_metrics  # noqa: F401  (re-exported: the public home of the SQuAD metrics)


def _device(model):
    return next(model.parameters()).device


@torch.no_grad()
def token_nll(model, batches, *, progress: bool = False, desc: str = "scoring") -> tuple[float, int]:
    """Sum of next-token NLL over label positions (labels != -100), and how many there were."""
    from tqdm.auto import tqdm

    total, count = 0.0, 0
    device = _device(model)
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        input_ids = batch["input_ids"].to(device)
        labels = batch["labels"].to(device)
        mask = batch.get("attention_mask")
        logits = model(input_ids=input_ids, attention_mask=None if mask is None else mask.to(device)).logits
        shift_logits = logits[:, :-1].float()
        shift_labels = labels[:, 1:]
        loss = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += float(loss)
        count += int((shift_labels != -100).sum())
    return total, count


def _batches(dataset, batch_size: int, collator):
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        yield collator(rows)


def perplexity(model, blocks, *, batch_size: int = 8, progress: bool = False) -> float:
    """exp(mean NLL per predicted token) over packed blocks (``input_ids``, ``labels`` columns)."""
    from transformers import default_data_collator

    total, count = token_nll(model, _batches(blocks, batch_size, default_data_collator), progress=progress, desc="perplexity")
    return math.exp(total / max(count, 1))


def answer_nll(model, examples, collator, *, batch_size: int = 16, progress: bool = False) -> float:
    """Mean NLL per answer token of tokenized SFT examples (prompt tokens carry label -100)."""
    total, count = token_nll(model, _batches(examples, batch_size, collator), progress=progress, desc="answer NLL")
    return total / max(count, 1)


def clean_generation(text: str) -> str:
    """The answer is the first line of what the model wrote after the prompt."""
    return text.split("\n", 1)[0].strip()


@torch.no_grad()
def generate(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 32,
    max_prompt_tokens: int | None = None, progress: bool = False,
) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), cut at the first newline."""
    from tqdm.auto import tqdm

    device = _device(model)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outs: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="generating", disable=not progress, leave=False):
            chunk = list(prompts[start : start + batch_size])
            enc = tokenizer(
                chunk, return_tensors="pt", padding=True, add_special_tokens=False,
                truncation=max_prompt_tokens is not None, max_length=max_prompt_tokens,
            ).to(device)
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            outs.extend(clean_generation(t) for t in texts)
    finally:
        tokenizer.padding_side = side
    return outs


def qa_scores(model, tokenizer, examples: Sequence[dict[str, Any]], *, max_new_tokens: int, progress: bool = False) -> dict[str, Any]:
    """Exact match and F1 (official SQuAD v1.1 normalization, 0-100) of greedy answers."""
    preds = generate(model, tokenizer, [e["prompt"] for e in examples], max_new_tokens=max_new_tokens, progress=progress)
    predictions = {e["id"]: p for e, p in zip(examples, preds)}
    references = {e["id"]: list(e["answers"]) for e in examples}
    scores = squad_metrics(predictions, references)
    return {"exact_match": scores["exact_match"], "f1": scores["f1"], "predictions": predictions}


@torch.no_grad()
def logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids.to(_device(model))).logits.float().cpu()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())

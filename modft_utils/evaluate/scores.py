"""Held-out evaluation: domain perplexity, answer scores per SFT format, answer-token NLL, logit parity.

Every function takes the model as it is: which adapters are active is set by the caller through
:mod:`modft_utils.adapters.state`, so the same function scores base, base+domain and the full stack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from modft_utils import adapters
from modft_utils.adapters import AdapterError
from modft_utils.data import squad_metrics, text_metrics
from modft_utils.modeling import head_loss
from modft_utils.store import RegistryError


def _device(model):
    return next(model.parameters()).device


@torch.no_grad()
def token_nll(model, batches, *, progress: bool = False, desc: str = "scoring") -> tuple[float, int]:
    """Sum of next-token NLL over label positions (labels != -100), and how many there were."""
    from tqdm.auto import tqdm

    total, count = 0.0, 0
    device = _device(model)
    head = head_loss.head_of(model, training=False)
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        input_ids = batch["input_ids"].to(device)
        labels = batch["labels"].to(device)
        mask = batch.get("attention_mask")
        attention = None if mask is None else mask.to(device)
        if head is not None and "logits_to_keep" not in batch:
            # The head a chunk of tokens at a time (modeling.head_loss): the same sum, without the batch's logits.
            nll, predicted = head_loss.nll_sum(head, input_ids, labels, attention)
            total += nll
            count += predicted
            continue
        if "logits_to_keep" in batch:
            # The collator kept the head to the positions the loss reads (sft_collator): same sum, less work.
            keep = batch["logits_to_keep"].to(device)
            logits = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=keep).logits
            shift_logits, shift_labels = logits.float(), batch["shift_labels"].to(device)
        else:
            logits = model(input_ids=input_ids, attention_mask=attention).logits
            shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
        loss = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
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
    return math.exp(held_out_nll(blocks, batch_size=batch_size, progress=progress, desc="perplexity")(model))


def answer_nll(model, examples, collator, *, batch_size: int = 16, progress: bool = False) -> float:
    """Mean NLL per answer token of tokenized SFT examples (prompt tokens carry label -100)."""
    return held_out_nll(examples, collator, batch_size=batch_size, progress=progress, desc="answer NLL")(model)


def held_out_nll(
    dataset, collator=None, *, batch_size: int | None = None, progress: bool = False, desc: str = "held-out NLL"
):
    """``model -> mean NLL per labelled token of dataset``: what ``train_adapter(held_out=...)`` measures.

    Without a collator, ``dataset`` is packed blocks and this is log(:func:`perplexity`) (batches of 8);
    with one, tokenized SFT examples and this is :func:`answer_nll` (batches of 16). The same
    arguments give the same number, so a loss measured at training's last step is not measured again.
    """
    from transformers import default_data_collator

    size = batch_size or (8 if collator is None else 16)
    collate = collator or default_data_collator

    def measure(model) -> float:
        total, count = token_nll(model, _batches(dataset, size, collate), progress=progress, desc=desc)
        return total / max(count, 1)

    return measure


def clean_generation(text: str, *, one_line: bool = True) -> str:
    """The answer: the first line of what the model wrote after the prompt (all of it for free-text formats)."""
    return (text.split("\n", 1)[0] if one_line else text).strip()


def _newline_token_ids(tokenizer) -> torch.Tensor:
    """Ids of every token whose text contains a newline (computed once per tokenizer)."""
    cached = getattr(tokenizer, "_modft_newline_ids", None)
    if cached is None:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        cached = torch.tensor([i for i, t in enumerate(texts) if "\n" in t], dtype=torch.long)
        tokenizer._modft_newline_ids = cached
    return cached


def _stop_at_newline(tokenizer, prompt_width: int):
    """A stopping criterion: a row is done once it has generated a token with a newline in it.

    transformers' ``stop_strings`` does the same by string matching, but fails on tokenizers
    whose tokens do not round-trip through ``convert_tokens_to_string`` (word-level ones).
    """
    from transformers import StoppingCriteria

    newline = _newline_token_ids(tokenizer)

    class StopAtNewline(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            generated = input_ids[:, prompt_width:]
            return torch.isin(generated, newline.to(input_ids.device)).any(dim=1)

    return StopAtNewline()


def _common_prefix(id_lists: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every list shares."""
    first = id_lists[0]
    n = min(len(ids) for ids in id_lists)
    for ids in id_lists[1:]:
        k = 0
        while k < n and ids[k] == first[k]:
            k += 1
        n = k
    return n


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    max_prompt_tokens: int | None = None,
    progress: bool = False,
    share_prefix: bool = True,
    one_line: bool = True,
) -> list[str]:
    """Greedy answers to ``prompts``: the first line of each continuation, in the order given.

    ``one_line=False`` (summaries, chat replies) lets an answer run over lines until EOS.

    Scoring is the workbook's most repeated cost, and on CPU prefilling the prompts is most of it
    (profiled on SmolLM2-135M: 32 prompts of ~140 tokens take ~10 s to prefill, a decode step ~0.16 s).
    Three things cut it without changing the greedy tokens:

    - prompts are batched in order of length, so a batch carries little padding (order restored after);
    - a sequence stops at its first newline (with ``one_line``) or EOS, and a batch when every sequence
      has, since the answer is the first line (a plain ``generate`` decodes all ``max_new_tokens``);
    - the tokens every prompt starts with (a chat template's system turn and the instruction) are
      prefilled once per batch and their KV cache shared by every row (``share_prefix``); rows are laid
      out as ``[prefix][padding][rest]``, with positions from the attention mask as in left padding.
    """
    if not prompts:
        return []
    encoded = tokenizer(
        list(prompts), add_special_tokens=False, truncation=max_prompt_tokens is not None, max_length=max_prompt_tokens
    )["input_ids"]
    opts = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, share_prefix=share_prefix, one_line=one_line)
    return _greedy(model, tokenizer, encoded, None, progress=progress, **opts)[0]


@torch.no_grad()
def generate_with_answer_nll(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    one_line: bool = True,
    progress: bool = False,
    prompt_ids: Sequence[Sequence[int]] | None = None,
) -> tuple[list[str], float]:
    """:func:`generate`'s answers, and the mean NLL per token of the gold ``answers`` (token ids) after each prompt.

    The NLL is :func:`answer_nll`'s, taken from the prefill the answers are generated from instead of
    a second forward pass over every prompt: the first gold token from the prefill's own last-position
    logits, the rest from a forward over the gold tokens on the prompt's KV cache. Equal in exact
    arithmetic (on SmolLM2 in float32 to 3e-8; in bf16 the two layouts round apart by 0.4%); the
    greedy answers are :func:`generate`'s, token for token. ``prompt_ids``: the prompts as the tokenizer
    encodes them, when the caller has them already.
    """
    if not prompts:
        return [], 0.0  # as answer_nll of no examples
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompt_ids is None else prompt_ids
    opts = dict(max_new_tokens=max_new_tokens, batch_size=32, share_prefix=True, one_line=one_line)
    return _greedy(model, tokenizer, encoded, answers, progress=progress, **opts)  # type: ignore[return-value]


def _greedy(
    model,
    tokenizer,
    encoded: list[list[int]],
    answers: Sequence[Sequence[int]] | None,
    *,
    progress: bool,
    max_new_tokens: int,
    batch_size: int,
    share_prefix: bool,
    one_line: bool,
) -> tuple[list[str], float | None]:
    """:func:`generate` on token ids; with ``answers``, also their mean NLL (:func:`generate_with_answer_nll`)."""
    from tqdm.auto import tqdm

    device = _device(model)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    # Each row keeps at least one token of its own after the shared part, which generate prefills.
    shared = min(_common_prefix(encoded), min(len(ids) for ids in encoded) - 1) if share_prefix else 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outs: list[str | None] = [None] * len(encoded)
    nll_sum, nll_count = 0.0, 0
    for start in tqdm(range(0, len(order), batch_size), desc="generating", disable=not progress, leave=False):
        rows = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            rest = encoded[i][shared:]
            ids[r, :shared] = torch.tensor(encoded[i][:shared], dtype=torch.long)
            ids[r, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
            mask[r, :shared] = 1
            mask[r, width - len(rest) :] = 1
        kwargs: dict[str, Any] = {}
        if shared:
            # Only the prefix's KV cache is used: one logit row instead of one per prefix token.
            prefix = ids[:1, :shared].to(device)
            cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1).cache
            cache.batch_repeat_interleave(len(rows))
            kwargs["cache"] = cache
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            stopping_criteria=[_stop_at_newline(tokenizer, width)] if one_line else None,
            return_dict_in_generate=answers is not None,
            output_logits=answers is not None,
            **kwargs,
        )
        sequences = gen if answers is None else gen.sequences
        if answers is not None:
            total, count = _gold_nll(model, gen, mask.to(device), [answers[i] for i in rows], width, pad)
            nll_sum, nll_count = nll_sum + total, nll_count + count
        texts = tokenizer.batch_decode(sequences[:, width:], skip_special_tokens=True)
        for i, text in zip(rows, texts):
            outs[i] = clean_generation(text, one_line=one_line)
    return outs, (nll_sum / max(nll_count, 1) if answers is not None else None)  # type: ignore[return-value]


def _gold_nll(model, gen, mask: torch.Tensor, targets: Sequence[Sequence[int]], width: int, pad: int):
    """Summed NLL of each row's gold tokens after its prompt, and their count, from what generate computed.

    The first gold token is scored on the first step's logits (the prefill's last position); the
    others by one forward over the gold tokens on the prompt's KV cache, cut back to the prompt.
    """
    device = mask.device
    first = torch.tensor([t[0] for t in targets], device=device)
    total = float(F.cross_entropy(gen.logits[0].float(), first, reduction="sum"))
    longest = max(len(t) for t in targets)
    if longest == 1:
        return total, len(targets)
    cache = gen.cache
    cache.crop(-(cache.get_seq_length() - width))  # keep the prompt; drop what generate appended
    ids = torch.full((len(targets), longest - 1), pad, dtype=torch.long)
    labels = torch.full((len(targets), longest - 1), -100, dtype=torch.long)
    feed = torch.zeros((len(targets), longest - 1), dtype=torch.long)
    for r, t in enumerate(targets):
        ids[r, : len(t) - 1] = torch.tensor(t[:-1], dtype=torch.long)
        labels[r, : len(t) - 1] = torch.tensor(t[1:], dtype=torch.long)
        feed[r, : len(t) - 1] = 1
    # Positions go on from each row's last prompt position (generate's own: the attention mask's cumsum).
    positions = mask.sum(dim=1, keepdim=True) + torch.arange(longest - 1, device=device)
    keep = (labels != -100).to(device)
    logits = model(
        input_ids=ids.to(device),
        attention_mask=torch.cat([mask, feed.to(device)], dim=1),
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=keep,
    ).logits
    total += float(F.cross_entropy(logits.float(), labels.to(device)[keep], reduction="sum"))
    return total, len(targets) + int(keep.sum())


@torch.no_grad()
def generate_plain(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[str]:
    """What a user writes first: left-padded batches in the order given, all ``max_new_tokens`` decoded.

    The benchmark's reference for :func:`generate` (same prompts, same greedy decoding).
    """
    device = _device(model)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(
                list(prompts[start : start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            outs.extend(
                clean_generation(t)
                for t in tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            )
    finally:
        tokenizer.padding_side = side
    return outs


def example_format(examples: Sequence[dict[str, Any]]) -> str:
    """The SFT format of held-out examples (``squad`` for records written before formats were recorded)."""
    formats = {e.get("format", "squad") for e in examples}
    if len(formats) > 1:
        raise ValueError(f"examples mix SFT formats {sorted(formats)}: score each format separately")
    return formats.pop() if formats else "squad"


def task_scores(
    model, tokenizer, examples: Sequence[dict[str, Any]], *, max_new_tokens: int, progress: bool = False
) -> dict[str, Any]:
    """Greedy answers scored as their format is judged (0-100), with the predictions by id.

    SQuAD: exact match and F1 by the official script of the examples' version. Instruction and chat
    sets: exact match, token F1 and ROUGE-L (:func:`modft_utils.data.tasks.text_metrics`), answers allowed
    to run over several lines.
    """
    preds = generate(
        model,
        tokenizer,
        [e["prompt"] for e in examples],
        max_new_tokens=max_new_tokens,
        progress=progress,
        one_line=example_format(examples) == "squad",
    )
    return score_predictions(examples, preds)


def score_predictions(examples: Sequence[dict[str, Any]], preds: Sequence[str]) -> dict[str, Any]:
    """:func:`task_scores` of answers already generated, one per example, in order."""
    fmt = example_format(examples)
    predictions = {e["id"]: p for e, p in zip(examples, preds)}
    references = {e["id"]: list(e["answers"]) for e in examples}
    if fmt != "squad":
        return {**text_metrics(predictions, references), "predictions": predictions}
    # Scored by the official script of the data's version (v1.1 and v2.0 differ on empty answers).
    versions = {e.get("squad_version", "v1.1") for e in examples}
    if len(versions) > 1:
        raise ValueError(f"examples mix SQuAD versions {sorted(versions)}: score each version separately")
    scores = squad_metrics(predictions, references, version=versions.pop() if versions else "v1.1")
    return {"exact_match": scores["exact_match"], "f1": scores["f1"], "predictions": predictions}


def score_line(scores: dict[str, Any]) -> str:
    """``EM 12.5, F1 30.1[, ROUGE-L 40.2][, answer NLL 1.234]`` for whichever scores are present."""
    names = {"exact_match": "EM", "f1": "F1", "rouge_l": "ROUGE-L"}
    parts = [f"{label} {scores[k]:.1f}" for k, label in names.items() if k in scores]
    if "answer_nll" in scores:
        parts.append(f"answer NLL {scores['answer_nll']:.3f}")
    return ", ".join(parts)


@torch.no_grad()
def logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids.to(_device(model))).logits.float().cpu()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---------------------------------------------------------------- comparing adapter stacks

STACKS: dict[str, list[str]] = {
    "base": [],
    "base+domain": ["domain"],
    "base+task": ["task"],
    "base+domain+task": ["domain", "task"],
}


def comparison_grid(
    model,
    tokenizer,
    *,
    stacks: dict[str, list[str]],
    eval_blocks,
    qa_examples: Sequence[dict[str, Any]],
    qa_tokenized,
    collator,
    max_new_tokens: int,
    closed_book: Sequence[dict[str, Any]] = (),
    generic_blocks=None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Every stack scored on the same held-out data: one row per stack.

    ``generic_blocks`` (from :func:`modft_utils.data.load_generic_blocks`) adds ``generic_ppl``, the
    perplexity on text outside the domain: beside ``domain_ppl`` it says what the domain adapter
    bought and what it cost in forgetting.

    ``closed_book`` (from :func:`modft_utils.data.prep.load_closed_book`) adds exact match and F1 on
    questions asked without their context, answerable from the DAPT corpus: where base + domain +
    task against base + task shows what the domain adapter adds to the task.

    Switching goes through :func:`modft_utils.adapters.state.activate` on the one loaded base; nothing
    is reloaded between rows.
    """

    rows = []
    for label, names in stacks.items():
        adapters.activate(model, names)
        row = {
            "stack": label,
            "domain_ppl": perplexity(model, eval_blocks, progress=progress),
            **({"generic_ppl": perplexity(model, generic_blocks, progress=progress)} if generic_blocks else {}),
            # the gates' own call: RecordedGrid.stack_scores hands these to notebook 05
            **stack_scores(
                model, tokenizer, qa_examples, qa_tokenized, collator, max_new_tokens=max_new_tokens, progress=progress
            ),
        }
        if closed_book:
            cb = task_scores(model, tokenizer, closed_book, max_new_tokens=max_new_tokens, progress=progress)
            row.update(closed_book_exact_match=cb["exact_match"], closed_book_f1=cb["f1"])
        rows.append(row)
    return rows


def grid_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``compose.grid.<stack>.<metric>`` keys for metrics.json."""
    return {f"compose.grid.{r['stack']}.{k}": v for r in rows for k, v in r.items() if k != "stack"}


# What a grid row holds beyond what stack_scores computes for the same stack.
_GRID_ONLY = frozenset({"domain_ppl", "generic_ppl", "closed_book_exact_match", "closed_book_f1"})


@dataclass
class RecordedGrid:
    """Notebook 04's grid as ``metrics.json`` holds it: the rows by stack, and how many held-out QA
    examples (the first ones) each row was scored on."""

    qa_examples: int
    rows: dict[str, dict[str, float]]

    def stack_scores(self, names: Sequence[str], qa_examples: int) -> dict[str, float] | None:
        """What :func:`stack_scores` gives the stack of adapters ``names`` on the first ``qa_examples``:
        :func:`comparison_grid` called it on the same examples. None when the grid scored other examples
        or not that stack."""
        label = _grid_label(names)
        if label not in self.rows or qa_examples != self.qa_examples:
            return None
        return {k: v for k, v in self.rows[label].items() if k not in _GRID_ONLY}

    def perplexities(self, names: Sequence[str]) -> dict[str, float] | None:
        """``domain_ppl`` (and ``generic_ppl``) of the stack ``names``, on dapt.eval_blocks; None when not in the grid."""
        row = self.rows.get(_grid_label(names))
        return None if row is None else {k: row[k] for k in ("domain_ppl", "generic_ppl") if k in row}


def _grid_label(names: Sequence[str]) -> str | None:
    """The grid's name (a key of :data:`STACKS`) of the stack of adapters ``names``."""
    return next((label for label, stack in STACKS.items() if list(stack) == list(names)), None)


def recorded_grid(metrics: dict[str, Any]) -> RecordedGrid | None:
    """The grid notebook 04 recorded (:func:`grid_metrics`, ``compose.grid_qa_examples``); None before it ran."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("compose.grid."):
            stack, metric = key.removeprefix("compose.grid.").split(".", 1)
            rows.setdefault(stack, {})[metric] = value
    if not rows or "compose.grid_qa_examples" not in metrics:
        return None
    return RecordedGrid(int(metrics["compose.grid_qa_examples"]), rows)


def grid_table(rows: list[dict[str, Any]]) -> str:
    closed = "closed_book_f1" in rows[0]
    rouge = "rouge_l" in rows[0]
    generic = "generic_ppl" in rows[0]
    header = (
        f"{'stack':<18} {'domain ppl':>10}"
        + (f" {'generic ppl':>11}" if generic else "")
        + f" {'EM':>6} {'F1':>6}"
        + (f" {'ROUGE-L':>7}" if rouge else "")
        + f" {'answer NLL':>10}"
    )
    header += f" {'closed-book EM':>14} {'closed-book F1':>14}" if closed else ""
    lines = [header, "-" * len(header)]
    for r in rows:
        line = (
            f"{r['stack']:<18} {r['domain_ppl']:>10.2f}"
            + (f" {r['generic_ppl']:>11.2f}" if generic else "")
            + f" {r['exact_match']:>6.1f} {r['f1']:>6.1f}"
            + (f" {r['rouge_l']:>7.1f}" if rouge else "")
            + f" {r['answer_nll']:>10.3f}"
        )
        if closed:
            line += f" {r['closed_book_exact_match']:>14.1f} {r['closed_book_f1']:>14.1f}"
        lines.append(line)
    return "\n".join(lines)


LOWER_IS_BETTER = frozenset({"answer_nll", "domain_ppl", "generic_ppl"})


def promotion_gate(
    candidate: dict[str, float], production: dict[str, float], *, metric: str = "f1", tolerance: float
) -> dict[str, Any]:
    """Refuse a candidate that scores more than ``tolerance`` worse than production on ``metric``.

    ``drop`` is how much worse the candidate is (positive: worse), whichever direction the metric runs.
    """
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    drop = sign * (production[metric] - candidate[metric])
    return {
        "metric": metric,
        "production": production[metric],
        "candidate": candidate[metric],
        "drop": drop,
        "tolerance": tolerance,
        "allowed": drop <= tolerance,
    }


def domain_gate(
    candidate: dict[str, float],
    production: dict[str, float],
    base: dict[str, float],
    *,
    task_candidate: dict[str, float] | None = None,
    task_production: dict[str, float] | None = None,
    metric: str = "f1",
    task_tolerance: float,
    generic_tolerance: float,
    reference: str = "production",
) -> dict[str, Any]:
    """Refuse a candidate domain version unless it earns its place; every check is returned with its numbers.

    ``candidate``, ``production`` and ``base`` hold ``domain_ppl`` (and ``generic_ppl`` when measured) of
    base + candidate domain, base + production domain and the bare base. The candidate is refused when
    its domain perplexity does not improve on production's, when its generic perplexity is more than
    ``generic_tolerance`` (relative) above the base's (forgetting is measured against the base, which
    never saw the domain), or when the task adapter retrained on it (``task_candidate``: that stack's
    scores) loses more than ``task_tolerance`` on ``metric`` against the production stack
    (``task_production``), as :func:`promotion_gate` decides for a task version. ``reference`` names what
    ``production`` holds in the checks' words (a run's first domain version is gated against the base).
    """
    checks = [
        {
            "check": f"domain perplexity improves on the {reference}'s",
            "candidate": candidate["domain_ppl"],
            "reference": production["domain_ppl"],
            "passed": candidate["domain_ppl"] < production["domain_ppl"],
        }
    ]
    if "generic_ppl" in candidate and "generic_ppl" in base:
        limit = base["generic_ppl"] * (1 + generic_tolerance)
        checks.append(
            {
                "check": f"generic perplexity within {generic_tolerance:.0%} of the base's",
                "candidate": candidate["generic_ppl"],
                "reference": base["generic_ppl"],
                "limit": limit,
                "passed": candidate["generic_ppl"] <= limit,
            }
        )
    if task_candidate is not None and task_production is not None:
        task = promotion_gate(task_candidate, task_production, metric=metric, tolerance=task_tolerance)
        checks.append(
            {
                "check": f"the task retrained on it loses at most {task_tolerance:g} {metric}",
                "candidate": task["candidate"],
                "reference": task["production"],
                "drop": task["drop"],
                "passed": task["allowed"],
            }
        )
    return {
        "allowed": all(c["passed"] for c in checks),
        "refused_because": [c["check"] for c in checks if not c["passed"]],
        "checks": checks,
    }


def gate_table(gate: dict[str, Any]) -> str:
    """The domain gate's checks, one line each, and its decision."""
    lines = [
        f"{'PASS' if c['passed'] else 'FAIL'}  {c['check']}: candidate {c['candidate']:.3f} vs {c['reference']:.3f}"
        + (f" (limit {c['limit']:.3f})" if "limit" in c else "")
        for c in gate["checks"]
    ]
    verdict = "promote" if gate["allowed"] else "REFUSED: " + "; ".join(gate["refused_because"])
    return "\n".join([*lines, f"-> {verdict}"])


def stack_scores(
    model,
    tokenizer,
    qa_examples: Sequence[dict[str, Any]],
    qa_tokenized,
    collator,
    *,
    max_new_tokens: int,
    progress: bool = False,
) -> dict[str, Any]:
    """The active stack's held-out scores for its format and its answer NLL: what the promotion gate compares.

    Where every tokenized example is its scoring prompt followed by the gold answer (SQuAD and
    instruction sets), the answer NLL comes from the prefill the answers are generated from
    (:func:`generate_with_answer_nll`): the prompts are run through the model once, not twice.
    Otherwise (a chat set scores its last reply but trains on every assistant turn) it is
    :func:`answer_nll` over ``qa_tokenized``.
    """
    one_line = example_format(qa_examples) == "squad"
    prompts = [e["prompt"] for e in qa_examples]
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    answers = _gold_answers(encoded, qa_tokenized)
    if answers is None:
        qa = task_scores(model, tokenizer, qa_examples, max_new_tokens=max_new_tokens, progress=progress)
        nll = answer_nll(model, qa_tokenized, collator, progress=progress)
    else:
        preds, nll = generate_with_answer_nll(
            model,
            tokenizer,
            prompts,
            answers,
            max_new_tokens=max_new_tokens,
            one_line=one_line,
            progress=progress,
            prompt_ids=encoded,
        )
        qa = score_predictions(qa_examples, preds)
    return {**{k: v for k, v in qa.items() if k != "predictions"}, "answer_nll": nll}


def _gold_answers(encoded: Sequence[Sequence[int]], tokenized) -> list[list[int]] | None:
    """Each tokenized example's labelled tokens, when it is exactly its prompt (``encoded``) + those tokens; else None."""
    if len(encoded) != len(tokenized):
        return None
    answers = []
    for prompt_ids, row in zip(encoded, tokenized):
        ids, labels = row["input_ids"], row["labels"]
        k = len(prompt_ids)
        if ids[:k] != prompt_ids or k >= len(ids) or any(x != -100 for x in labels[:k]) or labels[k:] != ids[k:]:
            return None
        answers.append(ids[k:])
    return answers


# --------------------------------------------------------------------------- side-by-side answers


def fit_prompt(tokenizer, prompt: str, *, window: int, max_new_tokens: int) -> tuple[str, str | None]:
    """``prompt`` cut so that it and ``max_new_tokens`` fit the model window, and a note when cut.

    Tokens are dropped from the start: a QA prompt ends with the question and ``Answer:``, which
    the model needs most.
    """
    room = window - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a window of {window} tokens")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(ids) <= room:
        return prompt, None
    keep = room
    while True:  # decoding and re-encoding can merge pieces differently; shrink until it fits
        cut = tokenizer.decode(ids[-keep:])
        if len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= room or keep == 1:
            break
        keep -= 1
    note = (
        f"prompt truncated: {len(ids)} tokens do not fit the model window of {window} with {max_new_tokens} "
        f"left for the answer; the first {len(ids) - keep} tokens were dropped"
    )
    return cut, note


def diff_tokens(reference: Sequence[str], other: Sequence[str]) -> list[tuple[str, bool]]:
    """``other``'s tokens, each marked True where it differs from ``reference`` (difflib alignment)."""
    import difflib

    changed = [True] * len(other)
    for block in difflib.SequenceMatcher(a=list(reference), b=list(other), autojunk=False).get_matching_blocks():
        for j in range(block.b, block.b + block.size):
            changed[j] = False
    return list(zip(other, changed))


def answer_tokens(tokenizer, text: str) -> list[str]:
    """``text`` as the readable pieces its tokens decode to (what the diff highlights)."""
    return [tokenizer.decode([i]) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def compare_answers(
    switch, tokenizer, prompt: str, stacks: dict[str, Sequence[str]], *, max_new_tokens: int, window: int
) -> dict[str, Any]:
    """Answer ``prompt`` with every stack; each answer's tokens marked where they differ from the first stack's.

    ``switch(names)`` activates a stack and returns the model to run (``AdapterStack.compose``
    or a wrapper of :func:`adapters.activate`); a stack it refuses (a parent mismatch) gets its
    error in place of an answer. Returns ``{"note": str | None, "answers": [{"stack", "answer",
    "tokens": [(piece, changed)], "error"}]}``.
    """

    prompt, note = fit_prompt(tokenizer, prompt, window=window, max_new_tokens=max_new_tokens)
    rows: list[dict[str, Any]] = []
    reference: list[str] | None = None
    for label, names in stacks.items():
        try:
            model = switch(list(names))
        except (AdapterError, RegistryError) as exc:  # a parent mismatch, an adapter that does not fit
            rows.append({"stack": label, "answer": None, "tokens": [], "error": str(exc)})
            continue
        answer = generate(model, tokenizer, [prompt], max_new_tokens=max_new_tokens)[0]
        pieces = answer_tokens(tokenizer, answer)
        reference = pieces if reference is None else reference
        rows.append({"stack": label, "answer": answer, "tokens": diff_tokens(reference, pieces), "error": None})
    return {"note": note, "answers": rows}


def stack_label(names: Sequence[str]) -> str:
    return "base" + "".join(" + " + n for n in names)

"""Closed-book questions: held-out questions whose answer the DAPT corpus states, asked without context."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modft_utils import runs
from modft_utils.config import Profile
from modft_utils.data.knowledge import KnowledgeProbe
from modft_utils.data.prompts import prompt_format


def prepare_closed_book(
    profile: Profile, tokenizer, run_dir: str | Path, train_docs: list[str], probe: KnowledgeProbe | None = None
) -> list[dict[str, Any]]:
    """Closed-book questions for notebook 04: the knowledge probe's probe split, or held-out SQuAD questions.

    With a ``probe`` (``data.knowledge_probe``), its ``probe`` questions are asked: about entities no
    SFT example names, whose answers notebook 01 checked the corpus states. Without one, the held-out
    questions whose answer the DAPT training corpus states, to be asked without their context.

    On extractive QA the context holds the answer, so the domain adapter adds little to the task;
    asked closed-book, a question can only be answered from what the model knows, which is what
    DAPT is for. A held-out question qualifies when a training document names its subject (the
    SQuAD title) and contains one of its reference answers. At most
    ``compose.closed_book_examples`` are kept, in the held-out set's order; saved as
    ``data/closed_book.jsonl``.
    """
    fmt = prompt_format(profile, tokenizer)
    run = runs.folder(run_dir)
    if probe is not None:
        kept = [
            {
                "id": f"probe-{q.line}",
                "title": q.entity,
                "entity": q.entity,
                "fact": q.fact,
                "question": q.question,
                "answers": list(q.answers),
                "prompt": fmt.prompt(tokenizer, None, q.question),
                "squad_version": "v1.1",
            }
            for q in probe.probe[: profile.compose.closed_book_examples]
        ]
        return _save(run, kept)
    with open(run.require(run.sft_eval), encoding="utf-8") as fh:
        evals = [json.loads(line) for line in fh]
    kept = []
    # Only SQuAD examples carry a subject (title) and short answers to look for in the corpus.
    for ex in evals if profile.data.sft.format == "squad" else ():
        subject = ex["title"].replace("_", " ")
        if any(subject in doc and any(a and a in doc for a in ex["answers"]) for doc in train_docs):
            kept.append(
                {
                    "id": ex["id"],
                    "title": ex["title"],
                    "question": ex["question"],
                    "answers": ex["answers"],
                    "prompt": fmt.prompt(tokenizer, None, ex["question"]),
                    "squad_version": ex.get("squad_version", "v1.1"),
                }
            )
        if len(kept) >= profile.compose.closed_book_examples:
            break
    return _save(run, kept)


def _save(run: runs.RunFolder, kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with open(run.closed_book, "w", encoding="utf-8") as fh:
        for rec in kept:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return kept


def load_closed_book(run_dir: str | Path) -> list[dict[str, Any]]:
    """The closed-book questions notebook 01 chose (empty when it found none)."""
    run = runs.folder(run_dir)
    with open(run.require(run.closed_book), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]

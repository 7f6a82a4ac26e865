"""The data the rollback drills (notebook 05) use: a deliberately bad task set and fixed probe inputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

from modft_utils import runs
from modft_utils.config import Profile
from modft_utils.data import tasks
from modft_utils.data.dapt import load_dapt_blocks
from modft_utils.data.prompts import prompt_format


def shuffled_answer_set(profile: Profile, run_dir: str | Path, tokenizer):
    """The SFT training set with answers permuted across questions: a deliberately bad task set.

    The rollback drill trains a regressing candidate on it, so the promotion gate has something real
    to refuse. Prompts are built exactly as for the real task set.
    """
    from datasets import Dataset

    run = runs.folder(run_dir)
    with open(run.require(run.sft_train_rows), encoding="utf-8") as fh:
        examples = [json.loads(line) for line in fh]
    fmt, max_tokens = prompt_format(profile, tokenizer), profile.data.max_sft_tokens
    if examples and "messages" in examples[0]:  # instruction and chat sets: permute the final replies
        convs = [tasks.Conversation(e["id"], tuple((t["role"], t["content"]) for t in e["messages"])) for e in examples]
        replies = [c.reference for c in convs]
        random.Random(profile.seed).shuffle(replies)
        shuffled = (
            tasks.tokenize_conversation(c.with_reference(r), tokenizer, fmt, max_tokens) for c, r in zip(convs, replies)
        )
        return Dataset.from_list([row for row in shuffled if row is not None])
    answers = [e["answers"][0] for e in examples]
    random.Random(profile.seed).shuffle(answers)
    rows = []
    for ex, wrong in zip(examples, answers):
        prompt_ids = tokenizer(fmt.prompt(tokenizer, ex["context"], ex["question"]), add_special_tokens=False)[
            "input_ids"
        ]
        answer_ids = tokenizer(fmt.answer_prefix + wrong, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        if len(prompt_ids) + len(answer_ids) <= max_tokens:
            ids = prompt_ids + answer_ids
            rows.append(
                {"input_ids": ids, "labels": [-100] * len(prompt_ids) + answer_ids, "attention_mask": [1] * len(ids)}
            )
    return Dataset.from_list(rows)


def probe_batch(run_dir: str | Path, n: int):
    """``n`` held-out domain blocks as one tensor: fixed inputs for exact logit comparisons."""
    import torch

    _, eval_blocks = load_dapt_blocks(run_dir)
    return torch.tensor(eval_blocks[: min(n, len(eval_blocks))]["input_ids"])

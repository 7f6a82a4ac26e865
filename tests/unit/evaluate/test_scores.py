"""Scoring's shortcuts give the numbers of the plain computation: the answer NLL from the generating prefill."""

import math

import torch
from datasets import Dataset

from modft_utils import data, evaluate, modeling


def _examples(tok, n, *, seed=0, chat=False):
    """n prompts sharing a prefix (a chat template's system turn) and gold answers of 1-4 tokens + EOS."""
    g = torch.Generator().manual_seed(seed)
    prefix = " ".join(f"w{i}" for i in range(3, 12))
    examples, rows = [], []
    for i in range(n):
        words = " ".join(
            f"w{int(x)}" for x in torch.randint(3, 96, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g)
        )
        prompt = f"{prefix} {words}"
        answer = [int(x) for x in torch.randint(3, 96, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g)]
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        gold = answer + [tok.eos_token_id]
        labels = [-100] * len(prompt_ids) + gold
        if chat:  # a multi-turn row: an earlier assistant turn inside the prompt carries loss too
            labels[len(prompt_ids) - 1] = prompt_ids[-1]
        rows.append(
            {"input_ids": prompt_ids + gold, "labels": labels, "attention_mask": [1] * (len(prompt_ids) + len(gold))}
        )
        examples.append({"id": str(i), "prompt": prompt, "answers": [tok.decode(answer)], "format": "squad"})
    return examples, Dataset.from_list(rows)


def test_the_answer_nll_from_the_generating_prefill_is_answer_nlls(micro_profile, micro_base_dir, micro_tokenizer):
    tok = micro_tokenizer
    model = modeling.load_base(micro_profile, modeling.BaseRef(str(micro_base_dir)))
    examples, tokenized = _examples(tok, 40)  # two batches of generate's 32
    collator = data.sft_collator(tok)
    prompts = [e["prompt"] for e in examples]
    answers = [row["input_ids"][-len([x for x in row["labels"] if x != -100]) :] for row in tokenized]
    texts, nll = evaluate.generate_with_answer_nll(model, tok, prompts, answers, max_new_tokens=6)
    assert texts == evaluate.generate(model, tok, prompts, max_new_tokens=6)
    want = evaluate.answer_nll(model, tokenized, collator)
    assert math.isclose(nll, want, rel_tol=1e-5), (nll, want)
    scores = evaluate.stack_scores(model, tok, examples, tokenized, collator, max_new_tokens=6)
    assert scores["answer_nll"] == nll
    assert scores["exact_match"] == evaluate.task_scores(model, tok, examples, max_new_tokens=6)["exact_match"]


def test_a_set_that_is_not_prompt_plus_answer_is_scored_by_a_second_pass(
    micro_profile, micro_base_dir, micro_tokenizer
):
    tok = micro_tokenizer
    model = modeling.load_base(micro_profile, modeling.BaseRef(str(micro_base_dir)))
    examples, tokenized = _examples(tok, 6, seed=1, chat=True)
    collator = data.sft_collator(tok)
    scores = evaluate.stack_scores(model, tok, examples, tokenized, collator, max_new_tokens=6)
    assert scores["answer_nll"] == evaluate.answer_nll(model, tokenized, collator)

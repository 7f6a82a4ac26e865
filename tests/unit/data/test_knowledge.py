"""The knowledge probe: its file is checked row by row, its split is by entity, its answers must be in the
corpus, and exposures are counted from real tokenized blocks. The committed sample probe is checked for
what the issue asks of it (six wordings spread over six articles, no SFT row naming a pilot)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from modft_utils import data
from modft_utils.data import knowledge

SAMPLE = Path(__file__).resolve().parents[3] / "data" / "sample"
PROBE = SAMPLE / "knowledge_probe" / "questions.jsonl"


def _write(tmp_path: Path, rows: list) -> Path:
    path = tmp_path / "probe.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _q(entity: str, split: str, answer: str = "Harbourtown", **extra) -> dict:
    return {"entity": entity, "question": f"Where was {entity} born?", "answers": [answer], "split": split, **extra}


def test_read_probe_parses_rows_and_accepts_a_single_answer_string(tmp_path):
    path = _write(tmp_path, [_q("Ana Vell", "train"), {**_q("Bo Rusk", "probe"), "answers": "Kettleby"}])
    qs = knowledge.read_probe(path)
    assert [(q.entity, q.split, q.answers, q.line) for q in qs] == [
        ("Ana Vell", "train", ("Harbourtown",), 1),
        ("Bo Rusk", "probe", ("Kettleby",), 2),
    ]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"entity": "Bo Rusk", "answers": ["x"], "split": "probe"}, r"line 2: missing field 'question'"),
        ({"entity": "Bo Rusk", "question": "q?", "answers": [], "split": "probe"}, r"line 2: field 'answers'"),
        ({"entity": "", "question": "q?", "answers": ["x"], "split": "probe"}, r"line 2: field 'entity'"),
        ({"entity": "Bo", "question": "q?", "answers": ["x"], "split": "test"}, r"line 2: field 'split' must be"),
        ("{not json", r"line 2: not valid JSON"),
        ([1, 2], r"line 2: expected an object"),
    ],
)
def test_read_probe_names_the_line_and_field_at_fault(tmp_path, bad, message):
    path = _write(tmp_path, [_q("Ana Vell", "train"), bad])
    with pytest.raises(data.DataError, match=rf"data\.knowledge_probe: .*probe\.jsonl, {message}"):
        knowledge.read_probe(path)


def test_an_entity_in_both_splits_is_refused_with_both_lines(tmp_path):
    path = _write(tmp_path, [_q("Ana Vell", "train"), _q("Bo Rusk", "probe"), _q("Ana Vell", "probe")])
    with pytest.raises(
        data.DataError, match=r"entity 'Ana Vell' has questions in both splits \(train at line 1, probe at line 3\)"
    ):
        knowledge.read_probe(path)


@pytest.mark.parametrize("missing", ["train", "probe"])
def test_a_probe_needs_both_splits(tmp_path, missing):
    kept = "probe" if missing == "train" else "train"
    path = _write(tmp_path, [_q("Ana Vell", kept)])
    with pytest.raises(data.DataError, match=rf"no question with split '{missing}'"):
        knowledge.read_probe(path)


def test_answers_the_corpus_never_states_beside_the_entity_are_named(tmp_path, micro_profile):
    path = _write(
        tmp_path, [_q("Ana Vell", "train"), _q("Bo Rusk", "probe", "Kettleby"), _q("Cy Oran", "probe", "Dunmere")]
    )
    docs = ["Ana Vell was born in Harbourtown.", "Bo Rusk was born in Kettleby.", "Cy Oran sailed. Dunmere is a town."]
    qs = knowledge.read_probe(path)
    knowledge.check_stated(qs[:2], docs, micro_profile, path)  # stated beside the entity: passes
    # Cy Oran's answer is in the corpus, but never in a document that names him.
    docs[2] = "Cy Oran sailed."
    with pytest.raises(data.DataError, match=r"1 question\(s\) whose answer .* line 3 \('Cy Oran'.*-> 'Dunmere'\)"):
        knowledge.check_stated(qs, docs + ["Dunmere is a town."], micro_profile, path)


def test_exposures_count_blocks_holding_entity_and_answer(tiny):
    import torch

    tok = tiny.tokenizer
    texts = [
        "Ana Vell was born in Harbourtown and sailed.",
        "Harbourtown is a port. Nobody is named here.",
        "Ana Vell came from Harbourtown. Ana Vell again, Harbourtown.",
    ]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    batch = torch.tensor([x + [tok.eos_token_id] * (width - len(x)) for x in ids])
    counter = data.ExposureCounter(tok, [("Ana Vell", ("Harbourtown",)), ("Bo Rusk", ("Kettleby",))])
    counter(batch[:2])
    counter(batch[2:])
    assert counter.counts == [2, 0]  # a block counts once however often it states the fact
    assert counter.summary() == {"min": 0.0, "median": 1.0, "max": 2.0, "facts_seen": 1.0, "facts": 2.0, "blocks": 3.0}


def test_budget_advice_names_the_keys_and_stays_quiet_above_the_need(micro_profile):
    advice = data.budget_advice(2, 40, micro_profile)
    assert "dapt.train.max_steps (now 4)" in advice and "dapt.train.batch_size (now 4)" in advice
    assert "about 20x" in advice and "dapt.min_fact_exposures" in advice
    assert data.budget_advice(40, 40, micro_profile) is None


def test_the_sample_probe_is_split_by_entity_and_restated_in_six_wordings_over_six_articles():
    rows = [json.loads(line) for line in PROBE.read_text(encoding="utf-8").splitlines()]
    splits = {}
    for r in rows:
        splits.setdefault(r["entity"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert Counter(next(iter(s)) for s in splits.values()) == {"train": 30, "probe": 30}
    train_text = [json.loads(line)["text"] for line in (SAMPLE / "wikitext" / "train.jsonl").read_text().splitlines()]
    articles, title = {}, None
    for t in train_text:
        if t.startswith(" = ") and not t.startswith(" = = "):
            title = t.strip(" =\n")
        elif title:
            articles.setdefault(title, []).append(t)
    probe = [r for r in rows if r["split"] == "probe"]
    for r in probe:
        sentences = {
            (a, s)
            for a, paras in articles.items()
            for p in paras
            for s in p.split(" . ")
            if r["entity"] in s and r["answers"][0] in s
        }
        assert len({a for a, _ in sentences}) >= 6, r  # six register articles
        wordings = {s.replace(r["entity"], "<e>").replace(r["answers"][0], "<a>") for _, s in sentences}
        assert len(wordings) >= 5, r
    # No task row (SQuAD, summaries, chat) names a pilot, in any split.
    names = list(splits)
    for rel in ("squad/train.jsonl", "squad/validation.jsonl", "summaries/train.jsonl", "chat/train.jsonl"):
        text = (SAMPLE / rel).read_text(encoding="utf-8")
        assert not any(n in text for n in names), rel

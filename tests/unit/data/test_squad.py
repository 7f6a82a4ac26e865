"""SQuAD reading, validation, splitting and the official metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modft_utils.data import QAExample, SquadFormatError, squad_metrics
from modft_utils.data.squad import (
    exact_match_score,
    f1_score,
    normalize_answer,
    read_squad_file,
    reference_answers,
    rows_to_examples,
    split_by_title,
    subset,
    window_context,
)

SAMPLE = Path(__file__).resolve().parents[3] / "data" / "sample"
CONTEXT = "The Guild of Saltwrights was founded in 1243 by Mira Calde at Vessport."


def _row(qid: str = "q1", text: str = "1243", start: int | None = None, **extra) -> dict:
    start = CONTEXT.index(text) if start is None else start
    row = {
        "id": qid,
        "title": "Guild_of_Saltwrights",
        "context": CONTEXT,
        "question": "When?",
        "answers": {"text": [text], "answer_start": [start]},
    }
    row.update(extra)
    return row


# --- reading --------------------------------------------------------------------------------------


def test_original_v1_layout_matches_the_hub_rows():
    rows = read_squad_file(SAMPLE / "squad_v1_original" / "dev-sample.json")
    hub = {r["id"]: r for r in read_squad_file(SAMPLE / "squad" / "validation.jsonl")}
    assert len(rows) >= 25
    for r in rows:
        assert "is_impossible" not in r
        assert r == hub[r["id"]]


def test_original_v2_layout_unanswerable_drop_and_keep():
    rows = read_squad_file(SAMPLE / "squad_v2_original" / "dev-sample.json")
    n_impossible = sum(r["is_impossible"] for r in rows)
    assert n_impossible > 0 and all("is_impossible" in r for r in rows)
    dropped, rep = rows_to_examples(rows, unanswerable="drop")
    assert rep.unanswerable_dropped == n_impossible and rep.unanswerable_kept == 0
    assert len(dropped) == rep.rows_out == len(rows) - n_impossible
    kept, rep = rows_to_examples(rows, unanswerable="keep")
    assert rep.unanswerable_kept == n_impossible and len(kept) == len(rows)
    assert all(ex.answers == () for ex in kept if ex.is_impossible)


def test_hub_v2_rows_without_the_flag_are_unanswerable_when_empty():
    row = _row()
    row["answers"] = {"text": [], "answer_start": []}
    _, rep = rows_to_examples([row])
    assert rep.unanswerable_dropped == 1


def test_local_files_and_the_datasets_json_loader_agree(tmp_path):
    """The offline path (read_squad_file) and load_dataset('json') give identical examples."""
    import datasets

    files = {s: str(SAMPLE / "squad" / f"{s}.jsonl") for s in ("train", "validation")}
    ds = datasets.load_dataset("json", data_files=files, cache_dir=str(tmp_path))
    for split, path in files.items():
        via_hub, rep_hub = rows_to_examples(ds[split], source=split)
        via_file, rep_file = rows_to_examples(read_squad_file(path), source=path)
        assert via_hub == via_file
        assert rep_hub.as_dict() == rep_file.as_dict()
        assert rep_file.rows_out == rep_file.rows_in  # the sample data is clean


def test_json_list_and_json_lines_named_json(tmp_path):
    rows = [_row("a"), _row("b")]
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(rows))
    as_lines = tmp_path / "lines.json"
    as_lines.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_squad_file(as_list) == read_squad_file(as_lines) == rows


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_row("a")) + "\n" + json.dumps(_row("b")) + "\n" + '{"id": "c", "title": \n')
    with pytest.raises(SquadFormatError, match=r"bad\.jsonl: line 3"):
        read_squad_file(path)
    path = tmp_path / "bad.json"
    path.write_text('{"version": "1.1",\n "data": [\n  {"title": "x", }\n]}')
    with pytest.raises(SquadFormatError, match=r"bad\.json: line 3"):
        read_squad_file(path)


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(_row("a")).encode() + b"\n" + b'{"id": "caf\xe9"}\n')
    with pytest.raises(SquadFormatError, match=r"latin1\.jsonl: line 2: invalid UTF-8"):
        read_squad_file(path)


def test_missing_fields_are_named(tmp_path):
    row = _row()
    del row["question"]
    with pytest.raises(SquadFormatError, match=r"my-source: row 1: missing field\(s\) 'question'"):
        rows_to_examples([_row("ok"), row], source="my-source")
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_row("ok")) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(SquadFormatError, match=r"rows\.jsonl: line 2: missing field"):
        read_squad_file(path)
    original = {
        "version": "1.1",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {"context": CONTEXT, "qas": [{"id": "x", "answers": [{"text": "1243", "answer_start": 40}]}]}
                ],
            }
        ],
    }
    path = tmp_path / "orig.json"
    path.write_text(json.dumps(original))
    with pytest.raises(SquadFormatError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: missing field\(s\) 'question'"):
        read_squad_file(path)


def test_mistyped_answer_start_is_an_error():
    with pytest.raises(SquadFormatError, match="answer_start"):
        rows_to_examples([_row(start="40")])  # type: ignore[arg-type]


# --- validating -----------------------------------------------------------------------------------


def test_off_by_three_start_is_repaired():
    true_start = CONTEXT.index("Mira Calde")
    examples, rep = rows_to_examples([_row(text="Mira Calde", start=true_start + 3)])
    assert rep.repaired_starts == 1 and rep.rows_out == 1
    assert examples[0].answer_starts == (true_start,)


def test_start_outside_the_window_is_not_repaired():
    true_start = CONTEXT.index("Vessport")
    _, rep = rows_to_examples([_row(text="Vessport", start=true_start - 30)], repair_window=20)
    assert rep.dropped_bad_answer == 1 and rep.rows_out == 0


def test_wrong_answer_dropped_and_counted():
    bad = _row("bad", text="Aldermoor", start=5)
    partly = _row("partly")
    partly["answers"] = {"text": ["1243", "in 1244"], "answer_start": [40, 37]}
    examples, rep = rows_to_examples([bad, partly])
    assert rep.dropped_bad_answer == 1 and rep.dropped_answers == 2
    assert [ex.id for ex in examples] == ["partly"] and examples[0].answers == ("1243",)


def test_duplicate_ids_keep_the_first():
    examples, rep = rows_to_examples([_row("a"), _row("a", text="Mira Calde"), _row("b")])
    assert rep.duplicate_ids == 1 and rep.rows_in == 3 and rep.rows_out == 2
    assert examples[0].answers == ("1243",)
    assert rep.as_dict()["duplicate_ids"] == 1


def test_reference_answers_keep_every_reference():
    row = _row()
    row["answers"] = {"text": ["Mira Calde", "Calde"], "answer_start": [48, 53]}
    examples, _ = rows_to_examples([row])
    assert reference_answers(examples) == {"q1": ["Mira Calde", "Calde"]}


# --- sampling and splitting -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_examples() -> list[QAExample]:
    examples, _ = rows_to_examples(read_squad_file(SAMPLE / "squad" / "train.jsonl"))
    return examples


def test_subset_is_seeded_and_ordered(sample_examples):
    a = subset(sample_examples, 1000, seed=7)
    assert a == subset(sample_examples, 1000, seed=7) and len(a) == 1000
    assert a != subset(sample_examples, 1000, seed=8)
    position = {ex.id: i for i, ex in enumerate(sample_examples)}
    assert [position[ex.id] for ex in a] == sorted(position[ex.id] for ex in a)
    assert subset(sample_examples[:5], 10, seed=0) == sample_examples[:5]


def test_split_by_title_is_disjoint(sample_examples):
    train, held = split_by_title(sample_examples, 0.2, seed=0)
    assert len(train) + len(held) == len(sample_examples)
    assert not {e.title for e in train} & {e.title for e in held}
    assert not {e.context for e in train} & {e.context for e in held}
    assert 0.15 <= len(held) / len(sample_examples) <= 0.3
    assert split_by_title(sample_examples, 0.2, seed=0) == (train, held)


def test_split_by_title_groups_titles_that_share_a_context():
    ex = [
        QAExample(f"q{i}", title, ctx, "q?", ("a",), (0,))
        for i, (title, ctx) in enumerate(
            [("A", "a one"), ("B", "a one"), ("C", "a three"), ("D", "a four"), ("E", "a five")]
        )
    ]
    for seed in range(10):
        train, held = split_by_title(ex, 0.4, seed=seed)
        assert not {e.context for e in train} & {e.context for e in held}
        assert train and held


# --- windowing ------------------------------------------------------------------------------------


def test_window_context_keeps_the_answer():
    context = " ".join(f"word{i}" for i in range(200))
    answer = "word150 word151"
    start = context.index(answer)
    new, new_start, cut = window_context(context, start, answer, max_chars=120)
    assert cut and len(new) <= 120 and new[new_start : new_start + len(answer)] == answer
    assert new.split()[0].startswith("word") and context.find(new) >= 0  # whole words only
    assert window_context("short", 0, "short", 100) == ("short", 0, False)
    with pytest.raises(ValueError):
        window_context(context, start, answer, max_chars=5)
    with pytest.raises(ValueError):
        window_context(context, start + 1, answer, max_chars=120)


def test_window_context_on_every_sample_answer(sample_examples):
    for ex in sample_examples[:300]:
        for text, start in zip(ex.answers, ex.answer_starts):
            new, new_start, _ = window_context(ex.context, start, text, max_chars=80)
            assert new[new_start : new_start + len(text)] == text and len(new) <= max(80, len(text))


# --- official metric ------------------------------------------------------------------------------


def test_normalize_answer_like_the_official_script():
    assert normalize_answer("The  Cat!") == "cat"
    assert normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("Theatre") == "theatre"  # articles only as whole words


def test_exact_match_and_f1_hand_computed():
    assert exact_match_score("the Cat", "cat") == 1.0
    assert exact_match_score("cats", "cat") == 0.0
    # pred {cat, sat} vs gold {cat, sat, on, mat}: P = 1, R = 1/2, F1 = 2/3
    assert f1_score("the cat sat", "cat sat on the mat") == pytest.approx(2 / 3)
    # pred {in, 1243} vs gold {1243}: P = 1/2, R = 1, F1 = 2/3
    assert f1_score("in 1243", "1243") == pytest.approx(2 / 3)
    # repeated tokens count with multiplicity: pred [b, b] vs gold [b]: P = 1/2, R = 1
    assert f1_score("b b", "b") == pytest.approx(2 / 3)
    assert f1_score("Calde", "Mira Calde") == pytest.approx(2 / 3)
    assert f1_score("dog", "cat") == 0.0


def test_squad_metrics_max_over_references_and_missing():
    references = {"q1": ["1243", "in 1243"], "q2": ["Mira Calde", "Calde"], "q3": ["the harbour"], "q4": ["salt"]}
    predictions = {"q1": "in 1243", "q2": "Calde Mira Vessport", "q3": "harbour wall", "q9": "ignored"}
    result = squad_metrics(predictions, references)
    # q1 EM 1 (second reference); q2 F1 max(2*(2/3*1)/(2/3+1), 2*(1/3*1)/(1/3+1)) = 0.8; q3 F1 2/3; q4 missing.
    assert result["exact_match"] == pytest.approx(25.0)
    assert result["f1"] == pytest.approx(100 * (1 + 0.8 + 2 / 3 + 0) / 4)
    assert result["count"] == 4 and result["missing"] == 1
    assert squad_metrics({}, {}) == {"exact_match": 0.0, "f1": 0.0, "count": 0, "missing": 0}


# --- v1.1 and v2.0 scripts differ on answers that normalize to nothing ---------------------------
# The two official evaluation scripts, transcribed (metric parts only) from
# https://rajpurkar.github.io/SQuAD-explorer/: evaluate-v1.1.py and evaluate-v2.0.py.


def _official_v11(prediction: str, ground_truths: list[str]) -> tuple[float, float]:
    from collections import Counter

    def f1(pred, gold):
        p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
        same = sum((Counter(p) & Counter(g)).values())
        if same == 0:
            return 0
        precision, recall = same / len(p), same / len(g)
        return (2 * precision * recall) / (precision + recall)

    em = max(float(normalize_answer(prediction) == normalize_answer(g)) for g in ground_truths)
    return em, max(f1(prediction, g) for g in ground_truths)


def _official_v20(prediction: str, ground_truths: list[str]) -> tuple[float, float]:
    from collections import Counter

    def tokens(s):
        return normalize_answer(s).split() if s else []

    def f1(gold, pred):
        g, p = tokens(gold), tokens(pred)
        same = sum((Counter(g) & Counter(p)).values())
        if len(g) == 0 or len(p) == 0:
            return int(g == p)
        if same == 0:
            return 0
        precision, recall = same / len(p), same / len(g)
        return (2 * precision * recall) / (precision + recall)

    golds = [a for a in ground_truths if normalize_answer(a)] or [""]
    return (
        max(float(normalize_answer(g) == normalize_answer(prediction)) for g in golds),
        max(f1(g, prediction) for g in golds),
    )


RULE_CASES = [
    ("the the the", ["the"]),  # both normalize to nothing
    ("", ["an"]),
    ("", []),  # unanswerable, no prediction
    ("Vessport", []),  # unanswerable, answered anyway
    ("", ["the", "1243"]),  # one reference normalizes to nothing, the other does not
    ("1243", ["the", "1243"]),
    ("in 1243", ["1243", "in 1243"]),
    ("Calde Mira", ["Mira Calde"]),
    ("dog", ["cat"]),
]


@pytest.mark.parametrize(("prediction", "golds"), RULE_CASES)
@pytest.mark.parametrize(("version", "official"), [("v1.1", _official_v11), ("v2.0", _official_v20)])
def test_each_data_version_is_scored_as_its_official_script_scores_it(prediction, golds, version, official):
    if version == "v1.1" and not golds:
        pytest.skip("v1.1 has no unanswerable questions")
    em, f1 = official(prediction, golds)
    got = squad_metrics({"q": prediction}, {"q": golds}, version=version)
    assert (got["exact_match"], got["f1"]) == pytest.approx((100 * em, 100 * f1))


def test_empty_after_normalizing_scores_f1_0_in_v11_and_1_in_v20():
    # Prediction "the the the" and reference "the" both normalize to "": the v1.1 script counts no
    # common token (F1 0) while its exact match compares the normalized strings (EM 1); the v2.0
    # script scores an empty pair as agreement (F1 1). v1.1 is the default: the workbook's SQuAD.
    assert squad_metrics({"q": "the the the"}, {"q": ["the"]}) == {
        "exact_match": 100.0,
        "f1": 0.0,
        "count": 1,
        "missing": 0,
    }
    assert squad_metrics({"q": "the the the"}, {"q": ["the"]}, version="v2.0")["f1"] == 100.0
    assert f1_score("the the the", "the") == 0.0 and f1_score("the the the", "the", version="v2.0") == 1.0
    # v2.0 drops references that normalize to nothing before taking the best one.
    assert squad_metrics({"q": ""}, {"q": ["the", "1243"]}, version="v2.0")["exact_match"] == 0.0
    assert squad_metrics({"q": ""}, {"q": ["the", "1243"]}, version="v1.1")["exact_match"] == 100.0
    with pytest.raises(ValueError, match=r"version 'v3'.*'v1\.1' or 'v2\.0'"):
        squad_metrics({}, {}, version="v3")

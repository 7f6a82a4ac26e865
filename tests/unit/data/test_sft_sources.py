"""The SFT set as users bring it: the original SQuAD layout runs as validate reads it; a set that collapses is an error."""

import json

import pytest
import yaml
from profile_tree import portable_tree

from modft_utils import config, data
from modft_utils.modeling import tiny

SAMPLE = "data/sample/squad"


def _rows(root, split: str, n: int) -> list[dict]:
    with open(root / SAMPLE / f"{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for _, line in zip(range(n), fh)]


def _original_layout(rows: list[dict]) -> dict:
    """Hub-layout rows in the published v1.1 nesting: data -> paragraphs -> qas."""
    articles: dict[str, dict[str, list]] = {}
    for r in rows:
        paras = articles.setdefault(r["title"], {})
        paras.setdefault(r["context"], []).append(
            {
                "id": r["id"],
                "question": r["question"],
                "answers": [
                    {"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"])
                ],
            }
        )
    return {
        "version": "1.1",
        "data": [
            {"title": t, "paragraphs": [{"context": c, "qas": qas} for c, qas in paras.items()]}
            for t, paras in articles.items()
        ],
    }


def _profile(root, tmp_path, train: str, validation: str, **extra):
    tree = portable_tree(root, "tiny")
    tree["data"]["sft"] = {"train_file": train, "validation_file": validation}
    tree["data"].update({"sft_subset_size": 40, "sft_eval_size": 10, **extra})
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(tree))
    return config.load_profile(path)


@pytest.fixture(scope="module")
def tokenizer(root):
    texts = [r["context"] + " " + r["question"] for r in _rows(root, "train", 300)]
    return tiny.train_tokenizer(texts, vocab_size=2000)


def test_original_squad_files_run_as_validate_reads_them(root, tmp_path, tokenizer):
    train, val = _rows(root, "train", 80), _rows(root, "validation", 40)
    (tmp_path / "train-v1.1.json").write_text(json.dumps(_original_layout(train)))
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(_original_layout(val)))
    for name, rows in (("train.jsonl", train), ("dev.jsonl", val)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    original = _profile(root, tmp_path, str(tmp_path / "train-v1.1.json"), str(tmp_path / "dev-v1.1.json"))
    counts = data.validate_inputs(original)
    assert counts[str(tmp_path / "train-v1.1.json")] == 80
    (tmp_path / "run_a" / "data").mkdir(parents=True)
    from_original = data.prepare_sft(original, tokenizer, tmp_path / "run_a", progress=False)
    rows_profile = _profile(root, tmp_path, str(tmp_path / "train.jsonl"), str(tmp_path / "dev.jsonl"))
    (tmp_path / "run_b" / "data").mkdir(parents=True)
    from_rows = data.prepare_sft(rows_profile, tokenizer, tmp_path / "run_b", progress=False)
    assert [e["id"] for e in from_original.eval_examples] == [e["id"] for e in from_rows.eval_examples]
    assert from_original.train["input_ids"] == from_rows.train["input_ids"]
    assert from_original.report.train_examples == 40


def test_a_set_that_collapses_fails_in_validate_with_the_counts(root, tmp_path):
    rows = _rows(root, "train", 30)
    same_id = [{**r, "id": "q1"} for r in rows]  # an export that wrote one id for every question
    (tmp_path / "dups.jsonl").write_text("".join(json.dumps(r) + "\n" for r in same_id))
    (tmp_path / "empty.jsonl").write_text("")
    good = str(root / SAMPLE / "validation.jsonl")
    with pytest.raises(
        data.DataError,
        match=r"data.sft.train_file: .*dups.jsonl leaves 1 usable example\(s\) "
        r"\(30 row\(s\) read, 29 duplicate id\(s\).*data.min_sft_examples",
    ):
        data.validate_inputs(_profile(root, tmp_path, str(tmp_path / "dups.jsonl"), good))
    with pytest.raises(data.DataError, match=r"empty.jsonl leaves 0 usable example\(s\) \(0 row\(s\) read"):
        data.validate_inputs(_profile(root, tmp_path, str(tmp_path / "empty.jsonl"), good))
    # A smoke test may ask for less, explicitly.
    assert data.validate_inputs(_profile(root, tmp_path, str(tmp_path / "dups.jsonl"), good, min_sft_examples=1))


def test_a_folder_where_a_file_belongs_is_named(root, tmp_path):
    (tmp_path / "squad_dir").mkdir()
    with pytest.raises(data.DataError, match=r"data.sft.train_file: .*squad_dir is a folder"):
        data.validate_inputs(
            _profile(root, tmp_path, str(tmp_path / "squad_dir"), str(root / SAMPLE / "validation.jsonl"))
        )


def test_invalid_utf8_is_placed_in_the_file_not_in_a_read_chunk(root, tmp_path):
    good = (root / "data/sample/wikitext/validation.jsonl").read_bytes()
    lines = good.splitlines(keepends=True)
    offset = sum(len(x) for x in lines[:1000])
    bad = b"".join(lines[:1000]) + b'{"text": "caf\xe9"}\n' + b"".join(lines[1000:])
    (tmp_path / "bad.jsonl").write_bytes(bad)
    prof = _profile(root, tmp_path, str(root / SAMPLE / "train.jsonl"), str(root / SAMPLE / "validation.jsonl"))
    prof = config.load_profile(prof.source, {"data.dapt.validation_file": str(tmp_path / "bad.jsonl")})
    with pytest.raises(data.DataError, match=rf"line 1001: not valid UTF-8 at byte {offset + 13} of the file$"):
        data.validate_inputs(prof)

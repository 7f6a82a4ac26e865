"""The domain corpus as users bring it: wikitext's own .raw files, text folders, parquet, CSV, saved datasets."""

import gzip
import json

import pytest
import yaml
from profile_tree import portable_tree

from modft_utils import config, data

WIKI = "data/sample/wikitext"


def _rows(root, split: str) -> list[str]:
    with open(root / WIKI / f"{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh]


def _raw(rows: list[str], newline: str = "\n") -> str:
    """wikitext-2-raw's published layout: the hub's rows are its lines (blank rows are blank lines)."""
    return "".join((r if r.endswith("\n") else r + "\n").replace("\n", newline) for r in rows)


def _profile(root, tmp_path, train: str, validation: str, **dapt):
    tree = portable_tree(root, "tiny")
    tree["data"]["dapt"] = {"train_file": train, "validation_file": validation, **dapt}
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(tree))
    return config.load_profile(path)


@pytest.fixture(scope="module")
def jsonl_docs(root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jsonl")
    prof = _profile(root, tmp, str(root / WIKI / "train.jsonl"), str(root / WIKI / "validation.jsonl"))
    return data.clean_dapt(prof, progress=False)


def test_raw_files_lf_crlf_and_gzip_read_as_the_hub_rows(root, tmp_path, jsonl_docs):
    train, val = _rows(root, "train"), _rows(root, "validation")
    (tmp_path / "wiki.train.raw").write_text(_raw(train, "\r\n"), encoding="utf-8", newline="")  # copies in circulation
    with gzip.open(tmp_path / "wiki.valid.raw.gz", "wt", encoding="utf-8", newline="") as fh:
        fh.write(_raw(val))
    prof = _profile(root, tmp_path, str(tmp_path / "wiki.train.raw"), str(tmp_path / "wiki.valid.raw.gz"))
    assert data.corpus_sources(prof)["train"].format == "wikitext"
    counts = data.validate_inputs(prof)
    assert counts[str(tmp_path / "wiki.train.raw")] == len(train)
    cleaned = data.clean_dapt(prof, progress=False)
    assert cleaned.train_docs == jsonl_docs.train_docs and cleaned.eval_docs == jsonl_docs.eval_docs


def test_a_folder_of_text_files_is_one_document_per_file(root, tmp_path, jsonl_docs):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    docs = jsonl_docs.train_docs[:6]
    for i, doc in enumerate(docs):
        suffix = ".md" if i % 2 else ".txt"
        (folder / ("sub" if i > 3 else "") / f"doc{i}{suffix}").write_text(doc.replace("\n", "\r\n"), newline="")
    (folder / ".DS_Store").write_bytes(b"\x00junk")  # hidden files are not corpus files
    (tmp_path / "held_out").mkdir()
    for i, doc in enumerate(jsonl_docs.eval_docs[:3]):
        (tmp_path / "held_out" / f"val{i}.txt").write_text(doc)
    (tmp_path / "held_out" / "notes.md").write_text(jsonl_docs.eval_docs[3])  # not matched by the glob
    prof = _profile(root, tmp_path, str(folder), str(tmp_path / "held_out" / "*.txt"))
    sources = data.corpus_sources(prof)
    assert sources["train"].format == "text" and len(sources["train"].files) == 6 and sources["train"].documents
    cleaned = data.clean_dapt(prof, progress=False)
    # each file is one document, CRLF read as LF; the glob takes the three .txt files only
    assert sorted(cleaned.train_docs) == sorted(docs)
    assert sorted(cleaned.eval_docs) == sorted(jsonl_docs.eval_docs[:3])
    assert any("DAPT train: text reader (one document per row)" in line for line in data.describe_sources(prof))


def test_parquet_csv_and_saved_datasets_take_a_named_text_column(root, tmp_path, jsonl_docs):
    from datasets import Dataset

    docs = jsonl_docs.train_docs[:20]
    table = Dataset.from_dict({"id": list(range(20)), "body": docs})
    table.to_parquet(str(tmp_path / "docs.parquet"))
    table.to_csv(str(tmp_path / "docs.csv"), index=False)
    lines = Dataset.from_dict({"body": _rows(root, "validation")})
    lines.save_to_disk(str(tmp_path / "saved"))
    for name in ("docs.parquet", "docs.csv"):
        prof = _profile(root, tmp_path, str(tmp_path / name), str(tmp_path / "saved"), text_column="body")
        cleaned = data.clean_dapt(prof, progress=False)
        assert cleaned.train_docs == docs, name
    assert data.corpus_sources(prof)["validation"].format == "saved"
    assert len(cleaned.eval_docs) == len(jsonl_docs.eval_docs) + cleaned.leaked_eval_docs - jsonl_docs.leaked_eval_docs


def test_bad_sources_are_named_before_anything_loads(root, tmp_path):
    from datasets import Dataset

    val = str(root / WIKI / "validation.jsonl")
    Dataset.from_dict({"body": ["x" * 300]}).to_csv(str(tmp_path / "no_text.csv"), index=False)
    with pytest.raises(
        data.DataError,
        match=r"data.dapt.train_file: csv reader .*no_text.csv: no column 'text' \(columns: \['body'\]\)",
    ):
        data.validate_inputs(_profile(root, tmp_path, str(tmp_path / "no_text.csv"), val))
    (tmp_path / "report.docx").write_bytes(b"PK\x03\x04")
    with pytest.raises(data.DataError, match=r"report.docx: no reader for '.docx'"):
        data.validate_inputs(_profile(root, tmp_path, str(tmp_path / "report.docx"), val))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(data.DataError, match="holds no corpus file"):
        data.validate_inputs(_profile(root, tmp_path, str(tmp_path / "empty_dir"), val))
    (tmp_path / "latin1.txt").write_bytes(b"line one\nline two caf\xe9\n")
    with pytest.raises(data.DataError, match=r"latin1.txt, line 2: not valid UTF-8 at byte 21 of the file"):
        data.validate_inputs(_profile(root, tmp_path, str(tmp_path / "latin1.txt"), val))
    with pytest.raises(config.ProfileError, match=r"nothing/\*.txt matches no file"):
        _profile(root, tmp_path, str(tmp_path / "nothing" / "*.txt"), val)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.txt").write_text("a")
    (mixed / "b.jsonl").write_text('{"text": "b"}\n')
    with pytest.raises(data.DataError, match="the files mix formats"):
        data.validate_inputs(_profile(root, tmp_path, str(mixed), val))

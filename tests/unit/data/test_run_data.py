"""Datasets notebook 01 saves in a run folder: a missing or damaged one names itself and the notebook."""

from __future__ import annotations

import json

import pytest

from modft_utils import data
from modft_utils.data import DataError


@pytest.fixture
def run(tmp_path):
    """A run folder as notebook 01 leaves it, with tiny datasets."""
    from datasets import Dataset

    out = tmp_path / "run" / "data"
    blocks = {"input_ids": [[i] * 64 for i in range(200)]}
    for name in ("dapt_train", "dapt_eval", "sft_train", "sft_eval_tokenized"):
        Dataset.from_dict(blocks).save_to_disk(str(out / name))
    (out / "sft_eval.jsonl").write_text(json.dumps({"id": "q", "answers": ["a"]}) + "\n")
    (out / "sft_report.json").write_text("{}")
    return tmp_path / "run"


def _arrow(folder):
    (path,) = folder.glob("*.arrow")
    return path


def test_the_saved_sets_load(run):
    train, held_out = data.load_dapt_blocks(run)
    assert (len(train), len(held_out)) == (200, 200)
    assert len(data.load_sft(run).eval_examples) == 1


@pytest.mark.parametrize("name", ["dapt_train", "dapt_eval"])
def test_a_deleted_dapt_set_says_which_notebook_makes_it(run, name):
    import shutil

    shutil.rmtree(run / "data" / name)
    with pytest.raises(
        DataError, match=rf"data/{name} is missing: run notebook 01_data_prep for this run folder first"
    ):
        data.load_dapt_blocks(run)


@pytest.mark.parametrize(("name", "load"), [("dapt_eval", data.load_dapt_blocks), ("sft_train", data.load_sft)])
def test_a_truncated_arrow_file_is_named(run, name, load):
    arrow = _arrow(run / "data" / name)
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    with pytest.raises(
        DataError, match=rf"data/{name} is damaged .*run notebook 01_data_prep for this run folder again"
    ):
        load(run)


@pytest.mark.parametrize("name", ["sft_eval.jsonl", "sft_report.json"])
def test_a_missing_sft_file_is_named(run, name):
    (run / "data" / name).unlink()
    with pytest.raises(DataError, match=rf"data/{name} is missing: run notebook 01_data_prep"):
        data.load_sft(run)

"""Replay (data.replay_file, data.replay_share): general text mixed into DAPT's training blocks, drawn over
the whole file, never the text data.generic_eval_file measures forgetting on."""

from __future__ import annotations

import json

import pytest

from modft_utils import data
from modft_utils.config import DataSpec
from modft_utils.data import DataError
from modft_utils.data.dapt import replay_blocks

BLOCK = 16


def _lines(path, n: int, offset: int = 0) -> list[str]:
    """``n`` distinct rows of 7 micro-vocabulary words: two that spell the row's number, five more."""
    texts = [
        " ".join([f"w{3 + (offset + i) // 90 % 90}", f"w{3 + (offset + i) % 90}", *(f"w{3 + j}" for j in range(5))])
        for i in range(n)
    ]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return texts


def _with(profile, **data_update):
    return profile.model_copy(update={"data": profile.data.model_copy(update={"block_size": BLOCK, **data_update})})


def test_replay_is_its_share_of_the_blocks_and_drawn_over_the_whole_file(micro_profile, micro_tokenizer, tmp_path):
    path = tmp_path / "replay.jsonl"
    texts = _lines(path, 2000)
    profile = _with(micro_profile, replay_file=str(path), replay_share=0.25)
    blocks = replay_blocks(profile, micro_tokenizer, 30)
    assert len(blocks) == 10 and all(len(b) == BLOCK for b in blocks)  # 10 / (30 + 10) = 0.25
    stream = [t for b in blocks for t in b]
    # A stride over 2,000 rows: the replayed rows start at row 0 and reach past the file's first half.
    rows = [i for i, ids in enumerate(micro_tokenizer(texts)["input_ids"]) if _contains(stream, [*ids, 1])]
    assert rows[0] == 0 and max(rows) > 1000 and len(rows) < 100
    assert replay_blocks(_with(micro_profile), micro_tokenizer, 30) == []  # share 0: none


def _contains(stream: list[int], part: list[int]) -> bool:
    return any(stream[i : i + len(part)] == part for i in range(len(stream) - len(part) + 1))


def test_replay_from_the_generic_file_leaves_out_what_forgetting_is_measured_on(
    micro_profile, micro_tokenizer, tmp_path
):
    path = tmp_path / "generic.jsonl"
    texts = _lines(path, 400)  # 8 tokens a row with EOS: 200 blocks of 16
    profile = _with(micro_profile, replay_file=str(path), generic_eval_file=str(path), replay_share=0.5)
    measured = data.load_generic_blocks(profile, micro_tokenizer, profile.dapt.eval_blocks)["input_ids"]
    replay = replay_blocks(profile, micro_tokenizer, 50)
    assert len(replay) == 50
    rows = micro_tokenizer(texts)["input_ids"]
    eval_stream, replay_stream = ([t for b in blocks for t in b] for blocks in (measured, replay))
    # A row is found by where it starts: EOS, then the two words that spell its number.
    measured_rows = {i for i, row in enumerate(rows) if _contains(eval_stream, [1, *row[:2]])}
    replayed_rows = {i for i, row in enumerate(rows) if _contains(replay_stream, [1, *row[:2]])}
    assert len(measured_rows) >= profile.dapt.eval_blocks and replayed_rows
    assert max(replayed_rows) < min(measured_rows)  # replay reads only rows before the measured tail
    with pytest.raises(DataError, match=r"after leaving out the text data.generic_eval_file measures"):
        replay_blocks(profile, micro_tokenizer, 200)


def test_a_file_too_short_for_the_share_is_named_with_the_keys(micro_profile, micro_tokenizer, tmp_path):
    path = tmp_path / "short.jsonl"
    _lines(path, 4)  # 4 x 8 tokens: 2 blocks
    profile = _with(micro_profile, replay_file=str(path), replay_share=0.5)
    assert len(replay_blocks(profile, micro_tokenizer, 2)) == 2
    with pytest.raises(
        DataError, match=r"data.replay_file: .*short.jsonl packs into 2 blocks .* data.replay_share 0.5"
    ):
        replay_blocks(profile, micro_tokenizer, 3)


def test_a_share_without_a_file_is_refused_by_the_profile(micro_profile):
    fields = micro_profile.data.model_dump()
    with pytest.raises(ValueError, match="replay_share is 0.3 but replay_file is not set"):
        DataSpec.model_validate({**fields, "replay_share": 0.3})
    with pytest.raises(ValueError, match="replay_share"):
        DataSpec.model_validate({**fields, "replay_file": "x.jsonl", "replay_share": 1.0})


def test_prepare_dapt_appends_the_replay_blocks_and_counts_them(micro_profile, micro_tokenizer, tmp_path):
    path = tmp_path / "replay.jsonl"
    _lines(path, 3000)
    plain = data.prepare_dapt(_with(micro_profile), micro_tokenizer, tmp_path / "plain", progress=False)
    profile = _with(micro_profile, replay_file=str(path), replay_share=0.05)
    mixed = data.prepare_dapt(profile, micro_tokenizer, tmp_path / "mixed", progress=False)
    domain = len(plain.train_blocks)
    assert mixed.replay_blocks == round(domain * 0.05 / 0.95) > 0 and plain.replay_blocks == 0
    assert len(mixed.train_blocks) == domain + mixed.replay_blocks
    assert mixed.train_blocks["input_ids"][:domain] == plain.train_blocks["input_ids"]
    assert mixed.eval_blocks["input_ids"] == plain.eval_blocks["input_ids"]  # held-out domain text: unchanged
    saved, _ = data.load_dapt_blocks(tmp_path / "mixed")
    assert len(saved) == len(mixed.train_blocks)
    assert "replay" not in saved.column_names  # replay read as text needs no flags


def test_distilled_replay_flags_exactly_the_replay_blocks(micro_profile, micro_tokenizer, tmp_path):
    path = tmp_path / "replay.jsonl"
    _lines(path, 3000)
    profile = _with(micro_profile, replay_file=str(path), replay_share=0.05, replay_loss="distill", replay_weight=3)
    mixed = data.prepare_dapt(profile, micro_tokenizer, tmp_path / "mixed", progress=False)
    saved, _ = data.load_dapt_blocks(tmp_path / "mixed")  # what notebook 02 trains on
    flags = saved["replay"]
    domain = len(flags) - mixed.replay_blocks
    assert mixed.replay_blocks > 0 and flags == [0.0] * domain + [3.0] * mixed.replay_blocks


def test_distilling_without_replay_is_refused_by_the_profile(micro_profile):
    fields = micro_profile.data.model_dump()
    with pytest.raises(ValueError, match="replay_loss is 'distill' but replay_share is 0"):
        DataSpec.model_validate({**fields, "replay_loss": "distill"})
    with pytest.raises(ValueError, match="replay_loss"):
        DataSpec.model_validate({**fields, "replay_loss": "kl"})
    replay = {"replay_file": "x.jsonl", "replay_share": 0.5}
    with pytest.raises(ValueError, match="replay_weight is 2.0 but replay_loss is 'text'"):
        DataSpec.model_validate({**fields, **replay, "replay_weight": 2})
    assert (
        DataSpec.model_validate({**fields, **replay, "replay_loss": "distill", "replay_weight": 2}).replay_weight == 2
    )


def test_base_samples_are_a_replay_file_the_same_for_a_seed(tiny, tmp_path, capsys):
    from modft_utils import cli
    from modft_utils.data.validate import read_text_rows

    profile = tiny.profile
    first = data.write_base_samples(profile, tmp_path / "a.jsonl", 5, new_tokens=8, seed=1, batch=2)
    again = data.write_base_samples(profile, tmp_path / "b.jsonl", 5, new_tokens=8, seed=1, batch=2)
    other = data.write_base_samples(profile, tmp_path / "c.jsonl", 5, new_tokens=8, seed=2, batch=2)
    rows = read_text_rows(first, "data.replay_file")  # the reader replay uses
    assert 0 < len(rows) <= 5 and first.read_text() == again.read_text() != other.read_text()
    out = tmp_path / "cli.jsonl"
    argv = ["base-samples", "--profile", profile.source, "--out", str(out), "--set", f"cache_dir={profile.cache_dir}"]
    assert cli.main([*argv, "--texts", "3", "--new-tokens", "4"]) == 0
    assert f"{out}: " in capsys.readouterr().out and out.is_file()
    assert cli.main([*argv, "--texts", "0"]) == 2
    assert "texts (0) and new_tokens (160) must be at least 1" in capsys.readouterr().err

import json

import pytest

from modft_utils import record


def test_record_merges_and_keeps_earlier_keys(tmp_path):
    record.record(tmp_path, {"a.x": 1, "a.y": 2.5}, show=False)
    record.record(tmp_path, {"b.z": True, "a.y": 3.0}, show=False)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a.x": 1, "a.y": 3.0, "b.z": True}
    assert not list(tmp_path.glob(".metrics-*"))


def test_record_refuses_non_finite(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        record.record(tmp_path, {"bad": float("nan")}, show=False)
    assert record.load_metrics(tmp_path) == {}


def test_summary_rounds(capsys):
    record.summary({"ppl": 12.34567, "ok": True, "n": 3})
    assert capsys.readouterr().out == "ppl: 12.35\nok: True\nn: 3\n"

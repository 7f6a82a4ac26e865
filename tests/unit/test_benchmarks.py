"""The benchmark runner in --quick mode: it runs, and its results file has the documented schema.

Benchmarks are not tests: no speed is asserted here, only that every figure is reported.
"""

import json
import math
import os
import subprocess
import sys

import pytest

FIELDS = {"name": str, "unit": str, "goal": str, "meets_goal": bool}


@pytest.mark.slow
def test_quick_benchmarks_write_the_results_schema(root, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,  # about 130 s alone on 2 cores; the suite's other worker shares them
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert isinstance(results, list) and results
    for r in results:
        for key in ("name", "value", "unit", "reference", "ratio", "goal", "meets_goal"):
            assert key in r, (key, r)
        for key, kind in FIELDS.items():
            assert isinstance(r[key], kind), (key, r)
        for key in ("reference", "ratio"):
            assert r[key] is None or isinstance(r[key], (int, float)), (key, r)
        if r["ratio"] is not None:
            assert math.isfinite(r["ratio"]) and r["ratio"] >= 0, r
        assert not r.get("note", "").startswith("failed:"), r
    names = " ".join(r["name"] for r in results)
    for figure in (
        "training overhead",
        "DAPT speed",
        "SFT speed",
        "packing",
        "padding",
        "stack switch",
        "AdapterStack.use",
        "4-bit memory",
        "planner accuracy",
        "data prep",
        "PII scrubber",
        "scoring",
        "serving, tiny",
        "alias follow",
        "machine matmul peak",
        "step profile",
        "chunked LM-head loss",
        "end to end",
        "GPU",
    ):
        assert figure in names, figure
    table = (tmp_path / "RESULTS.md").read_text()
    assert "| figure | value | reference | ratio | goal | met |" in table
    assert table.count("\n| ") == len(results) + 1


def test_each_merge_keeps_the_rows_it_measured():
    """A row re-measured by a later ``--merge`` is listed under that merge only; the older
    meta.json layout (one merged_rows list under the last merge's date) becomes one entry."""
    from benchmarks.run import merge_history

    legacy = {"only": ["bench_plain_recipe"], "merged_when": "day 1", "merged_rows": ["DAPT speed", "planner"]}
    first = merge_history(legacy, ["bench_planner"], "day 2", ["planner", "planner, smollm2"])
    assert first == [
        {"only": [], "when": "day 1", "rows": ["DAPT speed"]},
        {"only": ["bench_planner"], "when": "day 2", "rows": ["planner", "planner, smollm2"]},
    ]
    second = merge_history({"merges": first}, ["bench_plain_recipe"], "day 3", ["DAPT speed"])
    assert [m["when"] for m in second] == ["day 2", "day 3"] and second[-1]["rows"] == ["DAPT speed"]


def test_a_merge_replaces_every_row_of_the_functions_it_reruns():
    """Rows are replaced by name; an older row of a re-run function that it no longer produces (a renamed
    figure) goes; rows of other functions, and rows from before rows named their function, stay."""
    from benchmarks.run import merge_results

    old = [
        {"name": "peak", "value": 1, "bench": "bench_roofline"},
        {"name": "DAPT step", "value": 2, "bench": "bench_roofline"},  # renamed since
        {"name": "packing", "value": 3, "bench": "bench_packing"},
        {"name": "legacy", "value": 4},
    ]
    new = [
        {"name": "peak", "value": 10, "bench": "bench_roofline"},
        {"name": "DAPT step, compute bfloat16", "value": 20, "bench": "bench_roofline"},
    ]
    merged = merge_results(old, new, {"bench_roofline"})
    assert [(r["name"], r["value"]) for r in merged] == [
        ("peak", 10),
        ("packing", 3),
        ("legacy", 4),
        ("DAPT step, compute bfloat16", 20),
    ]

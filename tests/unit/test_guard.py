"""The suite's guard over the user's outputs/ (tests/guard.py): what it sees as a change."""

import os

import guard


def test_nothing_changed_is_no_change(tmp_path):
    (tmp_path / "registry" / "task").mkdir(parents=True)
    (tmp_path / "registry" / "task" / "aliases.json").write_text("{}")
    assert guard.changes(guard.snapshot(tmp_path), guard.snapshot(tmp_path)) == []
    assert guard.snapshot(tmp_path / "absent") == {}


def test_added_removed_and_modified_files_are_named(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "a").write_text("a")
    (tmp_path / "cache" / "b").write_text("b")
    before = guard.snapshot(tmp_path)
    (tmp_path / "cache" / "a").write_text("changed")
    (tmp_path / "cache" / "b").unlink()
    (tmp_path / "registry").mkdir()
    (tmp_path / "registry" / "domain@3").write_text("x")
    assert guard.changes(before, guard.snapshot(tmp_path)) == [
        "added registry/domain@3",
        "removed cache/b",
        "modified cache/a",
    ]


def test_a_rewrite_with_the_same_size_is_still_seen(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("{1}")
    before = guard.snapshot(tmp_path)
    path.write_text("{2}")
    os.utime(path, ns=(before["metrics.json"][1] + 1_000_000, before["metrics.json"][1] + 1_000_000))
    assert guard.changes(before, guard.snapshot(tmp_path)) == ["modified metrics.json"]


def test_a_long_list_is_cut(tmp_path):
    before = guard.snapshot(tmp_path)
    for i in range(15):
        (tmp_path / f"f{i:02d}").write_text("x")
    got = guard.changes(before, guard.snapshot(tmp_path), limit=10)
    assert len(got) == 11 and got[-1] == "... and 5 more"

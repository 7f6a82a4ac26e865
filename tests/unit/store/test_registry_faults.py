"""The store under faults: torn audit lines, killed writers, edited files, hostile input.

Each test sets up one fault the way it happens (a crash mid-append, a hand edit, a typo) and checks
that it ends in a message naming the store, version, alias, file or line, or in a consistent store
with nothing lost. The micro base and adapters are conftest's ``micro_store`` fixture (tests/micro.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import pytest
from micro import load_store_base as _load_base
from test_registry import (
    WEIGHTS,
    _cli,
    _domains,
    _publish,
    _run_until_marker_then_kill,
)

from modft_utils import adapters
from modft_utils import store as R
from modft_utils.store import Registry, RegistryError


def _audit(root: Path, name: str) -> Path:
    return root / name / "audit.jsonl"


def _events(reg: Registry, name: str, kind: str | None = None) -> list[dict]:
    return [e for e in reg.audit(name) if kind is None or e["event"] == kind]


def _writable(path: Path) -> Path:
    path.chmod(0o644)
    return path


# --------------------------------------------------------------------------- 1. the audit log


def _two_versions_promoted(reg: Registry, micro_store) -> None:
    for src in _domains(micro_store)[:2]:
        _publish(reg, micro_store, src=src)
    reg.promote("domain", 1, reason="first")
    reg.promote("domain", 2, reason="second")


def test_a_torn_audit_line_is_recorded_skipped_and_rollback_still_works(micro_store, tmp_path, capsys):
    root = tmp_path / "reg"
    reg = Registry(root)
    _two_versions_promoted(reg, micro_store)
    log = _audit(root, "domain")
    lines_before = log.read_bytes().count(b"\n")
    with open(log, "ab") as fh:  # a promote that died mid-append: no end of line
        fh.write(b'{"actor": "bob", "alias": "produ')
    torn = lines_before + 1

    problems = reg.verify()
    assert [(p.adapter, p.file) for p in problems] == [("domain", "audit.jsonl")]
    assert f"line {torn}" in problems[0].issue and "torn" in problems[0].issue
    assert _cli("verify", "--registry", str(root)) == 1
    assert f"audit.jsonl: line {torn}" in capsys.readouterr().out

    # The next write starts on a line of its own and records the torn line before its own event.
    assert _cli("promote", "domain", "1", "--reason", "x", "--registry", str(root)) == 0
    raw = log.read_bytes().split(b"\n")
    assert raw[torn - 1] == b'{"actor": "bob", "alias": "produ'
    recorded = json.loads(raw[torn])
    assert (recorded["event"], recorded["line"]) == ("recover", torn)
    assert json.loads(raw[torn + 1])["event"] == "promote"
    assert [(e["from"], e["to"]) for e in _events(reg, "domain", "promote")] == [(None, 1), (1, 2), (2, 1)]

    assert _cli("rollback", "domain", "--reason", "y", "--registry", str(root)) == 0
    assert reg.aliases("domain") == {"production": 2}
    assert reg.verify() == []
    capsys.readouterr()
    assert _cli("verify", "--registry", str(root)) == 0
    assert f"note: domain: audit.jsonl: line {torn}" in capsys.readouterr().out, "a recovered line is still shown"


@pytest.mark.parametrize(
    ("line", "issue"),
    [
        (b"[1, 2]", "not a JSON object"),
        (b'{"event": "promote", "alias": "production", "from": "x", "to": 2}', "malformed promote event"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"event": "promote", "alias": "production", "from": 1, "to": NaN}', "not JSON"),
    ],
)
def test_an_audit_line_that_is_no_event_is_named_by_verify_show_and_rollback(
    micro_store, tmp_path, capsys, line, issue
):
    root = tmp_path / "reg"
    reg = Registry(root)
    _two_versions_promoted(reg, micro_store)
    log = _audit(root, "domain")
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join([*lines[:3], line + b"\n", *lines[3:]]))  # a hand edit mid-file

    assert [(p.file, p.issue.split(":")[0]) for p in reg.verify()] == [("audit.jsonl", "line 4")]
    assert issue in reg.verify()[0].issue
    assert _cli("show", "domain", "--registry", str(root)) == 0
    assert "audit.jsonl line 4" in capsys.readouterr().out
    with pytest.raises(RegistryError, match=r"audit\.jsonl: line 4: .*fix or delete that line"):
        reg.rollback("domain", reason="y")
    assert reg.aliases("domain") == {"production": 2}, "nothing moved"


def test_a_torn_audit_line_on_an_object_store_is_recovered_the_same_way(micro_store):
    import uuid

    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"memory://registry-{uuid.uuid4().hex}"
    try:
        reg = Registry(root)
        _publish(reg, micro_store)
        log = f"{root}/domain/audit.jsonl"
        fs.pipe(log, fs.cat(log) + b'{"event": "prom')
        assert [p.issue.split(":")[0] for p in reg.verify()] == ["line 2"]
        reg.promote("domain", 1, reason="x")
        assert [e["event"] for e in reg.audit("domain")] == ["publish", "recover", "promote"]
        assert reg.verify() == []
    finally:
        fs.rm(root, recursive=True)


def test_recover_records_a_torn_line_without_another_write(micro_store, tmp_path, capsys):
    root = tmp_path / "reg"
    reg = Registry(root)
    _publish(reg, micro_store)
    with open(_audit(root, "domain"), "ab") as fh:
        fh.write(b'{"event": "prom')
    assert _cli("recover", "--registry", str(root)) == 0
    assert "domain: recorded torn audit line 2" in capsys.readouterr().out
    assert reg.verify() == []
    assert _cli("recover", "--registry", str(root)) == 0
    assert "nothing to recover" in capsys.readouterr().out


# --------------------------------------------------------------------------- 2. verify checks something


def test_verify_fails_when_there_is_nothing_to_check(micro_store, tmp_path, capsys):
    assert _cli("verify", "--registry", str(tmp_path / "typo")) == 1
    assert f"registry {tmp_path / 'typo'} does not exist" in capsys.readouterr().err
    afile = tmp_path / "a_file"
    afile.write_text("x")
    assert _cli("verify", "--registry", str(afile)) == 1
    assert f"registry {afile} is a file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _cli("verify", "--registry", str(tmp_path / "empty")) == 1
    assert "holds no adapter version: nothing to verify" in capsys.readouterr().err
    _publish(Registry(tmp_path / "reg"), micro_store)
    assert _cli("verify", "nope", "--registry", str(tmp_path / "reg")) == 1
    assert "no adapter 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------- 3. manifests are verified


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["base"].update(config_sha256="0" * 64),
        lambda m: m["metrics"].update(eval_loss=0.01),
        lambda m: m.update(parent={"name": "domain", "version": 1}),
    ],
    ids=["base", "metrics", "parent"],
)
def test_an_edited_manifest_fails_verify_and_is_not_listed_as_true(micro_store, tmp_path, capsys, edit):
    root = tmp_path / "reg"
    reg = Registry(root)
    _publish(reg, micro_store)
    path = _writable(root / "domain" / "versions" / "1" / "manifest.json")
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2))

    problems = reg.verify()
    assert [(p.version, p.file) for p in problems] == [(1, "manifest.json")]
    assert "edited after it was published" in problems[0].issue
    with pytest.raises(R.IntegrityError, match=r"domain@1: manifest\.json: .*edited"):
        reg.resolve("domain@1")
    assert _cli("list", "--registry", str(root)) == 0
    listed = capsys.readouterr().out
    assert "0.01" not in listed and "(manifest does not verify)" in listed


def test_a_resealed_manifest_is_caught_by_the_publish_record(micro_store, tmp_path):
    # Someone who edits a manifest and recomputes its checksum still differs from the audit log.
    root = tmp_path / "reg"
    reg = Registry(root)
    v = _publish(reg, micro_store)
    forged = dataclasses.replace(v.manifest, metrics={"eval_loss": 0.01})
    _writable(v.path / "manifest.json").write_text(forged.to_json())
    assert reg.resolve("domain@1").manifest.metrics == {"eval_loss": 0.01}
    problems = reg.verify()
    assert [(p.version, p.file) for p in problems] == [(1, "manifest.json")]
    assert "not the manifest recorded when it was published (audit.jsonl line 1: sha256" in problems[0].issue


def test_a_format_1_manifest_is_still_read_and_verify_says_it_is_unsealed(micro_store, tmp_path, capsys):
    root = tmp_path / "reg"
    reg = Registry(root)
    _publish(reg, micro_store)
    path = _writable(root / "domain" / "versions" / "1" / "manifest.json")
    old = json.loads(path.read_text())
    del old["manifest_sha256"]
    old["format"] = 1
    path.write_text(json.dumps(old, indent=2))
    # A store written before manifests were sealed: its publish record holds no manifest sha256 either
    # (a sealed record over a format 1 manifest is a downgrade: test_store_hostile.py).
    log = _audit(root, "domain")
    record = json.loads(log.read_text())
    del record["manifest_sha256"]
    log.write_text(json.dumps(record) + "\n")
    assert reg.resolve("domain").version == 1 and reg.verify() == []
    assert _cli("verify", "--registry", str(root)) == 0
    assert "note: domain@1: manifest.json: format 1" in capsys.readouterr().out


# --------------------------------------------------------------------------- 4. CLI publish and the base


@pytest.fixture(scope="module")
def extended_run(micro_store, tmp_path_factory):
    """A run folder whose notebook 01 extended the vocabulary, with a domain adapter trained there."""
    import torch
    from peft import LoraConfig, get_peft_model

    from modft_utils import adapters, modeling, runs

    run = tmp_path_factory.mktemp("run")
    (run / "profile.resolved.json").write_text(json.dumps({"name": "t", "model": {"id": "tiny", "revision": None}}))
    ext = modeling.VocabExtension(64, ("Valkyria", "Gallia"), ((5, 9, 13), (6, 10, 14)))
    modeling.save_decision(runs.folder(run).vocab_extension, ext)
    model = _load_base(micro_store.base_dir)
    modeling.extend_model(model, ext)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    adapter = adapters.save_adapter(peft_model, "default", run / "adapters" / "domain" / "adapter")
    return run, adapter, ext


def test_cli_publish_takes_the_base_from_the_run_the_adapter_was_trained_in(
    micro_store, tmp_path, extended_run, capsys
):
    from modft_utils import modeling

    run, adapter, ext = extended_run
    uri = str(tmp_path / "reg")
    assert _cli("publish", "domain", str(adapter), "--registry", uri) == 0
    assert f"base from run folder {run}" in capsys.readouterr().out
    extended = _load_base(micro_store.base_dir)
    modeling.extend_model(extended, ext)
    identity = R.base_identity(extended, model_id="tiny")
    v = Registry(uri).resolve("domain")
    assert v.manifest.base == identity and v.manifest.base.config_sha256 != micro_store.base_id.config_sha256
    adapters.load_adapter(extended, v, "domain", base=identity)  # loads: the recorded base is the real one

    # A --base-config that contradicts the run folder is refused, naming both.
    assert (
        _cli(
            "publish",
            "domain",
            str(adapter),
            "--registry",
            uri,
            "--base-config",
            str(micro_store.base_dir / "config.json"),
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "is not the base this adapter was trained on" in err and str(run) in err
    assert Registry(uri).versions("domain") == [1]


@pytest.mark.parametrize("keep", ["record", "run folder"])
def test_cli_publish_takes_the_base_from_either_source_alone(micro_store, tmp_path, extended_run, capsys, keep):
    from modft_utils import modeling

    run, adapter, ext = extended_run
    if keep == "record":  # the adapter copied out of its run: its own base record remains
        moved = shutil.copytree(adapter, tmp_path / "elsewhere" / "adapter")
        assert (moved / R.BASE_RECORD).is_file()
    else:  # a run folder saved before adapters carried a base record
        moved = shutil.copytree(run, tmp_path / "run") / "adapters" / "domain" / "adapter"
        (moved / R.BASE_RECORD).unlink()
    uri = str(tmp_path / "reg")
    assert _cli("publish", "domain", str(moved), "--registry", uri) == 0
    capsys.readouterr()
    extended = _load_base(micro_store.base_dir)
    modeling.extend_model(extended, ext)
    assert Registry(uri).resolve("domain").manifest.base.config_sha256 == R.base_identity(extended).config_sha256
    assert _cli("publish", "task", str(moved), "--registry", uri, "--base-config", str(micro_store.base_dir)) == 1
    assert "is not the base this adapter was trained on" in capsys.readouterr().err


def test_cli_publish_refuses_a_run_folder_it_cannot_read(tmp_path, extended_run, capsys):
    run, adapter, _ = extended_run
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    (broken / "tokenizer" / "vocab_extension.json").write_text("{")
    assert (
        _cli("publish", "domain", str(broken / "adapters" / "domain" / "adapter"), "--registry", str(tmp_path / "reg"))
        == 1
    )
    assert "vocab_extension.json" in capsys.readouterr().err


# --------------------------------------------------------------------------- 5. loose values


@pytest.mark.parametrize("value", ["true", "7.9", '"2"', "0", "-1", "null"])
def test_an_alias_value_that_is_not_a_version_number_is_named(micro_store, tmp_path, value):
    root = tmp_path / "reg"
    reg = Registry(root)
    for src in _domains(micro_store):
        _publish(reg, micro_store, src=src)
    (root / "domain" / "aliases.json").write_text(f'{{"production": {value}}}')
    with pytest.raises(
        RegistryError, match=rf"aliases\.json: .*alias 'production' holds {value}, not a version number"
    ):
        reg.resolve("domain")
    assert [p.file for p in reg.verify()] == ["aliases.json"]


@pytest.mark.parametrize("selector", ["٣", "³", "03", "0", "1.0", "-1", "1 "])
def test_a_version_selector_is_ascii_digits_without_leading_zero(micro_store, tmp_path, selector):
    reg = Registry(tmp_path / "reg")
    for src in _domains(micro_store):
        _publish(reg, micro_store, src=src)
    with pytest.raises(RegistryError, match=r"cannot read 'domain@"):
        reg.resolve(f"domain@{selector}")
    for bad in (True, 1.0, 0, "3"):
        with pytest.raises(RegistryError, match=r"domain@.*: a version is a whole number from 1"):
            reg.get("domain", bad)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_metrics_are_refused_naming_the_key(micro_store, tmp_path, capsys, bad):
    reg = Registry(tmp_path / "reg")
    with pytest.raises(RegistryError, match=r"metrics\['scores'\]\['f1'\] is (nan|inf|-inf).*standard JSON"):
        reg.publish(
            "domain",
            micro_store.domain,
            base=micro_store.base_id,
            parent=None,
            params={},
            data_fingerprint="",
            metrics={"scores": {"f1": bad}},
        )
    assert reg.names() == []
    assert (
        _cli(
            "publish",
            "domain",
            str(micro_store.domain),
            "--registry",
            str(tmp_path / "reg"),
            "--metrics",
            '{"f1": NaN}',
        )
        == 1
    )
    assert "--metrics: NaN is not standard JSON" in capsys.readouterr().err


# --------------------------------------------------------------------------- 6. messages, not tracebacks


def test_a_store_uri_with_an_unknown_protocol_is_named(tmp_path, capsys):
    with pytest.raises(RegistryError, match=r"registry 'foo://x'.*foo"):
        Registry("foo://x")
    assert _cli("list", "--registry", "foo://x") == 1
    assert "registry 'foo://x'" in capsys.readouterr().err


def test_a_file_given_as_the_store_is_named(micro_store, tmp_path, capsys):
    afile = tmp_path / "store.txt"
    afile.write_text("not a store")
    for argv in (
        ["show", "domain"],
        ["publish", "domain", str(micro_store.domain)],
        ["list"],
        ["promote", "domain", "1", "--reason", "x"],
    ):
        assert _cli(*argv, "--registry", str(afile)) == 1, argv
        assert f"registry {afile} is a file, not a folder" in capsys.readouterr().err
    assert afile.read_text() == "not a store"


def test_a_write_the_filesystem_refuses_is_named(micro_store, tmp_path, monkeypatch, capsys):
    root = tmp_path / "reg"
    reg = Registry(root)
    _publish(reg, micro_store)

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(RegistryError, match=rf"cannot publish domain in registry {root}: Permission denied: {root}"):
        _publish(reg, micro_store, src=micro_store.more[0])
    assert _cli("promote", "domain", "1", "--reason", "x", "--registry", str(root)) == 1
    assert f"cannot promote domain in registry {root}: Permission denied" in capsys.readouterr().err
    monkeypatch.undo()
    assert reg.versions("domain") == [1] and reg.aliases("domain") == {} and reg.verify() == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_a_read_only_store_is_named(micro_store, tmp_path):
    root = tmp_path / "reg"
    reg = Registry(root)
    _publish(reg, micro_store)
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o555)
    try:
        with pytest.raises(RegistryError, match=r"cannot (publish|promote) domain in registry .*Permission denied"):
            reg.promote("domain", 1, reason="x")
    finally:
        for path in [root, *root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)


def test_an_adapter_name_too_long_for_a_folder_is_refused(micro_store, tmp_path, capsys):
    assert _cli("publish", "a" * 300, str(micro_store.domain), "--registry", str(tmp_path / "reg")) == 1
    assert "at most 100 characters" in capsys.readouterr().err
    assert _cli("show", "a" * 300, "--registry", str(tmp_path / "reg")) == 1


@pytest.mark.parametrize("stray", ["³", "010", "v2", "3.bak"])
def test_stray_entries_in_versions_are_named_not_fatal(micro_store, tmp_path, stray):
    root = tmp_path / "reg"
    reg = Registry(root)
    for src in _domains(micro_store)[:2]:
        _publish(reg, micro_store, src=src)
    shutil.copytree(root / "domain" / "versions" / "1", root / "domain" / "versions" / stray)
    assert reg.versions("domain") == [1, 2]
    assert reg.resolve("domain@latest").version == 2
    problems = reg.verify()
    assert [(p.version, p.file) for p in problems] == [(None, f"versions/{stray}")]
    assert "not a version folder" in problems[0].issue
    assert _publish(reg, micro_store, src=micro_store.more[1]).version == 3


# --------------------------------------------------------------------------- 7. leftovers of killed writers

_KILL_AT = """
import json, os, pathlib, sys, time
from modft_utils.store import registry
root, adapter_dir, marker, base, where = sys.argv[1:6]
def stop(*args, **kwargs):
    pathlib.Path(marker).write_text(where)
    time.sleep(120)
if where == "before rename":
    registry.os.rename = stop
else:
    registry.Registry._append_audit = stop
registry.Registry(root).publish("domain", adapter_dir, base=registry.BaseIdentity(**json.loads(base)),
                                parent=None, params={}, data_fingerprint="", metrics={})
"""


def _kill_publish_at(tmp_path: Path, micro_store, root: Path, where: str) -> None:
    base = json.dumps(dataclasses.asdict(micro_store.base_id))
    _run_until_marker_then_kill(
        _KILL_AT, tmp_path / "marker", str(root), str(micro_store.more[0]), "MARKER", base, where
    )


def test_a_publish_killed_before_its_rename_is_cleaned_and_recorded(micro_store, tmp_path):
    root = tmp_path / "reg"
    reg = Registry(root)
    _publish(reg, micro_store)
    _kill_publish_at(tmp_path, micro_store, root, "before rename")
    (leftover,) = (root / "domain").glob(".staging-*")
    assert (leftover / "manifest.json").is_file(), "killed after its manifest, under the lock"
    assert reg.versions("domain") == [1] and reg.verify() == []

    reg.promote("domain", 1, reason="next write")
    assert not leftover.exists()
    (record,) = _events(reg, "domain", "recover")
    assert record["folder"] == leftover.name and "interrupted publish" in record["issue"]
    assert _publish(reg, micro_store, src=micro_store.more[0]).version == 2


def test_a_publish_killed_after_its_rename_gets_its_audit_line_from_the_next_write(micro_store, tmp_path):
    root = tmp_path / "reg"
    reg = Registry(root)
    _publish(reg, micro_store)
    _kill_publish_at(tmp_path, micro_store, root, "after rename")
    assert reg.versions("domain") == [1, 2]
    assert [e["version"] for e in _events(reg, "domain", "publish")] == [1]
    problems = reg.verify()
    assert [(p.version, p.file) for p in problems] == [(2, "audit.jsonl")]
    assert "no publish record" in problems[0].issue

    reg.promote("domain", 2, reason="next write")
    publishes = _events(reg, "domain", "publish")
    assert [e["version"] for e in publishes] == [1, 2]
    assert publishes[1]["at"] == reg.get("domain", 2).manifest.created_at
    assert "interrupted" in publishes[1]["recovered"]
    assert [e["event"] for e in reg.audit("domain")] == ["publish", "publish", "promote"]
    assert reg.verify() == []


_KILL_PROMOTE = """
import pathlib, sys, time
from modft_utils.store import registry
root, marker = sys.argv[1:3]
def stop(*args, **kwargs):
    pathlib.Path(marker).write_text("audit line written")
    time.sleep(120)
registry.Registry._write_aliases = stop
registry.Registry(root).promote("domain", 2, reason="killed before aliases.json")
"""


def test_a_promote_killed_between_its_audit_line_and_aliases_json_is_not_replayed(micro_store, tmp_path, capsys):
    root = tmp_path / "reg"
    reg = Registry(root)
    for src in _domains(micro_store)[:2]:
        _publish(reg, micro_store, src=src)
    reg.promote("domain", 1, reason="first")
    _run_until_marker_then_kill(_KILL_PROMOTE, tmp_path / "marker", str(root), "MARKER")
    assert reg.aliases("domain") == {"production": 1}
    assert [(e["from"], e["to"]) for e in _events(reg, "domain", "promote")] == [(None, 1), (1, 2)]
    problems = reg.verify()
    assert [p.file for p in problems] == ["aliases.json"]
    assert "alias 'production' is at 1 but its last move (audit.jsonl line 4)" in problems[0].issue

    # Replaying the log as if 1 -> 2 had happened would "roll back" production from 1 to 1.
    assert _cli("rollback", "domain", "--reason", "y", "--registry", str(root)) == 1
    assert "no earlier version to roll back to (now at 1)" in capsys.readouterr().err
    (record,) = _events(reg, "domain", "recover")
    assert (record["move_line"], record["alias"]) == (4, "production")
    assert reg.verify() == []
    reg.promote("domain", 2, reason="again")
    assert reg.rollback("domain", reason="z")["to"] == 1


# --------------------------------------------------------------------------- 8. the same bytes twice


def test_publishing_the_same_files_again_returns_the_existing_version(micro_store, tmp_path, capsys):
    root = tmp_path / "reg"
    reg = Registry(root)
    first = _publish(reg, micro_store, note="run 1")
    assert not first.reused
    again = _publish(reg, micro_store, note="run 2")
    assert (again.version, again.reused) == (1, True)
    assert again.manifest.note == "run 1", "the stored version is not rewritten"
    assert reg.versions("domain") == [1]
    assert len(_events(reg, "domain", "publish")) == 1, "nothing was published, so nothing is recorded"
    assert not list((root / "domain").glob(".staging-*"))

    assert (
        _cli(
            "publish",
            "domain",
            str(micro_store.domain),
            "--registry",
            str(root),
            "--base-config",
            str(micro_store.base_dir / "config.json"),
        )
        == 0
    )
    assert "domain@1 already holds these files" in capsys.readouterr().out

    # Other parent or other base: another version; so is a copy that replaces a damaged one.
    task1 = _publish(reg, micro_store, "task", src=micro_store.task, parent="domain@1")
    _publish(reg, micro_store, src=micro_store.more[0])
    assert _publish(reg, micro_store, "task", src=micro_store.task, parent="domain@2").version == 2
    assert _publish(reg, micro_store, "task", src=micro_store.task, parent="domain@1").version == task1.version
    other_base = dataclasses.replace(micro_store.base_id, config_sha256="1" * 64)
    assert _publish(reg, micro_store, base=other_base).version == 3
    _writable(first.path / WEIGHTS).write_bytes(b"damaged")
    assert _publish(reg, micro_store).version == 4

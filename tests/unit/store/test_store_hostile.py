"""The store against a hostile user: every store file edited, deleted, replaced by a link or a folder.

Each test damages a small real store (micro_store's base and PEFT adapters) the way a person with
a shell can, then runs what would launder or follow the damage (the next writes, verify, a read)
and checks the exact outcome: refused with a message naming what was damaged, or accepted with the
right result, and in both cases nothing already in the store lost. docs/store_guarantees.md lists
the promise each test proves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from micro import load_store_base as _load_base
from test_registry import CONFIG, WEIGHTS, _cli, _domains, _flip_last_byte, _publish

from modft_utils import adapters
from modft_utils.store import (
    AdapterRef,
    IncompatibleAdapterError,
    IntegrityError,
    Registry,
    RegistryError,
    StoreLinkError,
    UnsettledError,
)
from modft_utils.store.records import Manifest

# --------------------------------------------------------------------------- the store under attack


@pytest.fixture
def store(micro_store, tmp_path):
    """domain@1..3 with production 1 -> 2 and candidate 3 (audit lines 1-6); task@1 trained on domain@2."""
    root = tmp_path / "reg"
    reg = Registry(root)
    for src in _domains(micro_store):
        _publish(reg, micro_store, src=src)
    reg.promote("domain", 1, reason="baseline")
    reg.promote("domain", 2, reason="good")
    reg.promote("domain", 3, alias="candidate", reason="regressing candidate")
    _publish(reg, micro_store, "task", src=micro_store.task, parent="domain@2")
    outside = tmp_path / "outside"
    outside.mkdir()
    return SimpleNamespace(reg=reg, root=root, domain=root / "domain", outside=outside, micro=micro_store)


def _snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root`` without following links: file bytes, link targets, folders (the lock aside)."""
    found: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            path = Path(dirpath) / entry
            rel = str(path.relative_to(root))
            if entry == ".lock":
                continue
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = path.read_bytes()
    return found


def _writable(path: Path) -> Path:
    path.chmod(0o644)
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _aliases(s) -> dict:
    return json.loads((s.domain / "aliases.json").read_text())


def _set_aliases(s, aliases: dict) -> None:
    (s.domain / "aliases.json").write_text(json.dumps(aliases))


def _problems(reg: Registry) -> list[tuple[str, int | None, str]]:
    return sorted((p.adapter, p.version or 0, p.file) for p in reg.verify())


def _issue(reg: Registry, adapter: str, file: str) -> str:
    return " | ".join(p.issue for p in reg.verify() if (p.adapter, p.file) == (adapter, file))


def _refused_and_untouched(s, call: Callable[[], object], match: str, error=RegistryError) -> None:
    before = _snapshot(s.root)
    with pytest.raises(error, match=match):
        call()
    assert _snapshot(s.root) == before, "a refused write changed the store"


# --------------------------------------------------------------------------- 1. aliases are not laundered


def test_a_hand_edited_alias_blocks_writes_until_a_person_settles_it(store, capsys):
    s = store
    _set_aliases(s, {"production": 3, "candidate": 3})  # production: the good 2 -> the regressing candidate
    expected = r"alias 'production': the audit log says 2 \(audit\.jsonl line 5\), aliases\.json says 3"
    issue = _issue(s.reg, "domain", "aliases.json")
    assert "alias 'production': the audit log says 2 (audit.jsonl line 5), aliases.json says 3" in issue
    assert "modft registry settle domain production --to 2 --reason TEXT" in issue and "`--to 3`" in issue
    assert _problems(s.reg) == [("domain", 0, "aliases.json")]

    # Three unrelated promotes: each refused, none peels a real move off the history.
    for alias in ("staging", "qa", "canary"):
        _refused_and_untouched(s, lambda a=alias: s.reg.promote("domain", 1, alias=a, reason="unrelated"), expected)
    _refused_and_untouched(s, lambda: _publish(s.reg, s.micro, src=s.micro.task), expected, UnsettledError)
    _refused_and_untouched(s, lambda: s.reg.rollback("domain", reason="x"), expected, UnsettledError)
    _refused_and_untouched(s, lambda: s.reg.recover("domain"), expected, UnsettledError)
    with pytest.raises(UnsettledError, match=expected):
        s.reg.resolve("domain")  # a reader does not follow the edit either
    assert s.reg.resolve("domain@candidate").version == 3
    assert _cli("promote", "domain", "1", "--alias", "qa", "--reason", "x", "--registry", str(s.root)) == 1
    assert "alias 'production': the audit log says 2" in capsys.readouterr().err
    assert [e["event"] for e in s.reg.audit("domain")].count("recover") == 0

    assert (
        _cli("settle", "domain", "production", "--to", "2", "--reason", "edit reverted", "--registry", str(s.root)) == 0
    )
    assert "domain@production: settled at 2 (aliases.json had 3, the log 2;" in capsys.readouterr().out
    assert _aliases(s) == {"production": 2, "candidate": 3}
    assert s.reg.verify() == []
    settle = s.reg.audit("domain")[-1]
    assert (settle["event"], settle["from"], settle["logged"], settle["to"]) == ("settle", 3, 2, 2)
    s.reg.promote("domain", 1, alias="qa", reason="now it goes")
    assert s.reg.rollback("domain", reason="history intact")["to"] == 1


def test_a_deleted_aliases_json_is_not_read_as_no_production(store, capsys):
    s = store
    (s.domain / "aliases.json").unlink()
    with pytest.raises(UnsettledError, match=r"alias 'production': the audit log says 2 .*aliases\.json says nothing"):
        s.reg.resolve("domain")  # not latest (3, the candidate)
    assert _cli("show", "domain", "--registry", str(s.root)) == 1
    assert "settle domain production --to 2" in capsys.readouterr().err
    _refused_and_untouched(s, lambda: s.reg.promote("domain", 1, alias="qa", reason="unrelated"), "alias 'candidate'")
    assert _problems(s.reg) == [("domain", 0, "aliases.json")] * 2

    s.reg.settle("domain", "production", 2, reason="restored")
    s.reg.settle("domain", "candidate", 3, reason="restored")
    assert s.reg.resolve("domain").version == 2 and s.reg.verify() == []


def test_an_alias_no_move_recorded_is_refused(store):
    s = store
    _set_aliases(s, {**_aliases(s), "shadow": 1})
    issue = _issue(s.reg, "domain", "aliases.json")
    assert "alias 'shadow': the audit log says no version (the log never moved it), aliases.json says 1" in issue
    with pytest.raises(UnsettledError, match="alias 'shadow'"):
        s.reg.resolve("domain@shadow")
    _refused_and_untouched(s, lambda: s.reg.promote("domain", 1, alias="qa", reason="x"), "alias 'shadow'")
    e = s.reg.settle("domain", "shadow", None, reason="nobody made it")
    assert (e["from"], e["logged"], e["to"]) == (1, None, None)
    assert "shadow" not in _aliases(s) and s.reg.verify() == []


def test_settling_to_the_file_makes_the_logged_version_the_rollback_target(store):
    s = store
    _set_aliases(s, {"production": 3, "candidate": 3})
    s.reg.settle("domain", "production", 3, reason="the candidate is fine after all")
    assert s.reg.resolve("domain").version == 3 and s.reg.verify() == []
    assert s.reg.rollback("domain", reason="no it is not")["to"] == 2
    assert s.reg.rollback("domain", reason="further")["to"] == 1


def test_settle_refuses_what_it_cannot_settle(store, capsys):
    s = store
    with pytest.raises(RegistryError, match=r"domain@production: aliases\.json and the audit log agree \(at 2\)"):
        s.reg.settle("domain", "production", 1, reason="x")
    _set_aliases(s, {"production": 3, "candidate": 3})
    with pytest.raises(RegistryError, match=r"domain@9 does not exist"):
        s.reg.settle("domain", "production", 9, reason="x")
    with pytest.raises(RegistryError, match="needs a reason"):
        s.reg.settle("domain", "production", 2, reason=" ")
    uri = ["--registry", str(s.root)]
    assert _cli("settle", "domain", "production", "--reason", "x", *uri) == 1
    assert "--to VERSION (or --to none) is needed" in capsys.readouterr().err
    assert _cli("settle", "domain", "production", "--to", "two", "--reason", "x", *uri) == 1
    assert "a version number, or 'none'" in capsys.readouterr().err
    assert _cli("settle", "domain", "production", "--adopt", "--to", "2", "--reason", "x", *uri) == 1
    assert "settle one thing at a time" in capsys.readouterr().err
    assert _aliases(s) == {"production": 3, "candidate": 3}


def _killed_move(s, alias: str, frm: int | None, to: int) -> None:
    """What a promote killed after its audit line and before aliases.json leaves."""
    with open(s.domain / "audit.jsonl", "a") as fh:
        event = {"event": "promote", "alias": alias, "from": frm, "to": to, "at": "x", "actor": "x", "reason": "x"}
        fh.write(json.dumps(event) + "\n")


def test_only_what_a_crash_leaves_is_repaired_and_every_repair_is_printed(store, capsys):
    s = store
    _killed_move(s, "production", 2, 1)  # line 7; aliases.json still has production at 2 (the move's from)
    issue = _issue(s.reg, "domain", "aliases.json")
    assert "alias 'production' is at 2 but its last move (audit.jsonl line 7)" in issue and "writer died" in issue
    assert _cli("promote", "domain", "1", "--alias", "qa", "--reason", "x", "--registry", str(s.root)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "repaired domain: recorded that the move of 'production' at audit line 7 did not take effect "
        "(its writer died before aliases.json)",
        "domain@qa: - -> 1 (promote by " + s.reg.audit("domain")[-1]["actor"] + ")",
    ]
    assert s.reg.verify() == [] and s.reg.resolve("domain").version == 2

    # The same line, but the file shows neither its from nor its to: not a crash.
    _killed_move(s, "production", 2, 1)
    _set_aliases(s, {**_aliases(s), "production": 3})
    _refused_and_untouched(s, lambda: s.reg.promote("domain", 1, alias="qa", reason="x"), "alias 'production'")
    s.reg.settle("domain", "production", 2, reason="x")

    # A move at its from, but with a later event after it: its writer lived on, so not a crash either.
    _killed_move(s, "production", 2, 1)
    _killed_move(s, "qa", 1, 1)
    _refused_and_untouched(s, lambda: s.reg.promote("domain", 1, alias="qa", reason="x"), "alias 'production'")


def test_a_note_after_a_killed_move_leaves_it_a_crash(store):
    s = store
    _killed_move(s, "production", 2, 1)
    s.reg.note("domain", "serve-disable", reason="paged", stack="chat", version=2)  # writes no recovery first
    e = s.reg.promote("domain", 1, alias="qa", reason="x")
    assert [r.get("move_line") for r in e.repairs] == [7] and s.reg.verify() == []


def test_the_api_returns_the_repairs_of_every_write(store):
    s = store
    with open(s.domain / "audit.jsonl", "ab") as fh:
        fh.write(b'{"event": "prom')  # a torn line: a crash mid-append
    v = _publish(s.reg, s.micro, src=s.micro.task)
    assert [(r["event"], r["line"]) for r in v.repairs] == [("recover", 7)]
    _killed_move(s, "candidate", 3, 1)
    e = s.reg.promote("domain", 1, alias="qa", reason="x")
    # Lines 7 (torn), 8 (its recover record), 9 (the publish), 10 (the killed move).
    assert [r.get("move_line") for r in e.repairs] == [10] and e == s.reg.audit("domain")[-1]
    assert s.reg.rollback("domain", reason="x").repairs == []


# --------------------------------------------------------------------------- 2. version numbers are permanent


def test_a_deleted_version_fails_verify_and_its_number_is_never_issued_again(store, capsys):
    s = store
    shutil.rmtree(s.domain / "versions" / "3")
    problems = {(p.version, p.file): p.issue for p in s.reg.verify()}
    assert set(problems) == {(3, "versions/3"), (None, "aliases.json")}
    assert problems[(3, "versions/3")].startswith("published (audit.jsonl line 3) but its folder is gone")
    assert "settle domain --lost 3" in problems[(3, "versions/3")]
    assert problems[(None, "aliases.json")] == "alias 'candidate' points at version 3, which does not exist"
    assert _publish(s.reg, s.micro, src=s.micro.task).version == 4

    s.reg.promote("domain", 4, alias="candidate", reason="replacement")
    assert _cli("settle", "domain", "--lost", "3", "--reason", "disk died", "--registry", str(s.root)) == 0
    assert "domain@3: recorded as lost" in capsys.readouterr().out
    assert s.reg.verify() == []
    assert any("domain@3: lost" in n for n in s.reg.verify_notes())
    with pytest.raises(RegistryError, match=r"domain@2 is still in the store"):
        s.reg.record_lost("domain", 2, reason="x")
    assert _publish(s.reg, s.micro, src=s.micro.more[1], note="new bytes").version == 5


def test_a_deleted_manifest_does_not_hand_its_number_to_the_next_publish(store):
    s = store
    old = s.domain / "versions" / "3"
    weights = (old / WEIGHTS).read_bytes()
    (old / "manifest.json").unlink()
    problems = {(p.version, p.file): p.issue for p in s.reg.verify()}
    assert set(problems) == {(3, "versions/3"), (None, "aliases.json")}
    assert (
        "published (audit.jsonl line 3) but its manifest.json is missing or not a file" in problems[(3, "versions/3")]
    )

    v = _publish(s.reg, s.micro, src=s.micro.more[1])  # the bytes version 3 had
    assert v.version == 4
    assert (old / WEIGHTS).read_bytes() == weights, "the old weights are not published over"
    publishes = [e["version"] for e in s.reg.audit("domain") if e["event"] == "publish"]
    assert publishes == [1, 2, 3, 4]


def test_on_an_object_store_a_published_number_is_not_reused_either(micro_store):
    import uuid

    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"memory://registry-{uuid.uuid4().hex}"
    try:
        reg = Registry(root)
        for src in _domains(micro_store)[:2]:
            _publish(reg, micro_store, src=src)
        fs.rm(f"{root}/domain/versions/2/manifest.json")
        weights = fs.cat(f"{root}/domain/versions/2/{WEIGHTS}")
        assert _publish(reg, micro_store, src=micro_store.task).version == 3
        assert fs.cat(f"{root}/domain/versions/2/{WEIGHTS}") == weights
        assert [(p.version, p.file) for p in reg.verify()] == [(2, "versions/2")]
    finally:
        fs.rm(root, recursive=True)


def test_two_publish_records_of_one_number_with_different_hashes_fail_verify(store):
    s = store
    log = s.domain / "audit.jsonl"
    first = _lines(log)[1]
    with open(log, "a") as fh:
        fh.write(json.dumps({**first, "manifest_sha256": "f" * 64}) + "\n")
    (p,) = s.reg.verify()
    assert (p.version, p.file) == (2, "audit.jsonl")
    assert "2 publish records of version 2 with different manifest sha256 (lines 2, 7:" in p.issue


def test_the_next_number_counts_the_log_when_every_folder_is_gone(store):
    s = store
    shutil.rmtree(s.domain / "versions")
    assert s.reg.names() == ["task"]
    assert _publish(s.reg, s.micro, src=s.micro.domain).version == 4
    assert {(p.version, p.file) for p in s.reg.verify("domain")} >= {(1, "versions/1"), (2, "versions/2")}


def test_a_deleted_audit_log_blocks_writes_until_the_versions_are_adopted(store, capsys):
    s = store
    (s.domain / "audit.jsonl").unlink()
    issues = {(p.version, p.file): p.issue for p in s.reg.verify("domain")}
    assert "not the last publish" in issues[(1, "audit.jsonl")] and "not the last publish" in issues[(2, "audit.jsonl")]
    assert "the publish was interrupted" in issues[(3, "audit.jsonl")], "the highest could be a killed publish"
    _refused_and_untouched(s, lambda: s.reg.promote("domain", 1, alias="qa", reason="x"), r"domain@1: no publish")

    uri = ["--registry", str(s.root)]
    assert _cli("settle", "domain", "--adopt", "--reason", "log lost", *uri) == 0
    out = capsys.readouterr().out
    assert "repaired domain: recorded the interrupted publish of domain@3" in out
    assert "recorded the publish of version(s) [1, 2]" in out
    for alias, version in (("production", "2"), ("candidate", "3")):
        assert _cli("settle", "domain", alias, "--to", version, "--reason", "log lost", *uri) == 0
    assert s.reg.verify() == [] and s.reg.resolve("domain").version == 2
    adopted = [e for e in s.reg.audit("domain") if e["event"] == "publish"]
    assert [(e["version"], "settled" in e, "recovered" in e) for e in adopted] == [
        (3, False, True),
        (1, True, False),
        (2, True, False),
    ]


def test_a_publish_record_cut_from_the_middle_of_the_log_blocks_writes(store):
    s = store
    log = s.domain / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:1] + lines[2:]))  # domain@2's publish line removed
    (p,) = s.reg.verify()
    assert (p.version, p.file) == (2, "audit.jsonl") and "not the last publish" in p.issue
    _refused_and_untouched(s, lambda: _publish(s.reg, s.micro, src=s.micro.task), r"domain@2: no publish record")


# --------------------------------------------------------------------------- 3. parents are pinned by manifest


def _replace_version(s, number: int, src: Path) -> None:
    """Put another adapter in versions/N with a manifest of its own (what a sloppy restore does)."""
    folder = s.domain / "versions" / str(number)
    old = Manifest.from_json((folder / "manifest.json").read_bytes())
    shutil.rmtree(folder)
    folder.mkdir()
    for name in (CONFIG, WEIGHTS):
        shutil.copyfile(src / name, folder / name)
    files = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in (CONFIG, WEIGHTS)}
    (folder / "manifest.json").write_text(dataclasses.replace(old, files=files, note="not the original").to_json())


def test_a_child_is_pinned_to_its_parent_manifest(store):
    s = store
    task = s.reg.resolve("task@1")
    domain2 = s.reg.get("domain", 2)
    assert task.manifest.parent == domain2.ref
    assert task.manifest.parent.manifest_sha256 == domain2.manifest_sha256
    assert AdapterRef("domain", 2) == task.manifest.parent, "an unpinned ref still names the version"

    _replace_version(s, 2, s.micro.more[1])
    replaced = s.reg.get("domain", 2)
    assert replaced.ref != task.manifest.parent
    issues = {(p.adapter, p.version, p.file): p.issue for p in s.reg.verify()}
    assert "not the manifest recorded when it was published" in issues[("domain", 2, "manifest.json")]
    assert issues[("task", 1, "manifest.json")].startswith(
        f"trained on domain@2 (manifest sha256 {domain2.manifest_sha256[:16]}...), but domain@2 in the store now has"
    )

    # The stack's parent check compares the refs, pin included.
    model = adapters.load_adapter(_load_base(s.micro.base_dir), replaced, "domain", base=s.micro.base_id)
    with pytest.raises(IncompatibleAdapterError, match=r"trained on top of domain@2"):
        adapters.load_adapter(model, task, "task", base=s.micro.base_id, active_parent=replaced.ref)
    assert list(model.peft_config) == ["domain"]
    stack = adapters.AdapterStack(_load_base(s.micro.base_dir), s.reg, s.micro.base_id)
    with pytest.raises(adapters.ParentMismatchError, match=r"task@1 was trained on domain@2"):
        stack.use("domain@2", "task@1")
    assert stack.active == []
    with pytest.raises(IntegrityError, match=r"domain@2 \(manifest sha256 0000000000000000\.\.\.\): domain@2 in the"):
        _publish(s.reg, s.micro, "task", src=s.micro.more[0], parent=AdapterRef("domain", 2, "0" * 64))
    with pytest.raises(
        IntegrityError, match=r"domain@2 \(manifest sha256 [0-9a-f]{16}\.\.\.\): domain@2 in the store now"
    ):
        s.reg.resolve(task.manifest.parent)  # what a stack resolving the recorded parent gets


# --------------------------------------------------------------------------- 4. a seal cannot be taken off


def test_a_sealed_manifest_rewritten_as_format_1_fails_verify(store):
    s = store
    path = _writable(s.domain / "versions" / "2" / "manifest.json")
    m = json.loads(path.read_text())
    del m["manifest_sha256"]
    m.update(format=1, parent={"name": "task", "version": 1}, metrics={"eval_loss": 0.01})
    m["base"]["config_sha256"] = "0" * 64
    path.write_text(json.dumps(m))
    problems = [p for p in s.reg.verify() if p.adapter == "domain"]
    assert [(p.version, p.file) for p in problems] == [(2, "manifest.json")]
    assert problems[0].issue.startswith(
        "format 1, without a manifest_sha256 of its own, but its publish record (audit.jsonl line 2) sealed it"
    )
    assert not any("format 1" in n for n in s.reg.verify_notes())


# --------------------------------------------------------------------------- 5. a vocabulary-extended adapter


@pytest.fixture(scope="module")
def extended_adapter(micro_store, tmp_path_factory):
    """An adapter trained on the micro base grown to 66 tokens (rows 64, 65 trained), outside any run folder."""
    from peft import LoraConfig, get_peft_model

    model = _load_base(micro_store.base_dir)
    model.resize_token_embeddings(66, mean_resizing=False)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], trainable_token_indices={"embed_tokens": [64, 65]}
    )
    out = tmp_path_factory.mktemp("extended") / "adapter"
    with pytest.warns(UserWarning, match="save_embedding_layers"):
        get_peft_model(model, config).save_pretrained(out)
    assert not (out / "base_identity.json").exists()
    return out


def test_an_adapter_of_an_extended_vocabulary_is_refused_against_the_plain_base(
    micro_store, extended_adapter, tmp_path, capsys
):
    uri = ["--registry", str(tmp_path / "reg")]
    assert _cli("publish", "domain", str(extended_adapter), *uri) == 1
    err = capsys.readouterr().err
    assert "adapter_config.json trainable_token_indices['embed_tokens'] reaches token 65" in err
    assert "has vocab_size 64" in err and "vocabulary-extended base" in err and "--base-config" in err
    config = str(micro_store.base_dir / "config.json")
    assert _cli("publish", "domain", str(extended_adapter), "--base-config", config, *uri) == 1
    assert "vocab_size 64" in capsys.readouterr().err

    # Without the config's hint, the embedding rows in the safetensors file tell the same.
    rows_only = shutil.copytree(extended_adapter, tmp_path / "rows_only")
    cfg = json.loads((rows_only / CONFIG).read_text())
    cfg["trainable_token_indices"] = None
    (rows_only / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(IncompatibleAdapterError, match=r"adapter_model\.safetensors tensor \S+ has 66 token rows"):
        _publish(Registry(tmp_path / "reg"), micro_store, src=rows_only, base_vocab_size=64)
    assert not (tmp_path / "reg").exists() or Registry(tmp_path / "reg").names() == []
    assert _publish(Registry(tmp_path / "reg"), micro_store, base_vocab_size=64).version == 1, "a plain one goes"


# --------------------------------------------------------------------------- 6. links are refused, never followed


def test_an_audit_log_linked_outside_is_not_appended_to(store, capsys):
    s = store
    target = s.outside / "audit.jsonl"
    shutil.move(s.domain / "audit.jsonl", target)
    (s.domain / "audit.jsonl").symlink_to(target)
    before = target.read_bytes()
    match = rf"{s.domain / 'audit.jsonl'}: a symbolic link \(to {target}\) inside the store"
    _refused_and_untouched(s, lambda: s.reg.promote("domain", 1, alias="qa", reason="x"), match, StoreLinkError)
    assert _cli("promote", "domain", "1", "--alias", "qa", "--reason", "x", "--registry", str(s.root)) == 1
    assert "a symbolic link" in capsys.readouterr().err
    assert target.read_bytes() == before
    assert [(p.file, p.issue.split(";")[0]) for p in s.reg.verify("domain")] == [
        ("audit.jsonl", f"a symbolic link (to {target})")
    ]


def test_versions_linked_outside_are_neither_published_into_nor_deleted(store):
    s = store
    elsewhere = s.outside / "versions"
    shutil.copytree(s.domain / "versions", elsewhere, symlinks=True)
    (elsewhere / "4").mkdir()
    (elsewhere / "4" / "precious.txt").write_text("not the store's")  # a "manifest-less leftover"
    shutil.rmtree(s.domain / "versions")
    (s.domain / "versions").symlink_to(elsewhere)
    outside_before = _snapshot(s.outside)
    _refused_and_untouched(
        s,
        lambda: _publish(s.reg, s.micro, src=s.micro.task),
        rf"{s.domain / 'versions'}: a symbolic link",
        StoreLinkError,
    )
    assert _snapshot(s.outside) == outside_before
    with pytest.raises(StoreLinkError, match="versions: a symbolic link"):
        s.reg.resolve("domain@2")


def test_a_lock_file_linked_outside_is_not_truncated(store):
    s = store
    precious = s.outside / "precious.txt"
    precious.write_text("keep me")
    (s.domain / ".lock").unlink(missing_ok=True)
    (s.domain / ".lock").symlink_to(precious)
    with pytest.raises(StoreLinkError, match=r"\.lock: a symbolic link"):
        s.reg.promote("domain", 1, alias="qa", reason="x")
    assert precious.read_text() == "keep me"


def test_a_staging_link_is_not_deleted_through_and_is_named(store):
    s = store
    victim = s.outside / "victim"
    victim.mkdir()
    (victim / "manifest.json").write_text("{}")  # looks like a dead publish's staging folder
    (s.domain / ".staging-planted").symlink_to(victim)
    (p,) = s.reg.verify()
    assert (p.version, p.file) == (None, ".staging-planted") and p.issue.startswith("a symbolic link")
    s.reg.recover("task")  # another adapter's write is not affected
    assert (victim / "manifest.json").read_text() == "{}"


def test_a_weights_file_linked_outside_is_refused_by_verify_and_load(store):
    s = store
    weights = s.domain / "versions" / "2" / WEIGHTS
    copy = s.outside / WEIGHTS
    shutil.copyfile(weights, copy)  # the same bytes: only the link is wrong
    _writable(weights).unlink()
    weights.symlink_to(copy)
    (p,) = [p for p in s.reg.verify() if p.adapter == "domain"]
    assert (p.version, p.file) == (2, WEIGHTS) and p.issue.startswith(f"a symbolic link (to {copy})")
    with pytest.raises(IntegrityError, match=r"domain@2: adapter_model\.safetensors: a symbolic link"):
        adapters.load_adapter(_load_base(s.micro.base_dir), s.reg.get("domain", 2), "domain", base=s.micro.base_id)


# --------------------------------------------------------------------------- 7. leftovers are named by verify


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_verify_names_a_dead_staging_folder_and_how_to_clean_it(store, capsys):
    s = store
    staging = s.domain / ".staging-dead"
    staging.mkdir()
    (staging / ".owner").write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid()}))
    (staging / WEIGHTS).write_bytes(b"half")
    assert s.reg.verify() == []
    assert _cli("verify", "--registry", str(s.root)) == 0
    out = capsys.readouterr().out
    assert "note: domain: .staging-dead: left by a publish, promote or rollback that is no longer running" in out
    assert "`modft registry recover domain`" in out
    assert _cli("recover", "domain", "--registry", str(s.root)) == 0
    assert "domain: removed the staging folder of an interrupted publish (.staging-dead)" in capsys.readouterr().out
    assert not staging.exists()


# --------------------------------------------------------------------------- 8. every store file, every damage


def _link_out(s, rel: str) -> None:
    """Move a store file or folder outside and leave a link to it in its place."""
    path = s.domain / rel
    target = s.outside / rel.replace("/", "_")
    shutil.move(path, target)
    path.symlink_to(target)


def _to_folder(s, rel: str) -> None:
    path = s.domain / rel
    if path.is_dir():
        shutil.rmtree(path)
        path.write_text("a file now")
    else:
        _writable(path).unlink()
        path.mkdir()
        (path / "x").write_text("x")


def _edit_audit(s) -> None:
    log = s.domain / "audit.jsonl"
    lines = _lines(log)
    lines[4]["to"] = 1  # production's 1 -> 2 rewritten as 1 -> 1
    log.write_text("".join(json.dumps(e) + "\n" for e in lines))


def _edit_manifest(s) -> None:
    path = _writable(s.domain / "versions" / "2" / "manifest.json")
    m = json.loads(path.read_text())
    m["metrics"]["eval_loss"] = 0.01
    path.write_text(json.dumps(m))


M2, W2 = "versions/2/manifest.json", f"versions/2/{WEIGHTS}"
PARENT = ("task", 1, "manifest.json", "its parent domain@2 cannot be read")
NO_V2 = [("domain", 0, "aliases.json", "alias 'production' points at version 2"), PARENT]

# damage -> (what verify names: adapter, version, file, part of the issue), what a promote of another alias gets
CASES = {
    "aliases.json edited": (
        lambda s: _set_aliases(s, {"production": 3, "candidate": 3}),
        [("domain", 0, "aliases.json", "the audit log says 2 (audit.jsonl line 5), aliases.json says 3")],
        "alias 'production': the audit log says 2",
    ),
    "aliases.json deleted": (
        lambda s: (s.domain / "aliases.json").unlink(),
        [("domain", 0, "aliases.json", "alias 'candidate'"), ("domain", 0, "aliases.json", "alias 'production'")],
        "aliases.json says nothing",
    ),
    "aliases.json linked": (
        lambda s: _link_out(s, "aliases.json"),
        [("domain", 0, "aliases.json", "a symbolic link")],
        "aliases.json: a symbolic link",
    ),
    "aliases.json a folder": (
        lambda s: _to_folder(s, "aliases.json"),
        [("domain", 0, "aliases.json", "a folder, not a file")],
        "aliases.json: a folder, not a file",
    ),
    "audit.jsonl edited": (
        _edit_audit,
        [("domain", 0, "aliases.json", "the audit log says 1 (audit.jsonl line 5), aliases.json says 2")],
        "alias 'production': the audit log says 1",
    ),
    "audit.jsonl deleted": (
        lambda s: (s.domain / "audit.jsonl").unlink(),
        [
            ("domain", 0, "aliases.json", "alias 'candidate'"),
            ("domain", 0, "aliases.json", "alias 'production'"),
            ("domain", 1, "audit.jsonl", "not the last publish"),
            ("domain", 2, "audit.jsonl", "not the last publish"),
            ("domain", 3, "audit.jsonl", "the publish was interrupted"),
        ],
        "domain@1: no publish record",
    ),
    "audit.jsonl linked": (
        lambda s: _link_out(s, "audit.jsonl"),
        [("domain", 0, "audit.jsonl", "a symbolic link")],
        "audit.jsonl: a symbolic link",
    ),
    "audit.jsonl a folder": (
        lambda s: _to_folder(s, "audit.jsonl"),
        [("domain", 0, "audit.jsonl", "a folder, not a file")],
        "audit.jsonl: a folder, not a file",
    ),
    "manifest edited": (
        _edit_manifest,
        [("domain", 2, "manifest.json", "edited after it was published"), PARENT],
        None,
    ),
    "manifest deleted": (
        lambda s: _writable(s.domain / M2).unlink(),
        [("domain", 2, "versions/2", "its manifest.json is missing"), *NO_V2],
        None,
    ),
    "manifest linked": (
        lambda s: _link_out(s, M2),
        [("domain", 2, "manifest.json", "a symbolic link"), PARENT],
        "manifest.json: a symbolic link",
    ),
    "manifest a folder": (
        lambda s: _to_folder(s, M2),
        [("domain", 2, "versions/2", "its manifest.json is missing or not a file"), *NO_V2],
        None,
    ),
    "weights edited": (
        lambda s: _flip_last_byte(s.domain / W2),
        [("domain", 2, WEIGHTS, "sha256 mismatch")],
        None,
    ),
    "weights deleted": (
        lambda s: _writable(s.domain / W2).unlink(),
        [("domain", 2, WEIGHTS, "missing")],
        None,
    ),
    "weights linked": (
        lambda s: _link_out(s, W2),
        [("domain", 2, WEIGHTS, "a symbolic link")],
        None,
    ),
    "weights a folder": (
        lambda s: _to_folder(s, W2),
        [("domain", 2, WEIGHTS, "a folder, not a file")],
        None,
    ),
    "versions edited": (
        lambda s: shutil.rmtree(s.domain / "versions" / "3"),
        [
            ("domain", 0, "aliases.json", "alias 'candidate' points at version 3"),
            ("domain", 3, "versions/3", "but its folder is gone"),
        ],
        None,
    ),
    "versions deleted": (
        lambda s: shutil.rmtree(s.domain / "versions"),
        [
            ("domain", 0, "aliases.json", "alias 'candidate' points at version 3"),
            ("domain", 0, "aliases.json", "alias 'production' points at version 2"),
            ("domain", 1, "versions/1", "but its folder is gone"),
            ("domain", 2, "versions/2", "but its folder is gone"),
            ("domain", 3, "versions/3", "but its folder is gone"),
            PARENT,
        ],
        "no adapter 'domain'",
    ),
    "versions linked": (
        lambda s: _link_out(s, "versions"),
        [("domain", 0, "versions", "a symbolic link"), PARENT],
        "versions: a symbolic link",
    ),
    "versions a file": (
        lambda s: _to_folder(s, "versions"),
        [("domain", 0, "versions", "a file, not the folder of versions"), PARENT],
        "a file, not the folder of versions",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_store_file_damaged_every_way(store, case):
    s = store
    damage, named, refused = CASES[case]
    before = _snapshot(s.root)
    damage(s)
    outside = _snapshot(s.outside)

    found = sorted((p.adapter, p.version or 0, p.file, p.issue) for p in s.reg.verify())
    assert [f[:3] for f in found] == sorted(n[:3] for n in named)
    for (*_, issue), (*_, part) in zip(found, sorted(named), strict=True):
        assert part in issue, (part, issue)

    damaged = _snapshot(s.root)
    if refused is not None:
        with pytest.raises(RegistryError, match=refused.replace("(", r"\(").replace(")", r"\)")):
            s.reg.promote("domain", 1, alias="qa", reason="after the damage")
        assert _snapshot(s.root) == damaged, "a refused write changed the store"
    else:
        e = s.reg.promote("domain", 1, alias="qa", reason="after the damage")
        assert (e["alias"], e["to"], e.repairs) == ("qa", 1, [])
        after = _snapshot(s.root)
        assert {k: v for k, v in after.items() if k not in ("domain/audit.jsonl", "domain/aliases.json")} == {
            k: v for k, v in damaged.items() if k not in ("domain/audit.jsonl", "domain/aliases.json")
        }
        assert after["domain/audit.jsonl"].startswith(damaged["domain/audit.jsonl"]), "the log is only appended to"
    assert _snapshot(s.outside) == outside, "nothing outside the store was touched"
    # Every file the damage did not touch is still there, byte for byte.
    untouched = {k for k in before if before[k] == damaged.get(k)}
    assert all(_snapshot(s.root).get(k) == before[k] for k in untouched - {"domain/audit.jsonl", "domain/aliases.json"})

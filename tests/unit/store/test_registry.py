"""The adapter registry: bad inputs are refused by name, versions never change, aliases move with a record.

Every test builds on a real (micro_store) MiniMax-M2 base and real PEFT adapters saved with
``save_pretrained``, so loading goes through the same PEFT code the workbook uses. torch,
transformers and peft are imported inside helpers: the concurrency test starts fresh interpreters
that import this module, and they only need the registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from micro import STORE_BASE, micro_config
from micro import load_store_base as _load_base
from micro import store_logits as _logits

from modft_utils import adapters
from modft_utils import store as R
from modft_utils.store import (
    AdapterRef,
    IncompatibleAdapterError,
    IntegrityError,
    InvalidAdapterError,
    Registry,
    RegistryError,
)

REPO = Path(__file__).resolve().parents[3]
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def _lora_layer_count(model) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for m in model.modules())


def _publish(reg: Registry, micro_store, name: str = "domain", src: Path | None = None, **kw):
    kw.setdefault("base", micro_store.base_id)
    kw.setdefault("parent", None)
    return reg.publish(
        name,
        src or micro_store.domain,
        params={"lora_r": 4},
        data_fingerprint="sha256:feed",
        metrics={"eval_loss": 1.25},
        **kw,
    )


def _domains(micro_store) -> list[Path]:
    """Three domain adapters with different weights."""
    return [micro_store.domain, *micro_store.more]


def _copy_adapter(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _flip_last_byte(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- publishing


def test_versions_are_numbered_and_never_change(micro_store, tmp_path):
    reg = Registry(tmp_path / "reg")
    v1 = _publish(reg, micro_store, note="first")
    assert (v1.name, v1.version) == ("domain", 1)
    assert sorted(p.name for p in v1.path.iterdir()) == [CONFIG, WEIGHTS, "manifest.json"]
    assert (v1.path / WEIGHTS).read_bytes() == (micro_store.domain / WEIGHTS).read_bytes()
    m = v1.manifest
    assert m.files == {f: hashlib.sha256((micro_store.domain / f).read_bytes()).hexdigest() for f in (CONFIG, WEIGHTS)}
    assert m.base == micro_store.base_id and m.parent is None
    assert (m.params, m.data_fingerprint, m.metrics, m.note) == (
        {"lora_r": 4},
        "sha256:feed",
        {"eval_loss": 1.25},
        "first",
    )
    assert m.adapter["r"] == 4 and m.adapter["target_modules"] == ["q_proj", "v_proj"]
    assert "@" in m.created_by and m.created_at.endswith("+00:00")
    before = _file_hashes(v1.path)

    assert _publish(reg, micro_store, src=micro_store.more[0]).version == 2
    assert _publish(reg, micro_store, src=micro_store.task).version == 3
    reg.promote("domain", 3, reason="better")
    assert reg.versions("domain") == [1, 2, 3]
    assert _file_hashes(v1.path) == before
    assert all(p.stat().st_mode & 0o222 == 0 for p in v1.path.iterdir()), "stored files should be read-only"
    assert [e["version"] for e in reg.audit("domain") if e["event"] == "publish"] == [1, 2, 3]


def _truncate(folder: Path) -> None:
    path = folder / WEIGHTS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _pickle(name: str):
    def add(folder: Path) -> None:
        import torch

        torch.save({"w": torch.zeros(2)}, folder / name)

    return add


BAD_FOLDERS = {
    "truncated safetensors": (_truncate, WEIGHTS),
    "garbage safetensors": (
        lambda f: (f / WEIGHTS).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage"),
        WEIGHTS,
    ),
    "missing safetensors": (lambda f: (f / WEIGHTS).unlink(), WEIGHTS),
    "missing adapter_config.json": (lambda f: (f / CONFIG).unlink(), CONFIG),
    "pickled adapter_model.bin": (_pickle("adapter_model.bin"), "adapter_model.bin"),
    "pickle .pt": (_pickle("optimizer.pt"), "optimizer.pt"),
    "pickle .pkl": (_pickle("state.pkl"), "state.pkl"),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_publish_refuses_a_bad_adapter_folder_naming_the_file(micro_store, tmp_path, case):
    spoil, named = BAD_FOLDERS[case]
    folder = _copy_adapter(micro_store.domain, tmp_path / "adapter")
    spoil(folder)
    reg = Registry(tmp_path / "reg")
    with pytest.raises(InvalidAdapterError, match=named.replace(".", r"\.")):
        _publish(reg, micro_store, src=folder)
    assert reg.names() == []
    assert not list((tmp_path / "reg").rglob(".staging-*"))


def test_publish_points_at_the_adapter_subfolder_peft_made(micro_store, tmp_path):
    # save_pretrained of an adapter not named "default" writes into a subfolder named after it.
    _copy_adapter(micro_store.domain, tmp_path / "out" / "domain")
    with pytest.raises(InvalidAdapterError, match=r"subfolder.*'domain'"):
        _publish(Registry(tmp_path / "reg"), micro_store, src=tmp_path / "out")


def test_publish_refuses_an_unknown_parent(micro_store, tmp_path):
    reg = Registry(tmp_path / "reg")
    _publish(reg, micro_store)
    with pytest.raises(RegistryError, match=r"domain@4 does not exist"):
        _publish(reg, micro_store, "task", src=micro_store.task, parent=AdapterRef("domain", 4))
    assert reg.versions("task") == []


# --------------------------------------------------------------------------- integrity


def test_a_flipped_byte_is_named_by_verify_and_refused_by_load(micro_store, tmp_path):
    reg = Registry(tmp_path / "reg")
    v = _publish(reg, micro_store)
    assert reg.verify() == []
    _flip_last_byte(v.path / WEIGHTS)

    problems = reg.verify()
    assert [(p.adapter, p.version, p.file) for p in problems] == [("domain", 1, WEIGHTS)]
    assert "sha256 mismatch" in problems[0].issue
    with pytest.raises(IntegrityError, match=r"domain@1: adapter_model\.safetensors: sha256 mismatch"):
        R.verify_version(v)
    model = _load_base(micro_store.base_dir)
    with pytest.raises(IntegrityError, match=r"adapter_model\.safetensors"):
        adapters.load_adapter(model, v, "domain", base=micro_store.base_id)
    assert _lora_layer_count(model) == 0


def test_verify_reports_missing_extra_and_unreadable_files(micro_store, tmp_path):
    reg = Registry(tmp_path / "reg")
    v1, v2, v3 = (_publish(reg, micro_store, src=src) for src in _domains(micro_store))
    (v1.path / CONFIG).unlink()
    (v2.path / "notes.txt").write_text("hand-added")
    (v2.path / "adapter_model.bin").write_bytes(b"pickle")
    (v3.path / "manifest.json").chmod(0o644)
    (v3.path / "manifest.json").write_text("{broken")

    found = {(p.version, p.file): p.issue for p in reg.verify("domain")}
    assert set(found) == {(1, CONFIG), (2, "adapter_model.bin"), (2, "notes.txt"), (3, "manifest.json")}
    assert found[(1, CONFIG)] == "missing"
    assert "extra pickle file" in found[(2, "adapter_model.bin")]
    assert "unreadable manifest" in found[(3, "manifest.json")]
    with pytest.raises(IntegrityError, match=r"domain@3: manifest\.json"):
        reg.resolve("domain@3")


# --------------------------------------------------------------------------- loading


def test_loaded_adapters_give_the_logits_of_plain_peft(micro_store, tmp_path):
    import torch
    from peft import PeftModel

    reg = Registry(tmp_path / "reg")
    dv = _publish(reg, micro_store)
    tv = _publish(reg, micro_store, "task", src=micro_store.task, parent=dv.ref)

    reference = PeftModel.from_pretrained(
        _load_base(micro_store.base_dir), str(micro_store.domain), adapter_name="domain"
    )
    ours = adapters.load_adapter(_load_base(micro_store.base_dir), dv, "domain", base=micro_store.base_id)
    assert isinstance(ours, PeftModel)
    assert not any(p.requires_grad for p in ours.parameters())
    assert torch.equal(_logits(ours), _logits(reference))
    assert not torch.equal(_logits(ours), micro_store.base_logits), "the adapter should change the logits"

    # The second adapter goes into the PeftModel through load_adapter.
    assert adapters.load_adapter(ours, tv, "task", base=micro_store.base_id, active_parent=dv.ref) is ours
    reference.load_adapter(str(micro_store.task), adapter_name="task")
    for model in (ours, reference):
        model.base_model.set_adapter(["domain", "task"])
    assert torch.equal(_logits(ours), _logits(reference))


def test_an_adapter_from_another_base_is_refused_showing_both(micro_store, tmp_path):
    v = _publish(Registry(tmp_path / "reg"), micro_store, src=micro_store.other, base=micro_store.other_id)
    model = _load_base(micro_store.base_dir)
    with pytest.raises(IncompatibleAdapterError, match="different base") as err:
        adapters.load_adapter(model, v, "domain", base=micro_store.base_id)
    assert micro_store.other_id.config_sha256 in str(err.value) and micro_store.base_id.config_sha256 in str(err.value)
    assert _lora_layer_count(model) == 0


def test_a_rank_mismatch_is_an_error_and_leaves_the_model_as_it_was(micro_store, tmp_path):
    import torch

    folder = _copy_adapter(micro_store.domain, tmp_path / "rank8")
    config = json.loads((folder / CONFIG).read_text())
    config["r"] = 8  # the weights are rank 4
    (folder / CONFIG).write_text(json.dumps(config))
    reg = Registry(tmp_path / "reg")
    good, bad = _publish(reg, micro_store), _publish(reg, micro_store, "wrong", src=folder)

    plain = _load_base(micro_store.base_dir)
    with pytest.raises(IncompatibleAdapterError, match=r"adapter 'wrong' \(wrong@1\).*size mismatch"):
        adapters.load_adapter(plain, bad, "wrong", base=micro_store.base_id)
    assert _lora_layer_count(plain) == 0 and not hasattr(plain, "peft_config")
    assert torch.equal(_logits(plain), micro_store.base_logits)

    model = adapters.load_adapter(_load_base(micro_store.base_dir), good, "domain", base=micro_store.base_id)
    before = _logits(model)
    with pytest.raises(IncompatibleAdapterError, match=r"adapter 'wrong'.*size mismatch"):
        adapters.load_adapter(model, bad, "wrong", base=micro_store.base_id)
    assert list(model.peft_config) == ["domain"]
    assert torch.equal(_logits(model), before)


def test_a_shape_mismatch_is_an_error_naming_the_adapter(micro_store, tmp_path):
    # An adapter for the wider base, published under this base's identity (a mislabelled upload).
    v = _publish(Registry(tmp_path / "reg"), micro_store, "mislabelled", src=micro_store.other)
    model = _load_base(micro_store.base_dir)
    with pytest.raises(IncompatibleAdapterError, match=r"adapter 'mislabelled' \(mislabelled@1\) does not fit"):
        adapters.load_adapter(model, v, "mislabelled", base=micro_store.base_id)
    assert _lora_layer_count(model) == 0


def _rewrite_weights(src: Path, dst: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    _copy_adapter(src, dst)
    tensors = edit(load_file(dst / WEIGHTS))
    save_file(tensors, dst / WEIGHTS, metadata={"format": "pt"})
    return dst


def test_missing_or_unexpected_adapter_weights_are_errors_not_warnings(micro_store, tmp_path):
    import torch

    no_v = _rewrite_weights(
        micro_store.domain, tmp_path / "no_v", lambda t: {k: v for k, v in t.items() if "v_proj" not in k}
    )
    extra_key = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"
    extra = _rewrite_weights(micro_store.domain, tmp_path / "extra", lambda t: {**t, extra_key: torch.zeros(4, 32)})
    reg = Registry(tmp_path / "reg")
    missing_v, extra_v = _publish(reg, micro_store, "partial", src=no_v), _publish(reg, micro_store, "extra", src=extra)

    with pytest.raises(IncompatibleAdapterError, match=r"4 adapter weight\(s\) missing.*v_proj"):
        adapters.load_adapter(_load_base(micro_store.base_dir), missing_v, "partial", base=micro_store.base_id)
    model = _load_base(micro_store.base_dir)
    with pytest.raises(IncompatibleAdapterError, match=r"1 unexpected in it.*k_proj"):
        adapters.load_adapter(model, extra_v, "extra", base=micro_store.base_id)
    assert _lora_layer_count(model) == 0


def test_a_task_adapter_needs_the_parent_it_was_trained_on(micro_store, tmp_path):
    reg = Registry(tmp_path / "reg")
    d1, d2 = _publish(reg, micro_store), _publish(reg, micro_store, src=micro_store.more[0])
    reg.promote("domain", 1, reason="first domain")
    task = _publish(reg, micro_store, "task", src=micro_store.task, parent="domain@production")
    reg.promote("domain", 2, reason="newer domain")
    assert task.manifest.parent == AdapterRef("domain", 1), "the alias is pinned at publish time"

    model = adapters.load_adapter(_load_base(micro_store.base_dir), d1, "domain", base=micro_store.base_id)
    for active in (None, d2.ref):
        with pytest.raises(IncompatibleAdapterError, match=r"trained on top of domain@1"):
            adapters.load_adapter(model, task, "task", base=micro_store.base_id, active_parent=active)
    assert list(model.peft_config) == ["domain"]
    adapters.load_adapter(model, task, "task", base=micro_store.base_id, active_parent=d1.ref)
    assert sorted(model.peft_config) == ["domain", "task"]

    forced = adapters.load_adapter(_load_base(micro_store.base_dir), d2, "domain", base=micro_store.base_id)
    with pytest.warns(UserWarning, match="force_parent=True"):
        adapters.load_adapter(forced, task, "task", base=micro_store.base_id, active_parent=d2.ref, force_parent=True)
    assert sorted(forced.peft_config) == ["domain", "task"]


# --------------------------------------------------------------------------- aliases


def test_promote_rollback_and_resolve(micro_store, tmp_path):
    reg = Registry(tmp_path / "reg")
    for src in _domains(micro_store):
        _publish(reg, micro_store, src=src)
    assert reg.resolve("domain").version == 3, "no production alias yet: latest"
    reg.promote("domain", 1, reason="baseline")
    assert reg.resolve("domain").version == 1
    reg.promote("domain", 2, reason="eval up")
    reg.promote("domain", 3, reason="eval up again", actor="alice")
    reg.promote("domain", 1, alias="candidate", reason="compare")
    assert {
        ref: reg.resolve(ref).version
        for ref in ("domain", "domain@production", "domain@latest", "domain@2", "domain@candidate")
    } == {"domain": 3, "domain@production": 3, "domain@latest": 3, "domain@2": 2, "domain@candidate": 1}

    back = reg.rollback("domain", reason="regression on squad")
    assert (back["from"], back["to"]) == (3, 2) and reg.resolve("domain").version == 2
    assert reg.rollback("domain", reason="still bad")["to"] == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("domain", reason="nothing left")
    assert reg.aliases("domain") == {"candidate": 1, "production": 1}
    reg.promote("domain", 3, reason="fixed")
    assert reg.rollback("domain", reason="not fixed")["to"] == 1

    moves = [e for e in reg.audit("domain") if e["event"] != "publish"]
    assert [(e["event"], e["alias"], e["from"], e["to"]) for e in moves] == [
        ("promote", "production", None, 1),
        ("promote", "production", 1, 2),
        ("promote", "production", 2, 3),
        ("promote", "candidate", None, 1),
        ("rollback", "production", 3, 2),
        ("rollback", "production", 2, 1),
        ("promote", "production", 1, 3),
        ("rollback", "production", 3, 1),
    ]
    assert all(e["reason"] and e["at"] and e["actor"] for e in moves)
    assert moves[2]["actor"] == "alice" and moves[4]["reason"] == "regression on squad"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda reg: reg.promote("domain", 9, reason="x"), r"domain@9 does not exist"),
        (lambda reg: reg.promote("domain", 1, alias="Prod", reason="x"), r"invalid alias 'Prod'"),
        (lambda reg: reg.promote("domain", 1, alias="latest", reason="x"), r"reserved"),
        (lambda reg: reg.promote("domain", 1, reason=" "), r"needs a reason"),
        (lambda reg: reg.resolve("nope"), r"no adapter 'nope'"),
        (lambda reg: reg.promote("nope", 1, reason="x"), r"no adapter 'nope'"),
        (lambda reg: reg.rollback("nope", reason="x"), r"no adapter 'nope'"),
        (lambda reg: reg.resolve("domain@staging"), r"has no alias 'staging'"),
        (lambda reg: reg.resolve("domain@1.5"), r"cannot read"),
    ],
)
def test_bad_alias_operations_are_refused(micro_store, tmp_path, call, message):
    reg = Registry(tmp_path / "reg")
    _publish(reg, micro_store)
    with pytest.raises(RegistryError, match=message):
        call(reg)
    assert reg.aliases("domain") == {}
    assert reg.names() == ["domain"] and not (tmp_path / "reg" / "nope").exists()


def test_an_alias_to_a_missing_version_names_alias_and_version(micro_store, tmp_path, capsys):
    reg = Registry(tmp_path / "reg")
    _publish(reg, micro_store)
    _publish(reg, micro_store, src=micro_store.more[0])
    (tmp_path / "reg" / "domain" / "aliases.json").write_text('{"production": 7}')  # a hand edit
    with pytest.raises(
        RegistryError,
        match=r"alias 'production' of adapter 'domain' points at version 7, which does not exist",
    ):
        reg.resolve("domain")
    problems = [(p.file, p.issue) for p in reg.verify()]
    assert problems[0] == ("aliases.json", "alias 'production' points at version 7, which does not exist")
    # No move put it there either: a hand edit, which writes refuse until it is settled.
    assert [file for file, _ in problems] == ["aliases.json", "aliases.json"]
    assert "the audit log says no version (the log never moved it), aliases.json says 7" in problems[1][1]
    assert "modft registry settle domain production --to" in problems[1][1]
    assert _cli("show", "domain", "--registry", str(tmp_path / "reg")) == 1
    assert "version 7" in capsys.readouterr().err


def _promote_many(root: str, version: int, count: int, barrier) -> None:
    reg = Registry(root)
    barrier.wait()
    for i in range(count):
        reg.promote("domain", version, reason=f"worker {version} move {i}", actor=f"worker{version}")


def test_concurrent_promotions_are_all_recorded_in_order(micro_store, tmp_path):
    reg = Registry(tmp_path / "reg")
    _publish(reg, micro_store)
    _publish(reg, micro_store, src=micro_store.more[0])
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_promote_many, args=(str(tmp_path / "reg"), v, 10, barrier)) for v in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]

    moves = [e for e in reg.audit("domain") if e["event"] == "promote"]
    assert len(moves) == 20
    assert sorted(e["actor"] for e in moves) == ["worker1"] * 10 + ["worker2"] * 10
    # Each move starts where the previous one ended: no move read a stale aliases.json.
    assert moves[0]["from"] is None
    assert all(later["from"] == earlier["to"] for earlier, later in zip(moves, moves[1:], strict=False))
    assert json.loads((tmp_path / "reg" / "domain" / "aliases.json").read_text()) == {"production": moves[-1]["to"]}


# --------------------------------------------------------------------------- crashes

_SLOW_PUBLISH = """
import json, pathlib, sys, time
from modft_utils.store import registry
root, adapter_dir, marker, base = sys.argv[1:5]
copy = registry._copy_file
def slow_copy(src, fs, dst):
    copy(src, fs, dst)
    pathlib.Path(marker).write_text(dst)
    time.sleep(120)
registry._copy_file = slow_copy
registry.Registry(root).publish("domain", adapter_dir, base=registry.BaseIdentity(**json.loads(base)),
                                parent=None, params={}, data_fingerprint="", metrics={})
"""

_HOLD_LOCK = """
import pathlib, sys, time
from modft_utils.store import registry
root, marker = sys.argv[1:3]
with registry.Registry(root)._lock("domain"):
    pathlib.Path(marker).write_text("locked")
    time.sleep(120)
"""


def _run_until_marker_then_kill(script: str, marker: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    argv = [str(marker) if a == "MARKER" else a for a in args]
    proc = subprocess.Popen([sys.executable, "-c", script, *argv], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, f"helper exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "helper never reached the point to kill it at"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return marker.read_text()


def test_a_publish_killed_midway_leaves_no_trace_readers_see(micro_store, tmp_path):
    root = tmp_path / "reg"
    reg = Registry(root)
    kept = [_publish(reg, micro_store), _publish(reg, micro_store, src=micro_store.task)]
    hashes = [_file_hashes(v.path) for v in kept]

    base = json.dumps(dataclasses.asdict(micro_store.base_id))
    half_written = _run_until_marker_then_kill(
        _SLOW_PUBLISH, tmp_path / "copied", str(root), str(micro_store.domain), "MARKER", base
    )
    assert ".staging-" in half_written and Path(half_written).exists()
    assert reg.versions("domain") == [1, 2]
    assert not (root / "domain" / "versions" / "3").exists()
    assert reg.resolve("domain").version == 2
    assert reg.verify() == []

    assert _publish(reg, micro_store, src=micro_store.more[0]).version == 3
    assert not list((root / "domain").glob(".staging-*")), "the dead publish's staging folder is cleaned"
    assert [_file_hashes(v.path) for v in kept] == hashes
    assert reg.verify() == []


def test_a_lock_held_by_a_killed_process_does_not_block(micro_store, tmp_path):
    root = tmp_path / "reg"
    reg = Registry(root, lock_timeout=10)
    _publish(reg, micro_store)
    _run_until_marker_then_kill(_HOLD_LOCK, tmp_path / "locked", str(root), "MARKER")
    start = time.monotonic()
    reg.promote("domain", 1, reason="after the crash")
    assert time.monotonic() - start < 5
    assert reg.aliases("domain") == {"production": 1}


# --------------------------------------------------------------------------- other filesystems


@pytest.fixture
def memory_root():
    import fsspec

    root = f"memory://registry-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_a_memory_registry_works_through_the_same_code(micro_store, tmp_path, memory_root, monkeypatch):
    import fsspec
    import torch
    from peft import PeftModel

    monkeypatch.setenv("MODFT_REGISTRY_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    reg = Registry(memory_root)
    v = _publish(reg, micro_store)
    assert v.path is None and v.uri.startswith("memory://")
    assert _publish(reg, micro_store, src=micro_store.more[0]).version == 2
    reg.promote("domain", 2, reason="r")
    reg.promote("domain", 1, reason="r")
    assert reg.rollback("domain", reason="r")["to"] == 2
    assert reg.verify() == []

    local = v.local_copy()
    assert local.is_relative_to(tmp_path / "cache")
    ours = adapters.load_adapter(_load_base(micro_store.base_dir), v, "domain", base=micro_store.base_id)
    reference = PeftModel.from_pretrained(
        _load_base(micro_store.base_dir), str(micro_store.domain), adapter_name="domain"
    )
    assert torch.equal(_logits(ours), _logits(reference))

    # A publish that died before its manifest: invisible, and its number is reused.
    fs.pipe(f"{memory_root}/domain/versions/3/{CONFIG}", b"{}")
    assert reg.versions("domain") == [1, 2] and reg.resolve("domain@latest").version == 2
    v3 = _publish(reg, micro_store, src=micro_store.task)
    assert v3.version == 3
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{memory_root}/domain/versions/3", detail=False)) == [
        CONFIG,
        WEIGHTS,
        "manifest.json",
    ]
    assert not fs.exists(f"{memory_root}/domain/.lock"), "the lock file is removed after each operation"

    fs.pipe(f"{memory_root}/domain/versions/1/{WEIGHTS}", b"tampered")
    assert [(p.version, p.file) for p in reg.verify()] == [(1, WEIGHTS)]
    with pytest.raises(IntegrityError, match=WEIGHTS):
        R.verify_version(v)


def test_a_remote_lock_is_waited_for_and_broken_when_stale(micro_store, memory_root):
    import fsspec

    fs = fsspec.filesystem("memory")
    reg = Registry(memory_root, lock_timeout=0.3, stale_lock_s=60)
    _publish(reg, micro_store)
    lock = f"{memory_root}/domain/.lock"
    fs.pipe(lock, json.dumps({"token": "other", "owner": "someone@elsewhere", "at": time.time()}).encode())
    with pytest.raises(RegistryError, match=r"could not take lock .*\.lock"):
        reg.promote("domain", 1, reason="busy")
    fs.pipe(lock, json.dumps({"token": "dead", "owner": "someone@elsewhere", "at": time.time() - 3600}).encode())
    reg.promote("domain", 1, reason="the holder died an hour ago")
    assert reg.aliases("domain") == {"production": 1} and not fs.exists(lock)


# --------------------------------------------------------------------------- identity and CLI


def test_base_identity_ignores_how_the_base_was_loaded(micro_store):
    import torch
    from transformers import MiniMaxM2ForCausalLM

    fresh = MiniMaxM2ForCausalLM(micro_config(**STORE_BASE))
    in_bf16 = MiniMaxM2ForCausalLM.from_pretrained(micro_store.base_dir, dtype=torch.bfloat16)
    from_file = R.base_identity_from_config_file(micro_store.base_dir / "config.json", model_id="x")
    assert {
        R.base_identity(fresh).config_sha256,
        R.base_identity(in_bf16).config_sha256,
        from_file.config_sha256,
    } == {micro_store.base_id.config_sha256}
    assert micro_store.base_id.model_id == str(micro_store.base_dir)
    changed = micro_config(**STORE_BASE)
    changed.rms_norm_eps = 1e-5
    assert R.base_identity(MiniMaxM2ForCausalLM(changed)).config_sha256 != micro_store.base_id.config_sha256
    assert micro_store.other_id.config_sha256 != micro_store.base_id.config_sha256


def _cli(*argv: str) -> int:
    from modft_utils.cli import main

    return main(["registry", *argv])


def test_cli_publish_list_show_promote_rollback_verify(micro_store, tmp_path, capsys):
    uri = str(tmp_path / "reg")
    assert _cli("list", "--registry", uri) == 0
    assert "is empty" in capsys.readouterr().out

    # The base identity comes from base_model_name_or_path (the saved base folder) by default.
    assert (
        _cli(
            "publish",
            "domain",
            str(micro_store.domain),
            "--registry",
            uri,
            "--metrics",
            '{"eval_loss": 1.2345678}',
            "--note",
            "cli",
        )
        == 0
    )
    assert "published domain@1" in capsys.readouterr().out
    assert (
        _cli(
            "publish",
            "task",
            str(micro_store.task),
            "--registry",
            uri,
            "--parent",
            "domain@1",
            "--base-config",
            str(micro_store.base_dir / "config.json"),
        )
        == 0
    )
    reg = Registry(uri)
    assert reg.resolve("domain").manifest.base.config_sha256 == micro_store.base_id.config_sha256
    assert reg.resolve("task").manifest.parent == AdapterRef("domain", 1)
    assert _cli("promote", "domain", "1", "--reason", "baseline", "--registry", uri) == 0
    assert "domain@production: - -> 1" in capsys.readouterr().out

    assert _cli("list", "--registry", uri) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "VERSION",
        "ALIASES",
        "CREATED",
        "(UTC)",
        "PARENT",
        "METRICS",
        "SHA256",
    ]
    assert set(lines[1]) <= {"-", " "}
    domain_row = next(line for line in lines if line.startswith("domain"))
    task_row = next(line for line in lines if line.startswith("task"))
    assert "production" in domain_row and "eval_loss=1.235" in domain_row
    assert "domain@1" in task_row
    assert domain_row.index("eval_loss") == lines[0].index("METRICS"), "columns line up"

    assert _cli("show", "domain", "--registry", uri) == 0
    shown = capsys.readouterr().out
    assert "domain@1" in shown and "production" in shown and reg.resolve("domain").manifest.files[WEIGHTS] in shown
    assert "baseline" in shown, "the alias history is shown"
    assert _cli("show", "domain@9", "--registry", uri) == 1
    assert "domain@9 does not exist" in capsys.readouterr().err
    assert _cli("rollback", "domain", "--reason", "nothing earlier", "--registry", uri) == 1
    assert "no earlier version" in capsys.readouterr().err

    assert _cli("verify", "--registry", uri) == 0
    assert "ok: 2 version(s) of 2 adapter(s)" in capsys.readouterr().out
    _flip_last_byte(tmp_path / "reg" / "domain" / "versions" / "1" / WEIGHTS)
    assert _cli("verify", "--registry", uri) == 1
    assert "MISMATCH domain@1: adapter_model.safetensors: sha256 mismatch" in capsys.readouterr().out
    assert _cli("verify", "task", "--registry", uri) == 0
    capsys.readouterr()

    assert _cli("publish", "domain", str(micro_store.domain), "--registry", uri, "--metrics", "not json") == 1
    assert "--metrics: not JSON" in capsys.readouterr().err
    elsewhere = _copy_adapter(micro_store.domain, tmp_path / "hub_adapter")
    config = json.loads((elsewhere / CONFIG).read_text())
    config["base_model_name_or_path"] = "org/some-hub-model"
    (elsewhere / CONFIG).write_text(json.dumps(config))
    assert _cli("publish", "domain", str(elsewhere), "--registry", uri) == 1
    assert "--base-config is needed" in capsys.readouterr().err
    assert reg.versions("domain") == [1]

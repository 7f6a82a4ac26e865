"""runs: the run folder's one owner. Its named places, the profile a run keeps from 01 to 05, and what
it records of its publishes (the first call of every notebook is ``runs.open_run``)."""

from __future__ import annotations

import json

import pytest

from modft_utils import runs, store
from modft_utils.config import ProfileError
from modft_utils.data import DataError


@pytest.fixture
def opened(root, tmp_path, isolated):
    """A run opened fresh on the tiny profile, as notebook 01 opens it."""
    return runs.open_run(root / "params" / "tiny.yaml", tmp_path / "run", isolated, fresh=True, progress=False)


def test_places_are_named_under_the_folder(tmp_path):
    place = runs.folder(tmp_path / "run")
    assert place.dir == (tmp_path / "run").resolve()
    named = [
        place.resolved_profile,
        place.data,
        place.dapt_blocks("train"),
        place.sft_train,
        place.sft_eval,
        place.closed_book,
        place.vocab_extension,
        place.figures,
        place.exports,
        place.notebooks(),
        place.notebooks(1),
        place.adapter("task"),
        place.published_record("task"),
    ]
    assert all(p.is_relative_to(place.dir) for p in named)
    assert len(set(named)) == len(named)  # no two things share a place
    assert place.adapter("task").parent == place.training("task")
    assert runs.folder(place) is place


def test_create_writes_the_resolved_profile_that_read_resolved_returns(tiny, tmp_path):
    place = runs.folder(tmp_path / "run").create(tiny.profile)
    assert all(p.is_dir() for p in (place.data, place.figures, place.notebooks(), place.dir / "adapters"))
    again = runs.read_resolved(place)
    assert again.model_dump() == tiny.profile.model_dump()
    assert again.source == tiny.profile.source


def test_a_missing_resolved_profile_says_run_01_first(tmp_path):
    with pytest.raises(ProfileError, match=r"profile\.resolved\.json is missing: run notebook 01"):
        runs.read_resolved(tmp_path)


def test_require_names_the_notebook_that_writes_a_missing_file(tmp_path):
    place = runs.folder(tmp_path)
    with pytest.raises(DataError, match=r"sft_eval\.jsonl is missing: run notebook 01_data_prep"):
        place.require(place.sft_eval)
    with pytest.raises(DataError, match=r"dapt_train is missing: run notebook 01_data_prep"):
        place.load_dataset(place.dapt_blocks("train"))


def test_an_adapter_finds_the_run_folder_it_sits_in(tiny, tmp_path):
    place = runs.folder(tmp_path / "run").create(tiny.profile)
    place.adapter("domain").mkdir(parents=True)
    assert runs.folder_of_adapter(place.adapter("domain")).dir == place.dir
    (tmp_path / "loose").mkdir()
    assert runs.folder_of_adapter(tmp_path / "loose") is None


def test_a_later_notebook_refuses_another_profile_naming_each_key(opened, root, isolated):
    before = opened.resolved_profile.read_text()
    with pytest.raises(
        ProfileError,
        match=r"(?s)differs in:.*dapt\.lora\.r: the run has 16, asked 2.*data\.block_size: the run has 128, asked 64",
    ):
        runs.open_run(
            root / "params" / "tiny.yaml",
            opened.dir,
            {**isolated, "dapt.lora.r": 2, "data.block_size": 64},
            progress=False,
        )
    assert opened.resolved_profile.read_text() == before  # nothing rewritten


def test_training_longer_is_a_recorded_adjustment(opened, root, isolated, capsys):
    steps = opened.profile.dapt.train.max_steps + 5
    later = runs.open_run(
        root / "params" / "tiny.yaml", opened.dir, {**isolated, "dapt.train.max_steps": steps}, progress=False
    )
    assert later.profile.dapt.train.max_steps == steps and later.profile_changes == ["dapt.train.max_steps"]
    assert "continues with dapt.train.max_steps=" in capsys.readouterr().out
    recorded = json.loads(opened.resolved_profile.read_text())["adjustments"]
    assert [(a["key"], a["from"], a["to"]) for a in recorded] == [
        ("dapt.train.max_steps", opened.profile.dapt.train.max_steps, steps)
    ]
    again = runs.open_run(
        root / "params" / "tiny.yaml", opened.dir, {**isolated, "dapt.train.max_steps": steps}, progress=False
    )
    assert again.profile_changes == [] and again.profile.dapt.train.max_steps == steps


def test_modft_run_refuses_a_continued_run_of_other_values_before_any_notebook(tiny, root, tmp_path, isolated):
    from modft_utils import runner

    place = runs.folder(tmp_path / "run").create(tiny.profile)
    with pytest.raises(ProfileError, match=r"data\.block_size: the run has 128, asked 64"):
        runner.run_notebooks(
            root / "params" / "tiny.yaml",
            run_dir=place.dir,
            notebooks=["02"],
            overrides={"cache_dir": tiny.profile.cache_dir, "data.block_size": 64},
            progress=False,
        )
    assert not any(place.notebooks().iterdir())  # no kernel started


def test_starting_a_run_again_moves_its_results_aside(tiny, tmp_path, capsys):
    place = runs.folder(tmp_path / "run").create(tiny.profile)
    (place.dir / "metrics.json").write_text("{}")
    place.adapter("domain").mkdir(parents=True)
    place.published_record("domain").write_text(json.dumps({"name": "domain", "version": 3, "registry": "r"}))
    place.create(tiny.profile)
    out = capsys.readouterr().out
    assert "moved to" in out and "the store keeps domain@3" in out
    (aside,) = (place.dir / "superseded").iterdir()
    assert (aside / "metrics.json").read_text() == "{}" and (aside / "adapters" / "domain" / "adapter").is_dir()
    assert not (place.dir / "metrics.json").exists() and not any((place.dir / "adapters").iterdir())


def test_publish_records_the_version_that_published_finds(opened, tmp_path, random_adapter):
    from modft_utils import adapters, modeling

    registry = opened.store()
    with pytest.raises(ProfileError, match=r"notebook 02_dapt publishes 'domain'; run it for this run folder first"):
        opened.published(registry, "domain")
    model = modeling.load_base(opened.profile, opened.base)
    identity = opened.base_identity(model)
    model = random_adapter(model, "domain", opened.profile.dapt.lora, seed=1)
    adapters.save_adapter(model, "domain", opened.adapter("domain"))
    version = opened.publish(registry, "domain", base=identity, params={}, data_fingerprint="", metrics={})
    assert opened.published(registry, "domain") == version
    assert json.loads(opened.published_record("domain").read_text())["version"] == version.version
    elsewhere = store.Registry(tmp_path / "other-store")
    with pytest.raises(ProfileError, match="was published to"):
        opened.published(elsewhere, "domain")


def test_the_trained_base_of_a_run_is_the_loaded_base(opened):
    from modft_utils import modeling

    model = modeling.load_base(opened.profile, opened.base)
    rebuilt = runs.trained_base_identity(opened, opened.base.name_or_path, None)
    assert rebuilt.config_sha256 == opened.base_identity(model).config_sha256


@pytest.mark.parametrize("where", ["run", "data"])
def test_a_file_where_the_run_folder_belongs_is_named(tiny, tmp_path, where):
    target = tmp_path / "run" if where == "run" else tmp_path / "run" / "data"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("not a folder")
    with pytest.raises(ProfileError, match=f"{target.name}|is a file"):
        runs.folder(tmp_path / "run").create(tiny.profile)
    assert target.read_text() == "not a folder"


def test_compute_dtype_auto_is_what_the_run_ran_in(root, tmp_path, isolated, monkeypatch):
    """``auto`` is resolved where the run starts and recorded; the same profile opened on a machine that
    resolves it otherwise is refused, naming the key, instead of mixing dtypes in one run."""
    from modft_utils import machine

    auto = {**isolated, "model.compute_dtype": "auto"}
    monkeypatch.setattr(machine, "native_compute_dtype", lambda: "bfloat16")
    run = runs.open_run(root / "params" / "tiny.yaml", tmp_path / "run", auto, fresh=True, progress=False)
    assert json.loads(run.resolved_profile.read_text())["model"]["compute_dtype"] == "bfloat16"
    assert runs.open_run(root / "params" / "tiny.yaml", run.dir, auto, progress=False).profile.model.compute_dtype == (
        "bfloat16"
    )
    monkeypatch.setattr(machine, "native_compute_dtype", lambda: "float32")
    with pytest.raises(ProfileError, match=r"model\.compute_dtype: the run has 'bfloat16', asked 'float32'"):
        runs.open_run(root / "params" / "tiny.yaml", run.dir, auto, progress=False)

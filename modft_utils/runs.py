"""A run: one profile, one run folder, one base, and the named places in the folder where things go.

Notebook 01 opens a run fresh (``open_run(..., fresh=True)``): the profile is read from its YAML,
validated, and written into the folder as ``profile.resolved.json``. Notebooks 02-05 open the same
folder and get *that* profile back, so editing the YAML halfway through a run cannot change what
later notebooks do; a YAML that no longer says the same is reported, key by key, and not used.

This module is the only code that knows the folder's layout (:class:`RunFolder`): data preparation,
training, the vocabulary decision, the CLI and the runner ask it for paths instead of assembling
them. It also records what was published to the store from the run (``run.publish`` /
``run.published``): the notebook that trains an adapter publishes it, and later notebooks find that
version without reading metrics back.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from modft_utils import modeling, store
from modft_utils.config import Profile, ProfileError, load_profile, set_dotted
from modft_utils.distributed import is_main
from modft_utils.errors import DataError
from modft_utils.store import AdapterRef, AdapterVersion, BaseIdentity, Registry, base_identity

RESOLVED_PROFILE = "profile.resolved.json"
PUBLISHED_FILE = "published.json"
CHECKPOINTS = "checkpoints"  # inside a training folder: the Trainer's checkpoints
SAVED_ADAPTER = "adapter"  # inside a training folder: the saved adapter
FIRST_NOTEBOOK = "01_data_prep"
# Adapters sit at <run>/adapters/<name>/adapter: the run folder is a few levels above, never more.
_ADAPTER_DEPTH = 4
# What a later notebook may change in a run that notebook 01 started: training longer, how often it
# evaluates and logs, and how many held-out questions notebook 04 scores. Each such change is recorded
# in the resolved profile as a named adjustment; any other difference is refused, because the run's
# data, adapters and metrics were made with the values the run started with.
ADJUSTABLE = frozenset(
    [f"{stage}.train.{key}" for stage in ("dapt", "sft") for key in ("max_steps", "eval_steps", "logging_steps")]
    + ["compose.eval_examples", "compose.closed_book_examples", "compose.switch_repeats"]
)
_TRAINED_BY = {"domain": "notebook 02_dapt", "task": "notebook 03_sft"}
# What notebook 01 starting a run again makes stale: moved aside (never deleted) into superseded/.
_RESULTS = ("metrics.json", "adapters", "exports", "figures")


@dataclass
class RunFolder:
    """The named places in a run folder. Every function that takes a run folder takes one of these,
    a :class:`Run`, or a path (``folder(path)`` names its places)."""

    dir: Path

    def __fspath__(self) -> str:  # every function taking a run folder takes a RunFolder or a Run
        return str(self.dir)

    def __str__(self) -> str:
        return str(self.dir)

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def resolved_profile(self) -> Path:
        return self.dir / RESOLVED_PROFILE

    @property
    def data(self) -> Path:
        """What notebook 01 prepared: packed DAPT blocks, SFT sets, reports."""
        return self.dir / "data"

    def dapt_blocks(self, split: str) -> Path:
        """The packed DAPT blocks of ``split`` (``train`` or ``eval``), a saved ``datasets`` table."""
        return self.data / f"dapt_{split}"

    @property
    def dapt_pii_counts(self) -> Path:
        return self.data / "dapt_pii_counts.json"

    @property
    def sft_train_rows(self) -> Path:
        """The SFT training examples as JSON lines (the rollback drill re-reads them)."""
        return self.data / "sft_train.jsonl"

    @property
    def sft_train(self) -> Path:
        return self.data / "sft_train"

    @property
    def sft_eval_tokenized(self) -> Path:
        return self.data / "sft_eval_tokenized"

    @property
    def sft_eval(self) -> Path:
        """The held-out SFT examples with their prompts, as JSON lines."""
        return self.data / "sft_eval.jsonl"

    @property
    def sft_report(self) -> Path:
        return self.data / "sft_report.json"

    @property
    def closed_book(self) -> Path:
        return self.data / "closed_book.jsonl"

    @property
    def knowledge_probe(self) -> Path:
        """The checked ``data.knowledge_probe`` (notebook 01), when the profile gives one."""
        return self.data / "knowledge_probe.json"

    @property
    def vocab_extension(self) -> Path:
        """Notebook 01's vocabulary extension, when it decided on one."""
        return self.dir / "tokenizer" / modeling.EXTENSION_FILE

    @property
    def figures(self) -> Path:
        return self.dir / "figures"

    @property
    def exports(self) -> Path:
        """Exports for serving (notebook 04)."""
        return self.dir / "exports"

    def notebooks(self, rank: int | None = None) -> Path:
        """Executed notebooks of a headless run; each data-parallel rank keeps its own copies."""
        return self.dir / "notebooks" if rank is None else self.dir / "notebooks" / f"rank{rank}"

    def training(self, adapter: str) -> Path:
        """Where ``adapters.train_adapter`` trains ``adapter``: its checkpoints, and the saved adapter."""
        return self.dir / "adapters" / adapter

    def adapter(self, adapter: str) -> Path:
        """The saved adapter ``adapter`` (``adapter_config.json``, ``adapter_model.safetensors``)."""
        return self.training(adapter) / SAVED_ADAPTER

    def published_record(self, adapter: str) -> Path:
        """Which store version the run's ``adapter`` became (``Run.publish`` writes it)."""
        return self.training(adapter) / PUBLISHED_FILE

    def create(self, profile: Profile) -> RunFolder:
        """Start the run (notebook 01): create the folder and write the resolved profile beside the
        results it will hold. Results of an earlier start are moved into ``superseded/`` first, and
        said so, so a new start never mixes with old adapters and metrics (nothing is deleted)."""
        if self.dir.exists() and not self.dir.is_dir():
            raise ProfileError(f"run folder {self.dir} is a file, not a folder: give another --run-dir (or runs_dir)")
        if is_main():  # data-parallel ranks share the folder; one writes
            self._supersede()
        for sub in (self.data, self.dir / "adapters", self.figures, self.notebooks()):
            try:
                sub.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a file where a folder belongs, a read-only disk
                raise ProfileError(f"run folder {self.dir}: cannot create {sub} ({exc.strerror})") from None
        if is_main():
            _write_resolved(self.resolved_profile, profile, [])
        return self

    def _supersede(self) -> None:
        stale = [self.dir / name for name in _RESULTS if _holds_results(self.dir / name)]
        if not stale:
            return
        records = [
            json.loads(p.read_text(encoding="utf-8"))
            for p in sorted((self.dir / "adapters").glob(f"*/{PUBLISHED_FILE}"))
        ]
        published = [f"{r.get('name')}@{r.get('version')}" for r in records]
        aside = self.dir / "superseded" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        aside.mkdir(parents=True, exist_ok=True)
        for path in stale:
            path.rename(aside / path.name)
        print(
            f"note: notebook 01 starts {self.dir} again: the earlier "
            f"{', '.join(p.name for p in stale)} moved to {aside}"
            + (f"; the store keeps {', '.join(published)}, published from the earlier data" if published else "")
        )

    def require(self, path: Path, notebook: str = FIRST_NOTEBOOK) -> Path:
        """``path`` of this folder, or an error saying which notebook writes it."""
        if not path.exists():
            raise DataError(f"{path} is missing: run notebook {notebook} for this run folder first")
        return path

    def load_dataset(self, path: Path, notebook: str = FIRST_NOTEBOOK):
        """A dataset ``notebook`` saved with ``save_to_disk``; DataError naming it if missing or damaged."""
        from datasets import load_from_disk

        self.require(path, notebook)
        try:
            return load_from_disk(str(path))
        # pyarrow raises OSError for a truncated .arrow file and ArrowInvalid (a ValueError) for a garbled
        # one; datasets raises FileNotFoundError when a shard listed in its state file is gone.
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{path} is damaged ({type(exc).__name__}: {exc}): run notebook {notebook} for this run folder again"
            ) from None


def folder(run_dir: str | os.PathLike | RunFolder) -> RunFolder:
    """The named places of ``run_dir`` (a Run or RunFolder is returned as it is)."""
    return run_dir if isinstance(run_dir, RunFolder) else RunFolder(Path(run_dir).expanduser().resolve())


def folder_of_adapter(adapter_dir: str | os.PathLike) -> RunFolder | None:
    """The run folder a saved adapter sits in, or None when it is not inside one."""
    for parent in list(Path(adapter_dir).resolve().parents)[:_ADAPTER_DEPTH]:
        if (parent / RESOLVED_PROFILE).is_file():
            return RunFolder(parent)
    return None


@dataclass
class Run(RunFolder):
    """What a notebook works with: the run's validated profile, base, tokenizer and folder."""

    profile: Profile
    base: modeling.BaseRef
    tokenizer: Any
    profile_changes: list[str]  # the ADJUSTABLE keys this notebook changed (recorded in the resolved profile)

    # ----------------------------------------------------------------- the store

    def store(self) -> Registry:
        """The profile's artifact store."""
        return Registry(self.profile.registry_uri())

    def base_identity(self, model) -> BaseIdentity:
        """The loaded base as the store identifies it (vocabulary extension included)."""
        return base_identity(model, model_id=self.profile.model.id, revision=self.base.revision)

    def publish(
        self,
        store: Registry,
        adapter: str,
        *,
        base: BaseIdentity,
        parent: AdapterRef | None = None,
        **details: Any,
    ) -> AdapterVersion:
        """Publish the saved adapter ``adapter`` of this run and remember which version it became."""
        version = store.publish(
            adapter,
            self.adapter(adapter),
            base=base,
            parent=parent,
            note=details.pop("note", f"run {self.name}"),
            **details,
        )
        record = {"name": version.name, "version": version.version, "registry": store.uri}
        self.published_record(adapter).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return version

    def published(self, store: Registry, adapter: str) -> AdapterVersion:
        """The store version this run's ``adapter`` was published as, by the notebook that trained it."""
        path = self.published_record(adapter)
        if not path.is_file():
            trains = _TRAINED_BY.get(adapter, f"the notebook that trains {adapter!r}")
            raise ProfileError(f"{path} is missing: {trains} publishes {adapter!r}; run it for this run folder first")
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["registry"] != store.uri:
            raise ProfileError(f"{adapter!r} of run {self.name} was published to {record['registry']}, not {store.uri}")
        return store.get(record["name"], record["version"])


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _holds_results(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _write_resolved(path: Path, profile: Profile, adjustments: list[dict[str, Any]]) -> None:
    resolved = profile.model_dump(mode="json")
    resolved["source"] = profile.source
    if adjustments:
        resolved["adjustments"] = adjustments
    path.write_text(json.dumps(resolved, indent=2) + "\n", encoding="utf-8")


def _adjustments(run_dir: RunFolder) -> list[dict[str, Any]]:
    tree = json.loads(run_dir.resolved_profile.read_text(encoding="utf-8"))
    return list(tree.get("adjustments", []))


def _dotted_value(tree: dict, key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def continue_run(run_dir: str | os.PathLike | RunFolder, requested: Profile) -> tuple[Profile, list[str]]:
    """The profile a later notebook (or ``modft run`` without 01) continues the run with.

    A run folder is one profile: ``requested`` is compared with the run's, key by key. A difference
    in an :data:`ADJUSTABLE` key (training longer, evaluating more often) is applied and recorded in
    the resolved profile as a named adjustment (key, from, to, when); any other difference is refused,
    naming each key with both values, before any notebook runs.
    """
    place = folder(run_dir)
    profile = read_resolved(place)
    ran = profile.model_dump(mode="json")
    asked = requested.model_dump(mode="json")
    changed = _differences(ran, asked)
    refused = [key for key in changed if key not in ADJUSTABLE]
    if refused:
        lines = [
            f"  - {key}: the run has {_dotted_value(ran, key)!r}, asked {_dotted_value(asked, key)!r}"
            for key in refused
        ]
        raise ProfileError(
            f"{place.dir} is a run of another profile ({place.resolved_profile}); it differs in:\n"
            + "\n".join(lines)
            + "\nA run folder is one profile: start a new run (omit --run-dir), or run notebook 01 again to "
            "start this one over (its earlier results are moved to superseded/)."
        )
    if not changed:
        return profile, []
    adjustments = _adjustments(place)
    for key in changed:
        set_dotted(profile, key, _dotted_value(asked, key))
        adjustments.append(
            {
                "key": key,
                "from": _dotted_value(ran, key),
                "to": _dotted_value(asked, key),
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
    if is_main():
        _write_resolved(place.resolved_profile, profile, adjustments)
    print(
        f"note: this run continues with {', '.join(f'{key}={_dotted_value(asked, key)!r}' for key in changed)} (recorded in {place.resolved_profile})"
    )
    return profile, changed


def read_resolved(run_dir: str | os.PathLike | RunFolder) -> Profile:
    """The profile notebook 01 wrote into the run folder, validated again."""
    path = folder(run_dir).resolved_profile
    if not path.is_file():
        raise ProfileError(f"{path} is missing: run notebook 01 for this run folder first")
    tree = json.loads(path.read_text(encoding="utf-8"))
    source = tree.pop("source", "")
    tree.pop("adjustments", None)
    try:
        profile = Profile.model_validate(tree)
    except ValueError as exc:
        raise ProfileError(f"{path}: not a profile this version can read ({exc})") from None
    profile.source = source
    return profile


def trained_base_identity(run: RunFolder, base_path: str, revision: str | None) -> BaseIdentity:
    """The base an adapter of run folder ``run`` was trained on: the run's model, with its vocabulary extension.

    Notebook 01 may extend the vocabulary (``run.vocab_extension``); every later load in the run
    applies it, which changes the config (more rows, the extension's hash). The model is rebuilt
    here on the meta device, so this costs no memory, and extended exactly as
    ``modeling.load_base`` extends it.
    """
    try:
        spec = store.loads_json(run.resolved_profile.read_text(encoding="utf-8"))["model"]
        model_id, revision = str(spec["id"]), revision or spec.get("revision")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise store.RegistryError(f"{run.resolved_profile}: cannot read the run's model from it ({err})") from None
    try:
        ext = modeling.load_decision(run.vocab_extension)
    except modeling.VocabError as err:
        raise store.RegistryError(f"cannot tell which base this adapter was trained on: {err}") from None
    try:
        config = AutoConfig.from_pretrained(base_path, revision=revision)
    except Exception as err:  # noqa: BLE001 - missing folder, offline hub, unknown architecture
        raise store.RegistryError(
            f"cannot read the config of base {base_path!r} (base_model_name_or_path of the adapter, in run "
            f"{run}): {str(err).splitlines()[0]}; pass --base-config"
        ) from None
    if ext is None or not ext.words:
        return store.identity_of_config(config, model_id=model_id, revision=revision)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    modeling.extend_model(model, ext)
    return base_identity(model, model_id=model_id, revision=revision)


def open_run(
    profile_path: str | os.PathLike,
    run_dir: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
    *,
    fresh: bool = False,
    progress: bool = True,
) -> Run:
    """Open the run in ``run_dir`` for a notebook: profile, base, tokenizer and named paths.

    ``fresh`` (notebook 01): validate ``profile_path`` with ``overrides`` and write it into the run
    folder (an earlier start's results are moved aside). Otherwise the run's own
    ``profile.resolved.json`` is used: ``profile_path`` with ``overrides`` must say the same, except
    the :data:`ADJUSTABLE` keys, which are applied, recorded and listed in ``profile_changes``
    (:func:`continue_run`), because a run is one profile from its first notebook to its last.
    """
    place = folder(run_dir)
    if fresh:
        profile = load_profile(profile_path, overrides)
        place.create(profile)
        base = modeling.ensure_base(profile, progress=progress)  # 01 decides on a vocabulary extension
        return Run(place.dir, profile, base, modeling.load_tokenizer(base), [])
    try:
        now = load_profile(profile_path, overrides, check_paths=False)
    except ProfileError as exc:  # the YAML moved or broke since 01: the run's own profile is what counts
        profile, changes = read_resolved(place), []
        print(
            f"note: using the run's profile ({place.resolved_profile}); {profile_path} cannot be read now: {str(exc).splitlines()[0]}"
        )
    else:
        profile, changes = continue_run(place, now)
    # with the vocabulary extension 01 recorded
    base = modeling.ensure_base(profile, modeling.load_decision(place.vocab_extension), progress=progress)
    return Run(place.dir, profile, base, modeling.load_tokenizer(base), changes)

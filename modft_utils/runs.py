"""A run: one profile, one run folder, one base, and the named places in the folder where things go.

Notebook 01 opens a run fresh (``open_run(..., fresh=True)``): the profile is read from its YAML,
validated, and written into the folder as ``profile.resolved.json``. Notebooks 02-05 open the same
folder and get *that* profile back, so editing the YAML halfway through a run cannot change what
later notebooks do; a YAML that no longer says the same is reported, key by key, and not used.

Paths in the folder are named here once (``run.adapter("domain")``, ``run.data``, ``run.figures``)
instead of being assembled in notebook cells, and so is what was published to the store from the
run (``run.publish`` / ``run.published``): the notebook that trains an adapter publishes it, and
later notebooks find that version without reading metrics back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import modeling, registry
from .config import Profile, ProfileError, load_profile, prepare_run_dir

RESOLVED_PROFILE = "profile.resolved.json"
PUBLISHED_FILE = "published.json"


@dataclass
class Run:
    """What a notebook works with: the run's validated profile, base, tokenizer and folder."""

    profile: Profile
    dir: Path
    base: modeling.BaseRef
    tokenizer: Any
    profile_changes: list[str]  # keys where the YAML now differs from the run's profile (reported, not used)

    def __fspath__(self) -> str:  # every function taking a run folder takes a Run
        return str(self.dir)

    def __str__(self) -> str:
        return str(self.dir)

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def data(self) -> Path:
        """What notebook 01 prepared: packed DAPT blocks, SFT sets, reports."""
        return self.dir / "data"

    @property
    def figures(self) -> Path:
        return self.dir / "figures"

    @property
    def exports(self) -> Path:
        """Exports for serving (notebook 04)."""
        return self.dir / "exports"

    def training(self, adapter: str) -> Path:
        """Where ``train.train_adapter`` trains ``adapter``: its checkpoints, and the saved adapter in ``adapter/``."""
        return self.dir / "adapters" / adapter

    def adapter(self, adapter: str) -> Path:
        """The saved adapter ``adapter`` (``adapter_config.json``, ``adapter_model.safetensors``)."""
        return self.training(adapter) / "adapter"

    # ----------------------------------------------------------------- the store

    def store(self) -> registry.Registry:
        """The profile's artifact store."""
        return registry.Registry(self.profile.registry_uri())

    def base_identity(self, model) -> registry.BaseIdentity:
        """The loaded base as the store identifies it (vocabulary extension included)."""
        return registry.base_identity(model, model_id=self.profile.model.id, revision=self.base.revision)

    def publish(
        self,
        store: registry.Registry,
        adapter: str,
        *,
        base: registry.BaseIdentity,
        parent: registry.AdapterRef | None = None,
        **details: Any,
    ) -> registry.AdapterVersion:
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
        (self.training(adapter) / PUBLISHED_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return version

    def published(self, store: registry.Registry, adapter: str) -> registry.AdapterVersion:
        """The store version this run's ``adapter`` was published as, by the notebook that trained it."""
        path = self.training(adapter) / PUBLISHED_FILE
        if not path.is_file():
            raise ProfileError(f"{path} is missing: the notebook that trains {adapter!r} publishes it; run it first")
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


def read_resolved(run_dir: str | os.PathLike) -> Profile:
    """The profile notebook 01 wrote into the run folder, validated again."""
    path = Path(run_dir) / RESOLVED_PROFILE
    if not path.is_file():
        raise ProfileError(f"{path} is missing: run notebook 01 for this run folder first")
    tree = json.loads(path.read_text(encoding="utf-8"))
    source = tree.pop("source", "")
    try:
        profile = Profile.model_validate(tree)
    except ValueError as exc:
        raise ProfileError(f"{path}: not a profile this version can read ({exc})") from None
    profile.source = source
    return profile


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
    folder. Otherwise the run's own ``profile.resolved.json`` is used; ``profile_path`` and
    ``overrides`` are only compared with it, and keys that now differ are listed in
    ``profile_changes`` (and printed), because a run is one profile from its first notebook to its last.
    """
    if fresh:
        profile = load_profile(profile_path, overrides)
        folder = prepare_run_dir(run_dir, profile)
        base = modeling.ensure_base(profile, progress=progress)  # 01 decides on a vocabulary extension
        return Run(profile, folder, base, modeling.load_tokenizer(base), [])
    folder = Path(run_dir).expanduser().resolve()
    profile = read_resolved(folder)
    try:
        now = load_profile(profile_path, overrides, check_paths=False)
        changes = _differences(profile.model_dump(mode="json"), now.model_dump(mode="json"))
    except ProfileError as exc:
        changes = [f"(the profile cannot be read now: {str(exc).splitlines()[0]})"]
    if changes:
        print(
            f"note: the profile differs from the one this run started with in {', '.join(changes)}; "
            f"using the run's ({folder / RESOLVED_PROFILE}). Start a new run folder to use the new values."
        )
    base = modeling.ensure_base(profile, folder, progress=progress)  # with the vocabulary extension 01 recorded
    return Run(profile, folder, base, modeling.load_tokenizer(base), changes)

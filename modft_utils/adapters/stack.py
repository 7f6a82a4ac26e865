"""Where saved adapters meet the model: the one adapter loader, and stacks of store versions on one base.

:func:`load_adapter` is the only way a saved adapter gets into a model, whether it comes from a run
folder (``adapters.save_adapter`` wrote it) or from the store (a :class:`~modft_utils.store.registry.AdapterVersion`):
it verifies what can be verified before loading, loads frozen, checks every weight against the file
(PEFT only warns), and leaves the model as it was on any failure. :class:`AdapterStack` keeps several
store versions on one base and switches between them through :func:`modft_utils.adapters.state.activate`.

The store itself (:mod:`modft_utils.store.registry`) is file handling only and never imports PEFT.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modft_utils.adapters.state import AdapterError, activate, active_adapters, loaded_adapters, set_trainable
from modft_utils.store import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterRef,
    AdapterVersion,
    BaseIdentity,
    IncompatibleAdapterError,
    InvalidAdapterError,
    check_files_against_manifest,
    pickle_files,
    read_base_record,
)
from modft_utils.upstream_fixes import adapter_key_mismatch


class AdapterLoadError(AdapterError, IncompatibleAdapterError):
    """An adapter that does not fit this model (shapes, keys, base, parent); caught as either family."""


class AdapterFilesError(AdapterError, InvalidAdapterError):
    """An adapter folder without its files, or holding a pickle; caught as either family."""


def _strip_lora_layers(model) -> None:
    """Undo a ``PeftModel.from_pretrained`` that already wrapped ``model``'s layers in place."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    replaced: list[str] = []
    for mod_name, module in list(model.named_modules()):
        wrapper = isinstance(module, AuxiliaryTrainingWrapper)  # trainable-token rows around an embedding
        if not (wrapper or isinstance(module, BaseTunerLayer)) or any(mod_name.startswith(r + ".") for r in replaced):
            continue
        parent_name, _, child = mod_name.rpartition(".")
        original = module.original_module if wrapper else module.get_base_layer()
        setattr(model.get_submodule(parent_name) if parent_name else model, child, original)
        replaced.append(mod_name)
    if "peft_config" in vars(model):
        del model.peft_config


def _discard(model, adapter_name: str, was_peft: bool) -> None:
    """Leave ``model`` as it was before a failed load."""
    if was_peft:
        if adapter_name in getattr(model, "peft_config", {}):
            model.delete_adapter(adapter_name)
    else:
        _strip_lora_layers(model)


def _check_folder(path: Path, label: str) -> None:
    if not (path / CONFIG_FILE).is_file():
        raise AdapterFilesError(f"{label}: {path} has no {CONFIG_FILE}")
    pickles = pickle_files(path)
    if not (path / WEIGHTS_FILE).is_file():
        hint = f" (found pickle {pickles}; only safetensors are loaded)" if pickles else ""
        raise AdapterFilesError(f"{label}: {path} has no {WEIGHTS_FILE}{hint}")
    if pickles:
        raise AdapterFilesError(f"{label}: {path / pickles[0]}: refusing to load a folder holding a pickle {pickles}")


def load_adapter(
    model,
    source: str | Path | AdapterVersion,
    name: str,
    *,
    base: BaseIdentity | None = None,
    active_parent: AdapterRef | None = None,
    force_parent: bool = False,
):
    """Load a saved adapter into ``model`` frozen, as adapter ``name``; return the PeftModel.

    ``source`` is an adapter folder or a store version. Checked in order: a store version's files
    against the sha256 in its manifest; the adapter files present and no pickle; the base the adapter
    was trained on (a store version's manifest, or a folder's ``base_identity.json``) against ``base``
    when given; a store version's recorded parent against ``active_parent`` (skipped, with a warning,
    under ``force_parent``). Then PEFT loads it, and a shape mismatch or any missing or unexpected
    adapter weight, which PEFT only warns about, is an error. On any failure the model is left as it
    was. ``model`` may be a plain transformers model or a PeftModel holding other adapters.
    """
    from peft import PeftModel

    version = source if isinstance(source, AdapterVersion) else None
    if version is not None:
        label = f"adapter {name!r} ({version.ref})"
        path = version.local_copy()
        check_files_against_manifest(version, path)
        trained_on = version.manifest.base
    else:
        path = Path(source)
        label = f"adapter {name!r} ({path})"
        trained_on = None
    _check_folder(path, label)
    if trained_on is None and base is not None:
        trained_on = read_base_record(path)
    if base is not None and trained_on is not None and not trained_on.matches(base):
        raise AdapterLoadError(
            f"{label} was trained on a different base:\n  adapter's base: {trained_on}\n  this model:     {base}"
        )
    expected_parent = version.manifest.parent if version is not None else None
    if expected_parent is not None and expected_parent != active_parent:
        trained, active = _told_apart(expected_parent, active_parent)
        message = f"{label} was trained on top of {trained}, but the active parent is {active or 'none'}"
        if not force_parent:
            raise AdapterLoadError(message + "; load that parent first, or pass force_parent=True to load it anyway")
        warnings.warn(message + " (loading anyway: force_parent=True)", stacklevel=2)

    was_peft = isinstance(model, PeftModel)
    if was_peft and name in model.peft_config:
        raise AdapterLoadError(f"{label}: an adapter named {name!r} is already loaded in this model")
    try:
        with warnings.catch_warnings():
            # PEFT's missing-keys warning is replaced by the error below.
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            if was_peft:
                model.load_adapter(str(path), adapter_name=name, is_trainable=False)
                peft_model = model
            else:
                peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)
    except Exception as err:
        _discard(model, name, was_peft)
        detail = " ".join(line.strip() for line in str(err).strip().splitlines()[:3])
        raise AdapterLoadError(
            f"{label} does not fit this model (rank or shape mismatch?): {type(err).__name__}: {detail}"
        ) from err
    missing, unexpected = adapter_key_mismatch(peft_model, path / WEIGHTS_FILE, name)
    if missing or unexpected:
        _discard(model, name, was_peft)
        raise AdapterLoadError(
            f"{label} does not fit this model: {len(missing)} adapter weight(s) missing from the file "
            f"{WEIGHTS_FILE} {missing[:3]}, {len(unexpected)} unexpected in it {unexpected[:3]}"
        )
    set_trainable(peft_model, None)
    return peft_model


def _told_apart(trained: AdapterRef, active: Any) -> tuple[str, Any]:
    """Two refs for a message: ``name@version``, with their manifest pins when that alone looks the same
    (a parent republished under its old number)."""
    if isinstance(active, AdapterRef) and str(active) == str(trained):
        return trained.describe(), active.describe()
    return str(trained), active


class ParentMismatchError(AdapterError):
    """A task adapter activated on top of a domain version other than the one it was trained on."""


class AdapterStack:
    """Adapters from a :class:`~modft_utils.store.registry.Registry`, stacked on one loaded base.

    ``load("domain@production")`` resolves a reference in the store and loads that version (hashes,
    base identity and keys checked by :func:`load_adapter`) under an adapter name of its
    own (``domain_v3``), so several versions of one adapter sit side by side and rollback is a
    switch. ``use``, ``disable``, ``enable`` and ``swap`` only flip flags through :func:`activate`:
    no weights are copied or reloaded, and the cost grows with the adapted layers, not the base.

    A task adapter records the domain version it was trained on (``Manifest.parent``); activating
    it over another domain version (or none) is refused unless ``force_parent=True``, and a forced
    mismatch stays visible in :meth:`mismatches` and :meth:`describe` while it is active.

    ``stack.model`` is the model to run: the base becomes a PeftModel on the first load. Switch
    through the stack; calling :func:`activate` directly bypasses the parent check.
    """

    def __init__(self, model, registry, base) -> None:
        self.model = model
        self.registry = registry
        self.base = base
        self.versions: dict = {}  # adapter name in the model -> AdapterVersion
        self._names: dict = {}  # AdapterRef -> adapter name in the model
        self._disabled: dict[str, tuple[int, str]] = {}  # key -> (position, adapter name)
        self.forced: list[str] = []  # every mismatch activated with force_parent=True, in order

    # ----------------------------------------------------------------- resolving

    def _version(self, ref):
        """An AdapterVersion for an adapter name of this stack, ``name@N``, ``name@alias`` or ``name``."""
        if isinstance(ref, AdapterVersion):
            return ref
        if isinstance(ref, AdapterRef):
            key = ref
        else:
            ref = str(ref)
            if ref in self.versions:
                return self.versions[ref]
            name, sep, selector = ref.partition("@")
            # Versions never change, so a concrete name@N already loaded needs no trip to the store;
            # aliases move and are resolved every time.
            key = AdapterRef(name, int(selector)) if sep and selector.isdigit() else None
        if key is not None and key in self._names:
            return self.versions[self._names[key]]
        return self.registry.resolve(ref)

    def _adapter_name(self, ref) -> str:
        """The adapter name in the model for a loaded adapter given by name, reference or version."""
        if isinstance(ref, str) and ref in loaded_adapters(self.model):
            return ref
        if isinstance(ref, str) and "@" not in ref:
            active = [n for n in active_adapters(self.model) if n in self.versions and self.versions[n].name == ref]
            if active:
                return active[0]
        v = self._version(ref)
        if v.ref not in self._names:
            raise AdapterError(f"{v.ref} is not loaded in this stack; loaded: {self._loaded_refs()}")
        return self._names[v.ref]

    def _loaded_refs(self) -> list[str]:
        return [str(v.ref) for v in self.versions.values()]

    def _ref_of(self, name: str) -> str:
        return str(self.versions[name].ref) if name in self.versions else name

    # ----------------------------------------------------------------- loading

    def load(self, ref, *, as_name: str | None = None, force_parent: bool = False) -> str:
        """Load ``ref`` (``"task@production"``, ``"domain@3"``) frozen and inactive; return its adapter name.

        Loading a version already in the stack is a no-op. A version with a parent loads when that
        parent version is in the stack (active or not); which versions run together is checked by
        :meth:`use`.
        """
        v = self._version(ref)
        if v.ref in self._names:
            existing = self._names[v.ref]
            if as_name is not None and as_name != existing:
                raise AdapterError(f"{v.ref} is already loaded as {existing!r}, not {as_name!r}")
            return existing
        parent = v.manifest.parent
        if parent is None or parent in self._names:
            active_parent = parent
        else:
            active_parent = next(
                (
                    self.versions[n].ref
                    for n in active_adapters(self.model)
                    if n in self.versions and self.versions[n].name == parent.name
                ),
                None,
            )
        return self._load(v, as_name, active_parent, force_parent)

    def _load(self, v, as_name, active_parent, force_parent: bool) -> str:
        name = as_name or f"{v.name}_v{v.version}"
        if name in loaded_adapters(self.model):
            raise AdapterError(f"cannot load {v.ref} as {name!r}: an adapter of that name is already loaded")
        was_active = active_adapters(self.model)
        self.model = load_adapter(
            self.model, v, name, base=self.base, active_parent=active_parent, force_parent=force_parent
        )
        self.versions[name] = v
        self._names[v.ref] = name
        # PeftModel.from_pretrained activates what it loads: loading must not change what runs.
        activate(self.model, was_active)
        return name

    # ----------------------------------------------------------------- switching

    def _parent_problems(self, entries: Sequence) -> list[str]:
        """Parent mismatches if ``entries`` (adapter names or AdapterVersions) ran together."""
        versions = [e if not isinstance(e, str) else self.versions.get(e) for e in entries]
        versions = [v for v in versions if v is not None]  # adapters not from the store have no parent record
        by_name = {v.name: v.ref for v in versions}
        local = {e for e in entries if isinstance(e, str) and e not in self.versions}
        problems = []
        for v in versions:
            parent = v.manifest.parent
            if parent is not None and by_name.get(parent.name) != parent:
                active = by_name.get(parent.name) or (
                    f"{parent.name!r} loaded from a folder, not the store" if parent.name in local else "none"
                )
                trained, active = _told_apart(parent, active)
                problems.append(f"{v.ref} was trained on {trained}, but the active {parent.name} is {active}")
        return problems

    def _switch(self, entries: list, force_parent: bool) -> list[str]:
        """Activate ``entries`` in order: adapter names, or versions loaded here first if need be.

        Parents are checked before anything is loaded, so a refusal leaves the stack as it was.
        """
        seen: dict[str, object] = {}
        for e in entries:
            v = self.versions.get(e) if isinstance(e, str) else e
            if v is None:
                continue
            if seen.get(v.name, v.ref) != v.ref:
                raise AdapterError(f"two versions of {v.name!r} in one stack: {seen[v.name]} and {v.ref}")
            seen[v.name] = v.ref
        problems = self._parent_problems(entries)
        if problems and not force_parent:
            raise ParentMismatchError("; ".join(problems) + "; pass force_parent=True to run it anyway")
        names = []
        for e in entries:
            if isinstance(e, str):
                names.append(e)
            elif e.ref in self._names:
                names.append(self._names[e.ref])
            else:
                parent = e.manifest.parent
                with warnings.catch_warnings():
                    # Reported once below, for the whole stack.
                    warnings.filterwarnings("ignore", message=".*loading anyway: force_parent=True")
                    names.append(self._load(e, None, seen.get(parent.name) if parent else None, force_parent))
        activate(self.model, names)
        if problems:
            self.forced.extend(problems)
            warnings.warn("running a parent mismatch (force_parent=True): " + "; ".join(problems), stacklevel=3)
        return names

    def compose(self, selection: Sequence[str], *, force_parent: bool = False):
        """Activate ``selection`` in order and return the model to run.

        Each item is an adapter already in the model by its name (this run's ``"domain"``) or a
        store reference (``"task@3"``, ``"domain@production"``), loaded on first use. A parent
        mismatch raises :class:`ParentMismatchError` before anything changes.
        """
        loaded = set(loaded_adapters(self.model))
        entries = [s if s in loaded else self._version(s) for s in selection]
        self._switch(entries, force_parent)
        self._disabled.clear()
        return self.model

    def use(self, *refs, force_parent: bool = False) -> list[str]:
        """Make exactly ``refs`` active, in this order, loading any not yet loaded; no refs: the bare base.

        Returns the adapter names now active.
        """
        names = self._switch([self._version(r) for r in refs], force_parent)
        self._disabled.clear()
        return names

    def disable(self, name: str, *, force_parent: bool = False) -> list[str]:
        """Switch off the active adapter ``name`` (``"task"``, ``"task@5"`` or ``"task_v5"``)."""
        target = self._adapter_name(name)
        current = active_adapters(self.model)
        if target not in current:
            raise AdapterError(f"{self._ref_of(target)} is not active; active: {self.active}")
        rest = self._switch([n for n in current if n != target], force_parent)
        key = self.versions[target].name if target in self.versions else target
        self._disabled[key] = (current.index(target), target)
        return rest

    def enable(self, name: str, *, force_parent: bool = False) -> list[str]:
        """Switch a disabled adapter back on at its old position, so the stack computes what it did.

        ``name`` is what was disabled (``"task"``), or any reference, which is appended (and loaded
        if need be).
        """
        current = active_adapters(self.model)
        key = next((k for k, (_, n) in self._disabled.items() if name in (k, n, self._ref_of(n))), None)
        if key is not None:
            position, target = self._disabled[key]
        else:
            position, target = len(current), self._version(name)
            if target.ref in self._names:
                target = self._names[target.ref]
        if target in current:
            return current
        names = self._switch(current[:position] + [target] + current[position:], force_parent)
        if key is not None:
            del self._disabled[key]
        return names

    def swap(self, name: str, ref, *, force_parent: bool = False) -> list[str]:
        """Put version ``ref`` in place of the active adapter ``name``, same position (loaded if need be)."""
        target = self._adapter_name(name)
        current = active_adapters(self.model)
        if target not in current:
            raise AdapterError(f"{self._ref_of(target)} is not active; active: {self.active}")
        v = self._version(ref)
        return self._switch([v if n == target else n for n in current], force_parent)

    # ----------------------------------------------------------------- reporting

    @property
    def active(self) -> list[str]:
        """The active versions, e.g. ``["domain@3", "task@5"]`` (adapters not from the store by name)."""
        return [self._ref_of(n) for n in active_adapters(self.model)]

    def mismatches(self) -> list[str]:
        """Parent mismatches in the active stack (only possible after ``force_parent=True``)."""
        return self._parent_problems(active_adapters(self.model))

    def adapter_dirs(self, names: Sequence[str] | None = None) -> dict[str, Path]:
        """Local folders of the active (or given) adapters, keyed by adapter name: input for export."""
        names = active_adapters(self.model) if names is None else [self._adapter_name(n) for n in names]
        missing = [n for n in names if n not in self.versions]
        if missing:
            raise AdapterError(f"adapter(s) {missing} were not loaded from the store")
        return {n: self.versions[n].local_copy() for n in names}

    def describe(self) -> str:
        """A table of the loaded adapters: version, parent, whether active, whether its parent is active."""
        active = active_adapters(self.model)
        problems = {p.split(" ", 1)[0]: p for p in self._parent_problems(active)}
        rows = []
        for n in loaded_adapters(self.model):
            v = self.versions.get(n)
            ref = str(v.ref) if v is not None else "- (not from the store)"
            parent = v.manifest.parent if v is not None else None
            if n not in active or parent is None:
                ok = "-"
            elif ref in problems:
                active_parent = problems[ref].rsplit(" is ", 1)[-1]
                ok = f"NO: active {parent.name} is {active_parent}"
            else:
                ok = "yes"
            rows.append([n, ref, str(parent) if parent else "-", "yes" if n in active else "no", ok])
        headers = ["ADAPTER", "VERSION", "PARENT", "ACTIVE", "PARENT OK"]
        widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        text = "\n".join(lines)
        if problems:
            text += "\n\nparent mismatch (forced): " + "; ".join(problems.values())
        return text

    def __repr__(self) -> str:
        return f"AdapterStack(active={self.active}, loaded={self._loaded_refs()})"

"""Which LoRA adapters are active and which train: the only module that changes either.

PEFT's ``base_model.set_adapter([...])`` activates several adapters at once but also makes every
listed adapter trainable again (shared/FACTS.md), so every switch here goes through
:func:`activate`, which freezes everything except the one adapter named as trainable, and training
is refused while any other adapter has a trainable parameter. :class:`AdapterStack` does the same
for versions from the registry, and checks that a task adapter runs on the domain version it was
trained on.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch


class AdapterError(RuntimeError):
    """An adapter operation that would silently do the wrong thing; the message names the adapter."""


def _lora_layers(model) -> list:
    """The model's LoRA layers, found once per set of loaded adapters and kept on the model.

    Walking every module on each switch would make switching cost grow with the base; the
    index makes it a loop over the adapted layers only.
    """
    return _index(model).layers


class _LoraIndex(NamedTuple):
    key: tuple[str, ...]  # the loaded adapters it was built for
    layers: list  # every PEFT tuner layer
    params: dict[str, list]  # adapter name -> its parameters
    full: list  # LoRA layers: they hold every adapter and share ``shared`` as their active list
    partial: list  # (trainable-token layer or wrapper, the adapter names it holds)
    shared: list[str]


def _index(model) -> _LoraIndex:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    key = tuple(loaded_adapters(model))
    cached = getattr(model, "_modft_lora_index", None)
    if cached is None or cached.key != key:
        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        # Trainable-token layers (and the wrappers around them) hold only the adapter that trains
        # embedding rows, and fail when told another one is active: they get the active names they hold.
        partial = [
            (m, frozenset(_held_adapters(m)))
            for m in model.modules()
            if isinstance(m, AuxiliaryTrainingWrapper) or (isinstance(m, BaseTunerLayer) and hasattr(m, "token_indices"))
        ]
        full = [m for m in layers if all(m is not p for p, _ in partial)]
        params: dict[str, list] = {}
        for pname, param in model.named_parameters():
            owner = _param_adapter(pname)
            if owner is not None:
                params.setdefault(owner, []).append(param)
        # Every LoRA layer gets the same list object as its active adapters, left enabled: a switch
        # rewrites that one list in place, so it costs the same for 4 layers or 62. An empty list
        # runs the base layer alone, the same computation as PEFT's disabled path.
        shared = [] if not full or full[0]._disable_adapters else list(full[0].active_adapters)
        for layer in full:
            layer._disable_adapters = False
            layer._active_adapter = shared
        cached = _LoraIndex(key, layers, params, full, partial, shared)
        model._modft_lora_index = cached
        model._modft_trainable = _UNKNOWN  # adapters were added or removed: trainability is not ours to know
    return cached


def _held_adapters(module) -> list[str]:
    if hasattr(module, "token_indices"):
        return list(module.token_indices)
    return list(getattr(module, "_adapters", ()))


def _adapter_params(model) -> dict[str, list]:
    return _index(model).params


def loaded_adapters(model) -> list[str]:
    """Names of the adapters loaded into ``model`` (empty for a plain base)."""
    return list(getattr(model, "peft_config", {}).keys())


def ensure_peft_fixes() -> None:
    """Let PEFT save an adapter without embedding rows next to one that has them.

    PEFT 0.21 asks every trainable-token wrapper for the state of the adapter being saved or
    loaded, and the wrapper raises KeyError for an adapter it does not hold: with a domain adapter
    that trains new token rows loaded, a task adapter could be neither saved nor loaded, nor the
    two merged. Adapters a wrapper does not hold now contribute nothing to it, in all three.
    """
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    from peft.utils.other import TrainableTokensWrapper

    if getattr(TrainableTokensWrapper, "_modft_fixed", False):
        return
    save, load_map = TrainableTokensWrapper.adapter_state_dict, TrainableTokensWrapper.adapter_state_dict_load_map

    def holds(wrapper, adapter_name) -> bool:
        return adapter_name in wrapper.token_adapter.trainable_tokens_delta or bool(wrapper.token_adapter.tied_adapter)

    TrainableTokensWrapper.adapter_state_dict = lambda self, name, state: save(self, name, state) if holds(self, name) else {}
    TrainableTokensWrapper.adapter_state_dict_load_map = lambda self, name: load_map(self, name) if holds(self, name) else {}
    TrainableTokensWrapper._modft_fixed = True
    merge = TrainableTokensLayer.merge

    def merge_held(self, safe_merge: bool = False, adapter_names=None) -> None:
        names = self.active_adapters if adapter_names is None else adapter_names
        merge(self, safe_merge=safe_merge, adapter_names=[n for n in names if n in self.token_indices])

    TrainableTokensLayer.merge = merge_held


def add_adapter(model, name: str, lora_config, *, seed: int = 0):
    """Attach a new, trainable adapter ``name``; turn a plain base into a PeftModel on first use.

    LoRA's A matrices start random: they are drawn from ``seed`` (without disturbing the global
    generator) so the same profile trains the same adapter.
    """
    from peft import PeftModel, get_peft_model

    from .quant import check_lora_targets

    check_lora_targets(model, lora_config)
    ensure_peft_fixes()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(model, PeftModel):
            if name in model.peft_config:
                raise AdapterError(f"adapter {name!r} is already loaded; pick another name or delete it first")
            model.add_adapter(name, lora_config)
        else:
            model = get_peft_model(model, lora_config, adapter_name=name)
    return model


def load_adapter(model, path: str | Path, name: str):
    """Load a saved adapter frozen; refuse pickles and missing keys, which PEFT only warns about."""
    from peft import PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"adapter {name!r}: {path} has no adapter_config.json")
    if not (path / "adapter_model.safetensors").is_file():
        pickles = sorted(p.name for p in path.glob("*.bin"))
        hint = f" (found pickle {pickles}; only safetensors are loaded)" if pickles else ""
        raise AdapterError(f"adapter {name!r}: {path} has no adapter_model.safetensors{hint}")
    ensure_peft_fixes()
    if isinstance(model, PeftModel):
        if name in model.peft_config:
            raise AdapterError(f"adapter {name!r} is already loaded")
        model.load_adapter(str(path), adapter_name=name, is_trainable=False)
    else:
        model = PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)
    check_keys_match(model, path / "adapter_model.safetensors", name)
    set_trainable(model, None)
    return model


def check_keys_match(model, weights_file: Path, name: str) -> None:
    """Every LoRA weight of ``name`` came from the file and every tensor in the file was used.

    PEFT only warns about missing keys, and a missing ``lora_B`` stays at its zero initialisation:
    the adapter would load "successfully" and do nothing.
    """
    from safetensors import safe_open

    with safe_open(str(weights_file), framework="pt") as fh:
        in_file = set(fh.keys())
    in_model = {stored_key(k, name) for k, _ in model.named_parameters() if _param_adapter(k) == name}
    missing, unexpected = sorted(in_model - in_file), sorted(in_file - in_model)
    if missing or unexpected:
        raise AdapterError(
            f"adapter {name!r} from {weights_file.parent} does not fit this base: "
            f"{len(missing)} weight(s) missing from the file {missing[:2]}, "
            f"{len(unexpected)} unexpected in it {unexpected[:2]}"
        )


_UNKNOWN = object()


def set_trainable(model, name: str | None) -> None:
    """Make exactly adapter ``name`` trainable (None: nothing); base weights stay frozen from loading."""
    for owner, params in _adapter_params(model).items():
        for param in params:
            param.requires_grad_(owner == name)
    model._modft_trainable = name


def _param_adapter(param_name: str) -> str | None:
    # LoRA parameters are named ...lora_A.<adapter>.weight / lora_B.<adapter>.weight (and lora_embedding_*);
    # the rows a vocabulary extension trains, ...token_adapter.trainable_tokens_delta.<adapter>.
    parts = param_name.split(".")
    if len(parts) >= 2 and parts[-2] == "trainable_tokens_delta":
        return parts[-1]
    for i, part in enumerate(parts[:-1]):
        if part.startswith("lora_"):
            return parts[i + 1]
    return None


def stored_key(param_name: str, name: str) -> str:
    """The key PEFT writes for parameter ``param_name`` of adapter ``name`` (the adapter name removed)."""
    suffix = "." + name
    if param_name.endswith(suffix):
        return param_name[: -len(suffix)]
    return param_name.replace(suffix + ".", ".")


def trainable_by_adapter(model) -> dict[str, int]:
    """Trainable parameter counts keyed by adapter name ('<base>' for anything not in an adapter)."""
    counts: dict[str, int] = {}
    for pname, param in model.named_parameters():
        if param.requires_grad:
            key = _param_adapter(pname) or "<base>"
            counts[key] = counts.get(key, 0) + param.numel()
    return counts


def check_only_trainable(model, name: str) -> int:
    """Refuse to train unless adapter ``name`` and nothing else has trainable parameters."""
    counts = trainable_by_adapter(model)
    others = {k: v for k, v in counts.items() if k != name}
    if others:
        raise AdapterError(
            f"refusing to train {name!r}: other parameters are trainable too {others}; "
            "call adapters.activate(model, [...], trainable=name) first"
        )
    if not counts.get(name):
        raise AdapterError(f"refusing to train {name!r}: it has no trainable parameters")
    return counts[name]


def activate(model, names: Sequence[str], trainable: str | None = None) -> None:
    """Make exactly ``names`` active (empty: the bare base), with only ``trainable`` trainable.

    It rewrites the one active-adapter list all LoRA layers share and copies no weights, so its
    cost depends neither on the size of the base nor on its depth.
    """
    names = list(names)
    unknown = [n for n in names if n not in loaded_adapters(model)]
    if unknown:
        raise AdapterError(f"adapter(s) {unknown} are not loaded; loaded: {loaded_adapters(model)}")
    if trainable is not None and trainable not in names:
        raise AdapterError(f"adapter {trainable!r} must be active to train")
    index = _index(model)
    full, shared = index.full, index.shared
    if full and full[0]._active_adapter is not shared:
        raise AdapterError(
            "the LoRA layers' active adapters were changed outside modft_utils.adapters (PEFT's set_adapter?); "
            "switch stacks with adapters.activate only"
        )
    shared[:] = names
    for layer, held in index.partial:  # at most two (input embedding, LM head), whatever the depth
        mine = [n for n in names if n in held]
        layer._disable_adapters = not mine
        if mine:
            layer._active_adapter = mine
    if names:
        model.base_model.active_adapter = list(names)
    if getattr(model, "_modft_trainable", _UNKNOWN) != trainable:
        set_trainable(model, trainable)


def active_adapters(model) -> list[str]:
    index = _index(model) if loaded_adapters(model) else None
    layers = (index.full or index.layers) if index else []  # a LoRA layer holds every adapter; token layers only one
    if not layers or layers[0]._disable_adapters:
        return []
    return list(layers[0].active_adapters)


def adapter_state(model, name: str) -> dict[str, torch.Tensor]:
    """A detached copy of adapter ``name``'s weights, keyed by parameter name."""
    state = {k: p.detach().clone() for k, p in model.named_parameters() if _param_adapter(k) == name}
    if not state:
        raise AdapterError(f"adapter {name!r} has no weights in this model")
    return state


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names and exact bytes: equal fingerprints mean bit-identical weights."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_adapter(model, name: str, out_dir: str | Path) -> Path:
    """Save adapter ``name`` as ``adapter_config.json`` + ``adapter_model.safetensors`` in ``out_dir``.

    PEFT writes a non-default adapter into a subfolder named after it; this puts the files where
    asked, replacing an older copy only once the new one is complete. Beside them goes
    ``base_identity.json``, the base this adapter was trained on as the registry identifies it:
    ``base_model_name_or_path`` names the plain base folder, not the vocabulary-extended base the
    run really used, so ``modft registry publish`` reads this record instead.
    """
    import json
    from dataclasses import asdict

    from .registry import BASE_RECORD, base_identity

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        # save_embedding_layers=False: after a vocabulary extension PEFT would also write both whole
        # embedding matrices (2.5 GB for MiniMax-M2); the trained rows are in the adapter already.
        model.save_pretrained(tmp, selected_adapters=[name], safe_serialization=True, save_embedding_layers=False)
        written = next(p.parent for p in Path(tmp).rglob("adapter_config.json"))
        (written / BASE_RECORD).write_text(json.dumps(asdict(base_identity(model)), indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.move(str(written), out_dir)
    return out_dir


def switcher(model):
    """``switch(names) -> model`` over the adapters loaded in ``model``, for ``evaluate.compare_answers``."""

    def switch(names: Sequence[str]):
        activate(model, names)
        return model

    return switch


def time_switch(model, stacks: Sequence[Sequence[str]], repeats: int) -> float:
    """Mean milliseconds of one :func:`activate` call, cycling through ``stacks``."""
    start = time.perf_counter()
    for i in range(repeats):
        activate(model, stacks[i % len(stacks)])
    return (time.perf_counter() - start) * 1000 / repeats


# --------------------------------------------------------------------------- combining adapters


def _adapted_modules(model, names: Sequence[str]) -> dict[str, set[str]]:
    """For each adapter in ``names``: the names of the modules it adapts."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found: dict[str, set[str]] = {n: set() for n in names}
    for mod_name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        held = set(getattr(module, "lora_A", {})) | set(getattr(module, "lora_embedding_A", {}))
        for n in names:
            if n in held:
                found[n].add(mod_name)
    return found


def check_combinable(model, names: Sequence[str]) -> None:
    """Refuse adapters whose PEFT ``cat`` combination would not equal them stacked.

    ``cat`` concatenates the LoRA matrices (each adapter's scaling folded into its A) into one
    adapter of rank sum(r) and scaling 1, which is the stacked output up to float summation order.
    It stops being that with DoRA or rsLoRA (the new adapter's scaling would be sqrt(rank)), and
    PEFT refuses LoRA on fused parameters (``target_parameters``). Adapters that adapt different
    modules are refused too, so a combined adapter never silently covers a different set of layers.
    """
    names = list(names)
    unknown = [n for n in names if n not in loaded_adapters(model)]
    if unknown:
        raise AdapterError(f"adapter(s) {unknown} are not loaded; loaded: {loaded_adapters(model)}")
    if len(set(names)) != len(names):
        raise AdapterError(f"adapter list {names} names an adapter twice")
    for n in names:
        cfg = model.peft_config[n]
        problems = [
            what
            for what, bad in (
                ("target_parameters (LoRA on fused experts)", getattr(cfg, "target_parameters", None)),
                ("DoRA (use_dora)", getattr(cfg, "use_dora", False)),
                ("rsLoRA (use_rslora)", getattr(cfg, "use_rslora", False)),
                ("modules_to_save", getattr(cfg, "modules_to_save", None)),
                ("lora_bias", getattr(cfg, "lora_bias", False)),
            )
            if bad
        ]
        if problems:
            raise AdapterError(
                f"adapter {n!r} cannot be combined exactly with PEFT's 'cat': it uses {', '.join(problems)}"
            )
    with_tokens = [n for n in names if getattr(model.peft_config[n], "trainable_token_indices", None)]
    if len(with_tokens) > 1:
        raise AdapterError(
            f"adapters {with_tokens} all train embedding rows (trainable_token_indices); at most one of a stack may"
        )
    modules = _adapted_modules(model, names)
    if len({frozenset(m) for m in modules.values()}) > 1:
        detail = "; ".join(
            f"{n!r} targets {sorted(map(str, _as_list(model.peft_config[n].target_modules)))} "
            f"({len(modules[n])} modules)"
            for n in names
        )
        first = names[0]
        diffs = [
            f"{n!r} lacks {sorted(modules[first] - modules[n])[:2]} and adds {sorted(modules[n] - modules[first])[:2]}"
            for n in names[1:]
            if modules[n] != modules[first]
        ]
        raise AdapterError(
            f"adapters {names} adapt different modules, so they are not combined into one adapter: {detail}. "
            f"Relative to {first!r}: {'; '.join(diffs)}. Export them separately, or merge them into the base "
            "(export.export_merged)"
        )


def _as_list(targets) -> list:
    if targets is None:
        return []
    if isinstance(targets, str):
        return [targets]
    return list(targets)


@contextmanager
def combined(model, names: Sequence[str], combined_name: str):
    """Temporarily add one adapter ``combined_name`` equal to ``names`` stacked (PEFT ``cat``).

    On exit it is deleted and the active and trainable adapters are put back as they were
    (adding and deleting adapters moves PEFT's active adapter and may make adapters trainable).
    """
    names = list(names)
    if not names:
        raise AdapterError("nothing to combine: no adapter names given")
    if combined_name in loaded_adapters(model):
        raise AdapterError(f"adapter {combined_name!r} is already loaded; pick another combined_name")
    check_combinable(model, names)
    was_active = active_adapters(model)
    trainable = [n for n in trainable_by_adapter(model) if n != "<base>"]
    was_trainable = trainable[0] if len(trainable) == 1 and trainable[0] in was_active else None
    try:
        # weights of 1.0: the combination is the plain sum of the adapters, as when they are stacked.
        # PEFT builds the new adapter's config from the first name's, so the adapter that trains
        # embedding rows (if any) goes first and its rows are copied over: cat knows only LoRA.
        owner = next((n for n in names if getattr(model.peft_config[n], "trainable_token_indices", None)), None)
        ordered = [owner, *(n for n in names if n != owner)] if owner else names
        model.add_weighted_adapter(ordered, [1.0] * len(names), combined_name, combination_type="cat")
        if owner:
            _copy_token_rows(model, owner, combined_name)
        activate(model, [], None)
        yield combined_name
    finally:
        if combined_name in loaded_adapters(model):
            # With it the only active adapter, PEFT moves to a single other one on delete; from a
            # multi-adapter active list it would set several on the trainable-token wrapper and fail.
            activate(model, [combined_name], None)
            model.delete_adapter(combined_name)
        activate(model, was_active, trainable=was_trainable)


def _copy_token_rows(model, source: str, target: str) -> None:
    with torch.no_grad():
        for layer, held in _index(model).partial:  # rebuilt: the combined adapter is new
            if hasattr(layer, "token_indices") and source in held:
                if target not in layer.trainable_tokens_delta:
                    raise AdapterError(f"combined adapter {target!r} got no trainable rows for {source!r}'s tokens")
                layer.trainable_tokens_delta[target].copy_(layer.trainable_tokens_delta[source])


# --------------------------------------------------------------------------- a stack over a registry


class ParentMismatchError(AdapterError):
    """A task adapter activated on top of a domain version other than the one it was trained on."""


class AdapterStack:
    """Adapters from a :class:`~modft_utils.registry.Registry`, stacked on one loaded base.

    ``load("domain@production")`` resolves a reference in the store and loads that version (hashes,
    base identity and keys checked by ``registry.load_adapter_into``) under an adapter name of its
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
        from .registry import AdapterRef, AdapterVersion

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
                (self.versions[n].ref for n in active_adapters(self.model)
                 if n in self.versions and self.versions[n].name == parent.name),
                None,
            )
        return self._load(v, as_name, active_parent, force_parent)

    def _load(self, v, as_name, active_parent, force_parent: bool) -> str:
        from .registry import load_adapter_into

        name = as_name or f"{v.name}_v{v.version}"
        if name in loaded_adapters(self.model):
            raise AdapterError(f"cannot load {v.ref} as {name!r}: an adapter of that name is already loaded")
        was_active = active_adapters(self.model)
        self.model = load_adapter_into(
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
                problems.append(f"{v.ref} was trained on {parent}, but the active {parent.name} is {active}")
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
        key = next(
            (k for k, (_, n) in self._disabled.items() if name in (k, n, self._ref_of(n))), None
        )
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

"""Which LoRA adapters are active and which train: the only module that changes either.

PEFT's ``base_model.set_adapter([...])`` activates several adapters at once but also makes every
listed adapter trainable again (PEFT 0.21.2, checked by this package's tests), so every switch here goes through
:func:`activate`, which freezes everything except the one adapter named as trainable, and training
is refused while any other adapter has a trainable parameter. Loading saved adapters, from a folder
or from the store, is :mod:`modft_utils.adapters.stack`'s.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch

from modft_utils.errors import ModftError
from modft_utils.modeling import check_lora_targets
from modft_utils.store import BASE_RECORD, base_identity


class AdapterError(ModftError, RuntimeError):
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
            if isinstance(m, AuxiliaryTrainingWrapper)
            or (isinstance(m, BaseTunerLayer) and hasattr(m, "token_indices"))
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


def add_adapter(model, name: str, lora_config, *, seed: int = 0, b_std: float = 0.0):
    """Attach a new, trainable adapter ``name``; turn a plain base into a PeftModel on first use.

    LoRA's A matrices start random: they are drawn from ``seed`` (without disturbing the global
    generator) so the same profile trains the same adapter. B starts at zero (the adapter changes
    nothing until trained) unless ``b_std`` > 0: then B is drawn from N(0, b_std^2) with ``seed``
    too, an adapter that changes the logits like a trained one without training steps (what the
    server's tests and benchmarks serve).
    """
    from peft import PeftModel, get_peft_model

    check_lora_targets(model, lora_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(model, PeftModel):
            if name in model.peft_config:
                raise AdapterError(f"adapter {name!r} is already loaded; pick another name or delete it first")
            model.add_adapter(name, lora_config)
        else:
            model = get_peft_model(model, lora_config, adapter_name=name)
    if b_std > 0:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for key, p in model.named_parameters():
                if f"lora_B.{name}." in key:
                    p.copy_(torch.randn(p.shape, generator=g) * b_std)
    return model


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
    _set_active(model, names)
    if getattr(model, "_modft_trainable", _UNKNOWN) != trainable:
        set_trainable(model, trainable)


def _set_active(model, names: list[str]) -> None:
    index = _index(model)
    full, shared = index.full, index.shared
    if full and full[0]._active_adapter is not shared:
        raise AdapterError(
            "the LoRA layers' active adapters were changed outside modft_utils.adapters.state (PEFT's set_adapter?); "
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


@contextmanager
def without(model, name: str):
    """The active stack less ``name`` for the length of the block, with trainability untouched: what the
    model computed before ``name`` was added, e.g. the teacher that distilled replay trains ``name``
    towards. Nothing may train inside the block (use it under ``torch.no_grad``)."""
    before = active_adapters(model)
    _set_active(model, [n for n in before if n != name])
    try:
        yield model
    finally:
        _set_active(model, before)


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


def check_combinable(model, names: Sequence[str]) -> None:
    """Refuse adapters whose PEFT ``cat`` combination would not equal them stacked.

    ``cat`` concatenates the LoRA matrices (each adapter's scaling folded into its A) into one
    adapter of rank sum(r) and scaling 1, which is the stacked output up to float summation order.
    It stops being that with DoRA or rsLoRA (the new adapter's scaling would be sqrt(rank)), and
    PEFT refuses LoRA on fused parameters (``target_parameters``). Adapters that adapt different
    modules (a domain adapter on every linear layer, a task adapter on attention) combine over the
    union: where one lacks a module its rows are zero there, which is what the stack computes.
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
        _cat_in_float32(model, ordered, combined_name)
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


def _cat_in_float32(model, names: Sequence[str], target: str) -> None:
    """Redo PEFT's ``cat`` (A scaled and stacked, B side by side) into float32 weights.

    PEFT 0.22 creates the combined adapter in the base layer's dtype. Over a bf16 base that rounds the
    float32 LoRA weights to 8 bits of mantissa (measured on the micro base: weights off by up to 1e-3,
    the export no longer the stack). The same sums in float32 give float32 runs the very weights
    PEFT's gave them.
    """
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, LoraLayer) or target not in module.lora_A:
                continue
            parts = [n for n in names if n in module.lora_A]
            a = torch.cat([module.lora_A[n].weight.float() * module.scaling[n] for n in parts], dim=0)
            b = torch.cat([module.lora_B[n].weight.float() for n in parts], dim=1)
            weight_a, weight_b = module.lora_A[target].weight, module.lora_B[target].weight
            full_a = torch.zeros(weight_a.shape, dtype=torch.float32, device=weight_a.device)
            full_b = torch.zeros(weight_b.shape, dtype=torch.float32, device=weight_b.device)
            full_a[: a.shape[0], :] = a
            full_b[:, : b.shape[1]] = b
            weight_a.data, weight_b.data = full_a, full_b


def _copy_token_rows(model, source: str, target: str) -> None:
    with torch.no_grad():
        for layer, held in _index(model).partial:  # rebuilt: the combined adapter is new
            if hasattr(layer, "token_indices") and source in held:
                if target not in layer.trainable_tokens_delta:
                    raise AdapterError(f"combined adapter {target!r} got no trainable rows for {source!r}'s tokens")
                layer.trainable_tokens_delta[target].copy_(layer.trainable_tokens_delta[source])

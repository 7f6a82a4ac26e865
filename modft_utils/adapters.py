"""Which LoRA adapters are active and which train: the only module that changes either.

PEFT's ``base_model.set_adapter([...])`` activates several adapters at once but also makes every
listed adapter trainable again (shared/FACTS.md), so every switch here goes through
:func:`activate`, which freezes everything except the one adapter named as trainable, and training
is refused while any other adapter has a trainable parameter.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch


class AdapterError(RuntimeError):
    """An adapter operation that would silently do the wrong thing; the message names the adapter."""


def _lora_layers(model) -> list:
    """The model's LoRA layers, found once per set of loaded adapters and kept on the model.

    Walking every module on each switch would make switching cost grow with the base; the
    index makes it a loop over the adapted layers only.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    key = tuple(loaded_adapters(model))
    cached = getattr(model, "_modft_lora_index", None)
    if cached is None or cached[0] != key:
        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        params: dict[str, list] = {}
        for pname, param in model.named_parameters():
            owner = _param_adapter(pname)
            if owner is not None:
                params.setdefault(owner, []).append(param)
        cached = (key, layers, params)
        model._modft_lora_index = cached
    return cached[1]


def _adapter_params(model) -> dict[str, list]:
    _lora_layers(model)
    return model._modft_lora_index[2]


def loaded_adapters(model) -> list[str]:
    """Names of the adapters loaded into ``model`` (empty for a plain base)."""
    return list(getattr(model, "peft_config", {}).keys())


def add_adapter(model, name: str, lora_config, *, seed: int = 0):
    """Attach a new, trainable adapter ``name``; turn a plain base into a PeftModel on first use.

    LoRA's A matrices start random: they are drawn from ``seed`` (without disturbing the global
    generator) so the same profile trains the same adapter.
    """
    from peft import PeftModel, get_peft_model

    from .quant import check_lora_targets

    check_lora_targets(model, lora_config)
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
    in_model = {k.replace(f".{name}.", ".") for k, _ in model.named_parameters() if _param_adapter(k) == name}
    missing, unexpected = sorted(in_model - in_file), sorted(in_file - in_model)
    if missing or unexpected:
        raise AdapterError(
            f"adapter {name!r} from {weights_file.parent} does not fit this base: "
            f"{len(missing)} weight(s) missing from the file {missing[:2]}, "
            f"{len(unexpected)} unexpected in it {unexpected[:2]}"
        )


def set_trainable(model, name: str | None) -> None:
    """Make exactly adapter ``name`` trainable (None: nothing); base weights stay frozen from loading."""
    for owner, params in _adapter_params(model).items():
        for param in params:
            param.requires_grad_(owner == name)


def _param_adapter(param_name: str) -> str | None:
    # LoRA parameters are named ...lora_A.<adapter>.weight / lora_B.<adapter>.weight (and lora_embedding_*).
    parts = param_name.split(".")
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

    It flips flags on the LoRA layers and copies no weights, so its cost does not depend on the
    size of the base.
    """
    names = list(names)
    unknown = [n for n in names if n not in loaded_adapters(model)]
    if unknown:
        raise AdapterError(f"adapter(s) {unknown} are not loaded; loaded: {loaded_adapters(model)}")
    if trainable is not None and trainable not in names:
        raise AdapterError(f"adapter {trainable!r} must be active to train")
    layers = _lora_layers(model)
    for layer in layers:
        layer._disable_adapters = not names
        if names:
            layer._active_adapter = names
    if names:
        model.base_model.active_adapter = names
    set_trainable(model, trainable)


def active_adapters(model) -> list[str]:
    layers = _lora_layers(model)
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
    asked, replacing an older copy only once the new one is complete.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        model.save_pretrained(tmp, selected_adapters=[name], safe_serialization=True)
        written = next(p.parent for p in Path(tmp).rglob("adapter_config.json"))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.move(str(written), out_dir)
    return out_dir


def time_switch(model, stacks: Sequence[Sequence[str]], repeats: int) -> float:
    """Mean milliseconds of one :func:`activate` call, cycling through ``stacks``."""
    start = time.perf_counter()
    for i in range(repeats):
        activate(model, stacks[i % len(stacks)])
    return (time.perf_counter() - start) * 1000 / repeats

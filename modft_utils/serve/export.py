"""Exporting an adapter stack for serving, and checking that the export computes what the stack did.

Two exports, each with the number that says how exact it is:

- :func:`export_combined`: the active adapters as ONE PEFT adapter (PEFT's ``cat`` combination: the
  LoRA matrices concatenated, rank = sum of ranks), for servers that load a single adapter over
  the quantized base. Exact up to float summation order; ``linear`` would not be
  (it combines A and B separately, so the cross terms differ: PEFT's ``add_weighted_adapter`` docs).
- :func:`export_merged`: a full model with the adapters merged into the weights, for servers that
  take a plain checkpoint. Merging needs an unquantized base (merging into 4-bit weights would
  round the adapters away), so the merged model differs from a stack run over a 4-bit base by the
  quantization error of that base: :func:`parity_report` states that difference instead of
  claiming exactness.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from modft_utils import adapters, evaluate, modeling
from modft_utils.adapters import load_adapter
from modft_utils.errors import ModftError
from modft_utils.modeling import NF4Experts, has_4bit_experts, sha256_file

TOLERANCE = 1e-5
EXPORT_RECORD = "modft_export.json"


class ExportError(ModftError, RuntimeError):
    """An export that would not compute what the stack computes; the message says why."""


def export_combined(model, names: Sequence[str], out_dir: str | Path, *, combined_name: str = "stack") -> Path:
    """Save adapters ``names`` of ``model`` as one PEFT adapter whose output equals them stacked.

    The combined adapter exists in the live model only while it is saved: afterwards the loaded
    adapters and which are active and trainable are as before. One name is saved as it is.
    """
    names = list(names)
    if len(names) == 1:
        return adapters.save_adapter(model, names[0], out_dir)
    with adapters.combined(model, names, combined_name) as name:
        return adapters.save_adapter(model, name, out_dir)


def _quantized_parts(model) -> list[str]:

    parts = []
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        parts.append("bitsandbytes-quantized linear layers")
    else:
        try:
            from bitsandbytes.nn import Linear4bit, Linear8bitLt

            if any(isinstance(m, (Linear4bit, Linear8bitLt)) for m in model.modules()):
                parts.append("bitsandbytes-quantized linear layers")
        except ImportError:
            pass
    if has_4bit_experts(model):
        parts.append("NF4 experts")
    return parts


def export_merged(
    base_loader: Callable[[], Any],
    adapter_dirs: Mapping[str, str | Path],
    out_dir: str | Path,
    *,
    dtype: torch.dtype | None = torch.bfloat16,
    tokenizer=None,
) -> Path:
    """Merge adapters into an unquantized base and save the result as a safetensors model folder.

    ``base_loader()`` returns the base in full precision, e.g. :func:`full_precision_loader`;
    ``adapter_dirs`` maps adapter names to PEFT adapter folders (``AdapterStack.adapter_dirs()``
    gives the active stack's), merged in that order. The merged weights are cast to ``dtype``
    (None keeps the loaded dtype). ``out_dir`` also gets ``modft_export.json`` naming the merged
    adapters and the sha256 of their weights, and the tokenizer when one is given.
    """
    if not adapter_dirs:
        raise ExportError("nothing to merge: adapter_dirs is empty")
    model = base_loader()
    quantized = _quantized_parts(model)
    if quantized:
        raise ExportError(
            f"base_loader returned a quantized base ({', '.join(quantized)}): merging into quantized "
            "weights rounds the adapters away. Load the base unquantized for the merge, e.g. "
            "export.full_precision_loader(profile, base_ref)"
        )
    names = list(adapter_dirs)
    for name in names:
        model = load_adapter(model, adapter_dirs[name], name)
    adapters.activate(model, names)
    merged = model.merge_and_unload(safe_merge=True, adapter_names=names)
    if dtype is not None:
        merged = merged.to(dtype)
    record = {
        "kind": "merged",
        "adapters": [
            {
                "name": name,
                "source": str(adapter_dirs[name]),
                "weights_sha256": sha256_file(Path(adapter_dirs[name]) / "adapter_model.safetensors"),
            }
            for name in names
        ],
        "dtype": str(next(merged.parameters()).dtype).replace("torch.", ""),
    }
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        staged = Path(tmp) / "model"
        merged.save_pretrained(staged, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staged)
        pickles = sorted(p.name for p in staged.glob("*.bin"))
        if pickles or not any(staged.glob("*.safetensors")):
            raise ExportError(f"save_pretrained wrote {pickles or 'no safetensors'}; expected safetensors only")
        (staged / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.move(str(staged), out_dir)
    return out_dir


def full_precision_loader(profile, base) -> Callable[[], Any]:
    """A ``base_loader`` for :func:`export_merged`: this profile's base, not quantized, in its compute dtype."""

    return lambda: modeling.load_base(profile, base, load_in_4bit=False)


def dequantized_loader(profile, base) -> Callable[[], Any]:
    """A ``base_loader`` for :func:`export_merged`: the 4-bit base's weights dequantized into a float model.

    QLoRA adapters are trained against the NF4-dequantized weights, not the original full-precision
    ones; merged into the original weights they drift from the live 4-bit stack by the whole
    quantization error (measured on SmolLM2-135M: the same top-1 token at 71% of positions). Merged
    into the dequantized weights, the export computes what the live stack computes, up to float
    summation order in fp32 and the rounding of the merged weights in bf16.
    """

    def load():
        import bitsandbytes.functional as bnbf
        from bitsandbytes.nn import Linear4bit

        quantized = modeling.load_base(profile, base)
        dense = modeling.load_base(profile, base, load_in_4bit=False)
        targets = dict(dense.named_modules())
        with torch.no_grad():
            for name, module in quantized.named_modules():
                if isinstance(module, Linear4bit):
                    weight = bnbf.dequantize_4bit(module.weight.data, module.weight.quant_state)
                    targets[name].weight.copy_(weight.to(targets[name].weight.dtype))
                elif isinstance(module, NF4Experts):
                    gate_up, down = module.dequantized_weights(targets[name].gate_up_proj.dtype)
                    targets[name].gate_up_proj.copy_(gate_up)
                    targets[name].down_proj.copy_(down)
        del quantized
        return dense

    return load


def parity_reference(live_model, profile, base, versions: Sequence, identity) -> tuple[Any, Any]:
    """The stack ``live_model`` runs, computed in ``compose.parity_dtype``, and the profile to load exports with.

    Exports are compared with the stack in float32 by default. In bfloat16 every layer rounds its
    output to 8 bits of mantissa, so two computations that are equal in exact arithmetic but sum in
    another order (the stack's adapters one by one, the combined export's in one matmul) drift apart
    through the layers: measured on SmolLM2-135M, max logit difference 2.5 and the same top-1 token at
    96% of positions, against 8e-5 and 100% in float32. That noise would hide a wrong export.

    Returns ``(live_model, profile)`` when the profile computes in float32 already or says ``live``;
    otherwise the base loaded again in float32 with ``versions`` (store versions or adapter folders,
    in stack order) loaded and active, and the profile in float32.
    """
    exact = profile if profile.compose.parity_dtype == "live" else profile.computing_in("float32")
    if exact is profile:
        return live_model, profile
    model = modeling.load_base(exact, base)
    names, parent = [], None
    for version in versions:  # each store version on the one below it, as the live stack loaded them
        name = getattr(version, "name", None) or Path(version).name
        model = load_adapter(model, version, name, base=identity, active_parent=parent)
        names.append(name)
        parent = getattr(version, "ref", None)
    adapters.activate(model, names)
    return model, exact


@torch.no_grad()
def parity_report(reference_model, exported_model, input_ids: torch.Tensor) -> dict[str, Any]:
    """How far ``exported_model``'s logits are from ``reference_model``'s on ``input_ids``.

    ``max_abs_diff`` is the largest absolute logit difference, ``max_rel_diff`` that divided by the
    largest absolute reference logit, ``top1_agreement`` the share of positions with the same
    argmax; ``exact`` and ``within_1e-5`` are the verdicts and ``verdict`` says it in words.
    """

    ref = evaluate.logits(reference_model, input_ids)
    out = evaluate.logits(exported_model, input_ids)
    if ref.shape != out.shape:
        raise ExportError(f"logit shapes differ: reference {tuple(ref.shape)}, exported {tuple(out.shape)}")
    diff = float((ref - out).abs().max())
    scale = float(ref.abs().max())
    rel = diff / scale if scale else (0.0 if diff == 0 else float("inf"))
    top1 = float((ref.argmax(-1) == out.argmax(-1)).float().mean())
    if diff == 0.0:
        verdict = "exact: max |logit difference| 0"
    elif diff <= TOLERANCE:
        verdict = f"equal within {TOLERANCE:g}: max |logit difference| {diff:.3g} (float summation order)"
    else:
        verdict = (
            f"NOT equal: max |logit difference| {diff:.4g} (relative {rel:.3g}), "
            f"same top-1 token at {top1:.1%} of positions"
        )
    return {
        "max_abs_diff": diff,
        "max_rel_diff": rel,
        "top1_agreement": top1,
        "exact": diff == 0.0,
        "within_1e-5": diff <= TOLERANCE,
        "verdict": verdict,
    }


__all__ = [
    "ExportError",
    "dequantized_loader",
    "export_combined",
    "export_merged",
    "full_precision_loader",
    "parity_reference",
    "parity_report",
]

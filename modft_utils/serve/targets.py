"""Exports for the engines people serve with, each linted against what its engine accepts first.

``modft export --target``:

- ``vllm``: the NF4-dequantized base as a safetensors folder (with the rows a vocabulary-extended
  domain adapter trained written into its embeddings), the stack as ONE pure-LoRA adapter (PEFT's
  exact ``cat``: vLLM applies one adapter per request), the launch line and a manifest naming the
  store versions. The base matters as much as the adapter: QLoRA trained the adapters against the
  dequantized weights, and served on the original ones they drift (see :func:`export.dequantized_loader`).
- ``peft``: one adapter (or the ``cat`` of the stack) for PEFT/transformers users.
- ``merged``: the stack merged into the dequantized base, for engines that take a plain checkpoint.

What vLLM refuses, from its LoRA docs (https://docs.vllm.ai/en/latest/features/lora.html) and its
PEFT reader (``vllm/lora/peft_helper.py``): DoRA, ``modules_to_save``, bias, ``rank_pattern`` /
``alpha_pattern`` (it reads one rank and one alpha per adapter), ranks above 512 (``--max-lora-rank``
takes only :data:`VLLM_LORA_RANKS`), LoRA on the embeddings or the LM head, trainable-token rows
(moved into the base here instead), and LoRA on fused expert parameters (PEFT ``target_parameters``:
documented, but its loader transposes them wrongly upstream; per-expert 2D keys are the form known to
load, and this export does not write them yet). :func:`lint` names each with the adapter, the module
and what to do, before anything is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from modft_utils.modeling import sha256_file
from modft_utils.serve.export import EXPORT_RECORD, ExportError, export_combined, export_merged

TARGETS = ("vllm", "peft", "merged")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's --max-lora-rank choices
VLLM_MAX_LORAS = 4
# What `modft serve --engine vllm` needs of the vLLM process: the load/unload routes (off by default).
VLLM_LAUNCH_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKEN_ROWS = "trainable_tokens_delta"  # PEFT's key for the replacement rows of trainable tokens
_EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "embed_out")


@dataclass(frozen=True)
class Finding:
    """One thing a target refuses: which adapter, which module or key, what, and what to do."""

    adapter: str
    module: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"adapter {self.adapter!r}, {self.module}: {self.problem}; {self.fix}"


class LintError(ExportError):
    """An export its engine would refuse; ``findings`` lists why, and nothing was written."""

    def __init__(self, target: str, findings: Sequence[Finding]):
        self.findings = list(findings)
        lines = "\n  ".join(str(f) for f in self.findings)
        super().__init__(
            f"--target {target}: {len(self.findings)} thing(s) the engine refuses, nothing written:\n  {lines}"
        )


def _read_config(name: str, folder: Path) -> dict[str, Any]:
    path = Path(folder) / ADAPTER_CONFIG
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ExportError(f"adapter {name!r}: cannot read {path}: {err}") from None


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM takes that holds ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ExportError(f"rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]})")


def lint(target: str, adapter_dirs: Mapping[str, str | Path]) -> list[Finding]:
    """What ``target``'s engine would refuse in these adapters (PEFT folders keyed by adapter name).

    ``peft`` and ``merged`` refuse nothing PEFT itself loads; ``vllm`` is checked against the list in
    this module's docstring. An empty list means the export can go ahead.
    """
    if target not in TARGETS:
        raise ExportError(f"--target {target!r}: choose one of {', '.join(TARGETS)}")
    if target != "vllm":
        return []
    findings: list[Finding] = []
    total_rank = 0
    for name, folder in adapter_dirs.items():
        cfg = _read_config(name, Path(folder))
        if cfg.get("peft_type", "LORA") != "LORA":
            findings.append(
                Finding(name, ADAPTER_CONFIG, f"peft_type {cfg.get('peft_type')!r}", "vLLM serves LoRA only")
            )
            continue
        total_rank += int(cfg.get("r", 0))
        if cfg.get("use_dora"):
            findings.append(
                Finding(
                    name,
                    "use_dora",
                    "DoRA adapter",
                    "vLLM serves plain LoRA: train with use_dora off, or --target merged",
                )
            )
        if cfg.get("modules_to_save"):
            findings.append(
                Finding(
                    name,
                    f"modules_to_save {cfg['modules_to_save']}",
                    "full copies of modules beside the LoRA matrices",
                    "vLLM loads LoRA matrices only: train without modules_to_save, or --target merged",
                )
            )
        if cfg.get("bias", "none") != "none":
            findings.append(
                Finding(name, f"bias {cfg['bias']!r}", "trained biases", "train with bias='none', or --target merged")
            )
        for key in ("rank_pattern", "alpha_pattern"):
            if cfg.get(key):
                findings.append(
                    Finding(
                        name,
                        f"{key} {sorted(cfg[key])}",
                        "per-module ranks or alphas",
                        "vLLM reads one r and one lora_alpha per adapter: train without it, or --target merged",
                    )
                )
        if cfg.get("target_parameters"):
            findings.append(
                Finding(
                    name,
                    f"target_parameters {cfg['target_parameters']}",
                    "LoRA on fused expert parameters: vLLM's loader of this form transposes them (open upstream)",
                    "train LoRA on the attention projections only, or --target merged",
                )
            )
        targets = cfg.get("target_modules") or []
        targets = [targets] if isinstance(targets, str) else list(targets)
        for module in targets:
            if any(module == e or module.endswith("." + e) for e in _EMBEDDING_MODULES):
                findings.append(
                    Finding(
                        name,
                        f"target_modules {module!r}",
                        "LoRA on the embeddings or the LM head",
                        "vLLM does not load it: leave those modules out, or --target merged",
                    )
                )
    if total_rank > VLLM_LORA_RANKS[-1]:
        findings.append(
            Finding(
                "+".join(adapter_dirs),
                f"rank {total_rank}",
                f"the combined rank is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]})",
                "lower the adapters' ranks, or --target merged",
            )
        )
    return findings


def _module_of(key: str) -> str:
    """``base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta`` -> ``model.embed_tokens``."""
    parts = key.split(".")
    at = parts.index(TOKEN_ROWS)
    parts = parts[: at - 1]  # drop ".token_adapter.trainable_tokens_delta"
    if parts[:2] == ["base_model", "model"]:
        parts = parts[2:]
    return ".".join(parts)


def split_token_rows(adapter_dir: Path) -> dict[str, tuple[list[int], torch.Tensor]]:
    """Take the trainable-token rows out of a saved adapter: ``{module path: (token ids, rows)}``.

    The folder keeps a pure-LoRA adapter (no ``trainable_token_indices``, no row keys). PEFT stores
    the rows' new values, written over the base rows in forward (``index_copy``), so writing them into
    the base's embedding computes the same.
    """
    cfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    indices = cfg.pop("trainable_token_indices", None)
    weights = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    row_keys = [k for k in weights if TOKEN_ROWS in k.split(".")]
    if not row_keys:
        return {}
    if indices is None:
        raise ExportError(f"{adapter_dir}: token rows {row_keys} without trainable_token_indices in {ADAPTER_CONFIG}")
    rows: dict[str, tuple[list[int], torch.Tensor]] = {}
    for key in row_keys:
        module = _module_of(key)
        ids = indices if isinstance(indices, list) else indices.get(module.rsplit(".", 1)[-1])
        if ids is None:
            raise ExportError(f"{adapter_dir}: no trainable_token_indices for {module!r} (key {key})")
        value = weights.pop(key)
        if value.shape[0] != len(ids):
            raise ExportError(f"{adapter_dir}: {key} has {value.shape[0]} rows for {len(ids)} token ids")
        rows[module] = (list(ids), value)
    save_file(weights, str(adapter_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (adapter_dir / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return rows


@torch.no_grad()
def write_token_rows(model, rows: Mapping[str, tuple[list[int], torch.Tensor]]) -> dict[str, int]:
    """Write trainable-token rows into ``model``'s embedding weights; returns rows written per module.

    With tied embeddings the LM head shares the input embedding's weight, as PEFT's tied rows do.
    """
    written = {}
    for module, (ids, value) in rows.items():
        weight = model.get_submodule(module).weight
        weight[torch.tensor(ids)] = value.to(weight.dtype)
        written[module] = len(ids)
    return written


def vllm_config_fields(config: dict[str, Any], weight_keys: Sequence[str]) -> dict[str, Any]:
    """Config fields vLLM reads under the names of the released checkpoint, where transformers 5 renamed them.

    MiniMax-M2: vLLM's model (``vllm/model_executor/models/minimax_m2.py``) reads ``rotary_dim``,
    ``scoring_func`` and ``use_routing_bias`` as the released ``config.json`` spells them; transformers
    folds ``rotary_dim`` into ``partial_rotary_factor`` and routes with a sigmoid and the
    ``e_score_correction_bias`` without naming either in the config.
    """
    if config.get("model_type") != "minimax_m2":
        return {}
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    factor = (config.get("rope_parameters") or {}).get(
        "partial_rotary_factor", config.get("partial_rotary_factor", 1.0)
    )
    fields = {"rotary_dim": int(round(head_dim * factor)), "scoring_func": "sigmoid"}
    fields["use_routing_bias"] = any(k.endswith("e_score_correction_bias") for k in weight_keys)
    return {k: v for k, v in fields.items() if k not in config}


def vllm_launch(
    base_dir: Path, adapter_dir: Path | None, *, served_name: str, rank: int, dtype: str, max_len: int
) -> list[str]:
    """The ``vllm serve`` argv for an export (``python -m vllm.entrypoints.openai.api_server`` takes the same flags)."""
    argv = ["vllm", "serve", str(base_dir), "--dtype", dtype, "--max-model-len", str(max_len)]
    argv += ["--served-model-name", "base"]
    if adapter_dir is not None:
        argv += ["--enable-lora", "--lora-modules", f"{served_name}={adapter_dir}"]
        argv += ["--max-lora-rank", str(vllm_max_lora_rank(rank))]
        # `modft serve --engine vllm` loads each version set as an adapter of its own; the default stacks
        # run up to three sets at once (base, base+domain, base+domain+task) and a switch briefly one more.
        argv += ["--max-loras", str(VLLM_MAX_LORAS)]
    return argv


@dataclass
class VllmAdapter:
    """A stack written as one pure-LoRA adapter for vLLM: its folder, rank, and the token rows taken out
    of it (``{module path: (token ids, rows)}``), which belong in the engine's base."""

    path: Path
    rank: int
    rows: dict[str, tuple[list[int], torch.Tensor]]


def export_vllm_adapter(model, names: Sequence[str], out_dir: str | Path, *, served_name: str) -> VllmAdapter:
    """Adapters ``names`` of ``model`` as ONE pure-LoRA adapter in ``out_dir`` (PEFT's exact ``cat``), with
    the trainable-token rows split out (vLLM refuses them; :func:`write_token_rows` puts them in a base)."""
    adapter = export_combined(model, names, out_dir, combined_name=f"{served_name}-export")
    rows = split_token_rows(adapter)
    return VllmAdapter(adapter, int(_read_config(served_name, adapter)["r"]), rows)


def _versions_record(versions: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"ref": f"{v.name}@{v.version}", "manifest_sha256": v.manifest_sha256, "uri": v.uri} for v in versions]


def _publish(staged: Path, out_dir: Path) -> Path:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.move(str(staged), out_dir)
    return out_dir


def export_stack(
    target: str,
    model,
    names: Sequence[str],
    out_dir: str | Path,
    *,
    adapter_dirs: Mapping[str, str | Path],
    dense_loader: Callable[[], Any],
    tokenizer,
    versions: Sequence[Any] = (),
    base_identity: Any = None,
    served_name: str = "stack",
    dtype: torch.dtype = torch.float32,
    max_len: int = 2048,
) -> Path:
    """Export adapters ``names`` of the live ``model`` (a PEFT model over the 4-bit base) for ``target``.

    Args:
        target: ``vllm``, ``peft`` or ``merged`` (see the module docstring).
        model: the live stack's model, with ``names`` loaded (``AdapterStack.model``).
        names: the adapters to export, in stack order; empty exports the base alone (``vllm``, ``merged``).
        out_dir: the folder to write; replaced whole, and only once everything is written.
        adapter_dirs: the adapters' PEFT folders (``AdapterStack.adapter_dirs()``), linted first.
        dense_loader: returns the base unquantized, e.g. ``export.dequantized_loader(profile, base)``.
        tokenizer: the base's tokenizer (vocabulary extension included), saved beside the base.
        versions: the store versions exported, named in the manifest.
        base_identity: the base identity the versions were trained on, named in the manifest.
        served_name: the adapter's name in the engine (``--lora-modules NAME=...``).
        dtype: the dtype of the base's weights written (vLLM's ``--dtype``).
        max_len: ``--max-model-len`` in the launch line.
    """
    names = list(names)
    findings = lint(target, adapter_dirs)
    if findings:
        raise LintError(target, findings)
    if target == "peft" and not names:
        raise ExportError("--target peft: nothing to export (the stack is the bare base); use --target merged or vllm")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "kind": target,
        "stack": served_name,
        "adapters": names,
        "versions": _versions_record(versions),
        "base_identity": asdict(base_identity) if base_identity is not None else None,
        "exported_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-") as tmp:
        staged = Path(tmp) / "export"
        staged.mkdir()
        if target == "merged":
            merged = export_merged(dense_loader, dict(adapter_dirs), staged / "model", dtype=dtype, tokenizer=tokenizer)
            record["model"] = "model"
            record["adapters_merged"] = json.loads((merged / EXPORT_RECORD).read_text())["adapters"]
        elif target == "peft":
            adapter = export_combined(model, names, staged / "adapter", combined_name=f"{served_name}-export")
            record["adapter"] = "adapter"
            record["rank"] = int(_read_config(served_name, adapter)["r"])
        else:
            rows: dict[str, tuple[list[int], torch.Tensor]] = {}
            rank = 0
            if names:
                adapter = export_vllm_adapter(model, names, staged / "adapter", served_name=served_name)
                rows, rank = adapter.rows, adapter.rank
                record["adapter"] = "adapter"
                record["adapter_weights_sha256"] = sha256_file(adapter.path / ADAPTER_WEIGHTS)
            dense = dense_loader()
            record["token_rows_moved_into_base"] = write_token_rows(dense, rows)
            dense = dense.to(dtype)
            dense.save_pretrained(staged / "base", safe_serialization=True)
            tokenizer.save_pretrained(staged / "base")
            config_path = staged / "base" / "config.json"
            config = json.loads(config_path.read_text(encoding="utf-8"))
            added = vllm_config_fields(config, list(dense.state_dict()))
            config_path.write_text(json.dumps({**config, **added}, indent=2) + "\n", encoding="utf-8")
            record["config_fields_added"] = added
            del dense
            record["base"] = "base"
            record["rank"] = rank
            dtype_name = str(dtype).replace("torch.", "")
            record["launch"] = vllm_launch(
                out_dir / "base",
                out_dir / "adapter" if names else None,
                served_name=served_name,
                rank=rank,
                dtype=dtype_name,
                max_len=max_len,
            )
            record["max_lora_rank"] = vllm_max_lora_rank(rank) if names else None
            record["launch_env"] = dict(VLLM_LAUNCH_ENV) if names else {}
        (staged / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return _publish(staged, out_dir)


__all__ = [
    "TARGETS",
    "VLLM_LAUNCH_ENV",
    "VLLM_LORA_RANKS",
    "VLLM_MAX_LORAS",
    "Finding",
    "LintError",
    "VllmAdapter",
    "export_stack",
    "export_vllm_adapter",
    "lint",
    "split_token_rows",
    "vllm_config_fields",
    "vllm_launch",
    "vllm_max_lora_rank",
    "write_token_rows",
]

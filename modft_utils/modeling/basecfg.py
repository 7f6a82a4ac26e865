"""A base's config and parameter inventory, read without its weights.

:func:`read_model_config` finds the ``PretrainedConfig`` of whatever a profile names (the tiny base,
a GGUF file, a local folder, a bundled or hub config), and :func:`tensors` lists every parameter and
buffer with the part it belongs to (experts, attention, dense MLP, embeddings, LM head, other) and
what decides its dtype after a 4-bit load. The planner prices these; :mod:`modft_utils.modeling.quant` and the
tests count them.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from modft_utils.config import Profile
from modft_utils.errors import ModftError
from modft_utils.modeling import gguf
from modft_utils.modeling.tiny import tiny_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "params" / "configs"
# Hub ids whose published config.json ships with the workbook, so planning them needs no network.
BUNDLED_CONFIGS: dict[str, Path] = {
    "MiniMaxAI/MiniMax-M2": CONFIG_DIR / "MiniMax-M2.config.json",
    "Qwen/Qwen3-30B-A3B": CONFIG_DIR / "Qwen3-30B-A3B.config.json",
}


class PlanError(ModftError, ValueError):
    """A plan that cannot be made; the message names the config, id or key at fault and the fix."""


class _SpecVocab:
    """Stands in for the tiny base's tokenizer in ``tiny.tiny_config``: its size and special ids.

    The tokenizer trained by ``tiny.train_tokenizer`` puts ``<|pad|>`` at 0 and ``<|endoftext|>``
    at 1; its size is the spec's ``vocab_size`` (a corpus too small to fill the vocabulary gives a
    few tokens fewer, which the planner ignores).
    """

    pad_token_id = 0
    eos_token_id = 1

    def __init__(self, size: int) -> None:
        self._size = size

    def __len__(self) -> int:
        return self._size


def _first_line(exc: BaseException) -> str:
    """The gist of a library error (transformers' run to paragraphs of advice that does not apply)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    return text + "."


def _read_config_file(path: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        raise PlanError(
            f"cannot read the model config {path}: {_first_line(exc)} Give a config.json with a known 'model_type' "
            "(e.g. the model's own config.json, or params/configs/MiniMax-M2.config.json)."
        ) from exc


def read_model_config(profile: Profile, config_path: str | os.PathLike | None = None):
    """The base's ``PretrainedConfig``, without downloading weights.

    * ``config_path`` given: that config.json (or model folder) wins, whatever ``model.id`` says.
    * ``model.id == "tiny"``: built from ``model.tiny`` exactly as ``tiny.tiny_config`` builds it.
    * a GGUF file (``model.gguf_file``): the config its header describes (no weights dequantized).
    * a local folder: its ``config.json``.
    * ``MiniMaxAI/MiniMax-M2``: the published config bundled in ``params/configs`` (no network).
    * any other hub id: ``AutoConfig.from_pretrained(id, revision)``, which fetches config.json only;
      offline, a :class:`PlanError` says to pass a local config path instead.
    """
    spec = profile.model
    if config_path is not None:
        path = Path(config_path).expanduser()
        if not path.exists():
            raise PlanError(f"model config {path} does not exist; pass a config.json or a model folder")
        return _read_config_file(path)
    if spec.id == "tiny":
        return tiny_config(spec.tiny, _SpecVocab(spec.tiny.vocab_size))
    if spec.gguf_file:
        return gguf.read_config(gguf.locate(profile), profile.resolve(profile.cache_dir))
    local = profile.resolve(spec.id) if profile.source else Path(spec.id).expanduser()
    if local.exists():
        config_file = local / "config.json" if local.is_dir() else local
        if not config_file.is_file():
            raise PlanError(f"model.id: {local} has no config.json; point model.id at a model folder")
        return _read_config_file(config_file)
    if spec.id in BUNDLED_CONFIGS:
        return _read_config_file(BUNDLED_CONFIGS[spec.id])
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(spec.id, revision=spec.revision)
    except Exception as exc:  # noqa: BLE001 - offline, gated, misspelt: the fix is the same
        raise PlanError(
            f"cannot read the config of {spec.id!r} (revision {spec.revision or 'default'}): {_first_line(exc)} "
            "Download its config.json once and pass it: `modft plan --profile ... --config path/to/config.json`."
        ) from exc


# --------------------------------------------------------------------------------------------------
# Parameter inventory


@dataclass(frozen=True)
class Tensor:
    """One parameter or buffer of the base, with what decides its dtype after loading."""

    name: str
    part: str  # experts | attention | dense_mlp | embeddings | lm_head | other
    shape: tuple[int, ...]
    kind: str  # linear (bnb quantizes it) | experts (fused 3-D) | float (stays 16/32-bit) | buffer
    layer: int | None = None
    buffer_itemsize: int = 0  # buffers keep their own dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


PARTS = ("experts", "attention", "dense_mlp", "embeddings", "lm_head", "other")


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _minimax_m2_tensors(config) -> list[Tensor]:
    """MiniMax-M2's parameters and buffers in closed form (module names as in transformers 5.x)."""
    h, f = config.hidden_size, config.intermediate_size
    nh, nkv, hd = config.num_attention_heads, config.num_key_value_heads, head_dim(config)
    n_exp, vocab = config.num_local_experts, config.vocab_size
    out: list[Tensor] = [Tensor("model.embed_tokens.weight", "embeddings", (vocab, h), "float")]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        out += [
            Tensor(p + "self_attn.q_proj.weight", "attention", (nh * hd, h), "linear", i),
            Tensor(p + "self_attn.k_proj.weight", "attention", (nkv * hd, h), "linear", i),
            Tensor(p + "self_attn.v_proj.weight", "attention", (nkv * hd, h), "linear", i),
            Tensor(p + "self_attn.o_proj.weight", "attention", (h, nh * hd), "linear", i),
            # q_norm/k_norm normalise the whole projection (not per head) in MiniMax-M2.
            Tensor(p + "self_attn.q_norm.weight", "other", (nh * hd,), "float", i),
            Tensor(p + "self_attn.k_norm.weight", "other", (nkv * hd,), "float", i),
            # The router is a bare Parameter, not nn.Linear, so bitsandbytes leaves it alone.
            Tensor(p + "mlp.gate.weight", "other", (n_exp, h), "float", i),
            Tensor(p + "mlp.experts.gate_up_proj", "experts", (n_exp, 2 * f, h), "experts", i),
            Tensor(p + "mlp.experts.down_proj", "experts", (n_exp, h, f), "experts", i),
            Tensor(p + "input_layernorm.weight", "other", (h,), "float", i),
            Tensor(p + "post_attention_layernorm.weight", "other", (h,), "float", i),
            # Created with torch.zeros, so it takes the load dtype.
            Tensor(p + "mlp.e_score_correction_bias", "other", (n_exp,), "buffer", i, 0),
        ]
    out.append(Tensor("model.norm.weight", "other", (h,), "float"))
    if not config.tie_word_embeddings:
        out.append(Tensor("lm_head.weight", "lm_head", (vocab, h), "lm_head"))
    rope = getattr(config, "rope_parameters", None) or {}
    rot = int(hd * rope.get("partial_rotary_factor", 1.0))
    # inv_freq and original_inv_freq are built in fp32 explicitly, whatever the load dtype.
    for name in ("inv_freq", "original_inv_freq"):
        out.append(Tensor(f"model.rotary_emb.{name}", "other", ((rot + 1) // 2,), "buffer", None, 4))
    return out


def _part_from_name(name: str) -> str:
    if "attn" in name or "attention" in name:
        return "attention"
    return "dense_mlp"


def meta_model(config, dtype_name: str = "float32"):
    """The base instantiated on the meta device: shapes and module types, no memory, no download."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype_name))


def _meta_tensors(config, dtype_name: str = "float32") -> list[Tensor]:
    """Any architecture's parameters and buffers, classified from a meta-device instance."""
    import torch

    model = meta_model(config, dtype_name)
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    seen: set[int] = set()
    tensors: list[Tensor] = []
    layer_re = re.compile(r"\.layers\.(\d+)\.")
    for mod_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # tied weights are one tensor
                continue
            seen.add(id(param))
            name = f"{mod_name}.{pname}" if mod_name else pname
            m = layer_re.search("." + name)
            layer = int(m.group(1)) if m else None
            shape = tuple(param.shape)
            if module is out_emb:
                part, kind = "lm_head", "lm_head"
            elif module is in_emb:
                part, kind = "embeddings", "float"
            elif param.dim() == 3 and "expert" in name:
                part, kind = "experts", "experts"
            elif isinstance(module, torch.nn.Linear) and pname == "weight":
                # Per-expert nn.Linear (older MoE code) is still expert weight; shared experts are dense.
                part, kind = (
                    ("experts" if "expert" in name and "shared" not in name else _part_from_name(name)),
                    "linear",
                )
            else:  # norms, routers held as bare parameters, biases
                part, kind = "other", "float"
            tensors.append(Tensor(name, part, shape, kind, layer))
        for bname, buf in module.named_buffers(recurse=False):
            name = f"{mod_name}.{bname}" if mod_name else bname
            m = layer_re.search("." + name)
            tensors.append(
                Tensor(name, "other", tuple(buf.shape), "buffer", int(m.group(1)) if m else None, buf.element_size())
            )
    return tensors


def tensors(config, dtype_name: str = "float32") -> list[Tensor]:
    """The inventory: closed form for MiniMax-M2, the meta device (in the load dtype) otherwise."""
    if getattr(config, "model_type", None) == "minimax_m2":
        return _minimax_m2_tensors(config)
    return _meta_tensors(config, dtype_name)


def count_params(config) -> dict[str, int]:
    """Parameters by part (plus ``total``): closed form for ``minimax_m2``, meta device otherwise.

    Parts: ``experts`` (fused 3-D expert weights), ``attention`` (q/k/v/o projections),
    ``dense_mlp`` (other nn.Linear layers, e.g. shared experts; 0 for MiniMax-M2), ``embeddings``,
    ``lm_head`` (0 when tied), ``other`` (norms incl. q_norm/k_norm, routers, biases). Buffers such
    as the router's score-correction bias are memory but not parameters and are not counted here.
    """
    return _count(tensors(config))


def count_params_meta(config) -> dict[str, int]:
    """The same counts from a meta-device instance, whatever the architecture (the ground truth)."""
    return _count(_meta_tensors(config))


def _count(inventory: list[Tensor]) -> dict[str, int]:
    counts = dict.fromkeys(PARTS, 0)
    for t in inventory:
        if t.kind != "buffer":
            counts[t.part] += t.numel
    counts["total"] = sum(counts[p] for p in PARTS)
    return counts

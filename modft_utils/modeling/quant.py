"""Real 4-bit MoE experts, a per-part byte count, and a LoRA target check.

``BitsAndBytesConfig(load_in_4bit=True)`` converts ``nn.Linear`` only, so MiniMax-M2's fused expert
parameters (``mlp.experts.gate_up_proj`` / ``down_proj``, about 98% of the weights) stay in 16/32-bit
and the "4-bit" base is really about 2 bytes a weight. :func:`quantize_experts` replaces each fused
experts module with :class:`NF4Experts`, which keeps every expert in NF4 (bitsandbytes' own
``quantize_4bit``) and dequantizes only the experts a batch is routed to. :func:`weight_bytes`
shows where the bytes are; :func:`check_lora_targets` refuses LoRA configs that cannot work on the
model at hand, before PEFT fails obscurely or trains nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modft_utils.modeling.basecfg import count_params
from modft_utils.upstream_fixes import bnb_dequantize_shape

__all__ = [
    "NF4Experts",
    "check_lora_targets",
    "has_4bit_experts",
    "quantizable_bytes",
    "quantize_experts",
    "weight_bytes",
]

# Names of the attention projections counted as "attention" (what QLoRA quantizes besides experts).
ATTENTION_PROJECTIONS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"})
_PROJECTIONS = ("gate_up", "down")
_FUSED_EXPERT_PARAMS = frozenset({"gate_up_proj", "down_proj"})
# quantize_4bit compresses the absmax statistics in blocks of this size (fixed inside bitsandbytes).
_NESTED_BLOCKSIZE = 256


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    """Float32 statistics stored as their int32 bit pattern.

    ``model.half()`` / ``model.to(torch.bfloat16)`` cast every floating buffer; the quantization
    statistics must survive that bit for bit, and integer buffers are left alone by dtype casts
    while still moving with ``.to(device)``.
    """
    return t.detach().to(torch.float32).contiguous().view(torch.int32)


def _from_bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.float32)


class _NF4ExpertLinear(torch.autograd.Function):
    """``x @ W_e.T`` for one expert, re-dequantizing ``W_e`` in backward instead of keeping it.

    Plain ``F.linear`` would keep every routed expert's dequantized weight alive until backward:
    on MiniMax-M2 a batch hits nearly all 256 experts of a layer, about 7 GB of bf16 per layer,
    which would undo the point of 4-bit storage. This is what bitsandbytes' own 4-bit matmul does.
    The weight is a constant: only ``x`` gets a gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, experts: NF4Experts, proj: str, expert: int) -> torch.Tensor:
        ctx.experts, ctx.proj, ctx.expert = experts, proj, expert
        return F.linear(x, experts.dequantize_weight(proj, expert, dtype=x.dtype))

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        weight = ctx.experts.dequantize_weight(ctx.proj, ctx.expert, dtype=grad_out.dtype)
        return grad_out @ weight, None, None, None


class _NF4SwiGLUExperts(torch.autograd.Function):
    """All routed experts of one layer, ``down(silu(gate) * up)``, as one autograd node.

    Per expert, the generic path records five autograd nodes (two 4-bit matmuls, the split, the
    activation, the product); on small experts their bookkeeping costs more than the arithmetic.
    Here forward loops over the experts without building a graph and keeps each expert's ``gate``
    and ``up`` (less than the generic path keeps: it also holds ``silu(gate)``); backward loops
    again, re-dequantizing each weight as :class:`_NF4ExpertLinear` does, and applies the SwiGLU
    derivative by hand. Only the routed hidden states get a gradient.
    """

    @staticmethod
    def forward(ctx: Any, routed: torch.Tensor, experts: NF4Experts, counts: list[int]) -> torch.Tensor:
        outs, saved = [], []
        for expert, chunk in enumerate(routed.split(counts)):
            if chunk.shape[0] == 0:
                saved.append(None)
                continue
            gate, up = F.linear(chunk, experts.dequantize_weight("gate_up", expert, dtype=chunk.dtype)).chunk(2, dim=-1)
            outs.append(F.linear(F.silu(gate) * up, experts.dequantize_weight("down", expert, dtype=chunk.dtype)))
            saved.append((gate, up))
        ctx.experts, ctx.counts, ctx.saved = experts, counts, saved
        return torch.cat(outs)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        experts, grads = ctx.experts, []
        for expert, grad in enumerate(grad_out.split(ctx.counts)):
            if ctx.saved[expert] is None:
                grads.append(grad.new_zeros((0, experts.hidden_dim)))
                continue
            gate, up = ctx.saved[expert]
            grad_m = grad @ experts.dequantize_weight("down", expert, dtype=grad.dtype)
            sig = torch.sigmoid(gate)
            silu = gate * sig
            grad_gate = grad_m * up * (sig * (1 + gate * (1 - sig)))
            grad_h = torch.cat((grad_gate, grad_m * silu), dim=-1)
            grads.append(grad_h @ experts.dequantize_weight("gate_up", expert, dtype=grad.dtype))
        ctx.saved = None
        return torch.cat(grads), None, None


class NF4Experts(nn.Module):
    """Drop-in, frozen replacement for a fused MoE experts module, every expert stored in 4-bit.

    Expert ``e``'s ``gate_up_proj[e]`` (``2*ffn x hidden``) and ``down_proj[e]`` (``hidden x ffn``)
    are each quantized with ``bitsandbytes.functional.quantize_4bit``; the packed bytes and the
    statistics are buffers, so ``.to(device)``, ``state_dict()`` and ``get_memory_footprint()`` see
    them, and there are no parameters (the base is frozen under QLoRA).

    ``forward(hidden_states, top_k_index, top_k_weights)`` has the signature and result of
    ``MiniMaxM2Experts``' eager forward (experts indexed ``num_experts`` are skipped, as there). It
    ignores ``config._experts_implementation``: the grouped/batched kernels need every expert's
    weight at once, which is what 4-bit storage avoids. Only the experts the batch is routed to are
    dequantized, one at a time, in ``compute_dtype``.

    Layout per projection ``p`` in ``("gate_up", "down")``, ``E`` experts:
    ``{p}_q`` uint8 ``(E, numel/2)``; with ``compress_statistics`` ``{p}_absmax_q`` uint8
    ``(E, numel/blocksize)``, ``{p}_absmax2`` and ``{p}_offset`` (float32 as int32 bits) and one
    shared ``absmax_code``; without it ``{p}_absmax`` (float32 as int32 bits).
    """

    def __init__(
        self,
        gate_up_proj: torch.Tensor,
        down_proj: torch.Tensor,
        act_fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        quant_type: str = "nf4",
        compute_dtype: torch.dtype = torch.float32,
        blocksize: int = 64,
        compress_statistics: bool = True,
        config: Any = None,
    ) -> None:
        """Quantize ``gate_up_proj`` (E, 2*ffn, hidden) and ``down_proj`` (E, hidden, ffn), expert by expert.

        One expert at a time, so the temporaries are one expert's; the work runs on the weights'
        device (fast on CUDA).
        """
        super().__init__()
        from bitsandbytes.functional import quantize_4bit

        if gate_up_proj.dim() != 3 or down_proj.dim() != 3:
            raise ValueError(
                f"expected 3-D fused expert weights, got {tuple(gate_up_proj.shape)} and {tuple(down_proj.shape)}"
            )
        num_experts, two_ffn, hidden = gate_up_proj.shape
        if down_proj.shape != (num_experts, hidden, two_ffn // 2) or two_ffn % 2:
            raise ValueError(
                f"gate_up_proj {tuple(gate_up_proj.shape)} and down_proj {tuple(down_proj.shape)} "
                "are not (E, 2*ffn, hidden) and (E, hidden, ffn)"
            )
        for name, w in (("gate_up_proj", gate_up_proj), ("down_proj", down_proj)):
            if (w.shape[1] * w.shape[2]) % blocksize:
                # Per-expert blocks must not straddle experts, so that one expert can be
                # dequantized from its own slice of the buffers.
                raise ValueError(
                    f"{name}[e] has {w.shape[1] * w.shape[2]} weights, not a multiple of blocksize={blocksize}"
                )
            if w.device.type == "meta":
                raise ValueError(
                    f"{name} is on the meta device (offloaded?): load the experts into memory before quantizing them"
                )
        if quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quant_type must be 'nf4' or 'fp4', got {quant_type!r}")

        self.config = config
        self.num_experts = num_experts
        self.hidden_dim = hidden
        self.intermediate_dim = two_ffn // 2
        self.act_fn = act_fn
        # SiLU-gated experts (MiniMax-M2's, Qwen3-MoE's) train through one fused autograd node.
        self._silu = isinstance(act_fn, nn.SiLU) or type(act_fn).__name__ == "SiLUActivation"
        self.quant_type = quant_type
        self.compute_dtype = compute_dtype
        self.blocksize = blocksize
        self.compress_statistics = compress_statistics
        self.shapes = {"gate_up": (two_ffn, hidden), "down": (hidden, two_ffn // 2)}
        self._kernel_shapes = {p: bnb_dequantize_shape(shape, blocksize) for p, shape in self.shapes.items()}

        nested_code = None
        for proj, weights in zip(_PROJECTIONS, (gate_up_proj, down_proj)):
            numel = weights.shape[1] * weights.shape[2]
            # Written in place, not stacked, so the packed bytes exist once (0.25x a bf16 layer).
            packed = torch.empty(num_experts, numel // 2, dtype=torch.uint8, device=weights.device)
            absmax, absmax_q, absmax2, offset = [], [], [], []
            for e in range(num_experts):
                q, state = quantize_4bit(
                    weights[e].detach().contiguous(),
                    blocksize=blocksize,
                    compress_statistics=compress_statistics,
                    quant_type=quant_type,
                )
                packed[e] = q.reshape(-1)
                if compress_statistics:
                    absmax_q.append(state.absmax)
                    absmax2.append(state.state2.absmax)
                    offset.append(state.offset.reshape(()))
                    nested_code = state.state2.code
                else:
                    absmax.append(state.absmax)
            self.register_buffer(f"{proj}_q", packed)
            if compress_statistics:
                self.register_buffer(f"{proj}_absmax_q", torch.stack(absmax_q))
                self.register_buffer(f"{proj}_absmax2", _as_bits(torch.stack(absmax2)))
                self.register_buffer(f"{proj}_offset", _as_bits(torch.stack(offset)))
            else:
                self.register_buffer(f"{proj}_absmax", _as_bits(torch.stack(absmax)))
        if compress_statistics:
            self.register_buffer("absmax_code", _as_bits(nested_code))

    @classmethod
    def from_experts(cls, module: nn.Module, **kwargs: Any) -> NF4Experts:
        """Build from a fused experts module (``MiniMaxM2Experts`` or alike); ``kwargs`` go to ``__init__``.

        Layouts this forward does not reproduce (biases, interleaved gate/up, a custom gate,
        post-expert norms) are refused rather than silently computed wrong.
        """
        problems = [flag for flag in ("has_bias", "has_post_expert_norm") if getattr(module, flag, False)]
        if not getattr(module, "is_concatenated", True):
            problems.append("interleaved gate/up layout")
        try:
            from transformers.integrations.moe import _default_apply_gate
        except ImportError:  # older transformers: no pluggable gate to check
            _default_apply_gate = None
        custom_gate = getattr(type(module), "_apply_gate", _default_apply_gate)
        if _default_apply_gate is not None and custom_gate is not _default_apply_gate:
            problems.append("custom _apply_gate")
        if problems:
            raise ValueError(f"{type(module).__name__} is not supported by NF4Experts: {', '.join(problems)}")
        gate_up, down = module.gate_up_proj, module.down_proj
        if getattr(module, "is_transposed", False):
            # Transposed layout stores (E, in, out); quantize in the (E, out, in) layout F.linear uses.
            gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
        return cls(gate_up, down, module.act_fn, config=getattr(module, "config", None), **kwargs)

    def _absmax(self, proj: str, expert: int) -> torch.Tensor:
        """One expert's float32 block scales, undoing the absmax compression when it is on."""
        if not self.compress_statistics:
            return _from_bits(getattr(self, f"{proj}_absmax")[expert])
        # bitsandbytes' own ops, called directly: the functional wrappers cost more Python time
        # than the kernels on expert-sized tensors. Same arithmetic as dequantize_4bit's.
        absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
            getattr(self, f"{proj}_absmax_q")[expert],
            _from_bits(getattr(self, f"{proj}_absmax2")[expert]),
            _from_bits(self.absmax_code),
            _NESTED_BLOCKSIZE,
            torch.float32,
        )
        absmax += _from_bits(getattr(self, f"{proj}_offset")[expert])
        return absmax

    def dequantize_weight(self, proj: str, expert: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Expert ``expert``'s ``proj`` weight ("gate_up" or "down") in the (out, in) layout of ``F.linear``."""
        weight = torch.ops.bitsandbytes.dequantize_4bit.default(
            getattr(self, f"{proj}_q")[expert],
            self._absmax(proj, expert),
            self.blocksize,
            self.quant_type,
            self._kernel_shapes[proj],
            dtype or self.compute_dtype,
        )
        return weight.view(self.shapes[proj])

    @torch.no_grad()
    def dequantized_weights(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All experts as float ``(gate_up_proj, down_proj)`` in the original fused layout (tests, inspection)."""
        return tuple(
            torch.stack([self.dequantize_weight(p, e, dtype) for e in range(self.num_experts)]) for p in _PROJECTIONS
        )

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """Weighted sum of the routed experts' outputs, as ``MiniMaxM2Experts``' eager forward.

        Token slots are sorted by expert once (one sort and one host sync for the counts), so
        the per-expert loop is two matmuls and the activation; the outputs go back with a single
        ``index_add_``.
        """
        final = torch.zeros_like(hidden_states)
        slots = top_k_index.shape[-1]
        with torch.no_grad():
            experts_sorted, order = torch.sort(top_k_index.reshape(-1), stable=True)
            # Index num_experts marks slots handled elsewhere (expert parallelism); they sort last
            # and fall outside the counts.
            bounds = torch.searchsorted(experts_sorted, torch.arange(self.num_experts + 1, device=order.device))
            counts = bounds.diff().tolist()
        total = sum(counts)
        if total == 0:
            return final
        order = order[:total]
        token_idx = order // slots
        routed = hidden_states.index_select(0, token_idx).to(self.compute_dtype)
        # Under no_grad (eval, generation) the recompute-in-backward wrapper is pure overhead.
        track = torch.is_grad_enabled() and routed.requires_grad
        weights = top_k_weights.reshape(-1).index_select(0, order)
        if track and self._silu:
            out = _NF4SwiGLUExperts.apply(routed, self, counts) * weights[:, None]
            return final.index_add_(0, token_idx, out.to(final.dtype))
        outputs = []
        for expert, chunk in enumerate(routed.split(counts)):
            if chunk.shape[0] == 0:
                continue
            if track:
                gate, up = _NF4ExpertLinear.apply(chunk, self, "gate_up", expert).chunk(2, dim=-1)
                outputs.append(_NF4ExpertLinear.apply(self.act_fn(gate) * up, self, "down", expert))
            else:
                gate, up = F.linear(chunk, self.dequantize_weight("gate_up", expert)).chunk(2, dim=-1)
                outputs.append(F.linear(self.act_fn(gate) * up, self.dequantize_weight("down", expert)))
        out = torch.cat(outputs) * weights[:, None]
        return final.index_add_(0, token_idx, out.to(final.dtype))

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, hidden={self.hidden_dim}, ffn={self.intermediate_dim}, "
            f"quant_type={self.quant_type}, blocksize={self.blocksize}, "
            f"compress_statistics={self.compress_statistics}, compute_dtype={self.compute_dtype}"
        )


def _is_fused_experts(module: nn.Module) -> bool:
    """A module holding all experts as 3-D ``gate_up_proj`` / ``down_proj`` tensors plus an ``act_fn``."""
    gate_up = getattr(module, "gate_up_proj", None)
    down = getattr(module, "down_proj", None)
    return (
        isinstance(gate_up, torch.Tensor)
        and isinstance(down, torch.Tensor)
        and gate_up.dim() == 3
        and down.dim() == 3
        and hasattr(module, "act_fn")
    )


def quantize_experts(
    model: nn.Module,
    *,
    quant_type: str = "nf4",
    compute_dtype: torch.dtype = torch.float32,
    blocksize: int = 64,
    compress_statistics: bool = True,
) -> int:
    """Replace every fused experts module of ``model`` with an :class:`NF4Experts`; return how many.

    Works on a model loaded with bitsandbytes 4-bit (attention already ``Linear4bit``) and on a
    plain float model. Each layer's float expert weights are released as soon as its 4-bit copy
    exists, so memory never holds more than the model plus one layer's 4-bit experts. Sets
    ``model._modft_experts_4bit = True`` when anything was replaced; :func:`has_4bit_experts`
    answers from the modules themselves.

    Quantize before adding adapters: LoRA on expert parameters needs float experts.
    """
    if hasattr(model, "peft_config"):
        raise ValueError(
            "quantize_experts expects the base model, not a PEFT model: quantize the experts first, "
            "then add adapters (LoRA on expert parameters needs float experts)"
        )
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if _is_fused_experts(module) and not isinstance(module, NF4Experts)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        with torch.no_grad():
            new = NF4Experts.from_experts(
                module,
                quant_type=quant_type,
                compute_dtype=compute_dtype,
                blocksize=blocksize,
                compress_statistics=compress_statistics,
            )
        setattr(parent, child, new)
        # Drop the float weights now, not when the caller's last reference to the old module goes.
        module.gate_up_proj = None
        module.down_proj = None
    if targets:
        model._modft_experts_4bit = True
    return len(targets)


def has_4bit_experts(model: nn.Module) -> bool:
    """Whether any experts module of ``model`` (a base or a PEFT model) is an :class:`NF4Experts`."""
    return any(isinstance(m, NF4Experts) for m in model.modules())


def _part_of(name: str, linear_weights: frozenset[str] = frozenset()) -> str:
    """Which part of the model a parameter or buffer name belongs to (see :func:`weight_bytes`).

    ``linear_weights`` names the weights of the model's linear layers: those outside attention and
    the output layer (a dense model's MLP projections, shared experts) are ``dense_mlp``.
    """
    parts = name.split(".")
    if any(p.startswith("lora_") or p == "modules_to_save" for p in parts):
        return "adapters"
    if "experts" in parts:
        return "experts"
    if "embed_tokens" in parts:
        return "embeddings"
    if "lm_head" in parts:
        return "lm_head"
    # Only the projection weights are quantized; their biases stay float and count as "other".
    if parts[-1] == "weight" and any(p in ATTENTION_PROJECTIONS for p in parts[:-1]):
        return "attention"
    if name in linear_weights:
        return "dense_mlp"
    return "other"


def _linear_weight_names(model: nn.Module) -> frozenset[str]:
    """Names of the weights bitsandbytes quantizes: every linear layer's but the output layer's."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return frozenset(f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not output)


def _quant_state_tensors(param: torch.Tensor) -> Iterable[torch.Tensor]:
    """The tensors of a bitsandbytes ``Params4bit``'s quant state, which are neither parameters nor buffers."""
    state = getattr(param, "quant_state", None)
    if state is None:
        return []
    tensors = [state.absmax, state.code]
    if getattr(state, "nested", False):
        tensors += [state.offset, state.state2.absmax, state.state2.code]
    return [t for t in tensors if isinstance(t, torch.Tensor)]


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes held by the model's weights, by part.

    Parts: ``experts``, ``attention`` (q/k/v/o projection weights, for ``Linear4bit`` the packed
    bytes plus the quant state), ``dense_mlp`` (every other linear layer's weight: a dense model's
    MLP, shared experts), ``embeddings`` (``embed_tokens``), ``lm_head``, ``other`` (norms, router,
    biases, rotary buffers) and ``adapters`` (LoRA weights of a PEFT model, 0 otherwise).

    Parameters and buffers are counted like ``get_memory_footprint()`` (shared tensors once). The
    ``Linear4bit`` quant state (absmax etc.) is counted on top: ``get_memory_footprint()`` misses it
    because bitsandbytes keeps it on the parameter object, so the parts sum to the footprint plus
    those statistics. :class:`NF4Experts` keeps its statistics in buffers, counted by both.
    """
    parts = dict.fromkeys(("experts", "attention", "dense_mlp", "embeddings", "lm_head", "other", "adapters"), 0)
    linear = _linear_weight_names(model)
    seen: set[tuple[int, torch.dtype, int]] = set()

    def add(name: str, t: torch.Tensor) -> None:
        key = (t.data_ptr(), t.dtype, t.nelement())
        if t.nelement() == 0 or key in seen:
            return
        seen.add(key)
        parts[_part_of(name, linear)] += t.nelement() * t.element_size()

    for name, param in model.named_parameters():
        add(name, param)
    for name, buf in model.named_buffers():
        add(name, buf)
    for name, param in model.named_parameters():
        for t in _quant_state_tensors(param):
            add(name, t)
    return parts


QUANTIZED_PARTS = ("attention", "dense_mlp", "experts")


def quantizable_bytes(model: nn.Module) -> int:
    """Bytes of the weights QLoRA quantizes: every linear layer but the output layer, plus experts."""
    parts = weight_bytes(model)
    return sum(parts[p] for p in QUANTIZED_PARTS)


def _strip_base_layer(name: str) -> str:
    # PEFT matches against names without its wrappers' "base_layer" hops.
    return ".".join(p for p in name.split(".") if p != "base_layer")


def check_lora_targets(model: nn.Module, lora_config: Any) -> dict[str, list[str]]:
    """Refuse a LoRA config that cannot adapt ``model``; return the names it targets.

    Call it before ``get_peft_model``. Raises ``ValueError`` when:

    - ``target_parameters`` touch expert weights stored in 4-bit (:class:`NF4Experts` has no
      parameters, so PEFT would only say that no parameter was matched);
    - ``target_parameters`` match no parameter, or ``target_modules`` match no module (PEFT
      either errors without saying why or, with both set, warns and trains only one kind);
    - ``target_modules`` match a fused experts module (LoRA wraps linear layers, not experts).

    Returns ``{"modules": [...], "parameters": [...]}``.
    """
    from peft.tuners.tuners_utils import check_target_module_exists

    # Matching is on names without PEFT's "base_layer" hops, as PEFT itself matches.
    named = [(_strip_base_layer(n), m) for n, m in model.named_modules()]
    target_parameters = list(getattr(lora_config, "target_parameters", None) or [])
    target_modules = getattr(lora_config, "target_modules", None)
    shown_modules = target_modules if isinstance(target_modules, str) else sorted(target_modules or [])
    if not target_parameters and not target_modules:
        raise ValueError("the LoRA config has neither target_modules nor target_parameters: nothing would train")

    def matches(key: str, target: str) -> bool:  # PEFT's rule for target_parameters
        return key == target or key.endswith("." + target)

    matched_params: list[str] = []
    for target in target_parameters:
        param_name = target.rpartition(".")[2]
        quantized = [
            n
            for n, m in named
            if isinstance(m, NF4Experts) and param_name in _FUSED_EXPERT_PARAMS and matches(f"{n}.{param_name}", target)
        ]
        if quantized:
            raise ValueError(
                f"target_parameters entry {target!r} points at expert weights stored in 4-bit (NF4Experts, "
                f"e.g. {quantized[0]}): LoRA on expert parameters needs float experts, and 4-bit experts have "
                "no parameters to adapt. Either target the attention projections "
                "(target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj']) and drop target_parameters, or "
                "load the base with 4-bit experts off (no quantize_experts; the experts then stay in "
                "16/32-bit, about 4x the memory of 4-bit)."
            )
        found = [
            f"{n}.{p}" for n, m in named for p, _ in m.named_parameters(recurse=False) if matches(f"{n}.{p}", target)
        ]
        if not found:
            raise ValueError(f"target_parameters entry {target!r} matches no parameter of the model")
        matched_params += found

    matched_modules: list[str] = []
    if target_modules:
        if isinstance(target_modules, str) and target_modules.lower() == "all-linear":
            output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            matched_modules = [n for n, m in named if isinstance(m, nn.Linear) and m is not output]
        else:
            matched_modules = [n for n, _ in named if n and check_target_module_exists(lora_config, n)]
        matched_set = set(matched_modules)
        experts = [n for n, m in named if n in matched_set and (isinstance(m, NF4Experts) or _is_fused_experts(m))]
        if experts:
            raise ValueError(
                f"target_modules={shown_modules!r} matches the fused experts module {experts[0]}, which LoRA "
                "cannot wrap: use target_parameters=['mlp.experts.gate_up_proj', 'mlp.experts.down_proj'] on "
                "float experts, or target the attention projections."
            )
        if not matched_modules:
            linear_names = sorted({n.rpartition(".")[2] for n, m in named if isinstance(m, nn.Linear)})
            raise ValueError(
                f"target_modules={shown_modules!r} matches no module of the model (its linear layers: {linear_names})"
            )
    # A PEFT wrapper and its base_layer share a stripped name: report each once.
    return {"modules": list(dict.fromkeys(matched_modules)), "parameters": list(dict.fromkeys(matched_params))}


def memory_vs_bf16(model: nn.Module) -> dict[str, int]:
    """The loaded model's weight bytes beside what the same weights take in bf16.

    ``quantizable_*`` covers what 4-bit applies to (every linear layer but the output layer, and
    the experts: attention and MLP of a dense model, attention and experts of an MoE); the
    ``footprint_*`` pair is the whole model as ``get_memory_footprint()`` counts it, with the bf16
    figure being every parameter and buffer at 2 bytes.
    """

    counts = count_params(model.config)
    buffers = sum(b.nelement() for n, b in model.named_buffers() if _part_of(n) == "other")
    return {
        "quantizable_bytes_4bit": quantizable_bytes(model),
        "quantizable_bytes_bf16": 2 * sum(counts[p] for p in QUANTIZED_PARTS),
        "footprint_4bit_bytes": int(model.get_memory_footprint()),
        "footprint_bf16_bytes": 2 * (counts["total"] + buffers),
    }

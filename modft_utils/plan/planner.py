"""Memory planning: will this profile's QLoRA training fit on this GPU? Answered before anything is rented.

``plan(profile)`` reads only the base's *config* (never its weights), counts parameters by part
(experts, attention, embeddings, lm_head, other), prices each part in the dtype the load really
gives it, adds adapters, gradients, AdamW states, activations and a CUDA allowance, and says
whether the sum fits ``gpus`` GPUs of ``gpu_memory`` each. When it does not, it lists only the
changes that make it fit by the same arithmetic (gradient checkpointing, fewer tokens per step,
more GPUs, CPU offload, a smaller base).

Where the numbers come from (all checked in ``tests/unit/plan/test_plan.py``):

* Parameter counts: closed form for ``minimax_m2`` configs, equal to instantiating the model on the
  meta device (no memory); other architectures are counted on the meta device directly.
* 4-bit bytes: bitsandbytes' NF4 layout, byte for byte (packed 4-bit weights, one absmax per
  64-weight block, double quantization of the absmax in blocks of 256, the per-tensor code tables),
  equal to the tensors a 4-bit load creates.
* Activations: every tensor autograd saves in a MiniMax-M2 decoder layer, itemised from a saved-tensor
  hook on the tiny model (sdpa and eager attention; eager, grouped_mm and batched_mm experts).
* The whole training step: the tiny profile's measured peak resident memory (``measure_training_peak``).

A claim often made for QLoRA, that a model like MiniMax-M2 trains "on a single 24 GB GPU", is what this
module exists to check: its ~229B parameters are ~120 GB even with every expert in NF4, and stock bitsandbytes does
not quantize the fused experts at all (``BitsAndBytesConfig(load_in_4bit=True)`` converts
``nn.Linear`` only), which leaves ~450 GB.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from modft_utils.config import LoraSpec, Profile
from modft_utils.modeling import PARTS, PlanError, Tensor, basecfg, read_model_config
from modft_utils.plan import activations as act

GiB = 1 << 30
GB = 10**9

# bitsandbytes' 4-bit layout (checked on bitsandbytes 0.50.2): the weight is packed two per byte;
# each block of 64 weights has an absmax scale, fp32, or with double quantization uint8 plus one fp32
# absmax per 256 blocks, a 256-entry fp32 code table and an fp32 offset; every tensor also keeps the
# 16-entry fp32 NF4/FP4 code table. Tables are per tensor, not shared (checked: distinct storages).
NF4_BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256
NF4_CODE_BYTES = 16 * 4
NESTED_CODE_BYTES = 256 * 4
NESTED_OFFSET_BYTES = 4

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

DEFAULT_GPU_BYTES = 24 * GiB
# A reference size for "how many of the big cards": A100/H100 80 GB boards expose 80 GiB.
REFERENCE_GPU_BYTES = 80 * GiB
REFERENCE_GPU_LABEL = "80 GB (A100/H100)"
# Per-GPU allowance outside the model's tensors: the CUDA context with cuBLAS/cuDNN loaded takes
# about 0.5-1 GiB on current cards, and PyTorch's caching allocator loses a few percent to
# fragmentation over a training run. 1 GiB + 5% of the tensors is the figure used for both.
OVERHEAD_FIXED_BYTES = 1 * GiB
OVERHEAD_FRACTION = 0.05
# Beyond this many GPUs the answer is "not this base on this kind of card", not a count.
MAX_GPUS = 64


# --------------------------------------------------------------------------------------------------
# Units


_UNIT_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_bytes(text: int | float | str) -> int:
    """``"24GiB"``, ``"24 GB"``, ``"80G"``, ``"1.5TiB"``, ``25769803776`` -> bytes.

    SI units (kB, MB, GB, TB) are powers of 1000, as disk and GPU vendors print them; IEC units
    (KiB, MiB, GiB, TiB) and bare letters (K, M, G, T, as ``free -g`` and ``docker --memory`` read
    them) are powers of 1024. A bare number is bytes.
    """
    if isinstance(text, bool):
        raise PlanError(f"not a memory size: {text!r}")
    if isinstance(text, (int, float)):
        if text <= 0:
            raise PlanError(f"memory size must be positive, got {text!r}")
        return int(text)
    match = _UNIT_RE.match(str(text))
    if not match:
        raise PlanError(f"not a memory size: {text!r} (write e.g. 24GiB, 80GB, 80G or 1.5TiB)")
    number, prefix, binary, byte = match.groups()
    prefix = prefix.lower()
    value = float(number)
    if not prefix:
        base = 1  # "512", "512b": bytes
    elif binary or not byte:
        base = 1024 ** _POWERS[prefix]
    else:
        base = 1000 ** _POWERS[prefix]
    result = int(round(value * base))
    if result <= 0:
        raise PlanError(f"memory size must be positive, got {text!r}")
    return result


def _gib(n: int | float) -> str:
    return f"{n / GiB:,.1f}"


def _size(n: int | float) -> str:
    """Bytes in the largest binary unit that keeps a digit before the point (tables mix GiB and KiB)."""
    for unit, scale in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n)} B"


def _gb(n: int | float) -> str:
    return f"{n / GB:,.0f} GB"


def nf4_bytes(numel: int, *, double_quant: bool = True) -> int:
    """Bytes bitsandbytes holds for one 4-bit tensor of ``numel`` weights (weights + quant state)."""
    blocks = -(-numel // NF4_BLOCKSIZE)
    packed = (numel + 1) // 2
    if double_quant:
        nested = -(-blocks // NESTED_BLOCKSIZE)
        state = blocks + nested * 4 + NESTED_CODE_BYTES + NESTED_OFFSET_BYTES
    else:
        state = blocks * 4
    return packed + state + NF4_CODE_BYTES


# --------------------------------------------------------------------------------------------------
# The plan


@dataclass
class PlanRow:
    """One line of the weights table. ``in_total`` is False for rows shown for comparison only."""

    part: str
    params: int
    dtype: str
    bytes: int
    note: str = ""
    in_total: bool = True


@dataclass
class Plan:
    """Memory of one QLoRA training configuration on ``gpus`` GPUs of ``gpu_bytes`` each."""

    profile: str
    model_id: str
    rows: list[PlanRow]
    lora_params: int
    lora_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    activation_bytes_checkpointed: int
    overhead_bytes: int
    total_bytes: int
    gpu_bytes: int
    gpus: int
    fits: bool
    suggestions: list[str]
    stage: str = "both"
    phase: str = "sft"  # the phase whose total is larger (the one that decides)
    batch_size: int = 1
    seq_len: int = 1
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    compute_dtype: str = "bfloat16"
    experts_4bit: bool = True
    trainable_params: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def weight_bytes(self) -> int:
        return sum(r.bytes for r in self.rows if r.in_total)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows if r.in_total)

    @property
    def activations_used(self) -> int:
        return self.activation_bytes_checkpointed if self.gradient_checkpointing else self.activation_bytes

    @property
    def training_bytes(self) -> int:
        """Everything but the CUDA allowance: what a CPU run's resident memory should grow by."""
        return self.weight_bytes + self.lora_bytes + self.grad_bytes + self.optimizer_bytes + self.activations_used

    def verdict(self) -> str:
        cap = f"{self.gpus} x {_gib(self.gpu_bytes)} GiB"
        if self.fits:
            return f"FITS: needs {_gib(self.total_bytes)} GiB, available {cap}"
        return f"DOES NOT FIT: needs {_gib(self.total_bytes)} GiB, available {cap}" + (
            f" (short by {_gib(self.total_bytes - self.gpu_bytes * self.gpus)} GiB)"
            if self.total_bytes > self.gpu_bytes * self.gpus
            else " (no layout of whole decoder layers fits)"
        )

    def table(self) -> str:
        """A fixed-width table: weights by part, training state, activations, overhead, verdict."""
        ckpt = "on" if self.gradient_checkpointing else "off"
        lines = [
            f"modft plan: profile {self.profile} | base {self.model_id} | stage {self.stage} "
            f"(larger phase: {self.phase}, {self.batch_size} x {self.seq_len} tokens/step, "
            f"grad_accum {self.grad_accum}, gradient checkpointing {ckpt}, compute {self.compute_dtype})",
            "",
            f"{'part':<22}{'params':>18}  {'dtype':<10}{'size':>12}  note",
            "-" * 100,
        ]

        def line(part: str, params: int | None, dtype: str, nbytes: int, note: str = "") -> None:
            p = f"{params:,}" if params is not None else ""
            lines.append(f"{part:<22}{p:>18}  {dtype:<10}{_size(nbytes):>12}  {note}".rstrip())

        for r in self.rows:
            if r.in_total:
                line(r.part, r.params, r.dtype, r.bytes, r.note)
        line("= weights", self.params, "", self.weight_bytes)
        lines.append("")
        line(
            "LoRA adapters",
            self.lora_params,
            "float32",
            self.lora_bytes,
            f"{self.trainable_params:,} trainable"
            + ("" if self.trainable_params == self.lora_params else ", the rest frozen"),
        )
        line("gradients", self.trainable_params, "float32", self.grad_bytes, "trainable LoRA params only")
        line(
            "AdamW states",
            self.trainable_params,
            "2 x fp32",
            self.optimizer_bytes,
            "exp_avg + exp_avg_sq; no master copy (adapters are already fp32)",
        )
        other = self.activation_bytes if self.gradient_checkpointing else self.activation_bytes_checkpointed
        line(
            "activations",
            None,
            self.compute_dtype,
            self.activations_used,
            f"checkpointing {ckpt}; {'without' if self.gradient_checkpointing else 'with'} it: {_size(other)}",
        )
        line(
            "CUDA + allocator",
            None,
            "",
            self.overhead_bytes,
            f"{self.gpus} x {OVERHEAD_FIXED_BYTES // GiB} GiB context + {OVERHEAD_FRACTION:.0%} fragmentation",
        )
        lines.append("-" * 100)
        line("TOTAL", None, "", self.total_bytes)
        lines.append("")
        shown = [r for r in self.rows if not r.in_total]
        if shown:
            lines.append("for comparison (not in the total):")
            for r in shown:
                line("  " + r.part, r.params, r.dtype, r.bytes, r.note)
            lines.append("")
        lines.append(self.verdict())
        if self.suggestions:
            lines.append("what would make it fit (cheapest first; each checked by the same arithmetic):")
            lines += [f"  {i}. {s}" for i, s in enumerate(self.suggestions, 1)]
        elif not self.fits:
            lines.append("no change tried here makes it fit.")
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(weight_bytes=self.weight_bytes, params=self.params, training_bytes=self.training_bytes)
        return d


# --------------------------------------------------------------------------------------------------
# LoRA


def _lora_targets(tensors: list[Tensor], lora: LoraSpec, where: str) -> list[Tensor]:
    """The nn.Linear weights PEFT wraps for ``target_modules`` (a name or a dotted suffix matches)."""
    linears = [t for t in tensors if t.kind in ("linear", "lm_head") and t.name.endswith(".weight")]
    if lora.target_modules == ["all-linear"]:
        return [t for t in linears if t.kind == "linear"]
    hits: list[Tensor] = []
    for target in lora.target_modules:
        found = [t for t in linears if (mod := t.name[: -len(".weight")]) == target or mod.endswith("." + target)]
        if not found:
            raise PlanError(
                f"{where}.target_modules: {target!r} matches no nn.Linear in this base "
                "(fused experts need PEFT's target_parameters, which this profile key does not set)"
            )
        hits += [t for t in found if t not in hits]
    return hits


def _lora_params(targets: list[Tensor], r: int) -> int:
    return sum(r * (t.shape[0] + t.shape[1]) for t in targets)  # A: r x in, B: out x r


# --------------------------------------------------------------------------------------------------
# Fitting


@dataclass
class _Phase:
    """One training phase (DAPT or SFT) priced on a given base."""

    name: str
    batch: int
    seq: int
    grad_accum: int
    checkpointing: bool
    lora_params: int  # resident adapters (trained + frozen)
    trainable: int
    trainable_tensors: int
    lora_rank_sum_per_layer: int
    acts: act.Activations
    act_args: dict[str, Any]

    @property
    def lora_bytes(self) -> int:
        return 4 * self.lora_params  # PEFT keeps adapters in fp32 (autocast_adapter_dtype=True)

    @property
    def grad_bytes(self) -> int:
        return 4 * self.trainable

    @property
    def optimizer_bytes(self) -> int:
        return 8 * self.trainable + 4 * self.trainable_tensors  # two fp32 moments + a step counter per tensor

    @property
    def state_bytes(self) -> int:
        return self.lora_bytes + self.grad_bytes + self.optimizer_bytes

    def activations(self, checkpointing: bool | None = None) -> int:
        ckpt = self.checkpointing if checkpointing is None else checkpointing
        return self.acts.checkpointed if ckpt else self.acts.full


def _with_batch(phase: _Phase, arch: act.Arch, batch: int) -> _Phase:
    acts = act.activations(arch, batch=batch, seq=phase.seq, **phase.act_args)
    accum = -(-phase.batch * phase.grad_accum // batch)  # keep the tokens per optimizer step
    return _Phase(
        phase.name,
        batch,
        phase.seq,
        accum,
        phase.checkpointing,
        phase.lora_params,
        phase.trainable,
        phase.trainable_tensors,
        phase.lora_rank_sum_per_layer,
        acts,
        phase.act_args,
    )


def _usable(gpu_bytes: int) -> float:
    """Tensor bytes one GPU holds once the context and fragmentation allowance are taken."""
    return (gpu_bytes - OVERHEAD_FIXED_BYTES) / (1 + OVERHEAD_FRACTION)


def _overhead(content: int, gpus: int) -> int:
    return int(gpus * OVERHEAD_FIXED_BYTES + OVERHEAD_FRACTION * content)


@dataclass
class _Layout:
    """The base split the way ``device_map="auto"`` splits it: whole decoder layers, in order."""

    head: int  # embeddings (+ layer-less buffers)
    layers: list[int]  # weight bytes per decoder layer
    tail: int  # final norm + lm_head

    @property
    def total(self) -> int:
        return self.head + sum(self.layers) + self.tail


def _layout(tensors: list[Tensor], byte_of: dict[str, int], n_layers: int) -> _Layout:
    layers = [0] * n_layers
    head = tail = 0
    for t in tensors:
        nb = byte_of[t.name]
        if t.layer is not None:
            layers[t.layer] += nb
        elif t.part == "lm_head" or t.name.endswith("norm.weight"):
            tail += nb
        else:
            head += nb
    return _Layout(head, layers, tail)


def _gpus_needed(
    layout: _Layout, phase: _Phase, gpu_bytes: int, checkpointing: bool, limit: int = MAX_GPUS
) -> int | None:
    """Fewest GPUs a sequential split of whole decoder layers fits on, or None beyond ``limit``.

    Each decoder layer brings its weights, its share of the adapter state and the activations it
    keeps until backward (all of them, or only its input when checkpointing); a GPU holding layers
    also reserves room for the largest transient among them (a layer's backward, or its recompute
    plus backward when checkpointing); the last GPU holds lm_head and reserves the loss peak.
    """
    cap = _usable(gpu_bytes)
    acts = phase.acts
    share = phase.state_bytes / max(1, len(layout.layers))
    kept = acts.boundary if checkpointing else acts.per_layer
    transient = 2 * acts.per_layer if checkpointing else acts.per_layer
    items = [(float(layout.head), 0.0)] + [(w + share + kept, float(transient)) for w in layout.layers]
    items.append((float(layout.tail + acts.final), float(acts.loss_peak)))
    gpus, load, reserve = 1, 0.0, 0.0
    for size, need in items:
        if load + size + max(reserve, need) > cap:
            if size + need > cap:
                return None
            gpus, load, reserve = gpus + 1, 0.0, 0.0
            if gpus > limit:
                return None
        load, reserve = load + size, max(reserve, need)
    return gpus


def _content(weights: int, phase: _Phase, checkpointing: bool | None = None) -> int:
    return weights + phase.state_bytes + phase.activations(checkpointing)


def _fits(layout: _Layout, phase: _Phase, gpu_bytes: int, gpus: int, checkpointing: bool) -> bool:
    if gpus == 1:
        content = _content(layout.total, phase, checkpointing)
        return content + _overhead(content, 1) <= gpu_bytes
    needed = _gpus_needed(layout, phase, gpu_bytes, checkpointing, limit=gpus)
    return needed is not None and needed <= gpus


@dataclass
class _Priced:
    """A base priced for a profile: what ``plan`` and the smaller-base search both need."""

    arch: act.Arch
    tensors: list[Tensor]
    rows: list[PlanRow]
    byte_of: dict[str, int]
    layout: _Layout
    phases: list[_Phase]


def _dtype_label(kind: str, load_in_4bit: bool, experts_4bit: bool, quant: str, compute: str) -> str:
    if kind == "linear" and load_in_4bit:
        return quant
    if kind == "experts" and load_in_4bit and experts_4bit:
        return quant
    return compute


def _price(profile: Profile, config, *, experts_4bit: bool, stage: str) -> _Priced:
    spec = profile.model
    s = DTYPE_BYTES[spec.compute_dtype]
    tensors = basecfg.tensors(config, spec.compute_dtype)
    arch = act.arch(config, tensors)

    def tensor_bytes(t: Tensor, exp4: bool) -> int:
        if t.kind == "buffer":
            return t.numel * (t.buffer_itemsize or s)
        if _dtype_label(t.kind, spec.load_in_4bit, exp4, spec.quant_type, spec.compute_dtype) == spec.quant_type:
            return nf4_bytes(t.numel, double_quant=spec.double_quant)  # fp4 has the same layout
        return t.numel * s

    byte_of = {t.name: tensor_bytes(t, experts_4bit) for t in tensors}
    rows: list[PlanRow] = []
    for part in PARTS:
        members = [t for t in tensors if t.part == part]
        params = sum(t.numel for t in members if t.kind != "buffer")
        if not members or (params == 0 and part != "other"):
            continue
        kinds = {t.kind for t in members if t.kind != "buffer"}
        label = spec.compute_dtype
        if kinds == {"linear"} or kinds == {"experts"}:
            label = _dtype_label(kinds.pop(), spec.load_in_4bit, experts_4bit, spec.quant_type, spec.compute_dtype)
        note = {
            "experts": "fused 3-D expert weights",
            "attention": "q/k/v/o projections (nn.Linear: bitsandbytes quantizes them)"
            if spec.load_in_4bit
            else "q/k/v/o projections",
            "dense_mlp": "other nn.Linear layers",
            "embeddings": "kept in the compute dtype",
            "lm_head": "bitsandbytes skips the output layer",
            "other": "norms, q_norm/k_norm, routers; buffers",
        }[part]
        if part == "experts" and spec.load_in_4bit:
            note = (
                "fused 3-D experts in NF4 per expert (modft_utils.modeling.quant; model.experts_4bit)"
                if experts_4bit
                else "stock BitsAndBytesConfig: fused 3-D experts are NOT quantized (bitsandbytes #1849)"
            )
        rows.append(PlanRow(part, params, label, sum(byte_of[t.name] for t in members), note))
    experts = [t for t in tensors if t.part == "experts"]
    if experts and spec.load_in_4bit:
        # Show the other expert dtype too: the difference is the point of this table.
        alt = sum(tensor_bytes(t, not experts_4bit) for t in experts)
        alt_label = _dtype_label("experts", True, not experts_4bit, spec.quant_type, spec.compute_dtype)
        alt_note = (
            "what stock BitsAndBytesConfig(load_in_4bit) gives: experts stay 16/32-bit"
            if experts_4bit
            else "if the fused experts were quantized too"
        )
        rows.append(
            PlanRow(
                "experts (" + ("stock" if experts_4bit else alt_label) + ")",
                sum(t.numel for t in experts),
                alt_label,
                alt,
                alt_note,
                in_total=False,
            )
        )
    quant_cfg = getattr(config, "quantization_config", None) or {}
    if isinstance(quant_cfg, dict) and quant_cfg.get("quant_method") == "fp8":
        bh, bw = quant_cfg.get("weight_block_size") or (128, 128)
        params = [t for t in tensors if t.kind in ("linear", "experts")]
        scale = sum(
            4 * math.prod(-(-d // blk) for d, blk in zip(t.shape[-2:], (bh, bw))) * math.prod(t.shape[:-2])
            for t in params
        )
        fp8 = sum(t.numel for t in params) + scale
        rest = sum(t.numel * 2 for t in tensors if t.kind in ("float", "lm_head"))
        rows.append(
            PlanRow(
                "checkpoint download",
                sum(t.numel for t in tensors if t.kind != "buffer"),
                "fp8+bf16",
                fp8 + rest,
                f"published weights: fp8 e4m3, {bh}x{bw} blocks; disk and download, not GPU",
                in_total=False,
            )
        )

    phases = []
    for name in ("dapt", "sft") if stage == "both" else (stage,):
        section = profile.dapt if name == "dapt" else profile.sft
        lora = section.lora
        seq = profile.data.block_size if name == "dapt" else profile.data.max_sft_tokens
        targets = _lora_targets(tensors, lora, f"{name}.lora")
        trainable = _lora_params(targets, lora.r)
        resident = trainable
        if name == "sft":
            # The workbook trains the task adapter on top of the frozen domain adapter: both resident.
            resident += _lora_params(_lora_targets(tensors, profile.dapt.lora, "dapt.lora"), profile.dapt.lora.r)
        # Only the trained adapter's A outputs are saved for backward (checked: a frozen adapter's are not).
        per_layer_rank = lora.r * sum(1 for t in targets if t.layer == 0)
        # 4-bit experts run through NF4Experts whatever experts_implementation says.
        impl = "nf4" if spec.load_in_4bit and experts_4bit else (spec.experts_implementation or "grouped_mm")
        # Distilled replay (DAPT only) adds the teacher's states and a second chunk of logits to the loss.
        distilled = name == "dapt" and profile.data.replay_loss == "distill"
        act_args = dict(
            s=s, lora_rank_sum=per_layer_rank, attn=spec.attn_implementation, experts_impl=impl, distilled=distilled
        )
        acts = act.activations(arch, batch=section.train.batch_size, seq=seq, **act_args)
        phases.append(
            _Phase(
                name,
                section.train.batch_size,
                seq,
                section.train.grad_accum,
                section.train.gradient_checkpointing,
                resident,
                trainable,
                2 * len(targets),
                per_layer_rank,
                acts,
                act_args,
            )
        )
    return _Priced(arch, tensors, rows, byte_of, _layout(tensors, byte_of, arch.layers), phases)


# Published configs of smaller MoE bases with fused experts in transformers 5.x, largest first, for
# the "smaller base" suggestion. Values are from each model's config.json on the hub.
SMALLER_BASES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (
        "mistralai/Mixtral-8x7B-v0.1",
        "mixtral",
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            num_local_experts=8,
            num_experts_per_tok=2,
            vocab_size=32000,
            tie_word_embeddings=False,
        ),
    ),
    (
        "Qwen/Qwen3-30B-A3B",
        "qwen3_moe",
        dict(
            hidden_size=2048,
            intermediate_size=6144,
            moe_intermediate_size=768,
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            num_experts=128,
            num_experts_per_tok=8,
            vocab_size=151936,
            tie_word_embeddings=False,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        ),
    ),
    (
        "allenai/OLMoE-1B-7B-0924",
        "olmoe",
        dict(
            hidden_size=2048,
            intermediate_size=1024,
            num_hidden_layers=16,
            num_attention_heads=16,
            num_key_value_heads=16,
            num_experts=64,
            num_experts_per_tok=8,
            vocab_size=50304,
            tie_word_embeddings=False,
        ),
    ),
)


def _smaller_base_config(model_type: str, values: dict[str, Any]):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **values)


def _binding(priced: _Priced) -> _Phase:
    """The phase that needs more memory, each with its own checkpointing setting."""
    return max(priced.phases, key=lambda p: _content(priced.layout.total, p))


def _suggestions(
    priced: _Priced, profile: Profile, gpu_bytes: int, gpus: int, experts_4bit: bool, stage: str
) -> list[str]:
    """Changes that make it fit, cheapest first; every one re-checked with the same arithmetic.

    The cheap ones (checkpointing, smaller micro-batches) end the list as soon as one works; the
    expensive ones (more GPUs, CPU offload, another base) are alternatives, all listed if they work.
    """
    out: list[str] = []
    layout, arch, phases = priced.layout, priced.arch, priced.phases
    keys = " / ".join(f"{p.name}.train.gradient_checkpointing" for p in phases)

    # 1. Gradient checkpointing: about one extra forward per step, nothing else changes.
    if any(not p.checkpointing for p in phases) and all(_fits(layout, p, gpu_bytes, gpus, True) for p in phases):
        worst = max(_content(layout.total, p, True) for p in phases)
        out.append(f"turn on gradient checkpointing ({keys}: true): {_gib(worst + _overhead(worst, gpus))} GiB")
        return out
    # 2. Fewer tokens per micro-batch, same tokens per optimizer step (grad_accum up), checkpointing on.
    reduced: list[_Phase] | None = []
    for p in phases:
        fitting = (
            c for b in range(p.batch, 0, -1) if _fits(layout, c := _with_batch(p, arch, b), gpu_bytes, gpus, True)
        )
        best = next(fitting, None)
        if best is None:
            reduced = None
            break
        reduced.append(best)
    if reduced and any(c.batch < p.batch for c, p in zip(reduced, phases)):
        changes = [
            f"{c.name}.train.batch_size: {c.batch}, {c.name}.train.grad_accum: {c.grad_accum}"
            for c, p in zip(reduced, phases)
            if c.batch < p.batch
        ]
        out.append("fewer tokens per step with gradient checkpointing on: " + "; ".join(changes) + f" ({keys}: true)")
        return out

    # 3. More GPUs with device_map="auto" (whole decoder layers per GPU), checkpointing on.
    def gpus_for(size: int) -> int | None:
        counts = [_gpus_needed(layout, p, size, True) for p in phases]
        return None if None in counts else max(counts)

    n_here = gpus_for(gpu_bytes)
    if n_here is not None and n_here > gpus:
        out.append(f"{n_here} x {_gib(gpu_bytes)} GiB GPUs with model.device_map: auto and gradient checkpointing on")
    if gpu_bytes < REFERENCE_GPU_BYTES:
        n_big = gpus_for(REFERENCE_GPU_BYTES)
        if n_big is not None:
            out.append(
                f"{n_big} x {REFERENCE_GPU_LABEL} GPUs with model.device_map: auto and gradient checkpointing on"
            )
    # 4. CPU offload of whole decoder layers, checkpointing on.
    offload = _offload(priced, profile, gpu_bytes, gpus)
    if offload:
        out.append(offload)
    # 5. A smaller base that fits as configured, checkpointing on.
    for model_id, model_type, values in SMALLER_BASES:
        try:
            cand = _price(profile, _smaller_base_config(model_type, values), experts_4bit=experts_4bit, stage=stage)
        except PlanError:
            continue  # the profile's LoRA targets do not exist there
        if all(_fits(cand.layout, p, gpu_bytes, gpus, True) for p in cand.phases):
            params = sum(t.numel for t in cand.tensors if t.kind != "buffer")
            out.append(
                f"a smaller MoE base with fused experts: {model_id} ({params / 1e9:.1f}B params, "
                f"{_gib(cand.layout.total)} GiB of weights priced the same way) with gradient checkpointing on"
            )
            break
    return out


def _offload(priced: _Priced, profile: Profile, gpu_bytes: int, gpus: int) -> str | None:
    """Offload the fewest trailing decoder layers to CPU RAM so the rest fits; None if that cannot work.

    bitsandbytes does not quantize what is placed on the CPU (transformers adds those modules to
    ``modules_to_not_convert``), so host RAM holds them in the compute dtype, and accelerate streams
    one offloaded layer at a time onto the GPU in that dtype, which needs room there too.
    """
    layout = priced.layout
    phase = max(priced.phases, key=lambda p: _content(layout.total, p, True))
    s = DTYPE_BYTES[profile.model.compute_dtype]
    layer_params = [0] * len(layout.layers)
    for t in priced.tensors:
        if t.layer is not None and t.kind != "buffer":
            layer_params[t.layer] += t.numel
    on_gpu = _content(layout.total, phase, True)
    for k in range(1, len(layout.layers) + 1):
        moved = sum(layout.layers[-k:])
        content = on_gpu - moved + max(layer_params[-k:]) * s
        if content + _overhead(content, gpus) <= gpus * gpu_bytes:
            return (
                f"offload {k} of {len(layout.layers)} decoder layers to CPU (device_map: auto with max_memory, "
                f"llm_int8_enable_fp32_cpu_offload): {_gb(moved)} of weights leave the GPU and sit unquantized "
                f"in host RAM ({_gb(sum(layer_params[-k:]) * s)}); every step streams them over PCIe (very slow)"
            )
    return None


def _profile_gpu_target(profile: Profile) -> int | str | None:
    """The GPU size the profile itself declares, if its schema has such a key (``model.gpu_memory``)."""
    return getattr(profile.model, "gpu_memory", None)


def plan(
    profile: Profile,
    *,
    gpu_memory: int | str | None = None,
    gpus: int = 1,
    experts_4bit: bool | None = None,
    stage: Literal["dapt", "sft", "both"] = "both",
    config_path: str | os.PathLike | None = None,
) -> Plan:
    """Price QLoRA training of ``profile`` on ``gpus`` GPUs of ``gpu_memory`` each (default 24 GiB).

    ``experts_4bit`` (default: the profile's ``model.experts_4bit``) prices the fused experts in
    4-bit, as :mod:`modft_utils.modeling.quant` stores them; False prices them as stock ``BitsAndBytesConfig(load_in_4bit=True)`` leaves them, in the compute
    dtype. Both appear in the table. ``stage="both"`` plans for the larger of DAPT and SFT (SFT keeps
    the frozen domain adapter loaded beside the task adapter).
    """
    if stage not in ("dapt", "sft", "both"):
        raise PlanError(f"stage must be dapt, sft or both, got {stage!r}")
    if experts_4bit is None:
        experts_4bit = profile.model.experts_4bit
    if gpus < 1:
        raise PlanError(f"gpus must be at least 1, got {gpus}")
    target = gpu_memory if gpu_memory is not None else _profile_gpu_target(profile)
    gpu_bytes = parse_bytes(target) if target is not None else DEFAULT_GPU_BYTES
    config = read_model_config(profile, config_path)
    priced = _price(profile, config, experts_4bit=experts_4bit, stage=stage)
    layout = priced.layout
    phase = _binding(priced)
    content = _content(layout.total, phase)
    fits = all(_fits(layout, p, gpu_bytes, gpus, p.checkpointing) for p in priced.phases)
    suggestions = [] if fits else _suggestions(priced, profile, gpu_bytes, gpus, experts_4bit, stage)
    notes = [
        "activations assume every sequence is full length (packed DAPT blocks; SFT examples padded to "
        "data.max_sft_tokens) and use the profile's attention and experts kernels "
        f"({profile.model.attn_implementation}, {profile.model.experts_implementation or 'grouped_mm'})",
    ]
    if experts_4bit and profile.model.load_in_4bit and priced.arch.experts:
        notes.append(
            "experts priced in 4-bit, as modeling.load_base stores them (model.experts_4bit); "
            "`--stock-experts` prices stock BitsAndBytesConfig loading, which leaves them 16-bit"
        )
    if profile.model.id == "tiny":
        notes.append(
            "tiny base: vocabulary taken from model.tiny.vocab_size (the trained tokenizer may be a few tokens smaller)"
        )
    if not priced.arch.experts:
        notes.append("dense MLP activations are not calibrated (the estimate is calibrated on MiniMax-M2's MoE layers)")
    model_id = profile.model.id if config_path is None else f"{profile.model.id} (config {config_path})"
    return Plan(
        profile=profile.name,
        model_id=model_id,
        rows=priced.rows,
        lora_params=phase.lora_params,
        lora_bytes=phase.lora_bytes,
        grad_bytes=phase.grad_bytes,
        optimizer_bytes=phase.optimizer_bytes,
        activation_bytes=phase.acts.full,
        activation_bytes_checkpointed=phase.acts.checkpointed,
        overhead_bytes=_overhead(content, gpus),
        total_bytes=content + _overhead(content, gpus),
        gpu_bytes=gpu_bytes,
        gpus=gpus,
        fits=fits,
        suggestions=suggestions,
        stage=stage,
        phase=phase.name,
        batch_size=phase.batch,
        seq_len=phase.seq,
        grad_accum=phase.grad_accum,
        gradient_checkpointing=phase.checkpointing,
        compute_dtype=profile.model.compute_dtype,
        experts_4bit=experts_4bit,
        trainable_params=phase.trainable,
        notes=notes,
    )

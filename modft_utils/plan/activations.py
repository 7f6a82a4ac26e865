"""What autograd keeps per token during a QLoRA training step, for the memory planner.

Every tensor a MiniMax-M2 decoder layer saves for backward, itemised from a saved-tensor hook on the
tiny model (sdpa and eager attention; eager, grouped_mm and batched_mm experts), as a closed form in
the architecture's numbers (:class:`Arch`), plus the loss's peak per token. ``tests/unit/plan/test_plan.py``
checks the forms against the hook on real layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from modft_utils.modeling import Tensor, basecfg, head_loss


@dataclass(frozen=True)
class Arch:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int  # 0: a dense MLP of width ffn
    top_k: int
    ffn: int
    vocab: int
    qk_norm: bool
    # The loss goes through modeling.head_loss (a chunk of tokens at a time, never the batch's logits).
    chunked_head: bool = False


def arch(config, tensors: list[Tensor]) -> Arch:
    experts = (
        getattr(config, "num_local_experts", None)
        or getattr(config, "num_experts", None)
        or getattr(config, "n_routed_experts", None)
        or 0
    )
    ffn = getattr(config, "moe_intermediate_size", None) if experts else None
    return Arch(
        hidden=config.hidden_size,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=basecfg.head_dim(config),
        experts=int(experts),
        top_k=int(getattr(config, "num_experts_per_tok", 1) or 1) if experts else 1,
        ffn=int(ffn or config.intermediate_size),
        vocab=config.vocab_size,
        qk_norm=any(".q_norm." in t.name for t in tensors),
        chunked_head=getattr(config, "model_type", None) in head_loss.PLAIN_HEAD_MODEL_TYPES
        and not getattr(config, "output_router_logits", False),
    )


def layer_activation_bytes(arch: Arch, *, seq: int, s: int, lora_rank_sum: int, attn: str, experts_impl: str) -> int:
    """Bytes autograd saves per token in one decoder layer (frozen 4-bit base, LoRA trained).

    Itemised from a saved-tensor hook on the tiny MiniMax-M2 (fp32), then priced per dtype: RMSNorm
    upcasts to fp32 and saves that copy, the router's sigmoid is fp32, sdpa's log-sum-exp is fp32.
    ``s`` is the compute dtype's size.
    """
    h, q, kv, nh = arch.hidden, arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim, arch.heads
    b = 2 * (4 * h + 4)  # input and post-attention RMSNorm: fp32 input copy + rsqrt
    if arch.qk_norm:
        b += 4 * (q + kv) + 2 * 4  # q_norm/k_norm on the projections, same fp32 saving
    b += s * q  # rotated q
    if attn == "eager":
        expanded = q if arch.heads != arch.kv_heads else kv  # repeat_kv copies k and v to all heads
        b += 2 * s * expanded
        b += 4 * nh * seq + (s * nh * seq if s < 4 else 0)  # softmax probs in fp32 (+ cast copy)
    else:  # sdpa (flash / memory-efficient): q, k, v, output and a per-head log-sum-exp
        b += 2 * s * kv + s * q + 4 * nh
    b += s * q  # o_proj input (the contiguous attention output)
    b += s * h  # normed input of q/k/v (kept for the LoRA A gradient and by bnb's 4-bit matmul)
    b += s * lora_rank_sum  # each LoRA's A output
    b += 2 * 4  # cos/sin slices, masks: measured 2 fp32 per token
    if arch.experts:
        k, f = arch.top_k, arch.ffn
        b += 4 * (arch.experts + 1)  # router probabilities (fp32) and top-k bookkeeping
        if experts_impl == "nf4":  # modft_utils.modeling.quant's fused SiLU experts: gate and up kept, not silu(gate)
            per_slot = s * (2 * f + 2 * h) + 32  # measured: the eager figure less one ffn-wide tensor
        elif experts_impl == "eager":
            per_slot = s * (3 * f + 2 * h) + 32  # gate_up out, act out, gathered input, down out; indices
        elif experts_impl == "batched_mm":
            per_slot = s * (3 * f * h + 3 * f + 2 * h) + 32  # it gathers each token's expert weights
        else:  # grouped_mm, transformers' default
            per_slot = s * (3 * f + h) + 40
        b += k * per_slot
    else:
        b += s * (4 * arch.ffn + h)  # dense SwiGLU (not calibrated: MiniMax-M2 has no dense layers)
    return b


def loss_peak_bytes_per_token(arch: Arch, s: int) -> int:
    """The loss's peak at the start of backward: fp32 log-softmax, its gradient and the logits' gradient.

    transformers upcasts the logits to fp32 for the loss; with a 16-bit compute dtype the fp32
    gradient is also cast back (2 more bytes). Labels are int64, shifted once.
    """
    return arch.vocab * (12 + (2 if s < 4 else 0)) + 16


def chunked_loss_peak_bytes(arch: Arch, tokens: int, s: int, *, distilled: bool = False) -> int:
    """The loss's peak through modeling.head_loss: the hidden states' gradient for every token (kept from
    the forward) and labels, and one chunk's fp32 logits beside their fp32 log-softmax (the 16-bit
    matmul output is freed by the upcast, the 16-bit gradient made after the logits are).

    ``distilled`` (data.replay_loss distill) prices every token as a replay token, the most it can be:
    the teacher's hidden states, and in a chunk the teacher's fp32 log-softmax and probabilities
    beside the student's log-softmax and one fp32 temporary."""
    chunk = min(tokens, head_loss.CHUNK_TOKENS)
    if distilled:
        return tokens * (2 * s * arch.hidden + 16) + chunk * arch.vocab * 16
    return tokens * (s * arch.hidden + 16) + chunk * arch.vocab * 8


@dataclass
class Activations:
    full: int
    checkpointed: int
    per_layer: int  # bytes for the whole step, one layer, no checkpointing
    boundary: int  # bytes for the whole step, one layer's checkpointed input
    loss_peak: int
    final: int


def activations(
    arch: Arch,
    *,
    batch: int,
    seq: int,
    s: int,
    lora_rank_sum: int,
    attn: str,
    experts_impl: str,
    distilled: bool = False,
) -> Activations:
    """Activation memory for ``batch`` sequences of ``seq`` tokens, with and without checkpointing.

    Without checkpointing every layer's saved tensors are alive when backward starts, and the loss's
    peak comes on top: log-softmax and two gradients of vocab size for every token, or one chunk's and
    the hidden states' gradient where the loss goes through modeling.head_loss (``arch.chunked_head``). With checkpointing only each
    layer's input survives the forward; backward recomputes one layer at a time, whose saved tensors
    and their gradients (about as large again) are alive together.
    """
    n = batch * seq
    per_layer = n * layer_activation_bytes(
        arch, seq=seq, s=s, lora_rank_sum=lora_rank_sum, attn=attn, experts_impl=experts_impl
    )
    boundary = n * s * arch.hidden
    final = n * (4 * arch.hidden + 4)  # final RMSNorm
    if arch.chunked_head:
        loss = chunked_loss_peak_bytes(arch, n, s, distilled=distilled)
    else:  # distilled: the teacher's whole logits, then their fp32 log-softmax and probabilities
        loss = n * (loss_peak_bytes_per_token(arch, s) + (arch.vocab * (s + 8) if distilled else 0))
    # The chunked loss's peak is small and comes on top of every saved tensor (measured on the tiny
    # profile: 4 x 36.2 MB saved + 4.3 MB loss + 2.1 MB final norm, 2.6% under the measured growth).
    full = arch.layers * per_layer + final + (loss if arch.chunked_head else max(loss, per_layer))
    ckpt = arch.layers * boundary + final + max(loss, 2 * per_layer)
    return Activations(full, ckpt, per_layer, boundary, loss, final)

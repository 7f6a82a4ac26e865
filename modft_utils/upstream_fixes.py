"""Every workaround for a bug or gap in a library we use, in one place.

Each entry names the library version it was seen on and what goes wrong without it, and
``tests/canaries/test_upstream_fixes.py`` holds a *canary* per entry: a test that reproduces the upstream
behaviour without our fix and fails once upstream changes it. After upgrading peft, bitsandbytes or
transformers, a failing canary says which fix to delete (and its callers to simplify).

==========================================  =====================  ======================================
fix                                         seen on                without it
==========================================  =====================  ======================================
:func:`adapter_key_mismatch`                peft 0.21.2, 0.22.0    an adapter file missing weights loads
                                                                   with a warning and does nothing
:func:`keep_cpu_4bit_exact`                 bitsandbytes 0.50.2    CPU eval drifts from training numerics;
                                                                   saving changes the base's logits
:func:`bnb_dequantize_shape`                bitsandbytes 0.50.2    wrong weights from the CPU dequantize
                                                                   kernel for some shapes
:func:`contiguous_lm_head_input`            torch 2.13.0           every generate call copies the LM-head
                                                                   weight once per row (a second a batch)
:func:`last_complete_checkpoint`            transformers 5.24.0    resuming picks a half-written checkpoint
:func:`restore_adapter`                     transformers 5.24.0    resuming a task adapter on a frozen
                                                                   domain adapter trains the domain one
==========================================  =====================  ======================================

This module imports no other module of the package, so everything may use it.
"""

from __future__ import annotations

import re
from pathlib import Path

from modft_utils.errors import ModftError

WEIGHTS_FILE = "adapter_model.safetensors"


class UpstreamFixError(ModftError, RuntimeError):
    """An adapter file or checkpoint that the workarounds here refuse; the message names it."""


# ---------------------------------------------------------------- peft


def adapter_key_mismatch(peft_model, weights: str | Path, adapter_name: str) -> tuple[list[str], list[str]]:
    """Weights of ``adapter_name`` the model expects but ``weights`` lacks, and tensors in it nothing used.

    peft 0.21.2 and 0.22.0 only warn about missing keys when loading, and a missing ``lora_B`` stays at its
    zero initialisation: the adapter "loads" and does nothing. ``get_peft_model_state_dict`` yields
    exactly the keys ``save_pretrained`` writes for this adapter in this model, so comparing it with
    the file gives the missing and unexpected keys of a load, also for ``PeftModel.from_pretrained``
    (which returns no load result).
    """
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    expected = set(get_peft_model_state_dict(peft_model, adapter_name=adapter_name, save_embedding_layers=False))
    with safe_open(str(weights), framework="numpy") as fh:
        in_file = set(fh.keys())
    return sorted(expected - in_file), sorted(in_file - expected)


# ---------------------------------------------------------------- bitsandbytes


def keep_cpu_4bit_exact(model) -> None:
    """Keep bitsandbytes' CPU inference on the same dequantize-and-matmul path as training.

    bitsandbytes 0.50.2, on CPUs with AVX512-BF16, repacks 4-bit weights on the first no-grad forward
    for a bf16 kernel, and ``state_dict()`` (which PEFT's ``save_pretrained`` calls) unpacks them
    again lossily: measured here, the base's logits moved by up to 3.1 after two saves. With the
    repacking off, eval equals training numerics bit for bit and saving changes nothing, which the
    rollback invariants (logit difference exactly 0) depend on. On the tiny base it was no slower.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def bnb_dequantize_shape(shape: tuple[int, int], blocksize: int) -> tuple[int, int]:
    """The 2-D shape to hand bitsandbytes' ``dequantize_4bit`` op for a weight of ``shape``.

    bitsandbytes 0.50.2's CPU kernel gives wrong values when the last dimension is not a multiple
    of ``blocksize`` (measured: relative error 0.37 instead of 0.09 on a 32x32 weight), although the
    blocks run along the flattened tensor. The natural shape is fastest when the input dimension
    allows it; otherwise one row of all the weights is exact.
    """
    rows, cols = shape
    return shape if cols % blocksize == 0 else (1, rows * cols)


# ---------------------------------------------------------------- torch


def contiguous_lm_head_input(model) -> None:
    """Hand the LM head a contiguous input, so that its matmul is one ``mm``.

    Generation takes the logits of the last position only, ``hidden_states[:, -1:, :]``: a
    [rows, 1, hidden] view whose size-1 dimension keeps the whole sequence's stride. torch 2.13.0's
    matmul does not fold such a view into a matrix (pytorch/pytorch#186148) and copies the weight
    once per row for a ``bmm`` instead: measured on SmolLM2's head (49,152 x 576, bf16), 990 ms for 16
    rows against 7 ms for the same rows contiguous, once per ``generate`` call. Idempotent.
    """
    head = model.get_output_embeddings()
    if head is None or getattr(head, "_modft_contiguous_input", False):
        return

    def contiguous(module, args):
        x = args[0]
        return None if x.is_contiguous() else (x.contiguous(), *args[1:])

    head.register_forward_pre_hook(contiguous)
    head._modft_contiguous_input = True


# ---------------------------------------------------------------- transformers Trainer


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder in ``output_dir``, if a previous run left one.

    The Trainer writes ``trainer_state.json`` last, so a folder without it was cut short by the
    interruption. transformers 5.24.0's ``get_last_checkpoint`` picks it anyway, and resuming fails.
    """
    if not output_dir.is_dir():
        return None
    done = [
        p
        for p in output_dir.iterdir()
        if re.fullmatch(r"checkpoint-\d+", p.name) and (p / "trainer_state.json").is_file()
    ]
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


def restore_adapter(model, name: str, checkpoint: str | Path) -> None:
    """Load adapter ``name``'s weights from a Trainer checkpoint into ``model``, in place, and nothing else.

    A checkpoint holds every loaded adapter (``<name>/adapter_model.safetensors``; the adapter
    called ``default`` at the top). transformers 5.24.0's own restore reloads only the *first* active
    adapter, as trainable, and leaves it active alone: with domain+task active while task trains,
    the resumed run would train the domain adapter. Here only ``name`` is restored, every weight
    checked (:func:`adapter_key_mismatch`), and which adapters are active or trainable stays as the
    caller set it.
    """
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    weights = checkpoint / ("" if name == "default" else name) / WEIGHTS_FILE
    if not weights.is_file():
        raise UpstreamFixError(f"checkpoint {checkpoint} holds no weights for adapter {name!r}")
    missing, unexpected = adapter_key_mismatch(model, weights, name)
    if missing or unexpected:
        raise UpstreamFixError(
            f"checkpoint {checkpoint}: adapter {name!r} does not fit this model: {len(missing)} "
            f"weight(s) missing from the file {missing[:2]}, {len(unexpected)} unexpected in it "
            f"{unexpected[:2]}"
        )
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    set_peft_model_state_dict(model, load_file(str(weights)), adapter_name=name)
    for n, p in model.named_parameters():  # set_peft_model_state_dict leaves flags alone; make sure
        p.requires_grad_(trainable[n])

"""What this machine computes in natively: the dtype ``model.compute_dtype: auto`` resolves to, and
the attention kernel ``model.attn_implementation: auto`` resolves to.

A CPU with AVX512-BF16 or AMX multiplies bfloat16 in hardware: on the 2-core AMD EPYC this workbook
is measured on, a bf16 matmul at SmolLM2's shapes ran 2.3-2.9x a float32 one (``make bench``,
``machine matmul peak`` rows). Without those instructions the CPU has no bf16 multiply and the
gain is not there to take (not measured here: no such CPU was at hand), so float32 stays. A CUDA GPU computes in bf16 where it supports it (Ampere and newer), else in
float16, as QLoRA does.
"""

from __future__ import annotations

from pathlib import Path

# Linux /proc/cpuinfo flag names of the instructions that multiply bf16 in hardware.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where it cannot be read)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_compute_dtype(
    *, cuda: bool | None = None, cuda_bf16: bool | None = None, flags: set[str] | None = None
) -> str:
    """``bfloat16`` where the hardware multiplies in it, ``float16`` on an older GPU, else ``float32``.

    The keyword arguments stand for what is otherwise asked of torch and the CPU (tests pass them).
    """
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
        if cuda and cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_bf16_supported()
    if cuda:
        return "bfloat16" if cuda_bf16 else "float16"
    return "bfloat16" if (cpu_flags() if flags is None else flags) & CPU_BF16_FLAGS else "float32"


def native_attention(*, cuda: bool | None = None) -> str:
    """``sdpa`` on a CUDA GPU (its fused kernels), ``eager`` on a CPU.

    On the 2-core AMD EPYC (AVX512-BF16, torch 2.13), SmolLM2 in NF4 computing in bf16, eager
    attention made a DAPT step 15-20% faster than sdpa (3.44-3.66 s vs 4.15-4.58 s, 8 x 128 tokens)
    and an SFT step 12% faster (3.78-4.30 s vs 4.57-4.82 s); generation took the same time. In float32
    the two were within run-to-run noise (5.06 / 4.97 s vs 5.78 / 4.83 s). Measured side by side in
    one process, alternating, two rounds each (2026-12-07).
    """
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    return "sdpa" if cuda else "eager"

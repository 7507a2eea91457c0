"""Which arithmetic a run uses: ``train.precision`` (auto | fp32 | bf16) resolved for a device.

``auto`` is bf16 autocast where the hardware multiplies bf16 natively -- a CUDA GPU, or a CPU with AVX512-BF16
or AMX-BF16 (oneDNN then runs bf16 matrix products at 2-3x its fp32 rate) -- and fp32 elsewhere: on other CPUs
bf16 is emulated and slower than fp32.
"""

from __future__ import annotations

import functools

import torch

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags_have_bf16(flags: str) -> bool:
    """Whether a ``/proc/cpuinfo`` flags line names a native bf16 instruction set."""
    return bool(set(flags.split()) & set(NATIVE_BF16_CPU_FLAGS))


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and cpu_flags_have_bf16(line.split(":", 1)[1]) for line in f)
    except OSError:  # not Linux: no way to tell here, so no bf16
        return False


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``train.precision`` means bf16 autocast on ``device``."""
    if precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return precision == "bf16"

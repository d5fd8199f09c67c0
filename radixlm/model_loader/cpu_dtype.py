"""What `--dtype auto` means on a CPU: bfloat16 where the cores multiply bf16 natively, else float32.

bf16 matmuls pay on a CPU only with hardware bf16 dot products: AMX-BF16 (tile multiply) or
AVX512-BF16 (`vdpbf16ps`), through oneDNN. Without them (AVX2-only parts such as AMD Zen 3)
torch converts bf16 to float32 around every multiply and is slower than float32, so `auto`
keeps float32 there. The flags are read from `/proc/cpuinfo` once, at start-up.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional

import torch

logger = logging.getLogger(__name__)

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # either one gives native bf16 dot products
CPUINFO = "/proc/cpuinfo"


def cpu_flags(path: str = CPUINFO) -> frozenset[str]:
    """The feature flags of the first CPU listed in `path` (empty where the file is missing:
    non-Linux systems then get float32)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16_flag(flags: Iterable[str]) -> Optional[str]:
    """The first of `BF16_FLAGS` the CPU has, None when it has neither."""
    present = set(flags)
    return next((flag for flag in BF16_FLAGS if flag in present), None)


def cpu_auto_dtype(flags: Optional[Iterable[str]] = None) -> torch.dtype:
    """bfloat16 when the CPU has AMX-BF16 or AVX512-BF16, else float32; logs the choice and why.
    `flags` defaults to this machine's (`cpu_flags()`)."""
    flag = native_bf16_flag(cpu_flags() if flags is None else flags)
    if flag is None:
        logger.info("dtype auto on CPU: float32 (no AMX-BF16 or AVX512-BF16: bf16 matmuls would be emulated)")
        return torch.float32
    logger.info("dtype auto on CPU: bfloat16 (the CPU has %s)", flag)
    return torch.bfloat16

"""Keeps Triton out of a process that computes on the CPU.

torch imports Triton whenever it is installed (e.g. `torch._dynamo` asks `has_triton_package()`
the first time a meta-device parameter is initialised), and Triton's nanobind extension then
prints ~100 "leaked instance / type / function" lines when the process exits. A CPU process
never launches a Triton kernel (radixlm imports its kernels only on CUDA), so it marks the
module unavailable before torch looks: `import triton` then raises ImportError, which torch
treats as "not installed".
"""

from __future__ import annotations

import sys

import torch


def computes_on_cpu(device_name: str) -> bool:
    """True when `--device` (`auto`, `cpu`, `cuda`, `cuda:N`, ...) resolves to the CPU."""
    if device_name == "auto":
        return not torch.cuda.is_available()
    return torch.device(device_name).type == "cpu"


def keep_triton_out(device_name: str) -> bool:
    """Call once at a process's start, before any model is built. On a CPU device, and while
    Triton is not imported yet, make `import triton` fail in this process; returns whether it did.
    Invariant: never changes a process that already imported Triton or computes on a GPU."""
    if not computes_on_cpu(device_name) or "triton" in sys.modules:
        return False
    sys.modules["triton"] = None  # the import system's documented "not available" marker
    return True

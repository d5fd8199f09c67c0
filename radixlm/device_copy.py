"""Host lists to device tensors without stalling the host.

PyTorch's ordinary host-to-device copy (`torch.tensor(x, device="cuda")`, or assigning a CPU
tensor into a CUDA one) synchronizes the stream, so the scheduler would wait for the batch the
GPU is running before it could prepare the next one. `to_device` stages the values in pinned
memory and copies without blocking; the caching host allocator keeps the staging buffer alive
until the copy has run. On the CPU it is plain `torch.tensor`.
"""

from __future__ import annotations

from typing import Sequence

import torch


def to_device(values: Sequence[int] | Sequence[float] | Sequence[bool], device: torch.device,
              dtype: torch.dtype = torch.int64) -> torch.Tensor:
    return pinned_to_device(torch.tensor(values, dtype=dtype), device)


def pinned_to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`, copied through pinned memory without blocking (itself on CPU)."""
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)

"""Attention backends by name; GPU-only implementations are imported inside their factory."""

from __future__ import annotations

from typing import Callable

import torch

from radixlm.attention.base import AttentionBackend
from radixlm.mem_cache.kv_pool import KVPool


def _torch_native(pool: KVPool) -> AttentionBackend:
    from radixlm.attention.torch_native import TorchNativeBackend

    return TorchNativeBackend(pool)


def _cpu(pool: KVPool) -> AttentionBackend:
    from radixlm.attention.cpu_backend import CpuBackend

    return CpuBackend(pool)


def _triton(pool: KVPool) -> AttentionBackend:
    from radixlm.attention.triton_backend import TritonBackend

    return TritonBackend(pool)


_BACKENDS: dict[str, Callable[[KVPool], AttentionBackend]] = {
    "torch_native": _torch_native,
    "cpu": _cpu,
    "triton": _triton,
}


def create_attention_backend(name: str, pool: KVPool, device: torch.device) -> AttentionBackend:
    """Pick the backend once at start-up. `auto`: Triton on CUDA, the CPU backend on CPU,
    torch-native elsewhere."""
    if name == "auto":
        name = {"cuda": "triton", "cpu": "cpu"}.get(device.type, "torch_native")
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; available: {sorted(_BACKENDS)}")
    return _BACKENDS[name](pool)

"""Attention backends by name; GPU-only implementations are imported inside their factory."""

from __future__ import annotations

from typing import Callable

import torch

from radixlm.attention.base import AttentionBackend
from radixlm.mem_cache.kv_pool import KVPool


def _torch_native(pool: KVPool, rows_per_request: int) -> AttentionBackend:
    from radixlm.attention.torch_native import TorchNativeBackend

    return TorchNativeBackend(pool)


def _cpu(pool: KVPool, rows_per_request: int) -> AttentionBackend:
    from radixlm.attention.cpu_backend import CpuBackend

    return CpuBackend(pool)


def _triton(pool: KVPool, rows_per_request: int) -> AttentionBackend:
    from radixlm.attention.triton_backend import TritonBackend

    return TritonBackend(pool, rows_per_request=rows_per_request)


_BACKENDS: dict[str, Callable[[KVPool, int], AttentionBackend]] = {
    "torch_native": _torch_native,
    "cpu": _cpu,
    "triton": _triton,
}


def create_attention_backend(
    name: str, pool: KVPool, device: torch.device, rows_per_request: int = 1
) -> AttentionBackend:
    """Pick the backend once at start-up. `auto`: Triton on CUDA, the CPU backend on CPU,
    torch-native elsewhere. `rows_per_request`: the most decode rows one request may have in a
    batch (speculative verify steps run as decode rows: 1 + the drafts per step); the
    torch-native and CPU backends store every row's K/V before attending anyway."""
    if name == "auto":
        name = {"cuda": "triton", "cpu": "cpu"}.get(device.type, "torch_native")
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; available: {sorted(_BACKENDS)}")
    return _BACKENDS[name](pool, rows_per_request)

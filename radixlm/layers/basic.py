"""Small building blocks shared by the native models: RMSNorm, SiLU-and-mul, rotary embedding."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def use_fused_kernels(device: torch.device) -> bool:
    """Fused Triton kernels on CUDA when Triton is importable; the eager reference elsewhere."""
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, as HF Llama does, then cast to the weight's dtype.

    `forward(x)` returns the normed x; `forward(x, residual)` first adds the residual and
    returns (normed, x + residual). The sum keeps the wider of the two dtypes (a float32 residual
    stream stays float32) while the normed output is always in the weight's dtype, the dtype of the
    projections it feeds. The fused kernel (CUDA) is chosen once, in `init_cache`; it takes x,
    residual and weight in one dtype (CUDA keeps the residual stream in the model dtype)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self._impl = self._eager

    def init_cache(self, device: torch.device) -> None:
        self._chosen = self._impl = self._fused if use_fused_kernels(device) else self._eager

    def use_native(self, native: bool) -> None:
        """Run the torch implementation (True: for torch.compile to fuse) or the one chosen at init."""
        self._impl = self._eager if native else getattr(self, "_chosen", self._eager)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> Any:
        return self._impl(x, residual)

    def _eager(self, x: torch.Tensor, residual: torch.Tensor | None) -> Any:
        if residual is not None:
            x = x + residual
            residual = x
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * xf.to(self.weight.dtype)
        return out if residual is None else (out, residual)

    def _fused(self, x: torch.Tensor, residual: torch.Tensor | None) -> Any:
        from radixlm.kernels.fused import rmsnorm

        shape = x.shape
        out, res = rmsnorm(
            x.reshape(-1, shape[-1]),
            self.weight,
            self.eps,
            None if residual is None else residual.reshape(-1, shape[-1]).contiguous(),
        )
        return out.view(shape) if res is None else (out.view(shape), res.view(shape))


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up for a tensor whose last dim is [gate | up]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return nn.functional.silu(gate) * up


def fused_silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    from radixlm.kernels.fused import silu_and_mul as fused

    return fused(gate_up)


def rope_inv_freq(rope: dict[str, Any], head_dim: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and attention scaling for the rope types we support.

    `rope` is a transformers `rope_parameters` dict. Supported: default, linear, llama3.
    """
    theta = float(rope.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope_type == "default":
        return inv_freq, 1.0
    if rope_type == "linear":
        return inv_freq / float(rope["factor"]), 1.0
    if rope_type == "llama3":
        return _llama3_scale(inv_freq, rope), 1.0
    raise ValueError(f"unsupported rope_type {rope_type!r} (supported: default, linear, llama3)")


def _llama3_scale(inv_freq: torch.Tensor, rope: dict[str, Any]) -> torch.Tensor:
    """Llama-3.1 frequency-dependent rope scaling (long wavelengths slowed by `factor`)."""
    factor = float(rope["factor"])
    low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old_len = float(rope["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Neox-style (half-split) rotary embedding with a precomputed cos/sin cache: float32
    [max_positions, head_dim / 2] tables, which the Triton backend's fused rotary + KV store
    reads directly (so another rotary layout needs its own class, not a subclass of this one)."""

    def __init__(self, head_dim: int, max_positions: int, rope: dict[str, Any]) -> None:
        super().__init__()
        self.head_dim, self.max_positions, self.rope = head_dim, max_positions, rope
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self._impl = self._eager

    def init_cache(self, device: torch.device) -> None:
        """(Re)compute the float32 cos/sin tables; called after the model is materialized."""
        inv_freq, scaling = rope_inv_freq(self.rope, self.head_dim)
        t = torch.arange(self.max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        self.cos = (freqs.cos() * scaling).to(device)
        self.sin = (freqs.sin() * scaling).to(device)
        self._impl = self._fused if use_fused_kernels(device) else self._eager

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q [T, H, D] and k [T, Hkv, D] at `positions` [T]."""
        return self._impl(positions, q, k)

    def _eager(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        return rotate_neox(q, cos, sin), rotate_neox(k, cos, sin)

    def _fused(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from radixlm.kernels.fused import rotary_inplace

        rotary_inplace(positions, q, k, self.cos, self.sin)  # in place, any token/head strides
        return q, k


def rotate_neox(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] rotated half-split by cos, sin [T, 1, D / 2] (float32), in x's dtype."""
    dtype = x.dtype
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(dtype)

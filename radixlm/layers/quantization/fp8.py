"""FP8 W8A8: e4m3 weights with float32 scales, activations quantized per token at run time.

Three ways in, one stored form (`weight` e4m3 [N, K], scales [N, G] per output row and K-group of
`group` columns, G = ceil(K / group)):
  * online (`--quantization fp8` on a float checkpoint): the float weight is loaded as usual, then
    quantized per output row (scale = row amax / 448; group = K);
  * HF `quant_method: fp8` checkpoints with `weight_scale` (per tensor, or per output channel
    [N, 1]): a fused layer's q/k/v or gate/up scalars become the rows' scales (group = K);
  * block-wise checkpoints (`weight_block_size` [bn, bk], `weight_scale_inv` [ceil(N/bn),
    ceil(K/bk)], the dequantization multiplier despite its name): the grid is expanded to rows at
    load (group = bk), so fused parts and tensor-parallel shards need no block alignment in N.

Matmul: CPU dequantizes the weight and multiplies in x's dtype (the reference: weights quantized,
activations not); CUDA runs one row through `fp8_gemm.weight_gemv` (weight-only, the weight stream
is the whole cost), more rows with per-token (per-token-group when block-wise) e4m3 activations
through `torch._scaled_mm` (row-wise scales) or the Triton block-scaled GEMM.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from radixlm.layers.quantization.base import LinearGeometry, LinearMethod, MatmulFn, copy_into, register, replace, take
from radixlm.layers.quantization.unquantized import load_float_weight

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 [N, K], float32 scales [N, 1]) with w ~= q * scale, scale = row amax / 448."""
    w = w.float()
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize(w: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """float32 [N, K] of e4m3 w [N, K] and scales [N, ceil(K / group)]."""
    n, k = w.shape
    expanded = scales.repeat_interleave(group, dim=1)[:, :k]
    return w.float() * expanded


def _cpu_matmul(
    w: torch.Tensor, scales: torch.Tensor, group: int, x: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    return F.linear(x, dequantize(w, scales, group).to(x.dtype), bias)


class Fp8Method(LinearMethod):
    """See the module docstring. `block` is the checkpoint's `weight_block_size` (None: per tensor
    or channel); `online` quantizes a float checkpoint at load."""

    name = "fp8"
    checkpoint_only = frozenset({"input_scale"})  # static activation scales: dynamic ones are used

    def __init__(self, online: bool = False, block: Optional[tuple[int, int]] = None) -> None:
        if online and block is not None:
            raise ValueError("online fp8 quantization is per output channel, not block-wise")
        self.online, self.block = online, block

    def _scale_name(self) -> str:
        return "weight_scale_inv" if self.block else "weight_scale"

    def create_weights(self, layer: nn.Module, geo: LinearGeometry, dtype: torch.dtype) -> None:
        n, k = geo.out_features, geo.in_features
        if self.online:
            register(layer, "weight", (n, k), dtype)
            return
        register(layer, "weight", (n, k), FP8)
        groups = -(-k // self.block[1]) if self.block else 1
        register(layer, self._scale_name(), (n, groups), torch.float32)

    def load(self, layer: nn.Module, geo: LinearGeometry, attr: str, tensor: Any, part: int) -> None:
        if attr == "weight":
            load_float_weight(layer.weight, geo, tensor, part, attr, None if self.online else FP8)
        elif attr == self._scale_name() and not self.online:
            rows = layer.get_parameter(attr).narrow(0, geo.out_offset(part), geo.out_sizes[part])
            copy_into(rows, self._scale_rows(geo, tensor, part), f"{attr} part {part}")
        else:
            raise ValueError(f"fp8 ({'online' if self.online else 'checkpoint'}): unexpected tensor {attr!r}")

    def _scale_rows(self, geo: LinearGeometry, tensor: Any, part: int) -> torch.Tensor:
        """This shard's scales, one row per local output row ([rows, G])."""
        full = take(tensor, 0, None, 1, "weight scale").float()
        rows = geo.out_sizes[part]
        if self.block is None:
            if full.numel() == 1:
                return full.reshape(1, 1).expand(rows, 1)
            return take(full.reshape(-1, 1), 0, geo.out_segments[part], 1, "weight_scale")
        bn, bk = self.block
        if geo.in_segment is not None:
            full = take(full, 1, (geo.in_segment,), bk, "weight_scale_inv")
        index = torch.cat([torch.arange(s, s + n) // bn for s, n in geo.out_segments[part]])
        return full[index]

    def finish_loading(self, layer: nn.Module, geo: LinearGeometry, device: torch.device) -> MatmulFn:
        if self.online:
            q, scale = quantize_rows(layer.weight.data)
            replace(layer, "weight", q)
            layer.register_parameter("weight_scale", nn.Parameter(scale, requires_grad=False))
        w, scales = layer.weight, layer.get_parameter(self._scale_name())
        group = self.block[1] if self.block else geo.in_features
        if device.type != "cuda":
            return partial(_cpu_matmul, w, scales, group)
        from radixlm.layers.quantization.fp8_cuda import cuda_matmul

        return cuda_matmul(w, scales, group, layer.dtype)

    def fill_dummy(self, layer: nn.Module, gen: torch.Generator) -> None:
        with torch.no_grad():
            if self.online:
                layer.weight.uniform_(-0.02, 0.02, generator=gen)
                return
            w = torch.empty(layer.weight.shape, device=layer.weight.device).uniform_(-FP8_MAX, FP8_MAX, generator=gen)
            layer.weight.copy_(w.to(FP8))
            layer.get_parameter(self._scale_name()).fill_(0.02 / FP8_MAX)

    def describe(self) -> dict[str, Any]:
        return {"quant_method": "fp8", "online": self.online, "weight_block_size": list(self.block or []) or None}

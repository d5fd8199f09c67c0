"""The unquantized method: a float weight [N, K] in the model's dtype and `gemv.linear`.

The dense layers do not go through it (an unquantized model keeps its plain layers); it is the
interface's identity element, used by tests and by layers a quantized checkpoint leaves in float
(e.g. an F16 tensor in a GGUF file), and the method the MoE layer takes when nothing is quantized.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch
from torch import nn

from radixlm.kernels import gemv
from radixlm.layers.quantization.base import LinearGeometry, LinearMethod, MatmulFn, copy_into, register, take


def load_float_weight(
    dest: torch.Tensor, geo: LinearGeometry, tensor: Any, part: int, what: str, dtype: Optional[torch.dtype] = None
) -> None:
    """Copy part `part`'s shard of a [N, K] checkpoint weight into its rows of `dest`; with
    `dtype`, the checkpoint tensor must have it (no silent conversion)."""
    rows = take(tensor, 0, geo.out_segments[part], 1, what)
    cols = take(rows, 1, None if geo.in_segment is None else (geo.in_segment,), 1, what)
    if dtype is not None and cols.dtype != dtype:
        raise ValueError(f"{what}: checkpoint dtype {cols.dtype}, expected {dtype}")
    copy_into(dest.narrow(0, geo.out_offset(part), geo.out_sizes[part]), cols, f"{what} part {part}")


def _linear(weight: torch.Tensor, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return gemv.linear(x, weight, bias)


class UnquantizedMethod(LinearMethod):
    """`weight` [N, K] in the activations' dtype; y = x W^T (+ b) through `gemv.linear`."""

    name = "none"

    def create_weights(self, layer: nn.Module, geo: LinearGeometry, dtype: torch.dtype) -> None:
        register(layer, "weight", (geo.out_features, geo.in_features), dtype)

    def load(self, layer: nn.Module, geo: LinearGeometry, attr: str, tensor: Any, part: int) -> None:
        if attr != "weight":
            raise ValueError(f"an unquantized linear has no checkpoint tensor {attr!r}")
        load_float_weight(layer.weight, geo, tensor, part, attr)

    def finish_loading(self, layer: nn.Module, geo: LinearGeometry, device: torch.device) -> MatmulFn:
        return partial(_linear, layer.weight)

    def fill_dummy(self, layer: nn.Module, gen: torch.Generator) -> None:
        with torch.no_grad():
            layer.weight.uniform_(-0.02, 0.02, generator=gen)

"""Quantized linear layers and the pass that puts them into a built model.

`quantize_linears` replaces every column- and row-parallel linear of a model (still on the meta
device) by a `QuantizedColumnLinear` / `QuantizedRowLinear` holding the same shard
(`LinearGeometry`) and a `LinearMethod`; the unquantized layers themselves are untouched, so a
model without quantization runs exactly the code it ran before. The LM head and the embedding
stay unquantized here (a plan's `finish` may take over the head afterwards: gguf on the CPU).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from radixlm.distributed.group import TPGroup
from radixlm.layers.linear import ColumnParallelLinear, RowParallelLinear
from radixlm.layers.quantization.base import LinearGeometry, LinearMethod, MatmulFn, copy_into, take


def _not_loaded(x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    raise RuntimeError("quantized linear used before finish_loading")


class QuantizedLinear(nn.Module):
    """One linear shard whose weight is stored and multiplied by `method`; `finish_loading`
    must run after the weights are loaded (build_model does) and picks the matmul once."""

    def __init__(self, geo: LinearGeometry, method: LinearMethod, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.geo, self.method, self.dtype = geo, method, dtype
        self.checkpoint_only = method.checkpoint_only
        method.create_weights(self, geo, dtype)
        self.bias = nn.Parameter(torch.empty(self._bias_size(), dtype=dtype)) if bias else None
        self._matmul: MatmulFn = _not_loaded

    def _bias_size(self) -> int:
        return self.geo.out_features

    def load_shard(self, attr: str, tensor: Any, part: Optional[int]) -> None:
        """Load checkpoint tensor `attr` of logical part `part` (0 when unfused)."""
        part = part or 0
        if attr == "bias":
            self._load_bias(tensor, part)
        else:
            self.method.load(self, self.geo, attr, tensor, part)

    def _load_bias(self, tensor: Any, part: int) -> None:
        dest = self.bias.narrow(0, self.geo.out_offset(part), self.geo.out_sizes[part])
        copy_into(dest, take(tensor, 0, self.geo.out_segments[part], 1, "bias"), f"bias part {part}")

    def finish_loading(self, device: torch.device) -> None:
        self._matmul = self.method.finish_loading(self, self.geo, device)

    def fill_dummy(self, gen: torch.Generator) -> None:
        self.method.fill_dummy(self, gen)
        if self.bias is not None:
            with torch.no_grad():
                self.bias.uniform_(-0.02, 0.02, generator=gen)

    def extra_repr(self) -> str:
        return f"in={self.geo.in_features}, out={self.geo.out_features}, method={self.method.name}"


class QuantizedColumnLinear(QuantizedLinear):
    """Output rows split across ranks (or a plain linear at tp 1); bias inside the matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul(x, self.bias)


class QuantizedRowLinear(QuantizedLinear):
    """Input columns split across ranks; partial products all-reduced, then the bias added."""

    def __init__(self, geo: LinearGeometry, method: LinearMethod, bias: bool, dtype: torch.dtype, tp: TPGroup) -> None:
        super().__init__(geo, method, bias, dtype)
        self.tp = tp

    def _load_bias(self, tensor: Any, part: int) -> None:
        copy_into(self.bias, take(tensor, 0, None, 1, "bias"), "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tp.all_reduce(self._matmul(x, None))
        return out if self.bias is None else out + self.bias


MethodFor = Callable[[str], Optional[LinearMethod]]


def quantize_linears(model: nn.Module, method_for: MethodFor, dtype: torch.dtype) -> int:
    """Replace each linear of `model` (on the meta device) for which `method_for(name)` gives a
    method; returns how many were replaced. `dtype` is the model's activation dtype."""
    count = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            continue
        method = method_for(name)
        if method is None:
            continue
        bias = module.bias is not None
        with torch.device("meta"):
            if isinstance(module, RowParallelLinear):
                new: nn.Module = QuantizedRowLinear(module.geometry(), method, bias, dtype, module.tp)
            else:
                new = QuantizedColumnLinear(module.geometry(), method, bias, dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        count += 1
    return count


def finish_loading(model: nn.Module, device: torch.device) -> None:
    """Run every quantized layer's `finish_loading` (after its weights are loaded)."""
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            module.finish_loading(device)

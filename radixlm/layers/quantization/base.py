"""The quantization interface of the linear layers.

A `LinearMethod` owns how one linear layer's weight is stored, loaded and multiplied:
`create_weights` registers the parameters (on the meta device, before the model is
materialized), `load` copies one checkpoint tensor's shard into them, `finish_loading` converts
what was loaded (quantize online, repack) and returns the matmul for the device, chosen once.
Methods hold only their configuration, never a layer's tensors, so one object serves every layer.

Sharding is described by `LinearGeometry`: which rows (outputs) and columns (inputs) of each full
checkpoint tensor this rank holds. A method translates those ranges into each tensor's layout
(packed int4 columns, group scales, fp8 scale blocks) with `take`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

Segment = tuple[int, int]  # (start, length) along one dimension of a full checkpoint tensor
MatmulFn = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]  # (x [M, K], bias) -> [M, N]


@dataclass(frozen=True)
class LinearGeometry:
    """This rank's view of one (possibly fused) linear layer y = x W^T.

    `out_sizes[p]` local output rows of logical part p (q/k/v or gate/up are parts), stored one
    after the other; `out_segments[p]` the rows of part p's full checkpoint tensor they come from
    (one segment, or several when KV heads are replicated); `in_features` the local input size and
    `in_segment` the columns of the full tensor it comes from (None: all of them, `full_in`)."""

    in_features: int
    full_in: int
    out_sizes: tuple[int, ...]
    out_segments: tuple[tuple[Segment, ...], ...]
    in_segment: Optional[Segment] = None

    @property
    def out_features(self) -> int:
        return sum(self.out_sizes)

    def out_offset(self, part: int) -> int:
        """First local output row of `part`."""
        return sum(self.out_sizes[:part])

    @property
    def full_out(self) -> tuple[int, ...]:
        """Rows of each part's full checkpoint tensor (at least to the last segment's end)."""
        return tuple(max(s + n for s, n in segs) for segs in self.out_segments)


def take(tensor: Any, dim: int, segments: Optional[tuple[Segment, ...]], factor: int, what: str) -> torch.Tensor:
    """The rows (along `dim`) of `tensor` named by `segments` in logical units, where one stored
    row holds `factor` logical ones (int4 packing, scale groups); all rows when `segments` is None.
    Works on full tensors and on lazy safetensors slices (`narrow` reads only the range). A
    segment must start on a `factor` boundary; its length too, unless it ends the tensor."""
    if segments is None:
        return tensor if isinstance(tensor, torch.Tensor) else tensor.full()
    pieces = []
    for start, length in segments:
        if start % factor:
            raise ValueError(f"{what}: shard starts at {start}, not a multiple of the block of {factor}")
        stored = tensor.shape[dim]
        begin = start // factor
        count = min(-(-length // factor), stored - begin)
        if length % factor and begin + count != stored:
            raise ValueError(f"{what}: shard of {length} is not a multiple of the block of {factor}")
        pieces.append(tensor.narrow(dim, begin, count))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim)


def copy_into(dest: torch.Tensor, src: torch.Tensor, what: str) -> None:
    """Copy with a shape check (dtype converted by `copy_`)."""
    if tuple(dest.shape) != tuple(src.shape):
        raise ValueError(f"shape mismatch for {what}: parameter {tuple(dest.shape)} vs checkpoint {tuple(src.shape)}")
    with torch.no_grad():
        dest.copy_(src)


def register(layer: nn.Module, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> nn.Parameter:
    """A frozen parameter (integer and fp8 tensors cannot require grad)."""
    param = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
    layer.register_parameter(name, param)
    return param


def replace(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    """Swap parameter `name` for `value` (a new dtype or layout after loading)."""
    delattr(layer, name)
    layer.register_parameter(name, nn.Parameter(value, requires_grad=False))


class LinearMethod(ABC):
    """How a linear layer's weight is stored, loaded and multiplied (see the module docstring).

    Invariants: `create_weights` runs on the meta device and only registers parameters (their
    dtypes are final: the model-wide dtype cast has already happened); every parameter it
    registers is filled by `load` (or `fill_dummy`) before `finish_loading`; the function
    `finish_loading` returns computes x W^T (+ bias) in x's dtype for x [M, K], M >= 1."""

    name: str = "none"
    # Checkpoint tensors a layer accepts without storing them (e.g. GPTQ's g_idx, checked).
    checkpoint_only: frozenset[str] = frozenset()

    @abstractmethod
    def create_weights(self, layer: nn.Module, geo: LinearGeometry, dtype: torch.dtype) -> None:
        """Register the layer's weight parameters; `dtype` is the activations' dtype."""

    @abstractmethod
    def load(self, layer: nn.Module, geo: LinearGeometry, attr: str, tensor: Any, part: int) -> None:
        """Copy this rank's shard of checkpoint tensor `attr` (e.g. `weight`, `qweight`,
        `weight_scale`) of logical part `part` into the layer."""

    @abstractmethod
    def finish_loading(self, layer: nn.Module, geo: LinearGeometry, device: torch.device) -> MatmulFn:
        """Convert the loaded tensors (quantize, repack) and return the matmul for `device`."""

    @abstractmethod
    def fill_dummy(self, layer: nn.Module, gen: torch.Generator) -> None:
        """Random weights of the same magnitude as `_init_dummy`'s uniform(-0.02, 0.02)."""

    def describe(self) -> dict[str, Any]:
        """What `get_server_info` reports about the method."""
        return {"quant_method": self.name}

"""INT4 weight-only (W4A16): AWQ and GPTQ checkpoints, one stored form, one kernel.

Published tensor formats (4-bit, group size g along the input K, output N):
  * AWQ (GEMM version): `qweight` int32 [K, N/8], eight outputs per word, nibble i holding
    output 8c + (0, 2, 4, 6, 1, 3, 5, 7)[i]; `qzeros` int32 [K/g, N/8] packed the same way;
    `scales` [K/g, N]; w = (q - z) * s.
  * GPTQ: `qweight` int32 [K/8, N], eight inputs per word (nibble i: input 8r + i); `qzeros`
    int32 [K/g, N/8] (nibble i: output 8c + i) storing z - 1 (`checkpoint_format: gptq`) or z
    (`gptq_v2`); `scales` [K/g, N]; `g_idx` [K] = k // g when `desc_act` is false (checked; act
    order is refused at start-up); symmetric checkpoints store z = 8.

Both are repacked at load into GPTQ's qweight layout (packed along K, [K/8, N]), true zero points
packed along N in order ([K/g, N/8]) and scales [K/g, N] in the activations' dtype; CPU
dequantizes and multiplies (the reference); CUDA multiplies single rows with
`kernels.int4_kmajor`'s GEMV (the one GGUF Q4_K uses, repacked into the same K-major words) and
more rows with `kernels.int4_gemm.w4a16_matmul`. `packed_int4.from_gptq` converts the same form to
`PackedInt4` (the row-major layout `benchmarks/int4_gemv_sweep.py` compares).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from radixlm.layers.quantization.base import LinearGeometry, LinearMethod, MatmulFn, copy_into, register, replace, take
from radixlm.layers.quantization.nibbles import pack, unpack

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AWQ word nibble i holds output 8c + AWQ_ORDER[i]


def awq_to_sequential(values: torch.Tensor) -> torch.Tensor:
    """Nibbles unpacked from AWQ words (last dim) put in output order."""
    inverse = [AWQ_ORDER.index(j) for j in range(8)]
    return values.reshape(*values.shape[:-1], -1, 8)[..., inverse].flatten(-2)


def dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """float32 W^T [K, N] of the stored form (see the module docstring)."""
    q = unpack(qweight, 0).float()  # [K, N]
    z = unpack(qzeros, 1).float()  # [G, N]
    s = scales.float()
    return (q - z.repeat_interleave(group, 0)[: q.shape[0]]) * s.repeat_interleave(group, 0)[: q.shape[0]]


def _cpu_matmul(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group: int,
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
) -> torch.Tensor:
    return F.linear(x, dequantize(qweight, qzeros, scales, group).t().to(x.dtype), bias)


def int4_method(kind: str, qc: dict[str, Any]) -> "Int4Method":
    """The method of an `awq` / `gptq` quantization_config; ValueError naming the field refused."""
    bits = qc.get("bits", qc.get("w_bit"))
    if bits != 4:
        raise ValueError(f"quantization_config.bits {bits!r}: {kind} checkpoints run with 4 bits only")
    group = int(qc.get("group_size", qc.get("q_group_size", 128)))
    if kind == "awq":
        version = str(qc.get("version", "gemm")).lower()
        if version != "gemm":
            raise ValueError(f"quantization_config.version {version!r}: only AWQ's GEMM packing is supported")
        if not qc.get("zero_point", True):
            raise ValueError("quantization_config.zero_point false: AWQ without zero points is not supported")
        return Int4Method("awq", group)
    if qc.get("desc_act", False):
        raise ValueError(
            "quantization_config.desc_act true (act-order GPTQ) is not supported: its g_idx permutes the "
            "input groups; use a checkpoint quantized with desc_act false"
        )
    fmt = str(qc.get("checkpoint_format", "gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise ValueError(f"quantization_config.checkpoint_format {fmt!r}: expected gptq or gptq_v2")
    return Int4Method("gptq", group, zero_offset=1 if fmt == "gptq" else 0, sym=bool(qc.get("sym", True)))


class Int4Method(LinearMethod):
    """AWQ or GPTQ checkpoints (see the module docstring); `group` -1 means one group per row."""

    def __init__(self, kind: str, group: int, zero_offset: int = 0, sym: bool = False) -> None:
        self.name, self.group_size = kind, group
        self.zero_offset, self.sym = zero_offset, sym
        self.checkpoint_only = frozenset({"g_idx"}) if kind == "gptq" else frozenset()

    def _group(self, geo: LinearGeometry) -> int:
        return geo.full_in if self.group_size == -1 else self.group_size

    def create_weights(self, layer: nn.Module, geo: LinearGeometry, dtype: torch.dtype) -> None:
        n, k, g = geo.out_features, geo.in_features, self._group(geo)
        if n % 8 or k % g or any(size % 8 for size in geo.out_sizes) or g % 8:
            raise ValueError(f"{self.name}: a {k} x {n} shard does not split into groups of {g} and words of 8")
        if self.name == "awq":
            register(layer, "qweight", (k, n // 8), torch.int32)
        else:
            register(layer, "qweight", (k // 8, n), torch.int32)
        register(layer, "qzeros", (k // g, n // 8), torch.int32)
        register(layer, "scales", (k // g, n), dtype)

    def load(self, layer: nn.Module, geo: LinearGeometry, attr: str, tensor: Any, part: int) -> None:
        g = self._group(geo)
        if attr == "g_idx":
            self._check_g_idx(take(tensor, 0, None, 1, "g_idx"), g)
            return
        # (output packing, input rows per stored row) of each tensor's [input, output] layout
        factors = {"qweight": (8, 1) if self.name == "awq" else (1, 8), "qzeros": (8, g), "scales": (1, g)}
        if attr not in factors:
            raise ValueError(f"{self.name}: unexpected checkpoint tensor {attr!r}")
        out_factor, in_factor = factors[attr]
        rows = take(tensor, 1, geo.out_segments[part], out_factor, attr)
        shard = take(rows, 0, None if geo.in_segment is None else (geo.in_segment,), in_factor, attr)
        dest = layer.get_parameter(attr)
        offset, size = geo.out_offset(part) // out_factor, geo.out_sizes[part] // out_factor
        copy_into(dest.narrow(1, offset, size), shard, f"{attr} part {part}")

    def _check_g_idx(self, g_idx: torch.Tensor, group: int) -> None:
        want = torch.arange(g_idx.numel(), device=g_idx.device) // group
        if not torch.equal(g_idx.to(torch.int64), want):
            raise ValueError(f"gptq: g_idx is not k // {group} (act order), which is not supported")

    def finish_loading(self, layer: nn.Module, geo: LinearGeometry, device: torch.device) -> MatmulFn:
        if self.name == "awq":
            q = awq_to_sequential(unpack(layer.qweight.data, 1))  # [K, N]
            replace(layer, "qweight", pack(q, 0))
            zeros = awq_to_sequential(unpack(layer.qzeros.data, 1))
        else:
            zeros = (unpack(layer.qzeros.data, 1) + self.zero_offset) & 0xF
        replace(layer, "qzeros", pack(zeros, 1))
        g = self._group(geo)
        if device.type != "cuda":
            return partial(_cpu_matmul, layer.qweight, layer.qzeros, layer.scales, g)
        from radixlm.kernels.int4_kmajor import bind_gptq

        return bind_gptq(layer.qweight, layer.qzeros, layer.scales, g)

    def fill_dummy(self, layer: nn.Module, gen: torch.Generator) -> None:
        with torch.no_grad():
            for name in ("qweight", "qzeros"):
                param = layer.get_parameter(name)
                param.copy_(torch.randint(-(2**31), 2**31 - 1, param.shape, generator=gen, device=param.device))
            layer.scales.fill_(0.04 / 15)

    def describe(self) -> dict[str, Any]:
        return {"quant_method": self.name, "bits": 4, "group_size": self.group_size}

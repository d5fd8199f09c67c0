"""The CUDA matmul of GGUF-quantized layers: Q4_K repacked at load, other block types as stored.

A layer's Q4_K groups (`GGUFMethod.groups`: consecutive parts of one block type) are converted
once into `packed_int4.PackedInt4` (group 32, w = s q + b with s = d sc_j, b = -dmin m_j in
float16: each rounds to 11 bits, relative error <= 2^-11 per group; float32 where float16 would
overflow) and multiplied by `kernels.int4_packed` (the GEMV GPTQ and AWQ use); their bytes leave
the layer's `weight` buffer, which keeps only the other groups' blocks. Those multiply one
contiguous row with the dequantize-in-the-loop GEMV (`kernels.gguf_gemv.gemv`), more rows by
decoding to x's dtype and one GEMM.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from radixlm.layers.quantization import gguf_blocks
from radixlm.layers.quantization.base import MatmulFn, replace
from radixlm.layers.quantization.packed_int4 import PackedInt4, from_q4k, hold

PartFn = Callable[[torch.Tensor], torch.Tensor]
Q4K_SCALE_DTYPE = torch.float16  # 160 bytes per 256 weights instead of 192 in float32


def repack_q4k(rows: torch.Tensor, k: int) -> PackedInt4:
    """Q4_K rows in the packed layout, scales in float16 unless one would not be finite there."""
    packed = from_q4k(rows, k, Q4K_SCALE_DTYPE)
    if bool(torch.isfinite(packed.scales).all() and torch.isfinite(packed.bias).all()):
        return packed
    return from_q4k(rows, k, torch.float32)


def cuda_matmul(layer: nn.Module, groups: list[tuple[torch.Tensor, int]], k: int) -> MatmulFn:
    """Repack the layer's Q4_K groups (parameters `q4k{i}_codes` ...), compact its `weight` to
    the remaining groups' bytes and return x -> x W^T (+ bias) over all groups in order."""
    from radixlm.kernels import gguf_gemv, int4_packed

    kept = [rows.reshape(-1) for rows, qtype in groups if qtype != gguf_blocks.Q4_K]
    buffer = torch.cat(kept) if kept else torch.empty(0, dtype=torch.uint8, device=layer.weight.device)
    parts: list[PartFn] = []
    offset = 0
    for index, (rows, qtype) in enumerate(groups):
        if qtype == gguf_blocks.Q4_K:
            packed = repack_q4k(rows, k)
            hold(layer, packed, prefix=f"q4k{index}_")
            parts.append(partial(_packed_part, int4_packed.bind(packed)))
        else:
            view = buffer.narrow(0, offset, rows.numel()).view(rows.shape)
            offset += rows.numel()
            parts.append(partial(_blocks_matmul, gguf_gemv, view, qtype, k))
    replace(layer, "weight", buffer)
    return partial(_concat, parts)


def _packed_part(matmul: MatmulFn, x: torch.Tensor) -> torch.Tensor:
    return matmul(x, None)


def _blocks_matmul(kernels: object, rows: torch.Tensor, qtype: int, k: int, x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] == 1 and x.is_contiguous():
        return kernels.gemv(x, rows, qtype, k)
    return F.linear(x, kernels.dequantize_rows(rows, qtype, k, x.dtype))


def _concat(parts: list[PartFn], x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    outs = [part(x) for part in parts]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
    return out if bias is None else out + bias

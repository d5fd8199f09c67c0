"""The CUDA matmul of GGUF-quantized layers: Q4_K repacked at load, other block types as stored.

A layer's Q4_K groups (`GGUFMethod.groups`: consecutive parts of one block type) are repacked
once, exactly, into `q4k_kmajor.Q4KMajor` (GPTQ's K-major words with the block's own 6-bit
scales and float16 d / dmin) and multiplied by `kernels.int4_kmajor` (the GEMV GPTQ layers use,
a tensor-core GEMM for more rows); their bytes leave the layer's `weight` buffer, which keeps
only the other groups' blocks. Those multiply one contiguous row with the dequantize-in-the-loop
GEMV (`kernels.gguf_gemv.gemv`), more rows by decoding to x's dtype and one GEMM.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from radixlm.layers.quantization import gguf_blocks
from radixlm.layers.quantization.base import MatmulFn, replace
from radixlm.layers.quantization.q4k_kmajor import from_q4k, hold

PartFn = Callable[[torch.Tensor], torch.Tensor]


def cuda_matmul(layer: nn.Module, groups: list[tuple[torch.Tensor, int]], k: int) -> MatmulFn:
    """Repack the layer's Q4_K groups (parameters `q4k{i}_codes`, `q4k{i}_scale_min`,
    `q4k{i}_d_dmin`), compact its `weight` to the remaining groups' bytes and return
    x -> x W^T (+ bias) over all groups in order."""
    from radixlm.kernels import gguf_gemv, int4_kmajor

    kept = [rows.reshape(-1) for rows, qtype in groups if qtype != gguf_blocks.Q4_K]
    buffer = torch.cat(kept) if kept else torch.empty(0, dtype=torch.uint8, device=layer.weight.device)
    parts: list[PartFn] = []
    offset = 0
    for index, (rows, qtype) in enumerate(groups):
        if qtype == gguf_blocks.Q4_K:
            packed = from_q4k(rows, k)
            hold(layer, packed, prefix=f"q4k{index}_")
            parts.append(partial(_packed_part, int4_kmajor.bind_q4k(packed)))
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

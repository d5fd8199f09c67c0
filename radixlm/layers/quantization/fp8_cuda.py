"""The fp8 method's CUDA matmuls, chosen once per layer at load (see `fp8.py`)."""

from __future__ import annotations

from typing import Optional

import torch

from radixlm.kernels import fp8_gemm
from radixlm.layers.quantization.base import MatmulFn


def cuda_matmul(w: torch.Tensor, scales: torch.Tensor, group: int, dtype: torch.dtype) -> MatmulFn:
    """y = x W^T (+ b) for e4m3 `w` [N, K] with scales [N, G]: one row through the weight-only
    GEMV; more rows with activations quantized per token (group = K: `torch._scaled_mm` with
    row-wise scales, which need a bfloat16 output) or per token and K-group (the Triton
    block-scaled GEMM). `dtype`: the activations' dtype."""
    rowwise = scales.shape[1] == 1 and dtype == torch.bfloat16
    w_t = w.t()  # column-major [K, N], the layout _scaled_mm wants for its second operand
    scale_b = scales.reshape(1, -1).contiguous()

    def matmul(x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if x.shape[0] == 1 and x.is_contiguous():
            return fp8_gemm.weight_gemv(x, w, scales, group, bias)
        x = x.contiguous()
        xq, xs = fp8_gemm.quantize_groups(x, group)
        if rowwise:
            out = torch._scaled_mm(xq, w_t, scale_a=xs, scale_b=scale_b, out_dtype=x.dtype)
        else:
            out = fp8_gemm.block_gemm(xq, xs, w, scales, group, x.dtype)
        return out if bias is None else out + bias

    return matmul

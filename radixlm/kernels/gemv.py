"""Single-row matmul (GEMV) for batch-1 decode: y[1, N] = x[1, K] W[N, K]^T (+ b).

At one row a linear layer only streams its weight, so its time is the weight's bytes over the
memory bandwidth. cuBLAS reaches 2.4-3.3 TB/s on Llama's q/k/v, o and down projections at one
row on an H200 (it splits K and adds a reduce kernel); this kernel gives each program a few
whole output rows, reads them in wide K tiles and reduces in registers, one launch, and measured
3.1-4.2 TB/s on the same shapes (`benchmarks/gemv.py`).

`linear(x, w, b)` and `linear_fp32(x, w)` (the LM head's float32 logits) take this kernel for a
single contiguous row on CUDA and `torch` for everything else. Under `torch.compile` the kernel
is a `torch.library` custom op, one opaque call; eagerly it is launched directly (the op's
dispatch costs host time that eager prefill forwards, which launch ~150 kernels, feel).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

_HALF = (torch.bfloat16, torch.float16)


def gemv_config(n: int, k: int) -> tuple[int, int, int]:
    """(rows per program, K tile, warps), from sweeps on an H200 (`benchmarks/gemv.py --sweep`)
    with the first tile loaded before the PDL wait, where wide tiles keep more weight bytes in
    flight from a program's start: long rows (the down projection) 2 x 2048 with 8 warps up to
    K = 8192 and 2 x 512 beyond; square matrices (o_proj) a 4 x 2048 slice; wide outputs
    (gate/up, LM head) 4 x 2048 with 8 warps at K >= 4096, else 4 x 1024; the rest (q/k/v)
    1024 tiles of 4 rows at K >= 4096, else 2. A tile that does not divide K is halved until
    it does (K is a multiple of 128)."""
    big = k >= 4096
    if k >= 8192:
        rows, block_k, warps = (2, 2048, 8) if k <= 8192 else (2, 512, 4)
    elif n <= k:
        rows, block_k, warps = 4, 2048, 8 if big else 4
    elif n >= 4 * k:
        rows, block_k, warps = (4, 2048, 8) if big else (4, 1024, 4)
    else:
        rows, block_k, warps = 4 if big else 2, 1024, 4
    while k % block_k:
        block_k //= 2
    return rows, block_k, warps


def supports(x: torch.Tensor, w: torch.Tensor) -> bool:
    """The kernel's domain: one contiguous half-precision row on CUDA, K a multiple of 128."""
    return (
        x.dim() == 2
        and x.shape[0] == 1
        and x.is_cuda
        and x.dtype in _HALF
        and w.dtype == x.dtype
        and x.is_contiguous()
        and w.is_contiguous()
        and w.shape[1] % 128 == 0
    )


def gemv_into(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: Optional[torch.Tensor],
    out: torch.Tensor,
    config: Optional[tuple[int, int, int]] = None,
) -> torch.Tensor:
    """out[1, N] = x[1, K] @ w[N, K]^T (+ bias), in out's dtype; `supports(x, w)` must hold
    (or, on the CPU, TRITON_INTERPRET=1 with contiguous tensors). `config`: `gemv_config`'s
    triple (its K tile must divide K); None takes `gemv_config(N, K)`. Triton is imported here,
    on the first call, so that importing this module (every linear layer does) never loads it."""
    from radixlm.kernels.gemv_kernel import gemv_into as launch

    n, k = w.shape
    config = config or gemv_config(n, k)
    if k % config[1]:
        raise ValueError(f"GEMV K tile {config[1]} does not divide K = {k}")
    return launch(x, w, bias, out, config)


def _gemv_new(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], fp32_out: bool) -> torch.Tensor:
    out = torch.empty((1, w.shape[0]), dtype=torch.float32 if fp32_out else x.dtype, device=x.device)
    return gemv_into(x, w, bias, out)


@torch.library.custom_op("radixlm::gemv", mutates_args=())
def _gemv_op(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], fp32_out: bool) -> torch.Tensor:
    return _gemv_new(x, w, bias, fp32_out)


@_gemv_op.register_fake
def _(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], fp32_out: bool) -> torch.Tensor:
    return x.new_empty((1, w.shape[0]), dtype=torch.float32 if fp32_out else x.dtype)


def _gemv(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], fp32_out: bool) -> torch.Tensor:
    """The GEMV into a new [1, N] tensor: through the custom op while torch.compile traces (one
    opaque node), else the kernel launch itself, without the op's dispatch and alias checks
    (~5-10 µs of host time per call, 65 calls per eager 1B step; `benchmarks/eager_profile.py`)."""
    if torch.compiler.is_compiling():
        return _gemv_op(x, w, bias, fp32_out)
    return _gemv_new(x, w, bias, fp32_out)


def linear(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`F.linear(x, w, bias)` for 2-D x; a single row on CUDA goes through the GEMV kernel."""
    if supports(x, w) and (bias is None or bias.is_contiguous()):
        return _gemv(x, w, bias, False)
    return F.linear(x, w, bias)


def linear_fp32(x: torch.Tensor, w: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float32 `x @ w^T` on CUDA without a cast kernel (the LM head): a single row through the
    GEMV kernel, more rows through `mm` with a float32 output; into `out` [rows, N] (float32,
    contiguous) when given (not under torch.compile: the custom op allocates its own)."""
    if supports(x, w):
        return _gemv(x, w, None, True) if out is None else gemv_into(x, w, None, out)
    if out is None:
        return torch.mm(x, w.t(), out_dtype=torch.float32)
    return torch.mm(x, w.t(), out_dtype=torch.float32, out=out)

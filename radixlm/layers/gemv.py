"""Single-row matmul (GEMV) for batch-1 decode: y[1, N] = x[1, K] W[N, K]^T (+ b).

At one row a linear layer only streams its weight, so its time is the weight's bytes over the
memory bandwidth. cuBLAS reaches 2.4-3.3 TB/s on Llama's q/k/v, o and down projections at one
row on an H200 (it splits K and adds a reduce kernel); this kernel gives each program a few
whole output rows, reads them in wide K tiles and reduces in registers, one launch, and measured
3.1-4.2 TB/s on the same shapes (`benchmarks/gemv.py`).

`linear(x, w, b)` and `linear_fp32(x, w)` (the LM head's float32 logits) take this kernel for a
single contiguous row on CUDA and `torch` for everything else. Two variants fold the small
kernel before a projection into its prologue: `rmsnorm_linear` (residual add + RMSNorm, then
q/k/v or gate/up) and `silu_mul_linear` (SiLU(gate) * up, then down); at one row each saves a
launch and a round trip of the activation per layer. The kernels are `torch.library` custom
ops, so `torch.compile` treats each as one opaque call.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

_HALF = (torch.bfloat16, torch.float16)


def gemv_config(n: int, k: int) -> tuple[int, int, int]:
    """(rows per program, K tile, warps), from sweeps on an H200 (`benchmarks/gemv.py --sweep`):
    at K >= 4096, 16 rows x 256 for wide outputs (gate/up, LM head) and 8 x 512 when N > K
    (q/k/v); otherwise 4 x 512; 8 warps for long rows (K >= 8192, the down projection)."""
    block_k = 512 if k % 512 == 0 else 256 if k % 256 == 0 else 128
    warps = 8 if k >= 8192 else 4
    if k >= 4096 and n >= 4 * k:
        return 16, min(block_k, 256), warps
    if k >= 4096 and n > k:
        return 8, block_k, warps
    return 4, block_k, warps


def supports(x: torch.Tensor, w: torch.Tensor) -> bool:
    """The kernel's domain: one contiguous half-precision row on CUDA, K a multiple of 128."""
    return (x.dim() == 2 and x.shape[0] == 1 and x.is_cuda and x.dtype in _HALF and w.dtype == x.dtype
            and x.is_contiguous() and w.is_contiguous() and w.shape[1] % 128 == 0)


# What the kernel computes from its input row before the product (a compile-time choice).
PLAIN, RMSNORM, SILU_MUL = 0, 1, 2


def supports_rmsnorm(x: torch.Tensor, residual: Optional[torch.Tensor], norm_weight: torch.Tensor,
                     w: torch.Tensor) -> bool:
    """`rmsnorm_linear`'s domain: `supports(x, w)`, and the residual and norm weight alike."""
    return (supports(x, w) and norm_weight.dtype == x.dtype and norm_weight.is_contiguous()
            and (residual is None or (residual.shape == x.shape and residual.dtype == x.dtype
                                      and residual.is_contiguous())))


def supports_silu_mul(gate_up: torch.Tensor, w: torch.Tensor) -> bool:
    """`silu_mul_linear`'s domain: one contiguous half row [gate | up] of twice w's K on CUDA."""
    return (gate_up.dim() == 2 and gate_up.shape[0] == 1 and gate_up.shape[1] == 2 * w.shape[1]
            and gate_up.is_cuda and gate_up.dtype in _HALF and w.dtype == gate_up.dtype
            and gate_up.is_contiguous() and w.is_contiguous() and w.shape[1] % 128 == 0)


if triton is not None:
    @triton.jit
    def _gemv_kernel(x_ptr, res_ptr, norm_ptr, res_out_ptr, w_ptr, b_ptr, y_ptr, N, eps,
                     K: tl.constexpr, PROLOGUE: tl.constexpr, HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """One program = BLOCK_N output rows over all of K (K % BLOCK_K == 0); fp32 accumulation.

        PROLOGUE RMSNORM: the input is s = x (+ res), rounded to x's dtype as an unfused add
        would; program 0 writes s to res_out; y = rsqrt(mean(s^2) + eps) * W (norm * s), the
        scale applied after the sum, so one pass over K. SILU_MUL: x_ptr holds [gate | up] of
        2K and the input is SiLU(gate) * up, in float32."""
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_K)
        row_ok = rows < N
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        squares = tl.zeros((BLOCK_K,), dtype=tl.float32)
        writes = tl.where(pid == 0, BLOCK_K, 0)  # program 0 stores the residual row
        w_tile = w_ptr + rows[:, None].to(tl.int64) * K + cols[None, :]
        for k in range(0, K, BLOCK_K):
            w = tl.load(w_tile + k, mask=row_ok[:, None], other=0.0)
            if PROLOGUE == 2:  # SILU_MUL
                gate = tl.load(x_ptr + k + cols).to(tl.float32)
                x = gate / (1.0 + tl.exp(-gate)) * tl.load(x_ptr + K + k + cols).to(tl.float32)
            elif PROLOGUE == 1:  # RMSNORM
                s = tl.load(x_ptr + k + cols)
                if HAS_RES:
                    s = (s.to(tl.float32) + tl.load(res_ptr + k + cols).to(tl.float32)).to(s.dtype)
                tl.store(res_out_ptr + k + cols, s, mask=cols < writes)
                x = s.to(tl.float32)
                squares += x * x
                x *= tl.load(norm_ptr + k + cols).to(tl.float32)
            else:
                x = tl.load(x_ptr + k + cols).to(tl.float32)
            acc += w.to(tl.float32) * x[None, :]
        y = tl.sum(acc, axis=1)
        if PROLOGUE == 1:
            y *= tl.rsqrt(tl.sum(squares, axis=0) / K + eps)
        if HAS_BIAS:
            y += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


def _launch(prologue: int, x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor,
            config: Optional[tuple[int, int, int]], residual: Optional[torch.Tensor] = None,
            norm_weight: Optional[torch.Tensor] = None, residual_out: Optional[torch.Tensor] = None,
            eps: float = 0.0) -> torch.Tensor:
    n, k = w.shape
    block_n, block_k, warps = config or gemv_config(n, k)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, x if residual is None else residual, w if norm_weight is None else norm_weight,
        out if residual_out is None else residual_out, w, w if bias is None else bias, out, n, eps,
        k, prologue, residual is not None, bias is not None, block_n, block_k, num_warps=warps)
    return out


def gemv_into(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor,
              config: Optional[tuple[int, int, int]] = None) -> torch.Tensor:
    """out[1, N] = x[1, K] @ w[N, K]^T (+ bias), in out's dtype; `supports(x, w)` must hold
    (or, on the CPU, TRITON_INTERPRET=1 with contiguous tensors). `config`: `gemv_config`'s
    triple (its K tile must divide K); None takes `gemv_config(N, K)`."""
    return _launch(PLAIN, x, w, bias, out, config)


def rmsnorm_gemv_into(x: torch.Tensor, residual: Optional[torch.Tensor], norm_weight: torch.Tensor, eps: float,
                      w: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor, residual_out: torch.Tensor,
                      config: Optional[tuple[int, int, int]] = None) -> torch.Tensor:
    """out = RMSNorm(s) @ w^T (+ bias) with s = x + residual (x when residual is None), and
    residual_out = s; residual_out must not alias x or residual. Same domain as `gemv_into`."""
    return _launch(RMSNORM, x, w, bias, out, config, residual, norm_weight, residual_out, eps)


def silu_mul_gemv_into(gate_up: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor,
                       config: Optional[tuple[int, int, int]] = None) -> torch.Tensor:
    """out = (SiLU(gate) * up) @ w^T (+ bias) for gate_up = [gate | up], each w's K wide."""
    return _launch(SILU_MUL, gate_up, w, bias, out, config)


@torch.library.custom_op("radixlm::gemv", mutates_args=())
def _gemv_op(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], fp32_out: bool) -> torch.Tensor:
    out = torch.empty((1, w.shape[0]), dtype=torch.float32 if fp32_out else x.dtype, device=x.device)
    return gemv_into(x, w, bias, out)


@_gemv_op.register_fake
def _(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], fp32_out: bool) -> torch.Tensor:
    return x.new_empty((1, w.shape[0]), dtype=torch.float32 if fp32_out else x.dtype)


@torch.library.custom_op("radixlm::rmsnorm_gemv", mutates_args=())
def _rmsnorm_gemv_op(x: torch.Tensor, residual: Optional[torch.Tensor], norm_weight: torch.Tensor, eps: float,
                     w: torch.Tensor, bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    out, residual_out = x.new_empty((1, w.shape[0])), torch.empty_like(x)
    rmsnorm_gemv_into(x, residual, norm_weight, eps, w, bias, out, residual_out)
    return out, residual_out


@_rmsnorm_gemv_op.register_fake
def _(x: torch.Tensor, residual: Optional[torch.Tensor], norm_weight: torch.Tensor, eps: float,
      w: torch.Tensor, bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty((1, w.shape[0])), torch.empty_like(x)


@torch.library.custom_op("radixlm::silu_mul_gemv", mutates_args=())
def _silu_mul_gemv_op(gate_up: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return silu_mul_gemv_into(gate_up, w, bias, gate_up.new_empty((1, w.shape[0])))


@_silu_mul_gemv_op.register_fake
def _(gate_up: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return gate_up.new_empty((1, w.shape[0]))


def linear(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`F.linear(x, w, bias)` for 2-D x; a single row on CUDA goes through the GEMV kernel."""
    if supports(x, w) and (bias is None or bias.is_contiguous()):
        return _gemv_op(x, w, bias, False)
    return F.linear(x, w, bias)


def linear_fp32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """float32 `x @ w^T` on CUDA without a cast kernel (the LM head): a single row through the
    GEMV kernel, more rows through `mm` with a float32 output."""
    if supports(x, w):
        return _gemv_op(x, w, None, True)
    return torch.mm(x, w.t(), out_dtype=torch.float32)


def rmsnorm_linear(x: torch.Tensor, residual: Optional[torch.Tensor], norm_weight: torch.Tensor, eps: float,
                   w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(s) W^T + b, s) for s = x + residual (x when None), in one kernel; the caller
    checks `supports_rmsnorm` (other inputs take the norm and `linear` separately)."""
    return _rmsnorm_gemv_op(x, residual, norm_weight, eps, w, bias)


def silu_mul_linear(gate_up: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(SiLU(gate) * up) W^T + b in one kernel; the caller checks `supports_silu_mul`."""
    return _silu_mul_gemv_op(gate_up, w, bias)

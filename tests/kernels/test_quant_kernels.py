"""The fp8 and int4 Triton kernels against float64 torch products of the same decoded values.

On a GPU they run compiled (and the layer methods' CUDA matmuls are checked: `torch._scaled_mm`
row-wise, the block-scaled GEMM, the GEMVs); without one, through Triton's interpreter in a
subprocess. Tolerances (relative Frobenius error of the output): 1e-5 for float32 activations
(the kernels accumulate in float32), 1e-2 for bf16 (its own rounding is ~4e-3); activation
quantization to e4m3 is checked against the activations themselves (e4m3 has 3 mantissa bits). The interpreter's
`tl.dot` on bf16 operands returns garbage (Triton 3.9: bf16 is stored as raw 16-bit words there),
so on the CPU the int4 GEMM's half-precision case runs in fp16; on a GPU both.
"""

from __future__ import annotations

import sys

import pytest
import torch
from helpers.interpreted import UNIT, run_interpreted

pytest.importorskip("triton")
FP8 = torch.float8_e4m3fn


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def check_int4(device: str) -> None:
    from radixlm.kernels.int4_gemm import w4a16_matmul
    from radixlm.layers.quantization.int4 import dequantize, pack

    gen = torch.Generator().manual_seed(0)
    # (M, N, K, group): GEMV with a K split, small batches, a ragged N tile, group 32 and 64
    for m, n, k, group in ((1, 96, 2048, 128), (3, 64, 512, 64), (17, 200, 256, 32), (40, 128, 384, 128)):
        q = torch.randint(0, 16, (k, n), generator=gen)
        z = torch.randint(0, 16, (k // group, n), generator=gen)
        s = torch.rand(k // group, n, generator=gen) * 0.01
        qw, qz = pack(q, 0).to(device), pack(z, 1).to(device)
        w = dequantize(qw.cpu(), qz.cpu(), s, group).double()
        halves = (torch.bfloat16, torch.float16) if device == "cuda" else (torch.float16,)
        for dtype, tol in ((torch.float32, 1e-5),) + tuple((h, 1e-2) for h in halves):
            x = torch.randn(m, k, generator=gen)
            bias = torch.randn(n, generator=gen)
            got = w4a16_matmul(qw, qz, s.to(device, dtype), group, x.to(device, dtype), bias.to(device, dtype))
            want = x.to(dtype).double() @ w + bias.to(dtype).double()
            assert got.dtype == dtype and got.shape == (m, n)
            assert rel_err(got.cpu(), want) < tol, (m, n, k, group, dtype, rel_err(got.cpu(), want))
    check_int4_gemv(device, gen)


def check_int4_gemv(device: str, gen: torch.Generator) -> None:
    """The GEMV kernel called directly with several rows, a ragged N tile and a K split."""
    from radixlm.kernels.int4_gemv import w4a16_gemv
    from radixlm.layers.quantization.int4 import dequantize, pack

    for m, n, k, group in ((3, 200, 256, 32), (2, 72, 1024, 64)):
        q = torch.randint(0, 16, (k, n), generator=gen)
        z = torch.randint(0, 16, (k // group, n), generator=gen)
        s = torch.rand(k // group, n, generator=gen) * 0.01
        qw, qz = pack(q, 0).to(device), pack(z, 1).to(device)
        w = dequantize(qw.cpu(), qz.cpu(), s, group).double()
        halves = (torch.bfloat16, torch.float16) if device == "cuda" else (torch.float16,)
        for dtype, tol in ((torch.float32, 1e-5),) + tuple((h, 1e-2) for h in halves):
            x = torch.randn(m, k, generator=gen)
            got = w4a16_gemv(qw, qz, s.to(device, dtype), group, x.to(device, dtype))
            want = x.to(dtype).double() @ w
            assert got.dtype == dtype and rel_err(got.cpu(), want) < tol, (m, n, k, group, dtype)


def check_fp8(device: str) -> None:
    from radixlm.kernels import fp8_gemm

    gen = torch.Generator().manual_seed(1)
    # torch's round-to-nearest e4m3 cast: ~2.6 % rms error on Gaussian data; the interpreter's
    # cast truncates (~5.5 %); the GPU's cvt.rn rounds to nearest
    quant_tol = 0.035 if device == "cuda" else 0.08
    # sm_90's fp8 MMA sums a K tile with ~14 mantissa bits before the float32 accumulator (Triton's
    # default there), so the compiled block GEMM is held to 5e-4; the interpreter sums in float32
    gemm_tol = 5e-4 if device == "cuda" else 1e-5
    for m, n, k, group in ((1, 72, 512, 128), (5, 130, 256, 128), (33, 64, 384, 384), (2, 40, 256, 256)):
        w = (torch.randn(n, k, generator=gen) * 100).clamp(-448, 448).to(FP8)
        ws = torch.rand(n, -(-k // group), generator=gen) * 0.01
        w_ref = w.float() * ws.repeat_interleave(group, 1)[:, :k]
        x = torch.randn(m, k, generator=gen)
        xq, xs = fp8_gemm.quantize_groups(x.to(device), group)
        xg = x.view(m, -1, group)
        xs_ref = xg.abs().amax(-1) / 448
        assert torch.allclose(xs.cpu(), xs_ref, rtol=1e-6)
        x_got = xq.cpu().float().view(m, -1, group) * xs.cpu()[..., None]
        assert rel_err(x_got.view(m, k), x) < quant_tol
        got = fp8_gemm.block_gemm(xq, xs, w.to(device), ws.to(device), group, torch.float32)
        want = x_got.view(m, k).double() @ w_ref.double().t()
        assert rel_err(got.cpu(), want) < gemm_tol, (m, n, k, group, rel_err(got.cpu(), want))
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
            row = x[:1].to(dtype)
            bias = torch.randn(n, generator=gen).to(dtype)
            got = fp8_gemm.weight_gemv(row.to(device), w.to(device), ws.to(device), group, bias.to(device))
            want = row.double() @ w_ref.double().t() + bias.double()
            assert got.dtype == dtype and rel_err(got.cpu(), want) < tol, (n, k, group, dtype)


def check_gguf(device: str) -> None:
    """The GGUF GEMV and decode kernels against the torch decoders, every block type."""
    import numpy as np
    from test_gguf_quantized import random_blocks

    from radixlm.kernels import gguf_gemv
    from radixlm.layers.quantization import gguf_blocks

    rng = np.random.default_rng(0)
    for qtype in gguf_blocks.BLOCKS:
        for n, k in ((10, 512), (3, 256), (5, 1024)):  # 1024: the Q4_K kernel splits K
            rows = torch.from_numpy(random_blocks(qtype, n, k, rng))
            w = gguf_blocks.dequantize(rows, qtype, k).double()
            assert torch.equal(gguf_gemv.dequantize_rows(rows.to(device), qtype, k, torch.float32).cpu(), w.float())
            for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
                x = torch.randn(1, k, dtype=torch.float64).to(dtype)
                bias = torch.randn(n, dtype=torch.float64).to(dtype)
                got = gguf_gemv.gemv(x.to(device), rows.to(device), qtype, k, bias.to(device))
                want = x.double() @ w.t() + bias.double()
                assert got.dtype == dtype and rel_err(got.cpu(), want) < tol, (qtype, n, k, dtype)


@pytest.mark.parametrize("check", ["check_int4", "check_fp8", "check_gguf"])
def test_quant_kernels_match_float64_products(check: str) -> None:
    if torch.cuda.is_available():
        if check == "check_gguf":
            sys.path.insert(0, UNIT)
        globals()[check]("cuda")
        return
    run_interpreted("test_quant_kernels", f"t.{check}('cpu')", paths=[UNIT])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("block", [None, (128, 128)])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_fp8_cuda_matmul_matches_its_reference(block: tuple[int, int] | None, rows: int) -> None:
    """The fp8 method's CUDA path (GEMV at one row, `_scaled_mm` row-wise or the block GEMM with
    quantized activations above) within 3e-2 of the bf16 product of the decoded weights (e4m3
    activations carry ~3 % error per element, much less after the sum)."""
    from radixlm.layers.quantization.fp8_cuda import cuda_matmul

    gen = torch.Generator().manual_seed(2)
    n, k = 384, 1024
    group = block[1] if block else k
    w = (torch.randn(n, k, generator=gen) * 100).clamp(-448, 448).to(FP8).cuda()
    ws = (torch.rand(n, k // group, generator=gen) * 1e-3).cuda()
    matmul = cuda_matmul(w, ws, group, torch.bfloat16)
    x = torch.randn(rows, k, generator=gen).to("cuda", torch.bfloat16)
    bias = torch.randn(n, generator=gen).to("cuda", torch.bfloat16)
    want = x.double() @ (w.double() * ws.double().repeat_interleave(group, 1)).t() + bias.double()
    assert rel_err(matmul(x, bias), want) < 3e-2

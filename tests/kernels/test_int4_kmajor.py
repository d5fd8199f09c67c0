"""`int4_kmajor`: the K-major int4 GEMV for GPTQ's stored form and Q4_K repacked (`q4k_kmajor`).

Repacking (CPU, no Triton): random Q4_K blocks (random bytes, finite float16 d and dmin) repacked
and decoded again must equal the `gguf` package's dequantization bit for bit (float32; the layout
keeps the block's own fields).

The inline-PTX unpack cannot run on a CPU: its instruction text (`int4_kmajor_kernel._DOT8_PTX`) is
executed here by a small torch emulator of the eight PTX instructions it uses (float16 operations
rounded once, as the hardware does), on every 16-bit nibble pattern: the codes it forms must be
exact and the dot product within float16 rounding (2^-9 relative to sum |x q|).

Kernels (portable path): on a GPU compiled, without one through Triton's interpreter in a
subprocess. Tolerances (relative Frobenius error vs float64 products of the stored values): 1e-5
for float32 activations (float32 sums; the 1 + q / 16 trick cancels ~5 bits), 1e-2 for half
precision (its own rounding is ~4e-3). On a GPU the PTX path (half-precision activations) is
held to 1e-2 at Llama-3-8B shapes, and both paths must compile for sm_90 without a layout
conversion in the K loop.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest
import torch
from helpers.interpreted import run_interpreted

from radixlm.layers.quantization import gguf_blocks
from radixlm.layers.quantization import q4k_kmajor as Q

HERE = os.path.dirname(__file__)
TESTS = os.path.dirname(HERE)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double().cpu() - want.double().cpu()).norm() / want.double().cpu().norm()).item()


def random_q4k(n: int, k: int, seed: int) -> torch.Tensor:
    """uint8 rows [n, row_bytes] of random Q4_K blocks with finite d, dmin in [0, 0.02)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, (n, k // 256 * 144), dtype=np.uint8)
    blocks = rows.reshape(-1, 144)
    halves = (rng.random((blocks.shape[0], 2)) * 0.02).astype(np.float16)
    blocks[:, 0:4] = halves.view(np.uint8)
    return torch.from_numpy(rows)


def test_q4k_repack_equals_gguf_dequantize_exactly() -> None:
    gguf = pytest.importorskip("gguf")
    rows = random_q4k(24, 1024, 0)
    p = Q.from_q4k(rows, 1024)
    assert p.codes.shape == (128, 24) and p.scale_min.shape == (16, 24) and p.d_dmin.shape == (4, 24)
    want = torch.from_numpy(gguf.dequantize(rows.numpy(), gguf.GGMLQuantizationType.Q4_K)).reshape(24, 1024)
    assert torch.equal(Q.dequantize(p), want.float())
    # 148 bytes per 256 weights (the block's 144 plus 4 of 6-bit fields spread over bytes)
    assert sum(t.numel() * t.element_size() for t in (p.codes, p.scale_min, p.d_dmin)) == 24 * 4 * 148


def test_k_major_words_hold_consecutive_k() -> None:
    q = torch.randint(0, 16, (3, 64), generator=torch.Generator().manual_seed(1))
    words = Q.pack_k(q)
    assert words.dtype == torch.int32 and torch.equal(Q.unpack_k(words), q)
    assert (words[2, 5].item() >> 12) & 0xF == q[2, 8 * 5 + 3].item()


# --- the inline PTX, emulated -------------------------------------------------------------


def _h2(v: torch.Tensor) -> torch.Tensor:
    """int64 words (32-bit) -> float64 [.., 2] of their float16 halves (low, high)."""
    halves = torch.stack([v & 0xFFFF, (v >> 16) & 0xFFFF], -1).to(torch.int16)
    return halves.view(torch.float16).double()


def _from_h2(f: torch.Tensor) -> torch.Tensor:
    """float64 [.., 2] rounded to float16 once -> int64 words."""
    bits = f.half().view(torch.int16).to(torch.int64) & 0xFFFF
    return bits[..., 0] | bits[..., 1] << 16


def emulate_ptx(text: str, args: list[torch.Tensor]) -> torch.Tensor:
    """Run the asm block `text` ($0 out, $1.. int64 32-bit inputs) over tensors: the
    instructions `_DOT8_PTX` uses, float16x2 results rounded once to float16."""
    regs: dict[str, torch.Tensor] = {f"${i + 1}": a for i, a in enumerate(args)}
    for line in text.splitlines():
        line = line.strip().rstrip(";")
        if not line or line[0] in "{}." or line.startswith("//"):
            continue
        op, rest = line.split(None, 1)
        ops = [o.strip() for o in re.split(r",(?![^{]*})", rest)]
        val = lambda o: regs[o] if o in regs else torch.tensor(int(o, 0), dtype=torch.int64)  # noqa: E731
        if op == "mov.b32" and ops[0].startswith("{"):
            lo, hi = (r.strip() for r in ops[0].strip("{}").split(","))
            regs[lo], regs[hi] = val(ops[1]) & 0xFFFF, (val(ops[1]) >> 16) & 0xFFFF
        elif op == "mov.b32":
            regs[ops[0]] = val(ops[1])
        elif op == "shr.u32":
            regs[ops[0]] = (val(ops[1]) & 0xFFFFFFFF) >> int(ops[2])
        elif op == "lop3.b32":
            assert ops[4] == "0xEA"  # (a & b) | c
            regs[ops[0]] = (val(ops[1]) & val(ops[2])) | val(ops[3])
        elif op in ("sub.f16x2", "mul.f16x2"):
            a, b = _h2(val(ops[1])), _h2(val(ops[2]))
            regs[ops[0]] = _from_h2(a - b if op.startswith("sub") else a * b)
        elif op == "fma.rn.f16x2":
            regs[ops[0]] = _from_h2(_h2(val(ops[1])) * _h2(val(ops[2])) + _h2(val(ops[3])))
        elif op == "cvt.f32.f16":
            regs[ops[0]] = val(ops[1]).to(torch.int16).view(torch.float16).double()
        elif op == "add.f32":
            regs[ops[0]] = (regs[ops[1]].float() + regs[ops[2]].float()).double()
        else:
            raise AssertionError(f"instruction {op} not emulated")
    return regs["$0"]


def _pairs(x: torch.Tensor) -> list[torch.Tensor]:
    """x [.., 8] float32 (already scaled) -> the four float16x2 words (x_i | x_{i+4} << 16)."""
    bits = x.half().view(torch.int16).to(torch.int64) & 0xFFFF
    return [bits[..., i] | bits[..., i + 4] << 16 for i in range(4)]


def test_ptx_unpack_forms_exact_codes_and_the_dot_product() -> None:
    pytest.importorskip("triton")
    from radixlm.kernels.int4_kmajor_kernel import _DOT8_PTX

    text = _DOT8_PTX.value if hasattr(_DOT8_PTX, "value") else str(_DOT8_PTX)
    gen = torch.Generator().manual_seed(2)
    low = torch.arange(2**16, dtype=torch.int64)  # every pattern of nibbles 0..3 ...
    words = low | (low.flip(0) << 16)  # ... and of nibbles 4..7
    q = (words[:, None] >> (4 * torch.arange(8))) & 0xF  # [W, 8]
    for i in range(8):  # one-hot activations read each code back exactly
        x = torch.zeros(words.shape[0], 8)
        x[:, i] = 1.0
        got = emulate_ptx(text, [words, *_pairs(x)])
        assert torch.equal(got, q[:, i].double()), i
    x = torch.randn(words.shape[0], 8, generator=gen) * 2.0**-6
    x = x.half().float()  # the kernel rounds x 2^-6 to float16 first
    got = emulate_ptx(text, [words, *_pairs(x)])
    want = (x.double() * q.double()).sum(-1)
    bound = 2.0**-9 * (x.double().abs() * q.double()).sum(-1)
    assert bool(((got - want).abs() <= bound).all())


# --- kernels ------------------------------------------------------------------------------


def check_kernels(device: str) -> None:
    """GPTQ and Q4_K GEMVs (portable path; several rows, ragged N, K splits), the Q4_K GEMM and
    bind_q4k's dispatch, against float64 products of the stored weights."""
    from radixlm.kernels import int4_kmajor as KM
    from radixlm.layers.quantization.int4 import dequantize, pack

    gen = torch.Generator().manual_seed(3)
    half = torch.bfloat16 if device == "cuda" else torch.float16
    gptq_cases = ((1, 200, 512, 128, None), (3, 72, 256, 32, None), (2, 128, 1024, 64, KM.KMajorConfig(64, 8, 4, 4)))
    for m, n, k, group, cfg in gptq_cases:
        q = torch.randint(0, 16, (k, n), generator=gen)
        z = torch.randint(0, 16, (k // group, n), generator=gen)
        s = torch.rand(k // group, n, generator=gen) * 0.01
        qw, qz = pack(q, 0), pack(z, 1)
        w = dequantize(qw, qz, s, group).double()
        for dtype, tol in ((torch.float32, 1e-5), (half, 1e-2)):
            x = torch.randn(m, k, generator=gen).to(dtype)
            got = KM.gptq_gemv(qw.to(device), qz.to(device), s.to(device, dtype), group, x.to(device), cfg, asm=False)
            assert got.dtype == dtype and rel_err(got, x.double() @ w) < tol, (m, n, k, group, dtype)
    for m, n, k, cfg in ((1, 160, 512, None), (3, 72, 1024, KM.KMajorConfig(64, 4, 8, 2)), (2, 256, 768, None)):
        rows = random_q4k(n, k, m + n)
        p = Q.from_q4k(rows.to(device), k)
        w = gguf_blocks.dequantize(rows, gguf_blocks.Q4_K, k).double()
        for dtype, tol in ((torch.float32, 1e-5), (half, 1e-2)):
            x = torch.randn(m, k, generator=gen).to(dtype)
            got = KM.q4k_gemv(p, x.to(device), cfg, asm=False)
            assert got.dtype == dtype and rel_err(got, x.double() @ w.t()) < tol, (m, n, k, dtype)
    rows = random_q4k(96, 512, 7)
    p = Q.from_q4k(rows.to(device), 512)
    w = gguf_blocks.dequantize(rows, gguf_blocks.Q4_K, 512).double()
    matmul = KM.bind_q4k(p)
    for m, dtype, tol in ((12, torch.float32, 1e-5), (40, torch.float16, 1e-2), (1, torch.float32, 1e-5)):
        x = torch.randn(m, 512, generator=gen).to(dtype)
        bias = torch.randn(96, generator=gen).to(dtype)
        got = matmul(x.to(device), bias.to(device))
        assert got.shape == (m, 96) and rel_err(got, x.double() @ w.t() + bias.double()) < tol, (m, dtype)


def interpreted(check: str) -> None:
    run_interpreted("test_int4_kmajor", f"t.{check}('cpu')", timeout=900)


def test_kmajor_kernels_match_float64_products() -> None:
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        check_kernels("cuda")
        return
    interpreted("check_kernels")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336)])
def test_ptx_path_at_llama_shapes(n: int, k: int) -> None:
    """Default launches (K splits reduced in a bound workspace), bf16 activations, both paths."""
    from radixlm.kernels import int4_kmajor as KM
    from radixlm.layers.quantization.int4 import dequantize, pack

    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, k, generator=gen).to("cuda", torch.bfloat16)
    p = Q.from_q4k(random_q4k(n, k, 8).cuda(), k)
    want = x.double() @ Q.dequantize(p).double().t()
    for asm in (True, False):
        assert rel_err(KM.q4k_gemv(p, x, asm=asm), want) < 1e-2, asm
    q = torch.randint(0, 16, (k, n), generator=gen)
    z = torch.randint(0, 16, (k // 128, n), generator=gen)
    s = (torch.rand(k // 128, n, generator=gen) * 0.01).to(torch.bfloat16)
    qw, qz = pack(q, 0).cuda(), pack(z, 1).cuda()
    want = x.double() @ dequantize(qw.cpu(), qz.cpu(), s, 128).double().cuda()
    matmul = KM.bind_gptq(qw, qz, s.cuda(), 128)
    for _ in range(2):  # the bound workspace is clean again after each call
        assert rel_err(matmul(x), want) < 1e-2
    assert rel_err(KM.gptq_gemv(qw, qz, s.cuda(), 128, x, asm=False), want) < 1e-2


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the compiled kernels and the sweep are measured")
def test_default_launches_compile_for_sm90_without_loop_conversions() -> None:
    """Compiled offline for an H100 (Triton + ptxas, no GPU): both paths assemble (the PTX text
    included), the K loop loads 16-byte vectors and holds no barrier or shared-memory store, and
    the PTX path issues fewer instructions per weight than the portable one."""
    pytest.importorskip("triton")
    from radixlm.kernels import int4_kmajor as KM

    sys.path.insert(0, os.path.join(os.path.dirname(TESTS), "benchmarks"))
    try:
        from int4_gemv_sass import report_kmajor
    except ImportError as exc:  # a Triton without the offline compile API
        pytest.skip(f"offline compile unavailable: {exc}")
    for kind, cfg in (("gptq", KM.gptq_config(1, 4096, 4096, 128)), ("q4k", KM.q4k_config(1, 4096, 4096))):
        portable, ptx = report_kmajor(kind, cfg, False), report_kmajor(kind, cfg, True)
        for r in (portable, ptx):
            assert r.barriers == 0 and r.shared_stores == 0 and r.wide_loads >= 1, (kind, r)
        assert ptx.per_element < portable.per_element, (kind, portable, ptx)

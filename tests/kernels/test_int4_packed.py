"""`PackedInt4` (GPTQ, AWQ and GGUF Q4_K repacked at load) and its Triton GEMV / GEMM.

Repacking (CPU, no Triton): Q4_K blocks are written here from chosen fields per the GGUF spec
(d, dmin, eight 6-bit (scale, min) pairs packed into 12 bytes, nibble codes) and the repacked
weights must equal d sc_j q - dmin m_j exactly with float32 scales; with float16 scales (the CUDA
default) each scale and bias rounds to 11 bits, so every weight is within 2^-11 (|s q| + |b|)
of the exact one (measured: printed by the test). GPTQ (sym / asym) and AWQ checkpoints written by
`helpers.quant_checkpoints` repack exactly.

Kernels: on a GPU they run compiled; without one through Triton's interpreter in a subprocess
(as `test_quant_kernels.py`). Tolerances (relative Frobenius error of the output vs float64
products of the stored values): 1e-5 for float32 activations (float32 sums; the 1 + q / 16
trick of the GEMV cancels ~5 bits), 1e-2 for half precision (its own rounding is ~4e-3). The
interpreter's `tl.dot` on bf16 is unusable, so there the GEMM's half case is float16.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from helpers.interpreted import run_interpreted

from radixlm.layers.quantization import gguf_blocks
from radixlm.layers.quantization import packed_int4 as P

HERE = os.path.dirname(__file__)
TESTS = os.path.dirname(HERE)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double().cpu() - want.double().cpu()).norm() / want.double().cpu().norm()).item()


def q4k_fields(blocks: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random Q4_K fields: d, dmin float16 [B]; sc, m [B, 8] in 0..63; q [B, 256] in 0..15."""
    return {
        "d": (torch.rand(blocks, generator=gen) * 0.01).half(),
        "dmin": (torch.rand(blocks, generator=gen) * 0.01).half(),
        "sc": torch.randint(0, 64, (blocks, 8), generator=gen),
        "m": torch.randint(0, 64, (blocks, 8), generator=gen),
        "q": torch.randint(0, 16, (blocks, 256), generator=gen),
    }


def q4k_write(f: dict[str, torch.Tensor]) -> torch.Tensor:
    """uint8 [B, 144] per the GGUF spec: d, dmin, then scales[12] where for j < 4
    scales[j] = sc_j | (sc_{j+4} >> 4) << 6, scales[j+4] = m_j | (m_{j+4} >> 4) << 6,
    scales[j+8] = (sc_{j+4} & 15) | (m_{j+4} & 15) << 4; then byte 32c + l holds element
    64c + l (low nibble) and 64c + 32 + l (high nibble)."""
    b = f["d"].shape[0]
    sc, m, q = f["sc"], f["m"], f["q"]
    scales = torch.zeros(b, 12, dtype=torch.int64)
    scales[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    chunks = q.reshape(b, 4, 2, 32)
    qs = (chunks[:, :, 0] | (chunks[:, :, 1] << 4)).reshape(b, 128)
    head = torch.stack([f["d"], f["dmin"]], 1).view(torch.uint8)  # [B, 4]
    return torch.cat([head, scales.to(torch.uint8), qs.to(torch.uint8)], 1)


def q4k_weights(f: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """float64 [n, K]: w = d sc_j q - dmin m_j, element 32 j + l of each block in sub-block j."""
    sc = f["sc"].double().repeat_interleave(32, 1)
    m = f["m"].double().repeat_interleave(32, 1)
    w = f["d"].double()[:, None] * sc * f["q"].double() - f["dmin"].double()[:, None] * m
    return w.reshape(n, -1)


def q4k_case(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 rows [n, row_bytes], float64 weights [n, k])."""
    f = q4k_fields(n * k // 256, torch.Generator().manual_seed(seed))
    return q4k_write(f).reshape(n, -1), q4k_weights(f, n)


def test_q4k_written_from_the_spec_repacks_exactly_with_float32_scales() -> None:
    f = q4k_fields(6 * 3, torch.Generator().manual_seed(0))
    rows, want = q4k_write(f).reshape(6, -1), q4k_weights(f, 6)
    packed = P.from_q4k(rows, 768, torch.float32)
    assert packed.group == 32 and packed.codes.shape == (6, 96) and packed.scales.shape == (6, 24)
    assert torch.equal(P.unpack_codes(packed.codes, 32), f["q"].reshape(6, 768))
    assert torch.equal(packed.scales.double(), (f["d"].double()[:, None] * f["sc"]).reshape(6, 24))
    assert torch.equal(packed.bias.double(), (-f["dmin"].double()[:, None] * f["m"]).reshape(6, 24))
    # s q + b in float32 rounds exactly as the reference decoder's d sc q - dmin m
    assert torch.equal(P.dequantize(packed), gguf_blocks.dequantize(rows, gguf_blocks.Q4_K, 768))
    assert rel_err(P.dequantize(packed), want) < 1e-7


def test_q4k_float16_scales_stay_within_eleven_bits() -> None:
    rows, want = q4k_case(64, 1024, 1)
    exact = P.from_q4k(rows, 1024, torch.float32)
    half = P.from_q4k(rows, 1024, torch.float16)
    q = P.unpack_codes(exact.codes, 32).double()
    rep = lambda t: t.double().repeat_interleave(32, 1)  # noqa: E731
    bound = (2.0**-11 + 2.0**-22) * (rep(exact.scales).abs() * q + rep(exact.bias).abs())
    err = (P.dequantize(half).double() - want).abs()
    assert bool((err <= bound).all())
    ratio = (err.max() / want.abs().max()).item()
    print(f"Q4_K float16 scales: max |w16 - w| = {err.max().item():.3g} ({ratio:.3g} of max |w|)")
    assert 0 < ratio < 2.0**-11  # float16 rounding does change values, within the bound


@pytest.mark.parametrize("group,k", [(16, 256), (64, 512), (128, 1024), (1024, 2048), (96, 384)])
def test_codes_round_trip_with_the_layout_group(group: int, k: int) -> None:
    g = P.layout_group(group, k)
    assert group % g == 0 and g & (g - 1) == 0 and 16 <= g <= P.MAX_GROUP
    q = torch.randint(0, 16, (5, k), generator=torch.Generator().manual_seed(group))
    codes = P.pack_codes(q, g)
    assert codes.dtype == torch.int32 and torch.equal(P.unpack_codes(codes, g), q)
    # word j of group 0 holds element i * GW + j in nibble i
    assert (codes[0, 1].item() >> 8) & 0xF == q[0, 2 * g // 8 + 1].item()


def int4_layer(method_name: str, kind: str = "qkv", bias: bool = True) -> tuple[torch.nn.Module, torch.nn.Module]:
    sys.path.insert(0, os.path.join(TESTS, "unit"))
    from test_quant_layers import build_pair

    from radixlm.distributed.group import TPGroup

    return build_pair(kind, TPGroup.single(), method_name, bias)


@pytest.mark.parametrize("method_name", ["awq", "gptq_sym", "gptq_asym"])
def test_gptq_and_awq_repack_exactly(method_name: str) -> None:
    from radixlm.layers.quantization.int4 import dequantize

    layer, plain = int4_layer(method_name)
    group = layer.method._group(layer.geo)
    packed = P.from_gptq(layer.qweight.data, layer.qzeros.data, layer.scales.data, group)
    assert torch.equal(P.dequantize(packed), dequantize(layer.qweight, layer.qzeros, layer.scales, group).t())
    assert torch.equal(P.dequantize(packed), plain.weight.data)


def test_default_gemv_configs_fill_the_gpu_at_llama_shapes() -> None:
    """The heuristic launch (shapes outside the measured `TUNED` table) keeps >= 2 programs per
    SM; every launch, measured or not, splits K into whole groups."""
    pytest.importorskip("triton")
    from radixlm.kernels import int4_packed as K

    for n, k in ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)):
        for group in (32, 128):
            cfg = K.gemv_config(1, n, k, group)
            assert (k // group) % cfg.split_k == 0 and cfg.block_k % group == 0, (n, k, group, cfg)
            if (n, k, group) in K.TUNED:
                assert cfg == K.TUNED[(n, k, group)]
                continue
            programs = -(-n // cfg.block_n) * cfg.split_k
            assert programs >= 2 * K.SMS, (n, k, group, cfg)


# ---- kernels: compiled on a GPU, interpreted in a subprocess without one ----


def check_kernels(device: str) -> None:
    """GEMV (1 and 3 rows, default and explicit configs incl. K splits) and GEMM (9, 20 rows) of
    every format against float64 products of the stored weights; ragged N."""
    from radixlm.kernels import int4_packed as K

    gen = torch.Generator().manual_seed(3)
    halves = (torch.bfloat16, torch.float16) if device == "cuda" else (torch.float16,)
    cases = []
    for n, k in ((40, 512), (24, 768)):
        rows, _ = q4k_case(n, k, n)
        cases.append(P.from_q4k(rows, k, torch.float32))
        cases.append(P.from_q4k(rows, k, torch.float16))
    for n, k, group in ((72, 1024, 128), (20, 256, 64), (24, 256, 16)):
        q = torch.randint(0, 16, (n, k), generator=gen)
        s = torch.rand(n, k // group, generator=gen).half() * 0.01
        b = -torch.randint(0, 16, (n, k // group), generator=gen) * s.float()
        cases.append(P.PackedInt4(P.pack_codes(q, P.plane_of(group)), s, b, group, P.plane_of(group)))
    configs = [None, K.GemvConfig(8, 256, 2, 2), K.GemvConfig(32, 512, 1, 4, 2), K.GemvConfig(16, 128, 4, 4)]
    for p in cases:
        w = P.dequantize(p).double()
        p = P.PackedInt4(p.codes.to(device), p.scales.to(device), p.bias.to(device), p.group, p.plane)
        ws = K.workspace(p.n, torch.device(device))  # shared by all calls below
        for dtype, tol in ((torch.float32, 1e-5),) + tuple((h, 1e-2) for h in halves):
            for m, launches in ((1, configs), (3, configs[:2])):  # several rows: default and a K split
                x = torch.randn(m, p.k, generator=gen).to(dtype)
                want = x.double() @ w.t()
                for cfg in launches:
                    got = K.gemv(p, x.to(device), cfg, ws)
                    assert got.dtype == dtype and got.shape == (m, p.n)
                    assert rel_err(got, want) < tol, (p.n, p.k, p.group, dtype, m, cfg, rel_err(got, want))
                # the split workspace is zero again after every call (the next call relies on it)
                assert not ws.sums.any() and not ws.counts.any()
            gemm_dtype = torch.float16 if dtype == torch.bfloat16 and device != "cuda" else dtype
            for m in (9, 20):
                x = torch.randn(m, p.k, generator=gen).to(gemm_dtype)
                bias = torch.randn(p.n, generator=gen).to(gemm_dtype)
                got = K.bind(p)(x.to(device), bias.to(device))
                want = x.double() @ w.t() + bias.double()
                assert got.dtype == gemm_dtype and rel_err(got, want) < tol, (p.n, p.k, gemm_dtype, m)


def repack_for_gpu(layer: torch.nn.Module, group: int):
    """Replace an int4 layer's stored form by `PackedInt4` (exact, see `packed_int4.from_gptq`)
    and return its Triton matmul; on the tensors' own device."""
    from radixlm.kernels import int4_packed
    from radixlm.layers.quantization.packed_int4 import from_gptq, hold

    packed = from_gptq(layer.qweight.data, layer.qzeros.data, layer.scales.data, group)
    for name in ("qweight", "qzeros", "scales"):
        delattr(layer, name)
    hold(layer, packed)
    return int4_packed.bind(packed)


def check_layers(device: str) -> None:
    """The layer paths: AWQ / GPTQ layers repacked into `PackedInt4` (`repack_for_gpu`), and a
    fused GGUF layer (Q4_K, Q4_K, Q6_K parts) through `gguf_cuda.cuda_matmul` (Q4_K served by
    `int4_kmajor`), against the plain layer."""

    gen = torch.Generator().manual_seed(4)
    for name in ("awq", "gptq_sym", "gptq_asym"):
        layer, plain = int4_layer(name)
        group = layer.method._group(layer.geo)
        layer = layer.to(device)
        matmul = repack_for_gpu(layer, group)
        assert not hasattr(layer, "qweight") and layer.codes.dtype == torch.int32
        for m in (1, 12):
            x = torch.randn(m, layer.geo.in_features, generator=gen)
            got = matmul(x.to(device), layer.bias)
            assert rel_err(got, plain(x)) < 1e-5, (name, m, rel_err(got, plain(x)))
    check_gguf_layer(device, gen)


def check_gguf_layer(device: str, gen: torch.Generator) -> None:
    sys.path.insert(0, os.path.join(TESTS, "unit"))
    from test_gguf_quantized import Holder, layer_of

    from radixlm.distributed.group import TPGroup
    from radixlm.layers.quantization.gguf import GGUFMethod
    from radixlm.layers.quantization.gguf_cuda import cuda_matmul
    from radixlm.layers.quantization.layer import quantize_linears
    from radixlm.model_loader.gguf_reader import GGUFBlocks

    parts = [(256, gguf_blocks.Q4_K), (64, gguf_blocks.Q4_K), (64, gguf_blocks.Q6_K)]
    tp, k = TPGroup.single(), 256
    with torch.device("meta"):
        holder = Holder(layer_of("qkv", tp))
    method = GGUFMethod(tuple(t for _, t in parts))
    quantize_linears(holder, lambda name: method, torch.float32)
    holder = holder.to_empty(device=device)
    layer, decoded = holder.proj, []
    rng = np.random.default_rng(5)
    for part, (n, qtype) in enumerate(parts):
        if qtype == gguf_blocks.Q4_K:
            rows, w = q4k_case(n, k, part)
        else:
            from test_gguf_quantized import random_blocks

            rows = torch.from_numpy(random_blocks(qtype, n, k, rng))
            w = gguf_blocks.dequantize(rows, qtype, k).double()
        layer.load_shard("weight", GGUFBlocks(rows, qtype, (n, k)), part)
        decoded.append(w)
    q6k_bytes = 64 * gguf_blocks.row_bytes(gguf_blocks.Q6_K, k)
    matmul = cuda_matmul(layer, method.groups(layer, layer.geo), k)
    assert layer.weight.numel() == q6k_bytes  # the Q4_K bytes left the buffer
    # the Q4_K parts repacked exactly (`q4k_kmajor`): K-major words, the blocks' own scale fields
    assert layer.q4k0_codes.shape == (k // 8, 320) and layer.q4k0_scale_min.shape == (k // 64, 320)
    w = torch.cat(decoded)
    for m, dtype in ((1, torch.float32), (1, torch.float16), (10, torch.float32)):
        x = torch.randn(m, k, generator=gen).to(dtype)
        got = matmul(x.to(device), None)
        assert rel_err(got, x.double() @ w.t()) < (1e-5 if dtype == torch.float32 else 1e-2), (m, dtype)


@pytest.mark.parametrize("check", ["check_kernels", "check_layers"])
def test_packed_int4_kernels_match_float64_products(check: str) -> None:
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        sys.path.insert(0, TESTS)
        globals()[check]("cuda")
        return
    run_interpreted("test_int4_packed", f"t.{check}('cpu')", timeout=900)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336)])
def test_compiled_gemv_at_llama_shapes(n: int, k: int) -> None:
    """Default configs (K splits, atomics) at real shapes, bf16 activations, both groups."""
    from radixlm.kernels import int4_packed as K

    gen = torch.Generator().manual_seed(6)
    for group in (32, 128):
        q = torch.randint(0, 16, (n, k), generator=gen)
        s = torch.rand(n, k // group, generator=gen).half() * 0.01
        b = -8 * s.float()
        p = P.PackedInt4(P.pack_codes(q, 32).cuda(), s.cuda(), b.cuda(), group, 32)
        x = torch.randn(1, k, generator=gen).to("cuda", torch.bfloat16)
        want = x.double() @ P.dequantize(p).double().t()
        assert rel_err(K.gemv(p, x), want) < 1e-2


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the compiled kernels and the sweep are measured")
def test_default_gemv_compiles_for_sm90_without_per_tile_layout_conversions() -> None:
    """Compiled offline for an H100 (Triton + ptxas, no GPU needed): the default configs' K loop
    loads the words in 16-byte vectors, has no barrier or shared-memory store (a layout
    conversion per tile) and stays near the ~5 instructions per weight that copy speed allows."""
    pytest.importorskip("triton")
    from radixlm.kernels import int4_packed as K

    sys.path.insert(0, os.path.join(os.path.dirname(TESTS), "benchmarks"))
    try:
        from int4_gemv_sass import report
    except ImportError as exc:  # a Triton without the offline compile API
        pytest.skip(f"offline compile unavailable: {exc}")
    for group in (32, 128):
        for n in (4096, 28672):  # with and without a K split
            r = report(group, K.gemv_config(1, n, 4096, group))
            assert r.barriers == 0 and r.shared_stores == 0, (group, n, r)
            assert r.wide_loads >= 4 and r.per_element < 6.0, (group, n, r)

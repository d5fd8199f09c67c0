"""The CPU kernel over GGUF Q4_0 / Q4_1 / Q8_0 blocks (`kernels/cpu_q4.c`) against the torch decoder
(`gguf_blocks.dequantize`, itself checked against the `gguf` package): the vectorized build and
a portable build (no AVX2 / F16C), one row and several rows of x, row counts that are not a
multiple of the kernel's four-row step; and the gguf method choosing it on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radixlm.kernels import cpu_q4
from radixlm.layers.quantization import gguf, gguf_blocks

PORTABLE = ("-O2", "-mno-avx2", "-mno-f16c", "-fopenmp", "-shared", "-fPIC")
KERNEL_TYPES = [gguf_blocks.Q4_0, gguf_blocks.Q4_1, gguf_blocks.Q8_0]


def random_blocks(qtype: int, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 rows [n, row_bytes] of random codes with float16 d (and m) in [-0.05, 0.05]."""
    size = gguf_blocks.BLOCKS[qtype][1]
    raw = rng.integers(0, 256, (n, k // 32, size), dtype=np.uint8)
    for at in (0, 2) if qtype == gguf_blocks.Q4_1 else (0,):
        raw[:, :, at : at + 2] = rng.uniform(-0.05, 0.05, (n, k // 32, 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(n, -1)


@pytest.fixture(scope="module", params=["native", "portable"])
def lib(request: pytest.FixtureRequest):  # noqa: ANN201
    return cpu_q4.load() if request.param == "native" else cpu_q4.library(PORTABLE)


@pytest.mark.parametrize("qtype", KERNEL_TYPES)
@pytest.mark.parametrize("m", [1, 3, cpu_q4.GEMM_ROWS + 1])
def test_matmul_equals_the_decoded_weights(lib, qtype: int, m: int) -> None:
    n, k = 37, 256  # 37 rows: nine four-row steps and one row left over
    rows = torch.from_numpy(random_blocks(qtype, n, k, np.random.default_rng(qtype + m)))
    dense = gguf_blocks.dequantize(rows, qtype, k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    got = cpu_q4.matmul(x, rows, qtype, k, lib)
    want = (x.double() @ dense.double().T).float()
    assert got.shape == (m, n) and got.dtype == torch.float32
    assert ((got - want).norm() / want.norm()).item() < 1e-6
    assert torch.allclose(cpu_q4.dequantize(rows, qtype, k, lib), dense, rtol=1e-6, atol=1e-7)


def int8_codes(x: torch.Tensor) -> torch.Tensor:
    """x [m, k] as llama.cpp's Q8_0 activations, decoded back: per 32-element block,
    round(x / d) * d with d = max |x| / 127 (what the int8 path multiplies, exactly)."""
    blocks = x.double().view(x.shape[0], -1, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    return (torch.round(blocks / torch.where(d > 0, d, 1)) * d).view_as(x)


@pytest.mark.parametrize("qtype", KERNEL_TYPES)
@pytest.mark.parametrize("m", [1, 2])
def test_int8_activations_multiply_the_quantized_x_exactly(lib, qtype: int, m: int) -> None:
    """The int8 path equals the decoded weights times x rounded to int8 blocks (integer dots, no
    saturation at +-127 against 4- and 8-bit codes), and is within ~1 % of the float product."""
    n, k = 37, 256
    rows = torch.from_numpy(random_blocks(qtype, n, k, np.random.default_rng(qtype)))
    dense = gguf_blocks.dequantize(rows, qtype, k).double()
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(7)) * 3
    x[0, :32] = 0.0  # an all-zero block: scale 0, codes 0
    got = cpu_q4.matmul_int8(x, rows, qtype, k, lib)
    want = (int8_codes(x) @ dense.T).float()
    exact = (x.double() @ dense.T).float()
    assert got.shape == (m, n) and got.dtype == torch.float32
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    assert 1e-4 < ((got - exact).norm() / exact.norm()).item() < 2e-2  # not the float path, close to it


def test_subnormal_and_zero_scales_decode_exactly(lib) -> None:
    """float16 subnormal scales (|d| < 6.1e-5) and zero: the portable half-to-float path's edge cases."""
    raw = random_blocks(gguf_blocks.Q4_1, 4, 64, np.random.default_rng(0)).reshape(4, 2, 20)
    scales = np.array([[3e-7, -5e-6], [0.0, 1e-3], [-2e-5, 6e-8], [0.02, -0.0]], dtype=np.float16)
    raw[:, :, 0:2] = scales.reshape(4, 2, 1).view(np.uint8)
    rows = torch.from_numpy(raw.reshape(4, 40))
    dense = gguf_blocks.dequantize(rows, gguf_blocks.Q4_1, 64)
    assert torch.allclose(cpu_q4.dequantize(rows, gguf_blocks.Q4_1, 64, lib), dense, rtol=1e-6, atol=0)


def test_bfloat16_activations_come_back_in_bfloat16() -> None:
    rows = torch.from_numpy(random_blocks(gguf_blocks.Q4_1, 8, 64, np.random.default_rng(1)))
    x = torch.randn(1, 64).to(torch.bfloat16)
    got = cpu_q4.matmul(x, rows, gguf_blocks.Q4_1, 64)
    want = x.float() @ gguf_blocks.dequantize(rows, gguf_blocks.Q4_1, 64).T
    assert got.dtype == torch.bfloat16 and torch.allclose(got.float(), want, rtol=1e-2, atol=1e-2)


def test_a_missing_compiler_is_named(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("RADIXLM_CACHE_DIR", str(tmp_path))
    with pytest.raises(cpu_q4.KernelUnavailable, match="no-such-cc"):
        cpu_q4.library(cpu_q4.FLAGS)
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind


def test_the_gguf_method_uses_the_kernel_for_its_block_types_only() -> None:
    for qtype in KERNEL_TYPES:
        rows = torch.zeros(4, gguf_blocks.row_bytes(qtype, 64), dtype=torch.uint8)
        assert gguf._cpu_group(rows, qtype, 64).func is gguf._q4_kernel
    q4k = torch.zeros(4, gguf_blocks.row_bytes(gguf_blocks.Q4_K, 256), dtype=torch.uint8)
    assert gguf._cpu_group(q4k, gguf_blocks.Q4_K, 256).func is gguf._dequantized

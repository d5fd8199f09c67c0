"""The single-row GEMV kernel (batch-1 decode's linear layers) against a float64 torch product.

On a GPU it runs compiled and `linear` / `linear_fp32` dispatch to it (also under
torch.compile); without one, the kernel runs through Triton's interpreter in a subprocess and
the dispatch is checked to leave CPU tensors to torch. Tolerance: relative Frobenius error of
the output, 1e-6 for float32 inputs and 1e-2 for bf16/fp16 (the output's own rounding is ~4e-3).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.interpreted import run_interpreted

pytest.importorskip("triton")
# (N, K): a whole 2048 row slice, 1024 tiles, long rows (2 x 2048, 8 warps),
# a 256 tile, a 128 tile (K = 384), ragged N
SHAPES = ((100, 2048), (64, 1024), (5, 8192), (40, 256), (33, 384), (7, 128))
# every (rows per program, K tile, warps) `gemv_config` picks, plus None: its own choice
CONFIGS = (None, (4, 2048, 4), (4, 2048, 8), (2, 1024, 4), (4, 1024, 4), (2, 2048, 8), (2, 512, 4), (16, 256, 4))


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


def check_kernel(device: str) -> None:
    from radixlm.kernels.gemv import gemv_into

    gen = torch.Generator().manual_seed(0)
    for n, k in SHAPES:
        for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)):
            for with_bias in (False, True):
                x = torch.randn(1, k, generator=gen).to(device, dtype)
                w = torch.randn(n, k, generator=gen).to(device, dtype)
                b = torch.randn(n, generator=gen).to(device, dtype) if with_bias else None
                want = x.double() @ w.double().t() + (0 if b is None else b.double())
                for out_dtype in (dtype, torch.float32):
                    for config in CONFIGS:
                        if config is not None and k % config[1]:
                            continue
                        out = torch.full((1, n), float("nan"), dtype=out_dtype, device=device)
                        gemv_into(x, w, b, out, config)
                        err = rel_err(out, want)
                        assert err <= tol, (n, k, dtype, with_bias, out_dtype, config, err)


def test_gemv_kernel_matches_float64_product() -> None:
    if torch.cuda.is_available():
        check_kernel("cuda")
        return
    run_interpreted("test_gemv", "t.check_kernel('cpu')")


def test_config_divides_k_and_covers_the_tile_sizes() -> None:
    from radixlm.kernels.gemv import gemv_config

    for n, k in SHAPES:
        rows, tile, warps = gemv_config(n, k)
        assert k % tile == 0 and rows in (2, 4) and warps in (4, 8)
    llama = (
        (6144, 4096),
        (4096, 4096),
        (28672, 4096),
        (4096, 14336),
        (128256, 4096),
        (3072, 2048),
        (2048, 2048),
        (16384, 2048),
        (2048, 8192),
        (128256, 2048),
    )
    assert all(gemv_config(n, k) in CONFIGS for n, k in llama)  # the kernel test runs each


def test_pdl_only_for_cuda_tensors_on_hopper_or_newer() -> None:
    """Programmatic dependent launch is never asked of the CPU interpreter (it has no grid
    dependency instructions); on a GPU it follows the compute capability, for small launches."""
    from radixlm.kernels.pdl import MAX_ROWS, pdl_enabled

    assert not pdl_enabled(torch.zeros(1), 1)
    if torch.cuda.is_available():
        on_gpu = torch.zeros(1, device="cuda")
        assert pdl_enabled(on_gpu, MAX_ROWS) == (torch.cuda.get_device_capability() >= (9, 0))
        assert not pdl_enabled(on_gpu, MAX_ROWS + 1)


def test_cpu_tensors_go_to_torch() -> None:
    from radixlm.kernels import gemv

    x, w, b = torch.randn(1, 256), torch.randn(32, 256), torch.randn(32)
    assert not gemv.supports(x, w)
    assert torch.equal(gemv.linear(x, w, b), F.linear(x, w, b))


def test_custom_op_only_under_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eagerly `linear` / `linear_fp32` launch the kernel without the custom op's dispatch (host
    time per call); a torch.compile trace still sees one opaque `radixlm::gemv` node. The kernel
    is replaced by a float32 torch product so this runs on CPU tensors."""
    from radixlm.kernels import gemv

    def kernel(x: torch.Tensor, w: torch.Tensor, bias, out: torch.Tensor, config=None) -> torch.Tensor:
        return out.copy_(F.linear(x.float(), w.float(), None if bias is None else bias.float()))

    def no_op(*args: object) -> torch.Tensor:
        raise AssertionError("the custom op was dispatched eagerly")

    x, w, b = torch.randn(1, 128), torch.randn(8, 128), torch.randn(8)
    monkeypatch.setattr(gemv, "supports", lambda x, w: True)
    monkeypatch.setattr(gemv, "gemv_into", kernel)
    real_op = gemv._gemv_op
    monkeypatch.setattr(gemv, "_gemv_op", no_op)
    torch.testing.assert_close(gemv.linear(x, w, b), F.linear(x, w, b))
    assert gemv.linear_fp32(x, w).dtype == torch.float32
    monkeypatch.setattr(gemv, "_gemv_op", real_op)
    targets: list[str] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> torch.fx.GraphModule:
        targets.extend(str(node.target) for node in gm.graph.nodes)
        return gm

    torch._dynamo.reset()
    compiled = torch.compile(lambda x: gemv.linear(x, w, b) * 2, fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(x), F.linear(x, w, b) * 2)
    assert any("radixlm.gemv" in t for t in targets), targets


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_dispatch_on_cuda_one_row_kernel_more_rows_torch() -> None:
    from radixlm.kernels import gemv

    gen = torch.Generator(device="cuda").manual_seed(1)
    w = torch.randn(4096, 2048, device="cuda", dtype=torch.bfloat16, generator=gen)
    b = torch.randn(4096, device="cuda", dtype=torch.bfloat16, generator=gen)
    one = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16, generator=gen)
    three = torch.randn(3, 2048, device="cuda", dtype=torch.bfloat16, generator=gen)
    strided = torch.randn(2048, 2, device="cuda", dtype=torch.bfloat16, generator=gen)[:, 0].unsqueeze(0)
    assert gemv.supports(one, w) and not gemv.supports(three, w) and not gemv.supports(strided, w)
    assert rel_err(gemv.linear(one, w, b), one.double() @ w.double().t() + b.double()) < 1e-2
    assert torch.equal(gemv.linear(three, w, b), F.linear(three, w, b))
    logits = gemv.linear_fp32(one, w)
    assert logits.dtype == torch.float32 and rel_err(logits, one.double() @ w.double().t()) < 1e-5
    compiled = torch.compile(lambda x: gemv.linear(x, w, b) * 2, fullgraph=True)
    assert torch.equal(compiled(one), gemv.linear(one, w, b) * 2)

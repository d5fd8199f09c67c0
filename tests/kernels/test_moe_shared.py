"""Qwen2-MoE's gated shared expert added in one launch (`radixlm/kernels/moe_shared.py`) against
the torch sequence it replaces (`layers/moe/block.add_gated_shared_reference`).

float32: equal to 1e-5. bf16 / fp16: the kernel rounds where torch rounds, so against torch on the
same inputs the only difference is the gate dot's summation order: equal almost everywhere and
within a few ulps of the terms' scale everywhere (bf16 through the interpreter, which truncates
to bf16 instead of rounding, only the latter). Tokens 1-16, hidden sizes of one and three gate
tiles (partial last tiles), the sum written in place. Through Triton's interpreter in a
subprocess on the CPU; at Qwen1.5-MoE-A2.7B's hidden size on the GPU.
"""

from __future__ import annotations

import pytest
import torch
from helpers.interpreted import run_interpreted

pytest.importorskip("triton")

# (tokens, hidden, dtype)
SMALL = (
    (1, 64, torch.float32),
    (3, 96, torch.bfloat16),
    (16, 2100, torch.bfloat16),
    (5, 2048, torch.float32),
    (2, 160, torch.float16),
)
GPU_CASES = tuple((t, 2048, d) for t in (1, 2, 8, 16, 300) for d in (torch.bfloat16, torch.float32))


def check_against_torch(cases: tuple, device: str) -> None:
    from radixlm.kernels.moe_shared import add_gated_shared
    from radixlm.layers.moe.block import add_gated_shared_reference

    gen = torch.Generator(device).manual_seed(0)
    for tokens, hidden, dtype in cases:
        routed, shared, x = (torch.randn(tokens, hidden, generator=gen, device=device).to(dtype) for _ in range(3))
        gate = (torch.randn(1, hidden, generator=gen, device=device) * 2 / hidden**0.5).to(dtype)
        want = add_gated_shared_reference(routed, shared, x, gate)
        got = routed.clone()
        assert add_gated_shared(got, shared, x, gate) is got
        case = (tokens, hidden, dtype)
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=str(case))
            continue
        ulp = 2.0 ** (-7 if dtype == torch.bfloat16 else -10)
        diff = (got.double() - want.double()).abs()
        terms = routed.double().abs() + shared.double().abs()  # the sum's and the product's scale
        assert (diff <= 4 * ulp * terms + 1e-6).all(), case
        if device != "cpu" or dtype == torch.float16:  # the interpreter truncates to bf16
            assert (diff == 0).double().mean() > 0.9, case
        assert not torch.equal(got, routed), case  # the shared part was really added


def test_gated_shared_add_through_the_interpreter() -> None:
    run_interpreted("test_moe_shared", "t.check_against_torch(t.SMALL, 'cpu')")


def test_refuses_mismatched_inputs() -> None:
    from radixlm.kernels.moe_shared import add_gated_shared

    a = torch.zeros(2, 64)
    with pytest.raises(ValueError):
        add_gated_shared(a, a, a, torch.zeros(2, 64))  # a gate of two rows
    with pytest.raises(ValueError):
        add_gated_shared(a, a.double(), a, torch.zeros(1, 64))  # dtypes differ
    with pytest.raises(ValueError):
        add_gated_shared(a, torch.zeros(64, 2).t(), a, torch.zeros(1, 64))  # strided
    with pytest.raises(ValueError):
        add_gated_shared(a, a[:1], a, torch.zeros(1, 64))  # shapes differ


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gated_shared_add_on_gpu() -> None:
    check_against_torch(SMALL + GPU_CASES, "cuda")

"""The router's matmul, top-k and alignment in one launch (`radixlm/kernels/moe_router.py`)
against the matmul in torch followed by the two-launch routing (`fused_topk`, `align_by_expert`).

The logits the kernel stores must be x @ router^T rounded to x's dtype (float32: to 1e-5;
bf16: within one bf16 ulp, the summation order differing from torch's); on those logits the
weights and ids must equal `fused_topk`'s bit for bit and the blocks `align_by_expert`'s
(`test_moe_route.assert_same_blocks`, buffers poisoned first); with float32 inputs the ids equal
`select_experts`' on torch's logits. The arrival counter is zero after every call, and a second
call reusing it gives the same result. The alignment runs on the ids in registers up to a
size (`aligns_in_registers`; rows within an expert then in row order) and from memory beyond,
both covered. Tokens 1-16, experts 8-512 (one to eight router rows a
program), top-k 1-8, experts without tokens, expert-parallel ranks, a hidden size of three
weight tiles with a partial one, softmax-then-top-k with and without renormalisation. Through
Triton's interpreter in a subprocess on the CPU; Qwen3-30B-A3B and Mixtral shapes on the GPU.
"""

from __future__ import annotations

import pytest
import torch
from helpers.interpreted import run_interpreted
from test_moe_route import assert_same_blocks, poisoned_buffers

pytest.importorskip("triton")

# (tokens, experts, top_k, hidden, renormalize, dtype, first_expert, num_local (-1: all), block_m)
SMALL = (
    (1, 8, 1, 64, True, torch.float32, 0, -1, 16),
    (1, 128, 8, 256, True, torch.bfloat16, 0, -1, 16),
    (2, 8, 2, 96, True, torch.float32, 0, -1, 16),
    (3, 60, 4, 64, False, torch.float32, 0, -1, 16),
    (5, 16, 3, 64, True, torch.bfloat16, 4, 8, 16),
    (8, 64, 6, 128, True, torch.float32, 0, -1, 32),
    (11, 16, 7, 64, False, torch.float32, 0, 4, 16),
    (16, 128, 8, 64, True, torch.bfloat16, 0, -1, 16),
    (16, 8, 8, 64, False, torch.float32, 6, 2, 16),
    (2, 256, 4, 2176, True, torch.float32, 128, 128, 16),
    (4, 512, 8, 64, True, torch.float32, 0, -1, 16),
)
GPU_CASES = tuple(
    (tokens, experts, top_k, hidden, True, torch.bfloat16, first, local, 16)
    for tokens in (1, 2, 3, 8, 16)
    for experts, top_k, hidden in ((128, 8, 2048), (8, 2, 4096), (60, 4, 2048))
    for first, local in ((0, -1), (experts // 2, experts // 4))
)


def assert_logits(got: torch.Tensor, x: torch.Tensor, router: torch.Tensor, case: tuple) -> None:
    """got equals x @ router^T (float64) rounded to x's dtype, to 1e-5 in float32, within one
    ulp of x's dtype otherwise."""
    exact = x.double() @ router.double().t()
    want = exact.to(x.dtype).double()
    if x.dtype == torch.float32:
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=str(case))
    else:
        ulp = 2.0 ** (-7 if x.dtype == torch.bfloat16 else -10)
        assert ((got.double() - want).abs() <= ulp * want.abs() + 1e-6).all(), case
        assert torch.equal(got, got.to(x.dtype).float()), case  # rounded to x's dtype


def check_against_torch_matmul(cases: tuple, device: str) -> None:
    from radixlm.kernels.moe_align import align_by_expert
    from radixlm.kernels.moe_router import new_arrivals, route_from_hidden
    from radixlm.kernels.moe_topk import fused_topk
    from radixlm.layers.moe.routing import select_experts

    gen = torch.Generator(device).manual_seed(0)
    arrivals = new_arrivals(torch.device(device))
    mixed = []  # per expert-slice case: whether its slots held both local (>= 0) and foreign (-1) experts
    for tokens, experts, top_k, hidden, renormalize, dtype, first, local, block_m in cases:
        x = torch.randn(tokens, hidden, generator=gen, device=device).to(dtype)
        router = (torch.randn(experts, hidden, generator=gen, device=device) / hidden**0.5).to(dtype)
        num_local = experts if local < 0 else local
        counters = 3 + tokens
        case = (tokens, experts, top_k, hidden, first, local)
        with poisoned_buffers():
            weights, ids, blocks, logits = route_from_hidden(
                x, router, top_k, renormalize, block_m, arrivals, first, local, counters
            )
            assert arrivals.item() == 0, case
            want_w, want_ids = fused_topk(logits, top_k, renormalize, first, local)
            want_blocks = align_by_expert(want_ids, num_local, block_m, counters)
            again = route_from_hidden(x, router, top_k, renormalize, block_m, arrivals, first, local, counters)
        assert_logits(logits, x, router, case)
        assert torch.equal(weights, want_w) and torch.equal(ids, want_ids), case
        assert_same_blocks(blocks, want_blocks, tokens * top_k)
        assert torch.equal(again[0], weights) and torch.equal(again[1], ids) and torch.equal(again[3], logits), case
        assert_same_blocks(again[2], blocks, tokens * top_k)
        assert arrivals.item() == 0, case
        if dtype == torch.float32:  # the routing of torch's own matmul
            ref_w, ref_ids = select_experts(x @ router.t(), top_k, renormalize)
            ref_ids = ref_ids - first
            ref_ids[(ref_ids < 0) | (ref_ids >= num_local)] = -1
            assert torch.equal(ids, ref_ids), case
            torch.testing.assert_close(weights, ref_w, rtol=1e-5, atol=1e-6)
        if first or local >= 0:
            mixed.append(bool((ids == -1).any() and (ids >= 0).any()))
    # a case of few tokens may route them all outside (or inside) its slice by chance of the data
    assert not mixed or sum(mixed) >= len(mixed) // 2, mixed  # both kinds of slot covered


def test_router_routing_through_the_interpreter() -> None:
    run_interpreted("test_moe_router", "t.check_against_torch_matmul(t.SMALL, 'cpu')", timeout=900)


def test_experts_per_program_and_refusals() -> None:
    from radixlm.kernels.moe_router import aligns_in_registers, experts_per_program, new_arrivals, route_from_hidden

    assert [experts_per_program(e) for e in (8, 60, 64, 65, 128, 256, 512)] == [1, 1, 1, 2, 2, 4, 8]
    # SMALL covers both alignments: in registers (Qwen3-30B-A3B up to 8 tokens) and stored
    local_pow2 = [max(2, 1 << ((e if n < 0 else n) - 1).bit_length()) for _, e, _, _, _, _, _, n, _ in SMALL]
    in_registers = [aligns_in_registers(t, e, k, p) for (t, e, k, *_), p in zip(SMALL, local_pow2)]
    assert any(in_registers) and not all(in_registers)
    assert aligns_in_registers(8, 128, 8, 128) and not aligns_in_registers(16, 128, 8, 128)
    arrivals = new_arrivals(torch.device("cpu"))
    x, router = torch.zeros(17, 64), torch.zeros(128, 64)
    with pytest.raises(ValueError, match="two launches"):
        route_from_hidden(x, router, 8, True, 16, arrivals)  # 17 tokens: beyond the decode sizes
    with pytest.raises(ValueError):
        route_from_hidden(x[:2], router[:, :32], 8, True, 16, arrivals)  # hidden sizes differ
    with pytest.raises(ValueError):
        route_from_hidden(x[:2], router.double(), 8, True, 16, arrivals)  # dtypes differ
    with pytest.raises(ValueError):
        route_from_hidden(x[:2], router[:4], 5, True, 16, arrivals)  # k > E
    with pytest.raises(ValueError):
        route_from_hidden(x[:2], router, 8, True, 16, torch.zeros(1, dtype=torch.int64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_router_routing_on_gpu() -> None:
    """Compiled, many programs at once: the arrival counter's ordering (the last program reads
    every other program's logits) and its reset, over repeated calls."""
    for _ in range(3):
        check_against_torch_matmul(SMALL + GPU_CASES, "cuda")

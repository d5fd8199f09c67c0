"""The one-launch routing (`radixlm/kernels/moe_route.py`) against the two-launch path it replaces
(`fused_topk`, then `align_by_expert` on its ids), and the launch plans of `plan_moe`.

Same logits into both: the weights and ids must be equal bit for bit, `num_padded` and
`block_expert` equal, every block holding the same rows (compared as sets per block: within an
expert the order is the scatter's atomics'), the pad rows equal, and the counters zeroed (the
buffers are poisoned first). Tokens 1-16, top-k 1-8, experts with no tokens (k * T < E),
expert-parallel ranks (ids of other ranks' experts -1, some tokens with none of this rank's),
ties (equal logits) and bf16 logits. Through Triton's interpreter in a subprocess on the CPU;
a wider grid at the Qwen3-30B-A3B shape on the GPU.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers.interpreted import run_interpreted

pytest.importorskip("triton")

# (tokens, experts, top_k, renormalize, logits dtype, first_expert, num_local (-1: all), block_m)
SMALL = (
    (1, 8, 1, True, torch.float32, 0, -1, 16),
    (1, 128, 8, True, torch.bfloat16, 0, -1, 16),
    (2, 8, 2, True, torch.float32, 0, -1, 16),
    (3, 60, 4, False, torch.float32, 0, -1, 16),
    (5, 16, 3, True, torch.bfloat16, 4, 8, 16),
    (7, 32, 5, False, torch.float32, 24, 8, 32),
    (8, 64, 6, True, torch.float32, 0, -1, 16),
    (11, 16, 7, True, torch.float32, 0, 4, 16),
    (16, 128, 8, True, torch.bfloat16, 0, -1, 16),
    (16, 8, 8, False, torch.float32, 6, 2, 16),
    (13, 256, 2, True, torch.float32, 128, 128, 16),
)
GPU_CASES = tuple(
    (tokens, 128, top_k, True, torch.bfloat16, first, local, 16)
    for tokens in (1, 2, 3, 4, 8, 15, 16)
    for top_k in (1, 2, 4, 8)
    for first, local in ((0, -1), (32, 32))
)


@contextlib.contextmanager
def poisoned_buffers():
    """Every alignment buffer starts as garbage (-7) while inside, so an entry left unwritten shows."""
    from radixlm.kernels import moe_align, moe_route, moe_router

    original = moe_align.empty_blocks

    def poisoned(*args, **kwargs):
        blocks, cursor = original(*args, **kwargs)
        for t in (blocks.sorted_rows, blocks.block_expert, blocks.num_padded, blocks.tile_done, cursor):
            t.fill_(-7)
        return blocks, cursor

    moe_align.empty_blocks = moe_route.empty_blocks = moe_router.empty_blocks = poisoned
    try:
        yield
    finally:
        moe_align.empty_blocks = moe_route.empty_blocks = moe_router.empty_blocks = original


def assert_same_blocks(got, want, num_rows: int) -> None:
    assert got.block_m == want.block_m
    assert torch.equal(got.num_padded, want.num_padded) and torch.equal(got.block_expert, want.block_expert)
    assert torch.equal(got.tile_done, torch.zeros_like(want.tile_done)) and torch.equal(want.tile_done, got.tile_done)
    num_padded = int(got.num_padded.item())
    rows, want_rows = got.sorted_rows.cpu(), want.sorted_rows.cpu()
    assert torch.equal(rows[num_padded:], want_rows[num_padded:])
    assert (rows[num_padded:] == num_rows).all()
    for start in range(0, num_padded, got.block_m):  # the same rows in each block
        block = slice(start, start + got.block_m)
        assert torch.equal(rows[block].sort().values, want_rows[block].sort().values)


def check_against_two_launches(cases: tuple, device: str) -> None:
    from radixlm.kernels.moe_align import align_by_expert
    from radixlm.kernels.moe_route import route_and_align
    from radixlm.kernels.moe_topk import fused_topk

    gen = torch.Generator(device).manual_seed(0)
    for tokens, experts, top_k, renormalize, dtype, first, local, block_m in cases:
        logits = torch.randn(tokens, experts, generator=gen, device=device).to(dtype)
        if tokens > 1:
            logits[1] = logits[0, 0]  # a token of equal logits: the lowest ids win
        num_local = experts if local < 0 else local
        counters = 3 + tokens
        with poisoned_buffers():
            weights, ids, blocks = route_and_align(logits, top_k, renormalize, block_m, first, local, counters)
            want_w, want_ids = fused_topk(logits, top_k, renormalize, first, local)
            want_blocks = align_by_expert(want_ids, num_local, block_m, counters)
        case = (tokens, experts, top_k, first, local)
        assert torch.equal(weights, want_w) and torch.equal(ids, want_ids), case
        assert_same_blocks(blocks, want_blocks, tokens * top_k)
        # the ids are this rank's local ids of the global top-k
        local_ids = fused_topk(logits, top_k, renormalize)[1] - first
        local_ids[(local_ids < 0) | (local_ids >= num_local)] = -1
        assert torch.equal(ids, local_ids), case
        if first or local >= 0:
            assert (ids == -1).any() and (ids >= 0).any(), case  # both kinds of slot covered
        if tokens > 1:
            tied = torch.arange(top_k, dtype=torch.int32, device=device) - first
            assert torch.equal(ids[1], tied.masked_fill((tied < 0) | (tied >= num_local), -1)), case


def test_one_launch_routing_through_the_interpreter() -> None:
    run_interpreted("test_moe_route", "t.check_against_two_launches(t.SMALL, 'cpu')")


def test_fits_one_launch_and_refusals() -> None:
    from radixlm.kernels.moe_route import fits_one_launch, route_and_align

    assert fits_one_launch(1, 128, 8) and fits_one_launch(16, 128, 8) and fits_one_launch(16, 256, 8)
    assert not fits_one_launch(17, 128, 8)  # beyond the decode sizes
    assert not fits_one_launch(16, 512, 8)  # 16 x 512 logits: two top-k programs
    assert not fits_one_launch(16, 128, 65)  # 1,040 rows: beyond one alignment program
    assert not fits_one_launch(0, 128, 8)
    with pytest.raises(ValueError, match="two launches"):
        route_and_align(torch.zeros(17, 128), 8, True, 16)
    with pytest.raises(ValueError):
        route_and_align(torch.zeros(2, 4), 5, True, 16)  # k > E


def test_decode_plans_launch_three_kernels() -> None:
    """The launch lists `fused_moe` / `fused_experts` follow (`MoePlan.launches()`): Qwen3-30B-A3B
    (128 experts, top-8, hidden 2048, inter 768) and Mixtral-8x7B (8 experts, top-2)."""
    import dataclasses

    from radixlm.kernels.moe_config import moe_config, plan_moe

    def launches(tokens: int, experts: int, top_k: int, hidden: int, inter: int, routed: bool, atomic=False):
        config = moe_config(tokens * top_k, experts, hidden, inter)
        config = dataclasses.replace(config, atomic_sum=atomic)
        return plan_moe(tokens, top_k, hidden, config, experts if routed else 0).launches()

    decode = ("route_align", "gate_up", "down_sum")
    for tokens in (1, 2, 8, 16):
        assert launches(tokens, 128, 8, 2048, 768, True) == decode
        assert launches(tokens, 8, 2, 4096, 14336, True) == decode
        assert launches(tokens, 128, 8, 2048, 768, False) == ("align", "gate_up", "down_sum")
    assert launches(17, 128, 8, 2048, 768, True) == ("topk", "align", "gate_up", "down", "sum")
    assert launches(4096, 128, 8, 2048, 768, True) == ("topk", "align", "scatter", "gate_up", "down", "sum")
    assert launches(64, 8, 2, 4096, 14336, False) == ("align", "gate_up", "down", "sum")
    atomic = ("memset", "route_align", "gate_up", "down_atomic", "cast")
    assert launches(1, 128, 8, 2048, 768, True, atomic=True) == atomic
    assert launches(16, 512, 8, 2048, 768, True) == ("topk", "align", "gate_up", "down_sum")
    # from the hidden states (`fused_moe_from_hidden`): the router's matmul inside the routing launch
    for tokens in (1, 2, 8, 16):
        for experts, top_k, hidden, inter in ((128, 8, 2048, 768), (8, 2, 4096, 14336)):
            config = moe_config(tokens * top_k, experts, hidden, inter)
            plan = plan_moe(tokens, top_k, hidden, config, experts, from_hidden=True)
            assert plan.launches() == ("router_route_align", "gate_up", "down_sum")
    config = moe_config(17 * 8, 128, 2048, 768)
    assert plan_moe(17, 8, 2048, config, 128, from_hidden=True).launches() == (
        "router_gemm", "topk", "align", "gate_up", "down", "sum",
    )  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_one_launch_routing_on_gpu() -> None:
    """Compiled, the top-k and alignment code inside the one kernel must still reduce in the
    same order as in their own kernels (same tile, same warps): equal outputs bit for bit."""
    check_against_two_launches(SMALL + GPU_CASES, "cuda")

"""The fused MoE decode path and its in-launch routing (`fused_moe`, `fused_moe_from_hidden` in
`radixlm/kernels/fused_moe.py`) against the two-step path and `experts_reference` in float64.

At decode sizes (<= 16 tokens) the routed `fused_moe` (routing and alignment in one launch, the
top-k sum inside the down GEMM) must equal `fused_topk` + `fused_experts` and `fused_experts`
with the separate sum kernel bit for bit (top-k 1-8, experts without tokens, expert-parallel
ranks, a rank with none of the chosen experts); `fused_moe_from_hidden` (the router's matmul in
the routing launch) must equal `fused_moe` on the logits that launch computed. Cases and
tolerances come from `helpers.moe_cases`.

The decode cases run through Triton's interpreter (TRITON_INTERPRET=1, in a subprocess so other
tests keep the compiled mode). The compiled runs (PDL on Hopper, the Qwen3-30B-A3B and
Mixtral-8x7B decode shapes) and CUDA-graph captures replayed with new logits or inputs are
marked `gpu`.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from helpers.interpreted import run_interpreted
from helpers.moe_cases import INTERP_TOL, TOL, make_case, reference64, rel_err

pytest.importorskip("triton")

# (tokens, router experts, top_k, hidden, inter, first_expert, local experts): decode sizes for the
# interpreter, top-k 1-8, experts left without tokens, expert-parallel ranks, a partial K tile (48)
DECODE_CASES = (
    (1, 8, 1, 64, 32, 0, 8),
    (2, 16, 2, 64, 48, 0, 16),
    (4, 16, 4, 96, 32, 8, 8),
    (5, 16, 7, 64, 32, 0, 16),
    (6, 32, 6, 64, 32, 0, 32),
    (9, 32, 3, 64, 32, 0, 32),
    (3, 8, 5, 64, 32, 4, 2),
    (16, 8, 8, 64, 32, 0, 8),
)


@contextlib.contextmanager
def top_k_sum_kernel():
    """While inside, every plan sums the top-k in `_sum_kernel` (as beyond the decode sizes)."""
    from radixlm.kernels import moe_config

    limit = moe_config.SUM_IN_DOWN_MAX_TOKENS
    moe_config.SUM_IN_DOWN_MAX_TOKENS = 0
    try:
        yield
    finally:
        moe_config.SUM_IN_DOWN_MAX_TOKENS = limit


def check_decode_paths(cases: tuple, device: str, gen: torch.Generator) -> None:
    """At decode sizes `fused_moe` (routing in one launch, the top-k sum in the down GEMM)
    equals `fused_topk` + `fused_experts` (alignment on its own) and `fused_experts` with the
    top-k summed by `_sum_kernel`, bit for bit, and the reference within the tolerance. Every
    output starts as NaN; with no routed rows at all (this rank holds none of the chosen
    experts) it must come out zero."""
    from radixlm.kernels.fused_moe import fused_experts, fused_moe, moe_config, plan_moe
    from radixlm.kernels.moe_topk import fused_topk

    for tokens, router_experts, top_k, hidden, inter, first, local in cases:
        x, w13, w2 = make_case(tokens, local, 1, hidden, inter, 1, 0.0, torch.bfloat16, device, gen)[:3]
        logits = torch.randn(tokens, router_experts, generator=gen, device=device)
        config = moe_config(tokens * top_k, local, hidden, inter)
        assert plan_moe(tokens, top_k, hidden, config, router_experts).launches()[-1] == "down_sum"
        nan = functools.partial(torch.full_like, x, float("nan"))
        got = fused_moe(x, logits, w13, w2, top_k, True, first, out=nan())
        weights, ids = fused_topk(logits, top_k, True, first, local)
        two_step = fused_experts(x, w13, w2, weights, ids, out=nan())
        with top_k_sum_kernel():
            separate = fused_experts(x, w13, w2, weights, ids, out=nan())
        case = (tokens, router_experts, top_k, first, local)
        assert torch.equal(got, two_step) and torch.equal(two_step, separate), case
        want = reference64(x, w13, w2, weights, ids)
        if (ids >= 0).any():
            assert rel_err(got, want) <= (TOL if x.is_cuda else INTERP_TOL)[torch.bfloat16], case
        else:
            assert torch.equal(got, torch.zeros_like(got)), case
    x, w13, w2, weights, ids = make_case(3, 8, 2, 64, 32, 8, 1.0, torch.bfloat16, device, gen)  # every id -1
    assert torch.equal(fused_experts(x, w13, w2, weights, ids, out=torch.full_like(x, float("nan"))), 0 * x)


def check_from_hidden(cases: tuple, device: str, gen: torch.Generator) -> None:
    """`fused_moe_from_hidden` (the router's matmul inside the routing launch at decode sizes)
    equals `fused_moe` on the logits that launch computed, bit for bit, and the reference on
    torch's routing within the tolerance (`norm_topk_prob` on and off); beyond the decode sizes
    (17 tokens) it runs the matmul first and equals `fused_moe` on torch's logits."""
    from radixlm.kernels.fused_moe import fused_moe, fused_moe_from_hidden, moe_config, new_arrivals, plan_moe
    from radixlm.kernels.moe_router import route_from_hidden
    from radixlm.layers.moe.routing import select_experts

    arrivals = new_arrivals(torch.device(device))
    for i, (tokens, router_experts, top_k, hidden, inter, first, local) in enumerate(cases):
        renormalize = bool(i % 2)
        x, w13, w2 = make_case(tokens, local, 1, hidden, inter, 1, 0.0, torch.bfloat16, device, gen)[:3]
        router = (torch.randn(router_experts, hidden, generator=gen, device=device) / hidden**0.5).bfloat16()
        config = moe_config(tokens * top_k, local, hidden, inter)
        plan = plan_moe(tokens, top_k, hidden, config, router_experts, from_hidden=True)
        assert plan.launches() == ("router_route_align", "gate_up", "down_sum")
        nan = functools.partial(torch.full_like, x, float("nan"))
        got = fused_moe_from_hidden(x, router, w13, w2, top_k, renormalize, arrivals, first, out=nan())
        logits = route_from_hidden(x, router, top_k, renormalize, config.block_m, arrivals, first, local)[3]
        case = (tokens, router_experts, top_k, first, local, renormalize)
        assert torch.equal(got, fused_moe(x, logits, w13, w2, top_k, renormalize, first, out=nan())), case
        weights, ids = select_experts(logits, top_k, renormalize)
        ids = ids - first
        ids[(ids < 0) | (ids >= local)] = -1
        want = reference64(x, w13, w2, weights, ids)
        if (ids >= 0).any():
            assert rel_err(got, want) <= (TOL if x.is_cuda else INTERP_TOL)[torch.bfloat16], case
        else:
            assert torch.equal(got, torch.zeros_like(got)), case
        assert arrivals.item() == 0, case
    x, w13, w2 = make_case(17, 8, 1, 64, 32, 1, 0.0, torch.bfloat16, device, gen)[:3]
    router = torch.randn(8, 64, generator=gen, device=device).bfloat16()
    assert plan_moe(17, 2, 64, moe_config(34, 8, 64, 32), 8, from_hidden=True).launches()[:3] == (
        "router_gemm", "topk", "align",
    )  # fmt: skip
    logits = torch.nn.functional.linear(x, router)
    got = fused_moe_from_hidden(x, router, w13, w2, 2, True, arrivals)
    assert torch.equal(got, fused_moe(x, logits, w13, w2, 2, True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the compiled kernels are checked instead")
def test_decode_paths_through_the_interpreter() -> None:
    run_interpreted(
        "test_moe_decode", "t.check_decode_paths(t.DECODE_CASES, 'cpu', torch.Generator().manual_seed(1))", timeout=900
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the compiled kernels are checked instead")
def test_from_hidden_through_the_interpreter() -> None:
    run_interpreted(
        "test_moe_decode", "t.check_from_hidden(t.DECODE_CASES, 'cpu', torch.Generator().manual_seed(2))", timeout=900
    )


# ---- GPU ----------------------------------------------------------------------------------------

GPU_DECODE = (
    DECODE_CASES
    + tuple(
        (tokens, 128, 8, 2048, 768, first, local)  # Qwen3-30B-A3B, whole and as one of 4 expert-parallel ranks
        for tokens in (1, 2, 3, 4, 7, 8, 12, 16)
        for first, local in ((0, 128), (96, 32))
    )
    + ((1, 8, 2, 4096, 14336, 0, 8), (16, 8, 2, 4096, 14336, 0, 8))
)  # Mixtral-8x7B


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decode_paths_equal_bit_for_bit_on_gpu() -> None:
    """`check_decode_paths` compiled (PDL on Hopper): the in-down top-k sum's counters and
    memory ordering, which the interpreter's one-program-at-a-time run cannot exercise."""
    gen = torch.Generator("cuda").manual_seed(5)
    for _ in range(3):  # a race would show as a NaN or a partial sum in some run
        check_decode_paths(GPU_DECODE, "cuda", gen)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("tokens", [1, 8, 16])
def test_fused_moe_in_a_cuda_graph_replays_with_new_logits(tokens: int) -> None:
    """`fused_moe` captured once (three launches at these sizes), replayed after new inputs and
    router logits are copied in: each replay equals `fused_topk` + `fused_experts` eagerly."""
    from radixlm.kernels.fused_moe import fused_experts, fused_moe
    from radixlm.kernels.moe_topk import fused_topk

    gen = torch.Generator("cuda").manual_seed(13)
    experts, top_k, hidden, inter = 128, 8, 2048, 768
    x, w13, w2 = make_case(tokens, experts, top_k, hidden, inter, experts, 0.0, torch.bfloat16, "cuda", gen)[:3]
    logits = torch.randn(tokens, experts, generator=gen, device="cuda").bfloat16()
    out = torch.empty_like(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fused_moe(x, logits, w13, w2, top_k, True, out=out)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fused_moe(x, logits, w13, w2, top_k, True, out=out)
    for _ in range(4):
        x.copy_(torch.randn(x.shape, generator=gen, device="cuda"))
        logits.copy_(torch.randn(logits.shape, generator=gen, device="cuda"))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        weights, ids = fused_topk(logits, top_k, True)
        assert torch.equal(out, fused_experts(x, w13, w2, weights, ids))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_from_hidden_on_gpu() -> None:
    """`check_from_hidden` compiled (PDL on Hopper): many router programs, the arrival counter."""
    gen = torch.Generator("cuda").manual_seed(6)
    for _ in range(3):
        check_from_hidden(GPU_DECODE, "cuda", gen)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("tokens", [1, 8, 16])
def test_fused_moe_from_hidden_in_a_cuda_graph_replays_with_new_inputs(tokens: int) -> None:
    """`fused_moe_from_hidden` captured once (three launches), replayed after new inputs are
    copied in: each replay equals `fused_moe` eagerly on the logits the routing launch computes,
    and the arrival counter stays zero."""
    from radixlm.kernels.fused_moe import fused_moe, fused_moe_from_hidden, new_arrivals
    from radixlm.kernels.moe_router import route_from_hidden

    gen = torch.Generator("cuda").manual_seed(14)
    experts, top_k, hidden, inter = 128, 8, 2048, 768
    x, w13, w2 = make_case(tokens, experts, top_k, hidden, inter, experts, 0.0, torch.bfloat16, "cuda", gen)[:3]
    router = (torch.randn(experts, hidden, generator=gen, device="cuda") / hidden**0.5).bfloat16()
    arrivals, out = new_arrivals(x.device), torch.empty_like(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fused_moe_from_hidden(x, router, w13, w2, top_k, True, arrivals, out=out)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fused_moe_from_hidden(x, router, w13, w2, top_k, True, arrivals, out=out)
    for _ in range(4):
        x.copy_(torch.randn(x.shape, generator=gen, device="cuda"))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert arrivals.item() == 0
        logits = route_from_hidden(x, router, top_k, True, 16, arrivals)[3]
        assert torch.equal(out, fused_moe(x, logits, w13, w2, top_k, True))

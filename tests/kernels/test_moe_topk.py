"""The fused router top-k (`radixlm/kernels/moe_topk.py`) against `select_experts`.

Random normal logits: the float32 weights within 1e-5 (relative) of `select_experts`', and the chosen
experts' probabilities equal to them in the same (descending) order. With float32 logits the
ids must be equal too wherever the top k + 1 probabilities are 1e-5 apart (the kernel's exp is
not torch's, so nearer ties may flip); bf16 logits tie exactly and often, and `torch.topk`
breaks ties its own way. Equal logits check our tie rule (lowest expert id first). Through
Triton's interpreter in a subprocess on the CPU; the large shapes and a CUDA-graph replay on
the GPU.
"""

from __future__ import annotations

import pytest
import torch
from helpers.interpreted import run_interpreted

pytest.importorskip("triton")
# (tokens, experts, top_k, renormalize, logits dtype): E not a power of two, k = 1, bf16 logits
SMALL = (
    (1, 8, 2, True, torch.float32),
    (7, 128, 8, False, torch.float32),
    (33, 60, 4, True, torch.bfloat16),
    (5, 16, 1, False, torch.float32),
)
LARGE = ((4096, 128, 8, True, torch.bfloat16), (4096, 8, 2, True, torch.float32), (300, 64, 6, False, torch.float32))


def check_against_select_experts(cases: tuple, device: str) -> None:
    from radixlm.kernels.moe_topk import fused_topk
    from radixlm.layers.moe.routing import select_experts

    gen = torch.Generator(device).manual_seed(0)
    for tokens, experts, top_k, renormalize, dtype in cases:
        logits = torch.randn(tokens, experts, generator=gen, device=device).to(dtype)
        weights, ids = fused_topk(logits, top_k, renormalize)
        want_w, want_ids = select_experts(logits, top_k, renormalize)
        assert weights.dtype == torch.float32 and ids.dtype == torch.int32
        torch.testing.assert_close(weights, want_w, rtol=1e-5, atol=1e-6)
        picked = torch.softmax(logits.float(), dim=-1).gather(1, ids.long())
        if renormalize:
            picked = picked / picked.sum(dim=-1, keepdim=True)
        torch.testing.assert_close(picked, want_w, rtol=1e-5, atol=1e-6)
        assert (ids.sort(dim=1).values.diff(dim=1) > 0).all()  # k distinct experts per token
        if dtype == torch.float32:  # tokens whose top k + 1 probabilities are 1e-5 apart: same ids
            probs = torch.softmax(logits, dim=-1).topk(min(top_k + 1, experts), dim=-1).values
            clear = (probs[:, :-1] - probs[:, 1:] > 1e-5).all(dim=1)
            assert clear.float().mean() > 0.9 and torch.equal(ids[clear], want_ids[clear]), (tokens, experts, top_k)
    tied, tied_ids = fused_topk(torch.zeros(3, 12, device=device), 4, False)
    assert torch.equal(tied_ids, torch.arange(4, dtype=torch.int32, device=device).expand(3, 4))
    torch.testing.assert_close(tied, torch.full((3, 4), 1 / 12, device=device))


def test_fused_topk_through_the_interpreter() -> None:
    run_interpreted("test_moe_topk", "t.check_against_select_experts(t.SMALL, 'cpu')")


def test_rejects_k_out_of_range() -> None:
    from radixlm.kernels.moe_topk import fused_topk

    with pytest.raises(ValueError):
        fused_topk(torch.zeros(2, 4), 5, True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_topk_on_gpu_and_in_a_cuda_graph() -> None:
    from radixlm.kernels.moe_topk import fused_topk
    from radixlm.layers.moe.routing import select_experts

    check_against_select_experts(SMALL + LARGE, "cuda")
    logits = torch.randn(8, 128, device="cuda")
    fused_topk(logits, 8, True)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        weights, ids = fused_topk(logits, 8, True)
    logits.copy_(torch.randn(8, 128, device="cuda"))
    graph.replay()
    want_w, want_ids = select_experts(logits, 8, True)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(weights, want_w, rtol=1e-5, atol=1e-6)

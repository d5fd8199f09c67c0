"""The torch reference of the experts' computation: a loop over experts (CPU, golden tests,
and the oracle of the fused kernels' tests).

Weight layout shared with `radixlm.kernels.fused_moe`: `w13` [E, 2I, H] holds each expert's
gate projection in rows [0, I) and its up projection in rows [I, 2I); `w2` [E, H, I] is its
down projection. Expert e maps x to w2[e] @ (silu(w13[e, :I] @ x) * (w13[e, I:] @ x))."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def experts_reference(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """out [T, H] (x's dtype) = sum_j topk_weights[:, j] * expert_{topk_ids[:, j]}(x).

    Experts with no tokens cost nothing; ids outside [0, E) (e.g. -1 for experts another
    expert-parallel rank holds) contribute zero."""
    out = torch.zeros_like(x)
    inter = w2.shape[-1]
    flat_ids = topk_ids.reshape(-1).long()
    tokens = torch.arange(x.shape[0], device=x.device).repeat_interleave(topk_ids.shape[1])
    weights = topk_weights.reshape(-1)
    for expert in torch.unique(flat_ids).tolist():
        if expert < 0 or expert >= w13.shape[0]:
            continue
        rows = (flat_ids == expert).nonzero(as_tuple=True)[0]
        idx = tokens[rows]
        gate_up = F.linear(x[idx], w13[expert])
        h = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
        y = F.linear(h, w2[expert]) * weights[rows, None].to(x.dtype)
        out.index_add_(0, idx, y)
    return out

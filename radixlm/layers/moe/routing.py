"""Router: from router logits to each token's top-k experts and their weights.

Invariant shared by every MoE implementation (reference and fused kernels): `topk_ids` is
int32 [T, k] with expert ids in [0, num_experts), `topk_weights` is float32 [T, k]; the layer's
output for token t is sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x[t])."""

from __future__ import annotations

import torch


def select_experts(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over experts (in float32), the top-k, renormalised to sum 1 when `renormalize`
    (Mixtral; Qwen-MoE's `norm_topk_prob`). Returns (topk_weights float32 [T, k], topk_ids int32 [T, k]).
    Runs on the device without host syncs (graph-capturable)."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)

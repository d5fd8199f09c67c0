"""The MoE router's softmax and top-k in one Triton launch: `fused_topk`, the contract of
`radixlm.layers.moe.routing.select_experts` (which takes 4 to 5 torch kernels: softmax, topk,
the renormalising sum and divide, the id cast; at decode each is a launch of its own).

Per token: softmax over the E logits in float32, then k rounds of "take the largest remaining
probability" (ties to the lower expert id), so the weights come out in descending order like
`torch.topk`'s; renormalised to sum 1 when asked. No host sync (graph-capturable).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    from radixlm.kernels.pdl import pdl_enter, pdl_launch
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None


if triton is not None:

    @triton.jit(do_not_specialize=["num_tokens"])
    def _topk_kernel(
        logits_ptr,
        weights_ptr,
        ids_ptr,
        num_tokens,
        num_experts,
        stride_logits,
        TOP_K: tl.constexpr,
        K_POW2: tl.constexpr,
        E_POW2: tl.constexpr,
        BLOCK_T: tl.constexpr,
        RENORMALIZE: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """BLOCK_T tokens a program: weights [T, TOP_K] float32 (descending), ids [T, TOP_K] int32."""
        if PDL:
            pdl_enter()
        tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        experts = tl.arange(0, E_POW2)
        t_ok = tokens < num_tokens
        ok = t_ok[:, None] & (experts[None, :] < num_experts)
        ptrs = logits_ptr + tokens[:, None].to(tl.int64) * stride_logits + experts[None, :]
        logits = tl.load(ptrs, mask=ok, other=float("-inf")).to(tl.float32)
        logits = tl.where(t_ok[:, None], logits, 0.0)  # rows past T: no -inf - -inf
        shifted = tl.exp(logits - tl.max(logits, axis=1)[:, None])
        probs = tl.where(ok, shifted / tl.sum(shifted, axis=1)[:, None], -1.0)
        slots = tl.arange(0, K_POW2)
        chosen_w = tl.zeros([BLOCK_T, K_POW2], dtype=tl.float32)
        chosen_id = tl.zeros([BLOCK_T, K_POW2], dtype=tl.int32)
        for j in tl.static_range(TOP_K):
            best = tl.max(probs, axis=1)
            # the lowest expert id holding the maximum
            best_id = tl.min(tl.where(probs == best[:, None], experts[None, :], E_POW2), axis=1)
            chosen_w = tl.where(slots[None, :] == j, best[:, None], chosen_w)
            chosen_id = tl.where(slots[None, :] == j, best_id[:, None], chosen_id)
            probs = tl.where(experts[None, :] == best_id[:, None], -1.0, probs)
        if RENORMALIZE:
            chosen_w = chosen_w / tl.sum(chosen_w, axis=1)[:, None]
        out = tokens[:, None].to(tl.int64) * TOP_K + slots[None, :]
        mask = t_ok[:, None] & (slots[None, :] < TOP_K)
        tl.store(weights_ptr + out, chosen_w, mask=mask)
        tl.store(ids_ptr + out, chosen_id, mask=mask)


def fused_topk(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`select_experts` in one launch: router_logits [T, E] (any float dtype, last dimension
    contiguous; CUDA, or CPU under TRITON_INTERPRET=1) -> (topk_weights float32 [T, k] in
    descending order, topk_ids int32 [T, k])."""
    num_tokens, num_experts = router_logits.shape
    if router_logits.stride(-1) != 1 or not 1 <= top_k <= num_experts:
        raise ValueError(f"fused_topk: logits {tuple(router_logits.shape)} strides {router_logits.stride()}, k {top_k}")
    dev = router_logits.device
    weights = torch.empty((num_tokens, top_k), dtype=torch.float32, device=dev)
    ids = torch.empty((num_tokens, top_k), dtype=torch.int32, device=dev)
    if num_tokens == 0:
        return weights, ids
    e_pow2 = triton.next_power_of_2(num_experts)
    block_t = max(1, min(64, 4096 // e_pow2, triton.next_power_of_2(num_tokens)))
    _topk_kernel[(triton.cdiv(num_tokens, block_t),)](
        router_logits,
        weights,
        ids,
        num_tokens,
        num_experts,
        router_logits.stride(0),
        top_k,
        triton.next_power_of_2(top_k),
        e_pow2,
        block_t,
        renormalize,
        num_warps=4,
        **pdl_launch(router_logits, num_tokens),
    )
    return weights, ids

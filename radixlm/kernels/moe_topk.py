"""The MoE router's softmax and top-k in one Triton launch: `fused_topk`, the contract of
`radixlm.layers.moe.routing.select_experts` (which takes 4 to 5 torch kernels: softmax, topk,
the renormalising sum and divide, the id cast; at decode each is a launch of its own).

Per token: softmax over the E logits in float32, then k rounds of "take the largest remaining
probability" (ties to the lower expert id), so the weights come out in descending order like
`torch.topk`'s; renormalised to sum 1 when asked. No host sync (graph-capturable). The per-row
computation is the jitted `topk_rows` (`topk_of` on logits already loaded), which `moe_route`'s
and `moe_router`'s one-launch routings share.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    from radixlm.kernels.pdl import pdl_enter, pdl_launch
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

# warps of a top-k program (the one-launch routing of `moe_route` uses the same, so its top-k
# reduces in the same order)
TOPK_WARPS = 4


if triton is not None:

    @triton.jit
    def topk_rows(
        logits_ptr,
        tokens,
        num_tokens,
        num_experts,
        stride_logits,
        TOP_K: tl.constexpr,
        K_POW2: tl.constexpr,
        E_POW2: tl.constexpr,
        BLOCK_T: tl.constexpr,
        RENORMALIZE: tl.constexpr,
    ):
        """(weights [BLOCK_T, K_POW2] float32 descending, global ids int32, store mask) of the
        rows `tokens`; slots past TOP_K and tokens past `num_tokens` are masked off."""
        experts = tl.arange(0, E_POW2)
        t_ok = tokens < num_tokens
        ok = t_ok[:, None] & (experts[None, :] < num_experts)
        ptrs = logits_ptr + tokens[:, None].to(tl.int64) * stride_logits + experts[None, :]
        logits = tl.load(ptrs, mask=ok, other=float("-inf")).to(tl.float32)
        return topk_of(logits, t_ok, ok, TOP_K, K_POW2, E_POW2, BLOCK_T, RENORMALIZE)

    @triton.jit
    def topk_of(
        logits,
        t_ok,
        ok,
        TOP_K: tl.constexpr,
        K_POW2: tl.constexpr,
        E_POW2: tl.constexpr,
        BLOCK_T: tl.constexpr,
        RENORMALIZE: tl.constexpr,
    ):
        """`topk_rows` on logits already loaded: float32 [BLOCK_T, E_POW2], -inf where `ok`
        [BLOCK_T, E_POW2] is false; `t_ok` [BLOCK_T] marks the real tokens."""
        experts = tl.arange(0, E_POW2)
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
        return chosen_w, chosen_id, t_ok[:, None] & (slots[None, :] < TOP_K)

    @triton.jit
    def local_ids(ids, first_expert, num_local):
        """Global expert ids -> this rank's (id - first_expert), -1 outside [0, num_local)."""
        local = ids - first_expert
        return tl.where((local >= 0) & (local < num_local), local, -1)

    @triton.jit(do_not_specialize=["num_tokens"])
    def _topk_kernel(
        logits_ptr,
        weights_ptr,
        ids_ptr,
        num_tokens,
        num_experts,
        stride_logits,
        first_expert,
        num_local,
        TOP_K: tl.constexpr,
        K_POW2: tl.constexpr,
        E_POW2: tl.constexpr,
        BLOCK_T: tl.constexpr,
        RENORMALIZE: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """BLOCK_T tokens a program: weights [T, TOP_K] float32 (descending), ids [T, TOP_K] int32
        (local: `local_ids`)."""
        if PDL:
            pdl_enter()
        tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        chosen_w, chosen_id, mask = topk_rows(
            logits_ptr, tokens, num_tokens, num_experts, stride_logits, TOP_K, K_POW2, E_POW2, BLOCK_T, RENORMALIZE
        )
        out = tokens[:, None].to(tl.int64) * TOP_K + tl.arange(0, K_POW2)[None, :]
        tl.store(weights_ptr + out, chosen_w, mask=mask)
        tl.store(ids_ptr + out, local_ids(chosen_id, first_expert, num_local), mask=mask)


def topk_block(num_tokens: int, num_experts: int) -> int:
    """Tokens per program of the top-k kernels (a tile of at most 4,096 logits)."""
    return max(1, min(64, 4096 // triton.next_power_of_2(num_experts), triton.next_power_of_2(num_tokens)))


def check_topk_args(router_logits: torch.Tensor, top_k: int) -> None:
    num_tokens, num_experts = router_logits.shape
    if router_logits.stride(-1) != 1 or not 1 <= top_k <= num_experts:
        raise ValueError(
            f"router top-k: logits {tuple(router_logits.shape)} strides {router_logits.stride()}, k {top_k}"
        )


def fused_topk(
    router_logits: torch.Tensor, top_k: int, renormalize: bool, first_expert: int = 0, num_local: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """`select_experts` in one launch: router_logits [T, E] (any float dtype, last dimension
    contiguous; CUDA, or CPU under TRITON_INTERPRET=1) -> (topk_weights float32 [T, k] in
    descending order, topk_ids int32 [T, k]). An expert-parallel rank holding experts
    [first_expert, first_expert + num_local) gets its local ids, -1 for the others' (num_local
    -1: every expert, ids global)."""
    check_topk_args(router_logits, top_k)
    num_tokens, num_experts = router_logits.shape
    dev = router_logits.device
    weights = torch.empty((num_tokens, top_k), dtype=torch.float32, device=dev)
    ids = torch.empty((num_tokens, top_k), dtype=torch.int32, device=dev)
    if num_tokens == 0:
        return weights, ids
    block_t = topk_block(num_tokens, num_experts)
    _topk_kernel[(triton.cdiv(num_tokens, block_t),)](
        router_logits,
        weights,
        ids,
        num_tokens,
        num_experts,
        router_logits.stride(0),
        first_expert,
        num_experts if num_local < 0 else num_local,
        top_k,
        triton.next_power_of_2(top_k),
        triton.next_power_of_2(num_experts),
        block_t,
        renormalize,
        num_warps=TOPK_WARPS,
        **pdl_launch(router_logits, num_tokens),
    )
    return weights, ids

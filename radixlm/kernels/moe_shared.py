"""Qwen2-MoE's gated shared expert added to the routed experts' output in one launch:
`add_gated_shared`.

The block's output is routed + sigmoid(x . g) * shared per token (g: `shared_expert_gate`'s one
row). In torch that is the gate's matmul, the sigmoid, the product and the sum, four launches
(the first a plain matmul, so the layer's programmatic-dependent-launch chain ends there); here
each program computes its token's gate dot (H elements, float32, from L2) and adds its slice of
columns, rounding where torch would (the dot, the sigmoid and the product to the output dtype,
then the sum), so it equals the torch sequence up to the dot's summation order.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    from radixlm.kernels.pdl import pdl_launch, pdl_release, pdl_wait
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

# columns a program adds (and gate-dot elements it loads a step)
_BLOCK = 1024


if triton is not None:

    @triton.jit
    def _gated_add_kernel(
        routed_ptr,
        shared_ptr,
        x_ptr,
        gate_ptr,
        hidden,
        stride_routed,
        stride_shared,
        stride_x,
        BLOCK: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """routed[t, cols] = round(routed + round(round(sigmoid(round(x[t] . gate))) * shared))
        for token t = program 0 and this program's BLOCK columns (the gate's first tile is
        loaded before the PDL wait: no kernel writes it)."""
        if PDL:
            pdl_release()
        t = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        g = tl.load(gate_ptr + offs, mask=offs < hidden, other=0.0).to(tl.float32)
        if PDL:
            pdl_wait()
        dtype = routed_ptr.dtype.element_ty
        acc = g * tl.load(x_ptr + t * stride_x + offs, mask=offs < hidden, other=0.0).to(tl.float32)
        for h0 in range(BLOCK, hidden, BLOCK):
            cols = h0 + offs
            g = tl.load(gate_ptr + cols, mask=cols < hidden, other=0.0).to(tl.float32)
            acc += g * tl.load(x_ptr + t * stride_x + cols, mask=cols < hidden, other=0.0).to(tl.float32)
        logit = tl.sum(acc, axis=0).to(dtype).to(tl.float32)
        scale = tl.sigmoid(logit).to(dtype).to(tl.float32)
        cols = tl.program_id(1) * BLOCK + offs
        ok = cols < hidden
        shared = tl.load(shared_ptr + t * stride_shared + cols, mask=ok, other=0.0).to(tl.float32)
        routed = tl.load(routed_ptr + t * stride_routed + cols, mask=ok, other=0.0).to(tl.float32)
        out = routed + (scale * shared).to(dtype).to(tl.float32)
        tl.store(routed_ptr + t * stride_routed + cols, out.to(dtype), mask=ok)


def add_gated_shared(
    routed: torch.Tensor, shared: torch.Tensor, x: torch.Tensor, gate_weight: torch.Tensor
) -> torch.Tensor:
    """routed += sigmoid(x @ gate_weight^T) * shared, in place, returned: routed, shared and x
    [T, H] of one float dtype with contiguous last dimensions, gate_weight [1, H] of that dtype
    (CUDA, or CPU under TRITON_INTERPRET=1). ValueError for anything else."""
    num_tokens, hidden = routed.shape
    tensors = (routed, shared, x, gate_weight)
    if (
        shared.shape != routed.shape
        or x.shape != routed.shape
        or gate_weight.shape != (1, hidden)
        or any(t.dtype != routed.dtype or t.stride(-1) != 1 for t in tensors)
    ):
        shapes = [(tuple(t.shape), t.dtype) for t in tensors]
        raise ValueError(f"add_gated_shared: routed, shared, x, gate {shapes}")
    if num_tokens == 0:
        return routed
    _gated_add_kernel[(num_tokens, triton.cdiv(hidden, _BLOCK))](
        routed,
        shared,
        x,
        gate_weight,
        hidden,
        routed.stride(0),
        shared.stride(0),
        x.stride(0),
        _BLOCK,
        num_warps=4,
        **pdl_launch(x, num_tokens),
    )
    return routed

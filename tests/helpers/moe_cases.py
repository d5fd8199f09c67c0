"""Random routed-expert cases for the fused MoE kernel tests, and their float64 reference.

A case routes each token to k distinct experts of a random subset (so some experts receive no
tokens) and sets a share of the ids to -1 (experts of another expert-parallel rank). The reference
runs `experts_reference` in float64 on the very same (rounded) inputs. Tolerance on the relative
Frobenius error: bf16 1e-2 (the kernel stores the activation, each expert's weighted output and
the sum in bf16, ~4e-3 each; `experts_reference` in bf16 lands at 4e-3 to 7e-3), fp16 2e-3,
float32 1e-5 (ieee dot). Triton's interpreter truncates float32 to bf16 instead of rounding to
nearest (twice the rounding error: its bf16 results land at 6e-3 to 9e-3), so bf16 through the
interpreter gets 2e-2 (`INTERP_TOL`)."""

from __future__ import annotations

import torch

TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}
INTERP_TOL = {**TOL, torch.bfloat16: 2e-2}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """The relative Frobenius error of `got` against the float64 `want` (nonzero)."""
    return ((got.double() - want).norm() / want.norm()).item()


def make_case(
    tokens: int,
    experts: int,
    top_k: int,
    hidden: int,
    inter: int,
    used: int,
    invalid: float,
    dtype: torch.dtype,
    device: str,
    gen: torch.Generator,
) -> tuple[torch.Tensor, ...]:
    """(x, w13, w2, topk_weights, topk_ids) on `device`, drawn there by `gen` (a generator of that
    device): each token's k distinct ids from `used` random experts, a share `invalid` of them set
    to -1, weights positive float32."""
    draw = dict(generator=gen, device=device)
    x = torch.randn(tokens, hidden, **draw).to(dtype)
    w13 = (torch.randn(experts, 2 * inter, hidden, **draw) / hidden**0.5).to(dtype)
    w2 = (torch.randn(experts, hidden, inter, **draw) / inter**0.5).to(dtype)
    subset = torch.randperm(experts, **draw)[:used]
    pick = torch.rand(tokens, used, **draw).argsort(dim=1)[:, :top_k]
    ids = subset[pick].to(torch.int32)
    ids[torch.rand(tokens, top_k, **draw) < invalid] = -1
    weights = torch.rand(tokens, top_k, **draw) + 0.1
    return x, w13, w2, weights, ids


def reference64(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """`experts_reference` in float64 on the case's inputs (ids -1 contribute nothing)."""
    from radixlm.layers.moe.reference import experts_reference

    return experts_reference(x.double(), w13.double(), w2.double(), weights.double(), ids)

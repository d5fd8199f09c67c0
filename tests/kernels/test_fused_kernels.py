"""Fused Triton layer kernels (RMSNorm+residual, rotary, SiLU-and-mul) against the eager ops.

On a GPU they run compiled; without one, through Triton's interpreter in a subprocess.
"""

from __future__ import annotations

import pytest
import torch
from helpers.interpreted import run_interpreted

pytest.importorskip("triton")


def check_all(device: str, dtype: torch.dtype, tol: float) -> None:
    from radixlm.kernels import fused as fk
    from radixlm.layers.basic import RMSNorm, RotaryEmbedding, silu_and_mul

    gen = torch.Generator().manual_seed(0)
    for tokens, hidden in ((1, 64), (7, 96), (33, 576)):
        x = torch.randn(tokens, hidden, generator=gen).to(device, dtype)
        res = torch.randn(tokens, hidden, generator=gen).to(device, dtype)
        norm = RMSNorm(hidden, 1e-5).to(device, dtype)
        norm.weight.data = torch.randn(hidden, generator=gen).to(device, dtype)
        ref_out, ref_res = norm._eager(x, res)
        out, new_res = fk.rmsnorm(x, norm.weight, 1e-5, res)
        assert rel(out, ref_out) < tol and rel(new_res, ref_res) < tol
        assert rel(fk.rmsnorm(x, norm.weight, 1e-5)[0], norm._eager(x, None)) < tol
        gate_up = torch.randn(tokens, 2 * hidden, generator=gen).to(device, dtype)
        assert rel(fk.silu_and_mul(gate_up), silu_and_mul(gate_up)) < tol
    for heads, kv_heads, dim in ((4, 2, 16), (9, 3, 64), (6, 6, 24)):
        rope = RotaryEmbedding(dim, 256, {"rope_theta": 10000.0})
        rope.init_cache(torch.device(device))
        qkv = torch.randn(11, (heads + 2 * kv_heads) * dim, generator=gen).to(device, dtype)
        q, k, _ = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
        q, k = q.view(11, heads, dim), k.view(11, kv_heads, dim)
        pos = torch.randint(0, 256, (11,), generator=gen).to(device)
        ref_q, ref_k = rope._eager(pos, q.clone(), k.clone())
        fk.rotary_inplace(pos, q, k, rope.cos, rope.sin)
        assert rel(q, ref_q) < tol and rel(k, ref_k) < tol


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_fused_kernels_match_eager() -> None:
    if torch.cuda.is_available():
        check_all("cuda", torch.float32, 1e-5)
        check_all("cuda", torch.bfloat16, 1e-2)
        return
    run_interpreted("test_fused_kernels", "t.check_all('cpu', torch.float32, 1e-5)")

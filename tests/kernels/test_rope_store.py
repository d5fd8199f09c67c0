"""The fused rotary + KV-store kernel against the eager reference (rotary, then `KVPool.set_kv`).

On a GPU it runs compiled; without one, through Triton's interpreter in a subprocess. The
interpreter's float downcasts are not torch's (bf16 truncates; fp8 rounds ties away and drops
the carry into the exponent), so there the reference's cast to an fp8 pool goes through a
Triton cast kernel: the comparison is then exact for float32 inputs.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers.interpreted import run_interpreted

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
HEADS = ((8, 2, 64), (4, 4, 128), (3, 1, 24))  # (query heads, KV heads, head_dim): GQA, MHA, odd dim
POOL = 48


def check_all(device: str, dtypes: list[tuple[torch.dtype, torch.dtype, float]]) -> None:
    """(model dtype, pool dtype, tolerance) per entry; tolerance 0 means bit-exact."""
    gen = torch.Generator().manual_seed(0)
    for heads in HEADS:
        for tokens in (1, 7):
            for dtype, kv_dtype, tol in dtypes:
                for hf_layout in (False, True):
                    check_case(gen, device, heads, tokens, dtype, kv_dtype, tol, hf_layout)
    check_backend_dispatch(gen, device)


def check_case(
    gen: torch.Generator,
    device: str,
    heads: tuple[int, int, int],
    tokens: int,
    dtype: torch.dtype,
    kv_dtype: torch.dtype,
    tol: float,
    hf_layout: bool,
) -> None:
    """Native models' layout: rotary on views of one fused qkv; HF's: store only, from [H, T, D] transposes."""
    from radixlm.kernels.rope_store import rope_and_store
    from radixlm.layers.basic import RotaryEmbedding

    nq, nk, dim = heads
    q, k, v = (hf_views if hf_layout else qkv_views)(gen, tokens, nq, nk, dim, device, dtype)
    rope = RotaryEmbedding(dim, 256, {"rope_theta": 10000.0})
    rope.init_cache(torch.device(device))
    pos = torch.randint(0, 256, (tokens,), generator=gen).to(device)
    loc = (torch.randperm(POOL - 1, generator=gen)[:tokens] + 1).to(device)
    k_ref, v_ref = random_pool(gen, nk, dim, kv_dtype, device)
    k_out, v_out = k_ref.clone(), v_ref.clone()
    q_ref, rk = (q, k) if hf_layout else rope._eager(pos, q, k)
    k_ref[loc], v_ref[loc] = cast(rk, kv_dtype), cast(v, kv_dtype)
    q_out, k_before = q.clone(), k.clone()
    tables = (None, None) if hf_layout else (rope.cos, rope.sin)
    rope_and_store(q_out, k, v, k_out, v_out, loc, pos, *tables)
    what = (heads, tokens, dtype, kv_dtype, hf_layout)
    assert close(q_out, q_ref, tol) and close(k_out, k_ref, tol) and close(v_out, v_ref, tol), what
    assert torch.equal(k, k_before), what
    if not hf_layout:  # k_in_place: k left rotated as the reference rotates it, the pool the same
        k_rot, k_pool = k.clone(), k_ref.clone()
        rope_and_store(q.clone(), k_rot, v, k_pool, v_ref.clone(), loc, pos, *tables, k_in_place=True)
        assert close(k_rot, rk, tol) and close(k_pool, k_ref, tol), what
    kept = torch.ones(POOL + 1, dtype=torch.bool, device=device)
    kept[loc] = False
    for out, ref in ((k_out, k_ref), (v_out, v_ref)):  # every other slot untouched
        assert torch.equal(out[kept].view(torch.uint8), ref[kept].view(torch.uint8)), what


def check_backend_dispatch(gen: torch.Generator, device: str) -> None:
    """TritonBackend.rotate_and_store (fused) leaves the pool and q as the reference does."""
    from radixlm.attention.torch_native import TorchNativeBackend
    from radixlm.attention.triton_backend import TritonBackend
    from radixlm.forward.batch import ForwardBatch, ForwardMode
    from radixlm.layers.basic import RotaryEmbedding
    from radixlm.mem_cache.kv_pool import KVPool

    nq, nk, dim, tokens = 8, 2, 32, 5
    rope = RotaryEmbedding(dim, 64, {"rope_theta": 500000.0})
    rope.init_cache(torch.device(device))
    i64 = dict(dtype=torch.int64, device=device)
    batch = ForwardBatch(
        ForwardMode.EXTEND,
        torch.zeros(tokens, **i64),
        torch.arange(3, 3 + tokens, **i64),
        torch.arange(10, 10 + tokens, **i64),
        torch.zeros(1, **i64),
        torch.tensor([tokens + 3], **i64),
        [tokens + 3],
        [3],
        [tokens],
        torch.tensor([tokens - 1], **i64),
        torch.zeros(1, 16, **i64),
    )
    results = []
    for cls in (TorchNativeBackend, TritonBackend):
        pool = KVPool(POOL, 1, 2, nk, dim, torch.float32, torch.device(device))
        q, k, v = (
            x.clone() for x in qkv_views(torch.Generator().manual_seed(1), tokens, nq, nk, dim, device, torch.float32)
        )
        q = cls(pool).rotate_and_store(rope, batch.positions, q, k, v, 1, batch)
        results.append((q, pool.k_buffers[1], pool.v_buffers[1], pool.k_buffers[0]))
    for ref, out in zip(*results):
        assert close(out, ref, 1e-6)


def qkv_views(
    gen: torch.Generator, tokens: int, nq: int, nk: int, dim: int, device: str, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    qkv = torch.randn(tokens, (nq + 2 * nk) * dim, generator=gen).to(device, dtype)
    return tuple(x.view(tokens, -1, dim) for x in qkv.split([nq * dim, nk * dim, nk * dim], dim=-1))


def hf_views(
    gen: torch.Generator, tokens: int, nq: int, nk: int, dim: int, device: str, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.randn(1, n, tokens, dim, generator=gen).to(device, dtype)[0].transpose(0, 1) for n in (nq, nk, nk)
    )


def random_pool(gen: torch.Generator, nk: int, dim: int, kv_dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    return [cast(torch.randn(POOL + 1, nk, dim, generator=gen).to(device), kv_dtype) for _ in range(2)]


@triton.jit
def _cast_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(out_ptr + offs, x.to(out_ptr.dtype.element_ty), mask=offs < n)


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x.to(dtype), through Triton's own conversion for fp8 under the interpreter."""
    if dtype.itemsize != 1 or os.environ.get("TRITON_INTERPRET") != "1":
        return x.to(dtype)
    flat = x.float().contiguous().view(-1)
    out = torch.empty(flat.shape, dtype=dtype, device=x.device)
    _cast_kernel[(triton.cdiv(flat.numel(), 1024),)](flat, out, flat.numel(), BLOCK=1024)
    return out.view(x.shape)


def close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    a, b = a.float(), b.float()
    return torch.equal(a, b) or (tol > 0 and ((a - b).norm() / b.norm()).item() <= tol)


def test_rope_store_matches_eager() -> None:
    if torch.cuda.is_available():
        check_all(
            "cuda",
            [
                (torch.float32, torch.float32, 1e-6),
                (torch.bfloat16, torch.bfloat16, 1e-2),
                (torch.float32, torch.float8_e4m3fn, 2e-2),
                (torch.bfloat16, torch.float8_e5m2, 4e-2),
            ],
        )
        return
    code = (
        "f8 = (torch.float8_e4m3fn, torch.float8_e5m2)\n"
        "t.check_all('cpu', [(torch.float32, torch.float32, 0), (torch.bfloat16, torch.bfloat16, 1e-2),"
        " (torch.float32, f8[0], 0), (torch.float32, f8[1], 0), (torch.bfloat16, f8[0], 4e-2)])"
    )
    run_interpreted("test_rope_store", code)

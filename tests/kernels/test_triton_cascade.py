"""Shared-prefix ("cascade") Triton decode against the plain Triton decode and a torch reference.

Groups of different sizes, several groups, ungrouped requests mixed in, GQA (also a group size
that is not a power of two), pages of 1 and 4, prefix lengths that are not multiples of the
blocks, several member blocks per group, q as a strided view, an fp8 pool, and a plan loaded
into CUDA-graph-style static buffers with a padded row.
Runs on a GPU when there is one, otherwise through Triton's interpreter in a subprocess.
"""

from __future__ import annotations

import pytest
import torch
from helpers.interpreted import run_interpreted

pytest.importorskip("triton")

# (heads, kv_heads, head_dim, page, suffix lens (>= 1 each), groups as (prefix len, member indices), block_r)
CASES = [
    (4, 2, 16, 1, [3, 1, 30, 7, 2, 9, 1], [(37, [0, 2, 5]), (20, [1, 6])], 64),
    (6, 2, 24, 4, [5, 1, 2, 11, 4, 1, 3, 6, 2, 1], [(44, [0, 1, 2, 3, 4, 5, 6, 7, 8])], 16),
    (8, 8, 64, 4, [1, 2, 70, 4], [(8, [1, 3])], 64),
]


def build_case(case: tuple, device: str, dtype: torch.dtype, kv_dtype: torch.dtype) -> dict:
    """A pool, a request-to-token table whose grouped rows share their prefix's slots, queries."""
    heads, kv_heads, dim, page, suffixes, groups, _ = case
    gen = torch.Generator().manual_seed(dim + len(suffixes))
    batch = len(suffixes)
    prefix = [0] * batch
    for length, members in groups:
        for i in members:
            prefix[i] = length
    seq_lens = [p + s for p, s in zip(prefix, suffixes)]
    pages = sum(-(-n // page) for n in seq_lens) + 4
    free = (torch.randperm(pages, generator=gen) + 1).tolist()  # page 0 is the padding page
    table = torch.zeros((batch + 2, max(seq_lens) + page), dtype=torch.int64)
    for i, n in enumerate(seq_lens):
        for p0 in range(0, n, page):
            pg = free.pop()
            table[i + 1, p0 : p0 + page] = torch.arange(pg * page, pg * page + page)
    for length, members in groups:  # members reuse the first member's prefix slots
        for i in members[1:]:
            table[i + 1, :length] = table[members[0] + 1, :length]
    size = (pages + 1) * page
    k = torch.randn((size, kv_heads, dim), generator=gen).to(kv_dtype)
    v = torch.randn((size, kv_heads, dim), generator=gen).to(kv_dtype)
    qkv = torch.randn((batch, heads + 2 * kv_heads, dim), generator=gen).to(device, dtype)
    return {
        "q": qkv[:, :heads],  # a strided view, as the fused qkv projection gives it
        "k": k.to(device),
        "v": v.to(device),
        "table": table.to(device),
        "rows": torch.arange(1, batch + 1, device=device),
        "seq_lens": torch.tensor(seq_lens, device=device),
        "groups": [(members[0] + 1, length, members) for length, members in groups],
        "block_r": case[-1],
    }


def reference(c: dict) -> torch.Tensor:
    """Each request's attention over its whole sequence, in float32 from the pool's values."""
    q, out = c["q"].float(), []
    group = q.shape[1] // c["k"].shape[1]
    for i, n in enumerate(c["seq_lens"].tolist()):
        slots = c["table"][c["rows"][i], :n]
        keys = c["k"][slots].float().repeat_interleave(group, dim=1)  # [n, H, D]
        vals = c["v"][slots].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[i], keys) * q.shape[-1] ** -0.5
        out.append(torch.einsum("hn,nhd->hd", scores.softmax(-1), vals))
    return torch.stack(out)


def check_case(case: tuple, device: str, dtype: torch.dtype, tol: float, kv_dtype: torch.dtype | None = None) -> None:
    from radixlm.attention.shared_prefix import StaticPlanBuffers, pack_plan
    from radixlm.kernels.cascade import cascade_decode_attention
    from radixlm.kernels.decode_attention import decode_attention

    c = build_case(case, device, dtype, kv_dtype or dtype)
    args = (c["q"], c["k"], c["v"], c["table"], c["rows"], c["seq_lens"])
    scale = c["q"].shape[-1] ** -0.5
    plan = pack_plan(len(c["rows"]), c["groups"], torch.device(device))
    ref = reference(c)
    plain = decode_attention(*args, scale, num_splits=4).float()
    cascade = cascade_decode_attention(*args, plan, scale, block_r=c["block_r"], block_n=16).float()
    assert rel(plain, ref) < tol and rel(cascade, ref) < tol, (case, rel(plain, ref), rel(cascade, ref))
    assert rel(cascade, plain) < tol, (case, rel(cascade, plain))
    # As a CUDA graph runs it: static buffers sized for 8 rows, one padded row at slot 0, length 1.
    bs = len(c["rows"])
    static = StaticPlanBuffers(bs + 1, torch.device(device))
    static.load(plan, bs, bs + 1)
    pad = lambda t, value: torch.cat([t, torch.full_like(t[:1], value)])  # noqa: E731
    padded = (pad(c["q"], 0.0), c["k"], c["v"], c["table"], pad(c["rows"], 0), pad(c["seq_lens"], 1))
    graphed = cascade_decode_attention(
        *padded, static.view(bs + 1), scale, suffix_splits=2, prefix_splits=8, member_progs=1
    ).float()
    assert rel(graphed[:bs], ref) < tol, (case, rel(graphed[:bs], ref))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cascade_decode_on_gpu() -> None:
    for case in CASES:
        check_case(case, "cuda", torch.float32, 1e-5)  # "ieee" dots
        check_case(case, "cuda", torch.bfloat16, 2e-2)
        check_case(case, "cuda", torch.bfloat16, 2e-2, torch.float8_e4m3fn)


def test_cascade_decode_interpreted() -> None:
    if torch.cuda.is_available():
        pytest.skip("the GPU test covers it")
    code = (
        "for c in t.CASES: t.check_case(c, 'cpu', torch.float32, 1e-5)\n"
        "t.check_case(t.CASES[1], 'cpu', torch.float32, 1e-5, torch.float8_e4m3fn)\n"
    )
    run_interpreted("test_triton_cascade", code)

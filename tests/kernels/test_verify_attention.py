"""The verify attention kernel (`radixlm/kernels/verify_attention.py`) against a float64 torch
softmax: several requests with different prefix lengths, 1..9 decode rows each (a verify's last
token plus its drafts), GQA groups 1/4/8, head dims 64/128, with and without the fused rotary
+ KV store, chunk capacities below a request's rows (the leader's loop over chunks), one to 16
splits, float32 / float16 (and bfloat16 on a GPU). Runs on a GPU when there is one, otherwise
through Triton's interpreter in a subprocess.
"""

from __future__ import annotations

import pytest
import torch
from helpers.interpreted import run_interpreted

pytest.importorskip("triton")

CASES = [  # (heads, kv_heads, head_dim, contexts (KV before the rows), rows per request)
    (4, 4, 64, [13, 1, 40], [3, 1, 9]),
    (8, 2, 128, [30, 5], [9, 4]),
    (16, 2, 64, [7, 22, 3], [5, 2, 8]),
]


RUNS = ((9, 1), (2, 3))  # (chunk capacity, splits): all rows in one chunk, written directly; chunks


def _layout(contexts: list[int], rows: list[int], reverse: bool, gen: torch.Generator) -> dict:
    """Random slots for each request's context and rows; the decode rows (a request's rows
    consecutive, positions ascending or, with `reverse`, descending)."""
    size = sum(contexts) + sum(rows) + 8
    slots = torch.randperm(size - 1, generator=gen) + 1
    table = torch.zeros((len(contexts) + 2, max(c + r for c, r in zip(contexts, rows)) + 4), dtype=torch.int64)
    used, pool_rows, positions = 0, [], []
    for i, (c, r) in enumerate(zip(contexts, rows)):
        table[i + 2, : c + r] = slots[used : used + c + r]  # table rows 0 and 1 unused
        used += c + r
        pos = list(range(c, c + r))
        positions += pos[::-1] if reverse else pos
        pool_rows += [i + 2] * r
    pool_rows, positions = torch.tensor(pool_rows), torch.tensor(positions)
    return dict(size=size, table=table, pool_rows=pool_rows, positions=positions, locs=table[pool_rows, positions])


def _reference(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, lay: dict, scale: float) -> torch.Tensor:
    """float64 attention of each row to positions [0, position] of its table row."""
    heads, group = q.shape[1], q.shape[1] // k_pool.shape[1]
    out = torch.empty(q.shape, dtype=torch.float64)
    for i, (row, pos) in enumerate(zip(lay["pool_rows"].tolist(), lay["positions"].tolist())):
        keys = lay["table"][row, : pos + 1]
        kk = k_pool[keys].double().repeat_interleave(group, dim=1)
        vv = v_pool[keys].double().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,khd->hk", q[i].double(), kk) * scale
        out[i] = torch.einsum("hk,khd->hd", scores.softmax(-1), vv)
    assert out.shape[1] == heads
    return out


def check_case(
    case: tuple, device: str, dtype: torch.dtype, tol: float, reverse: bool = False, runs: tuple = RUNS
) -> None:
    """Stored K/V and fused store, for each (chunk capacity, splits) of `runs`: outputs and
    (fused) pools match."""
    from radixlm.kernels.decode_attention import NewKV
    from radixlm.kernels.verify_attention import verify_attention
    from radixlm.layers.basic import RotaryEmbedding

    heads, kv_heads, dim, contexts, rows = case
    gen = torch.Generator().manual_seed(dim + heads + sum(contexts))
    lay = _layout(contexts, rows, reverse, gen)
    n, scale = len(lay["positions"]), dim**-0.5
    k_init = torch.randn(lay["size"], kv_heads, dim, generator=gen).to(dtype)
    v_init = torch.randn(lay["size"], kv_heads, dim, generator=gen).to(dtype)
    q = torch.randn(n, heads, dim, generator=gen).to(dtype)
    k_new = torch.randn(n, kv_heads, dim, generator=gen).to(dtype)
    v_new = torch.randn(n, kv_heads, dim, generator=gen).to(dtype)
    rotary = RotaryEmbedding(dim, 256, {"rope_theta": 10000.0})
    rotary.init_cache(torch.device("cpu"))
    q_rot, k_rot = rotary(lay["positions"], q.clone(), k_new.clone())
    k_want, v_want = k_init.clone(), v_init.clone()
    k_want[lay["locs"]], v_want[lay["locs"]] = k_rot.to(dtype), v_new
    want_stored = _reference(q, k_want, v_want, lay, scale)
    want_fused = _reference(q_rot, k_want, v_want, lay, scale)
    meta = [lay["table"], lay["pool_rows"], lay["positions"] + 1]
    meta = [x.to(device) for x in meta]
    for cap, splits in runs:
        k_pool, v_pool = k_want.to(device), v_want.to(device)
        out = verify_attention(q.to(device), k_pool, v_pool, *meta, scale, cap, splits, 16)
        _close(out, want_stored, tol, ("stored", case, cap, splits, dtype))
        k_pool, v_pool = k_init.to(device), v_init.to(device)
        new_kv = NewKV(
            k_new.to(device), v_new.to(device), lay["locs"].to(device), rotary.cos.to(device), rotary.sin.to(device)
        )
        out = verify_attention(q.to(device), k_pool, v_pool, *meta, scale, cap, splits, 16, new_kv=new_kv)
        _close(out, want_fused, tol, ("fused", case, cap, splits, dtype))
        assert torch.equal(v_pool.cpu(), v_want), (case, cap, splits)
        # rotated keys: bitwise through the interpreter; a GPU contracts the rotation into FMAs
        rope_tol = 0 if device == "cpu" else 1e-6 if dtype == torch.float32 else 8e-3
        torch.testing.assert_close(k_pool.cpu(), k_want, rtol=rope_tol, atol=rope_tol, msg=str((case, cap, splits)))


def _close(out: torch.Tensor, want: torch.Tensor, tol: float, what: tuple) -> None:
    out = out.double().cpu()
    err = ((out - want).norm(dim=-1) / want.norm(dim=-1)).max().item()  # the worst (row, head)
    assert err < tol, (what, err)


def check_padding_rows(device: str) -> None:
    """A CUDA-graph batch's padding rows (table row 0, position 0, slot 0) after a request that
    uses table row 0 too: the request's rows are unchanged, the padding rows see position 0."""
    from radixlm.kernels.verify_attention import verify_attention

    gen = torch.Generator().manual_seed(3)
    kv_heads, dim, rows = 2, 64, [20, 21, 22]
    table = torch.zeros((1, 32), dtype=torch.int64)
    table[0, :23] = torch.randperm(40, generator=gen)[:23] + 1
    k = torch.randn(41, kv_heads, dim, generator=gen)
    v = torch.randn(41, kv_heads, dim, generator=gen)
    q = torch.randn(6, 8, dim, generator=gen)
    positions = torch.tensor(rows + [0, 0, 0])
    lay = dict(table=table, pool_rows=torch.zeros(6, dtype=torch.int64), positions=positions)
    want = _reference(q, k, v, lay, dim**-0.5)
    args = [x.to(device) for x in (q, k, v, table, lay["pool_rows"], positions + 1)]
    _close(verify_attention(*args, dim**-0.5, 3, 2, 16), want, 1e-4, "padding")


def run_all(device: str, low: float) -> None:
    fp32 = 1e-4 if device == "cpu" else 2e-3
    for case in CASES:
        check_case(case, device, torch.float32, fp32)
    check_case(CASES[0], device, torch.float32, fp32, reverse=True, runs=((4, 16),))  # empty splits
    # Triton's interpreter computes bfloat16 dots wrongly (the split decode kernel's too): GPU only
    for dtype in (torch.float16,) if device == "cpu" else (torch.float16, torch.bfloat16):
        check_case(CASES[1], device, dtype, low)
    check_padding_rows(device)


def test_verify_attention_matches_reference() -> None:
    if torch.cuda.is_available():
        run_all("cuda", 2e-2)
        return
    run_interpreted("test_verify_attention", "t.run_all('cpu', 2e-2)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_llama_3_8b_shape_matches_split_decode() -> None:
    """32 query / 8 KV heads of dim 128, 8 requests x 9 rows over 1,024 tokens of context in
    bf16: equal (to bf16 rounding) to the split decode kernel run on the rows one by one."""
    from radixlm.kernels.decode_attention import decode_attention
    from radixlm.kernels.verify_attention import verify_attention

    gen = torch.Generator().manual_seed(0)
    lay = _layout([1024] * 8, [9] * 8, False, gen)
    k = torch.randn(lay["size"], 8, 128, generator=gen).to("cuda", torch.bfloat16)
    v = torch.randn(lay["size"], 8, 128, generator=gen).to("cuda", torch.bfloat16)
    q = torch.randn(72, 32, 128, generator=gen).to("cuda", torch.bfloat16)
    meta = [x.cuda() for x in (lay["table"], lay["pool_rows"], lay["positions"] + 1)]
    want = decode_attention(q, k, v, *meta, 128**-0.5, 16, 64).float()
    for splits in (2, 16):
        got = verify_attention(q, k, v, *meta, 128**-0.5, 9, splits, 64).float()
        assert ((got - want).norm() / want.norm()).item() < 1e-2

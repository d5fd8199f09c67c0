"""The Triton extend kernel called directly against a float64 causal softmax over the paged pool.

Each case is a batch of requests of different prefix and new-token lengths (not multiples of
the tiles), K/V slots shuffled over the pool and a table row per request that is not its batch
index; the cases together run both tile branches of `extend_config` and, in each, the unmasked
key loops and the masked ones (a prefix's last partial block, the diagonal), with the new
tokens' K/V read from the pool, from strided views through pointers, and through TMA
descriptors (head dims 64, 80, 96, 128, 256). On the CPU they run through Triton's interpreter in a
subprocess (tests/helpers/interpreted.py), 16-bit as float16; on a GPU directly, in float32 and
bfloat16, with the chosen tiles as well.
"""

from __future__ import annotations

import pytest
import torch
from helpers.interpreted import run_interpreted

pytest.importorskip("triton")

BIG = (128, 64, 8, 3)  # block_m, block_n, warps, stages: the Hopper branch's shape
SMALL = (32, 32, 4, 3)
# (heads, kv heads, head dim, prefix lens, extend lens, tiles)
CASES = [
    (8, 2, 64, [0, 37, 5], [45, 20, 1], SMALL),  # GQA 4
    (8, 1, 128, [70, 0], [30, 130], BIG),  # GQA 8, two blocks of 128 for the second request
    (2, 2, 48, [40, 0], [33, 7], SMALL),  # no GQA, head dim padded to 64
    (4, 4, 128, [0, 3], [100, 64], (64, 64, 4, 3)),
    (4, 2, 128, [0, 40], [200, 70], (128, 128, 8, 3)),  # 128 keys a step (benchmarked on Hopper)
    (4, 2, 80, [0, 19], [45, 9], SMALL),  # Phi-2's head dim, padded to 128
    (6, 2, 96, [33, 0], [20, 37], SMALL),
    (2, 1, 256, [10, 0], [7, 40], SMALL),  # Gemma's
]


def has_unmasked_blocks(prefixes: list[int], exts: list[int], tiles: tuple) -> bool:
    """Whether some block of new tokens has keys that all its rows see in whole key blocks (the
    unmasked loops: full prefix blocks, new keys before the block's diagonal)."""
    bm, bn = tiles[:2]
    return any(p // bn > 0 or m0 // bn > 0 for p, e in zip(prefixes, exts) for m0 in range(0, e, bm))


def has_partial_prefix(prefixes: list[int], tiles: tuple) -> bool:
    """Whether some prefix ends inside a key block (its masked last block)."""
    return any(p % tiles[1] for p in prefixes)


def check_case(
    case: tuple, device: str, dtype: torch.dtype, tol: float, chosen: bool = False, source: str = "pool"
) -> None:
    """The kernel with the case's tiles (`chosen`: with `extend_config`'s) against float64.
    `source` "pool": the new tokens' K/V read from the pool; "rows" / "tma": from views of one
    fused [T, H + 2 Hkv, D] tensor (as the models' qkv output), through pointers or tensor
    descriptors (where the head dim allows them), with the pool's copies of them poisoned."""
    from dataclasses import replace

    from radixlm.kernels.extend_attention import ExtendConfig, extend_attention, launch_config

    heads, kv_heads, dim, prefixes, exts, tiles = case
    gen = torch.Generator().manual_seed(sum(prefixes) + dim)
    seqs = [p + e for p, e in zip(prefixes, exts)]
    size = sum(seqs) + 9
    slots = torch.randperm(size - 1, generator=gen)[: sum(seqs)] + 1
    rows = torch.arange(len(seqs)) * 2 + 1
    table = torch.zeros((2 * len(seqs) + 1, max(seqs) + 5), dtype=torch.int64)
    for i, n in enumerate(seqs):
        table[rows[i], :n] = slots[sum(seqs[:i]) : sum(seqs[:i]) + n]
    k = torch.randn(size, kv_heads, dim, generator=gen)
    v = torch.randn(size, kv_heads, dim, generator=gen)
    wide = torch.randn(sum(exts), heads + 2 * kv_heads, dim, generator=gen)  # q, k, v as strided views
    want = torch.empty(sum(exts), heads, dim, dtype=torch.float64)
    starts = [sum(exts[:i]) for i in range(len(exts))]
    for i, (p, e) in enumerate(zip(prefixes, exts)):
        kk = k[table[rows[i], : p + e]].double().repeat_interleave(heads // kv_heads, dim=1)
        vv = v[table[rows[i], : p + e]].double().repeat_interleave(heads // kv_heads, dim=1)
        qq = wide[starts[i] : starts[i] + e, :heads].to(dtype).double()
        scores = torch.einsum("qhd,khd->hqk", qq, kk.to(dtype).double()) * dim**-0.5
        visible = torch.arange(p + e)[None, :] <= (p + torch.arange(e))[:, None]
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        want[starts[i] : starts[i] + e] = torch.einsum("hqk,khd->qhd", probs, vv.to(dtype).double())
    new_slots = torch.cat([table[rows[i], p : p + e] for i, (p, e) in enumerate(zip(prefixes, exts))])
    wide[:, heads : heads + kv_heads], wide[:, heads + kv_heads :] = k[new_slots], v[new_slots]
    wide, k, v = wide.to(device, dtype), k.to(device, dtype), v.to(device, dtype)
    new_kv = {}
    if source != "pool":
        new_kv = {"new_k": wide[:, heads : heads + kv_heads], "new_v": wide[:, heads + kv_heads :]}
        k[new_slots.to(device)], v[new_slots.to(device)] = float("nan"), float("nan")
    meta = [torch.tensor(x, device=device) for x in (starts, prefixes, exts)]
    config = launch_config(wide, max(exts)) if chosen else ExtendConfig(*tiles)
    config = replace(config, tma=source == "tma") if source != "pool" else config
    out = extend_attention(
        wide[:, :heads], k, v, table.to(device), rows.to(device), *meta, max(exts) + 3, dim**-0.5, config, **new_kv
    )
    err = ((out.double().cpu() - want).norm() / want.norm()).item()
    assert err < tol, (case, dtype, chosen, source, err)


def test_cases_cover_both_loops_and_both_branches() -> None:
    assert all(has_unmasked_blocks(c[3], c[4], c[5]) for c in CASES)
    assert all(has_partial_prefix(c[3], c[5]) for c in CASES if c[5] == SMALL)
    assert {c[5] for c in CASES} >= {BIG, SMALL}
    assert not has_unmasked_blocks([0], [20], BIG)  # a short fresh extend: diagonal blocks only


def test_new_kv_source_choice() -> None:
    """TMA only for power-of-two head dims with adjacent heads and 16-byte rows; else pointers."""
    from radixlm.kernels.extend_attention import POOL, ROWS, SMALL, TMA, ExtendConfig, _new_kv_source

    tma = ExtendConfig(32, 32, 4, 3, tma=True)
    fused = torch.zeros(10, 8 + 2 * 2, 64, dtype=torch.bfloat16)  # q, k, v views of one qkv
    k, v = fused[:, 8:10], fused[:, 10:]
    assert _new_kv_source(k, v, tma)[0] == TMA
    assert _new_kv_source(k, v, SMALL)[0] == ROWS
    assert _new_kv_source(None, None, tma)[0] == POOL
    odd = torch.zeros(10, 6, 80, dtype=torch.bfloat16)
    assert _new_kv_source(odd[:, 2:4], odd[:, 4:], tma)[0] == ROWS  # head dim 80
    heads_apart = torch.zeros(10, 2, 2, 64)[:, :, 0]  # heads 128 elements apart
    assert _new_kv_source(heads_apart, heads_apart, tma)[0] == ROWS
    unaligned = torch.zeros(10 * 2 * 64 + 1, dtype=torch.bfloat16)[1:].view(10, 2, 64)
    assert _new_kv_source(unaligned, unaligned, tma)[0] == ROWS


def test_extend_config_branches() -> None:
    from radixlm.kernels.extend_attention import SMALL as SMALL_CONFIG
    from radixlm.kernels.extend_attention import ExtendConfig, extend_config

    bf16 = torch.bfloat16
    assert extend_config(128, bf16, (9, 0), 8192) == ExtendConfig(*BIG)
    assert extend_config(64, torch.float16, (9, 0), 4096) == ExtendConfig(128, 64, 4, 3)
    assert extend_config(128, bf16, (8, 0), 8192) == ExtendConfig(64, 64, 4, 3)
    for args in ((128, bf16, None, 8192), (128, bf16, (9, 0), 100), (128, torch.float32, (9, 0), 8192)):
        assert extend_config(*args) == SMALL_CONFIG, args
    assert extend_config(256, bf16, (9, 0), 8192) == SMALL_CONFIG
    assert SMALL_CONFIG == ExtendConfig(*SMALL)


def test_extend_kernel_matches_float64() -> None:
    if torch.cuda.is_available():
        for case in CASES:
            check_case(case, "cuda", torch.float32, 1e-5)  # IEEE float32 dots
            check_case(case, "cuda", torch.bfloat16, 2e-2)
            check_case(case, "cuda", torch.bfloat16, 2e-2, chosen=True)
            for source in ("rows", "tma"):
                check_case(case, "cuda", torch.float32, 1e-5, source=source)
                check_case(case, "cuda", torch.bfloat16, 2e-2, source=source)
                check_case(case, "cuda", torch.bfloat16, 2e-2, chosen=True, source=source)
        return
    code = (
        "for c in t.CASES:\n"
        "    for s in ('pool', 'rows', 'tma'): t.check_case(c, 'cpu', torch.float32, 1e-5, source=s)\n"
        "t.check_case(t.CASES[0], 'cpu', torch.float32, 1e-5, chosen=True)\n"
        "t.check_case(t.CASES[1], 'cpu', torch.float16, 5e-3)\n"
        "t.check_case(t.CASES[4], 'cpu', torch.float16, 5e-3, source='tma')\n"
    )  # 16-bit on the CPU in float16: the interpreter's bfloat16 dot is wrong
    run_interpreted("test_extend_attention", code)

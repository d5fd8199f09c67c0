"""Triton attention kernels against the torch-native backend on random paged inputs.

Runs on a GPU when there is one, otherwise through Triton's interpreter (TRITON_INTERPRET=1,
set before triton is imported, in a subprocess so other tests keep the compiled mode).
"""

from __future__ import annotations

import pytest
import torch
from helpers.interpreted import run_interpreted

pytest.importorskip("triton")

CASES = [  # (batch, heads, kv_heads, head_dim, prefix lens, extend lens, page_size)
    (3, 4, 2, 16, [0, 5, 17], [7, 1, 20], 1),
    (2, 8, 8, 64, [33, 0], [2, 40], 1),
    (4, 6, 2, 24, [3, 9, 0, 70], [5, 1, 9, 3], 4),
    (2, 4, 2, 80, [30, 0], [1, 6], 1),  # head dim not a power of two (Phi-2): 16-split blocks stay one
]


def check_decode_loops(device: str, dtype: torch.dtype, tol: float) -> None:
    """Splits that run several key blocks (the loop after the block prefetched before the PDL
    wait), with a reduce and written directly (one split), against a float64 softmax."""
    from radixlm.kernels.decode_attention import decode_attention

    gen = torch.Generator().manual_seed(5)
    heads, kv_heads, dim, lens = 4, 2, 32, [100, 37, 1]
    slots = torch.randperm(sum(lens) + 8, generator=gen)[: sum(lens)] + 1
    table = torch.zeros((len(lens), max(lens)), dtype=torch.int64)
    for i, n in enumerate(lens):
        table[i, :n] = slots[sum(lens[:i]) : sum(lens[:i]) + n]
    k = torch.randn(sum(lens) + 9, kv_heads, dim, generator=gen)
    v = torch.randn(sum(lens) + 9, kv_heads, dim, generator=gen)
    q = torch.randn(len(lens), heads, dim, generator=gen)
    want = torch.empty(q.shape, dtype=torch.float64)
    for b, n in enumerate(lens):
        kk = k[table[b, :n]].double().repeat_interleave(heads // kv_heads, dim=1)
        vv = v[table[b, :n]].double().repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.einsum("hd,khd->hk", q[b].double(), kk) * dim**-0.5
        want[b] = torch.einsum("hk,khd->hd", scores.softmax(-1), vv)
    args = [
        x.to(device)
        for x in (q.to(dtype), k.to(dtype), v.to(dtype), table, torch.arange(len(lens)), torch.tensor(lens))
    ]
    for splits in (1, 2, 16):
        out = decode_attention(*args, dim**-0.5, num_splits=splits, block_n=16).double().cpu()
        err = ((out - want).norm() / want.norm()).item()
        assert err < tol, (splits, err)


def _run_case(case: tuple, device: str, dtype: torch.dtype, tol: float, kv_dtype: torch.dtype | None = None) -> None:
    """`kv_dtype` (default `dtype`): the pool's storage, e.g. fp8 read back into `dtype`."""
    from radixlm.attention.torch_native import TorchNativeBackend
    from radixlm.attention.triton_backend import TritonBackend
    from radixlm.forward.batch import ForwardBatch, ForwardMode
    from radixlm.mem_cache.kv_pool import KVPool

    batch, heads, kv_heads, dim, prefixes, exts, page = case
    gen = torch.Generator().manual_seed(sum(prefixes) + dim)
    seq_lens = [p + e for p, e in zip(prefixes, exts)]
    pool = KVPool(sum(seq_lens) + 64, page, 1, kv_heads, dim, kv_dtype or dtype, torch.device(device))
    pool.k_buffers[0].copy_(torch.randn(pool.k_buffers[0].shape, generator=gen))
    pool.v_buffers[0].copy_(torch.randn(pool.v_buffers[0].shape, generator=gen))
    perm = torch.randperm(sum(seq_lens) + 64 - page, generator=gen) + page
    table = torch.zeros((batch + 1, max(seq_lens) + 8), dtype=torch.int64)
    used = 0
    for i, n in enumerate(seq_lens):
        table[i + 1, :n] = perm[used : used + n]
        used += n
    table = table.to(device)
    for mode in (ForwardMode.EXTEND, ForwardMode.DECODE):
        e = exts if mode is ForwardMode.EXTEND else [1] * batch
        p = [s - n for s, n in zip(seq_lens, e)]
        total = sum(e)
        locs = torch.cat([table[i + 1, p[i] : seq_lens[i]] for i in range(batch)])
        fb = ForwardBatch(
            mode,
            torch.zeros(total, dtype=torch.int64, device=device),
            torch.zeros(total, dtype=torch.int64, device=device),
            locs,
            torch.arange(1, batch + 1, device=device),
            torch.tensor(seq_lens, device=device),
            seq_lens,
            p,
            e,
            torch.zeros(0, dtype=torch.int64),
            table,
        )
        # q/k/v are strided views of one fused qkv output, as the models pass them (never copied).
        qkv = torch.randn((total, (heads + 2 * kv_heads) * dim), generator=gen).to(device, dtype)
        q, k, v = (x.view(total, -1, dim) for x in qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], -1))
        # The new tokens' K/V go in through the reference store (the fused one is tested in
        # test_rope_store.py), so both backends attend over the same pool contents.
        TorchNativeBackend(pool).rotate_and_store(None, fb.positions, q, k, v, 0, fb)
        outs = []
        # num_splits=None: splits and block chosen from the batch size (decode_launch_config);
        # num_splits=1: one launch writes the output (64-key blocks, so the longer rows loop)
        for backend in (
            TorchNativeBackend(pool),
            TritonBackend(pool, num_splits=4),
            TritonBackend(pool),
            TritonBackend(pool, num_splits=1),
        ):
            backend.init_forward_metadata(fb)
            outs.append(backend.forward(q, 0, dim**-0.5, fb).float())
        for out in outs[1:]:
            err = (outs[0] - out).norm() / outs[0].norm()
            assert err < tol, (case, mode, err.item())


def check_fused_decode(device: str, dtype: torch.dtype, kv_dtype: torch.dtype, tol: float) -> None:
    """`TritonBackend.attend` on a decode batch (rotary, KV store and attention in the split
    kernel's launch) against the torch-native backend's rotary, store, then attention: the
    outputs, and both pools afterwards (the new tokens' rotated K and V at their slots)."""
    from radixlm.attention.torch_native import TorchNativeBackend
    from radixlm.attention.triton_backend import TritonBackend
    from radixlm.forward.batch import ForwardBatch, ForwardMode
    from radixlm.layers.basic import RotaryEmbedding
    from radixlm.mem_cache.kv_pool import KVPool

    gen = torch.Generator().manual_seed(11)
    # (heads, KV heads, head dim, lengths, padded rows): 200 tokens put the new key in a later
    # block of one split (the pipelined loop); 17 tokens in 16 splits make it split 8's; padded
    # rows are a CUDA graph's (table row 0, length 1, reserved slot 0)
    for heads, kv_heads, dim, lens, pad in (
        (8, 2, 32, [5, 40, 1], 0),
        (3, 1, 24, [17, 2], 2),
        (4, 2, 80, [200, 17, 1], 1),
    ):
        rotary = RotaryEmbedding(dim, 256, {"rope_theta": 10000.0})
        rotary.init_cache(torch.device(device))
        size = sum(lens) + 16
        slots = torch.randperm(size - 1, generator=gen)[: sum(lens)] + 1
        table = torch.zeros((len(lens) + 1, max(lens)), dtype=torch.int64)
        for i, n in enumerate(lens):
            table[i + 1, :n] = slots[sum(lens[:i]) : sum(lens[:i]) + n]
        rows = torch.tensor(list(range(1, len(lens) + 1)) + [0] * pad)
        lens = lens + [1] * pad
        shape = KVPool(size, 1, 1, kv_heads, dim, kv_dtype, torch.device(device)).k_buffers[0].shape
        k_init = torch.randn(shape, generator=gen)
        v_init = torch.randn(shape, generator=gen)
        qkv = torch.randn((len(lens), (heads + 2 * kv_heads) * dim), generator=gen)
        qkv[len(lens) - pad :] = qkv[-1]  # padded rows: the same token at position 0 (same K/V into slot 0)
        qkv = qkv.to(device, dtype)
        positions = torch.tensor(lens) - 1
        table = table.to(device)
        fb = ForwardBatch(
            ForwardMode.DECODE,
            positions.to(device),
            positions.to(device),
            table[rows, positions].to(device),
            rows.to(device),
            torch.tensor(lens, device=device),
            lens,
            positions.tolist(),
            [1] * len(lens),
            torch.arange(len(lens), device=device),
            table,
        )
        results = []
        for backend_cls, kw in (
            (TorchNativeBackend, {}),
            (TritonBackend, {"num_splits": 1}),
            (TritonBackend, {"num_splits": 4}),
            (TritonBackend, {}),
        ):
            pool = KVPool(size, 1, 1, kv_heads, dim, kv_dtype, torch.device(device))
            pool.k_buffers[0].copy_(k_init)
            pool.v_buffers[0].copy_(v_init)
            q, k, v = (
                x.view(len(lens), -1, dim).clone() for x in qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], -1)
            )
            backend = backend_cls(pool, **kw)
            backend.init_forward_metadata(fb)
            out = backend.attend(rotary, fb.positions, q, k, v, 0, dim**-0.5, fb).float()
            results.append((out, pool.k_buffers[0].float(), pool.v_buffers[0].float()))
        for got in results[1:]:
            for want, have in zip(results[0], got):
                err = ((want - have).norm() / want.norm()).item()
                assert err < tol, (heads, kv_heads, dim, dtype, kv_dtype, err)


class _EagerRotary:
    """A rotary the Triton backend does not fuse (not a `RotaryEmbedding`): the reference path."""

    def __init__(self, rotary: object) -> None:
        self.rotary = rotary

    def __call__(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotary._eager(positions, q, k)


def check_extend_attend(device: str, dtype: torch.dtype, kv_dtype: torch.dtype, tol: float) -> None:
    """`TritonBackend.attend` on an extend batch (fused rotary and store leaving k rotated,
    then attention reading the new K/V from k and v) against the torch-native backend: outputs
    and pools, with the fused rotary and an unfused one; with a same-dtype pool, k afterwards
    holds exactly what the pool holds at the new slots."""
    from radixlm.attention.torch_native import TorchNativeBackend
    from radixlm.attention.triton_backend import TritonBackend
    from radixlm.forward.batch import ForwardBatch, ForwardMode
    from radixlm.layers.basic import RotaryEmbedding
    from radixlm.mem_cache.kv_pool import KVPool

    gen = torch.Generator().manual_seed(13)
    heads, kv_heads, dim, prefixes, exts = 8, 2, 32, [0, 20, 7], [30, 5, 40]
    fused = RotaryEmbedding(dim, 256, {"rope_theta": 10000.0})
    fused.init_cache(torch.device(device))
    lens = [p + e for p, e in zip(prefixes, exts)]
    size = sum(lens) + 16
    slots = torch.randperm(size - 1, generator=gen)[: sum(lens)] + 1
    table = torch.zeros((len(lens) + 1, max(lens)), dtype=torch.int64)
    for i, n in enumerate(lens):
        table[i + 1, :n] = slots[sum(lens[:i]) : sum(lens[:i]) + n]
    positions = torch.cat([torch.arange(p, p + e) for p, e in zip(prefixes, exts)])
    locs = torch.cat([table[i + 1, p : p + e] for i, (p, e) in enumerate(zip(prefixes, exts))])
    table = table.to(device)
    fb = ForwardBatch(
        ForwardMode.EXTEND,
        positions.to(device),
        positions.to(device),
        locs.to(device),
        torch.arange(1, len(lens) + 1, device=device),
        torch.tensor(lens, device=device),
        lens,
        prefixes,
        exts,
        torch.zeros(len(lens), dtype=torch.int64, device=device),
        table,
    )
    shape = KVPool(size, 1, 1, kv_heads, dim, kv_dtype, torch.device(device)).k_buffers[0].shape
    k_init, v_init = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    total = sum(exts)
    qkv = torch.randn((total, (heads + 2 * kv_heads) * dim), generator=gen).to(device, dtype)
    for rotary in (fused, _EagerRotary(fused)):
        results = []
        for backend_cls in (TorchNativeBackend, TritonBackend):
            pool = KVPool(size, 1, 1, kv_heads, dim, kv_dtype, torch.device(device))
            pool.k_buffers[0].copy_(k_init)
            pool.v_buffers[0].copy_(v_init)
            q, k, v = (
                x.view(total, -1, dim) for x in qkv.clone().split([heads * dim, kv_heads * dim, kv_heads * dim], -1)
            )
            backend = backend_cls(pool)
            backend.init_forward_metadata(fb)
            out = backend.attend(rotary, fb.positions, q, k, v, 0, dim**-0.5, fb).float()
            results.append((out, pool.k_buffers[0].float(), pool.v_buffers[0].float()))
            if backend_cls is TritonBackend and kv_dtype == dtype and rotary is fused:
                assert torch.equal(k, pool.k_buffers[0][fb.out_cache_loc]), "k not left rotated as stored"
        for want, have in zip(*results):
            err = ((want - have).norm() / want.norm()).item()
            assert err < tol, (type(rotary).__name__, dtype, kv_dtype, err)


def check_shared_rows_decode(device: str, dtype: torch.dtype, tol: float) -> None:
    """A speculative verify as decode rows: several rows of one request at consecutive positions,
    each reading the K/V the rows before it store in the same step. Rows are given last position
    first, and the draft slots hold stale K/V, so a row that attends before its predecessors'
    stores land reads the stale values (the interpreter runs programs in row order; a GPU in
    any). `TritonBackend(rows_per_request=5)` (the verify kernel: a request's rows scored by
    one set of programs, with chunks of at most 5 or 2 rows) must equal the torch-native
    backend's store, then attend (outputs and pools); the split decode with its fused store
    must not (the check sees the hazard)."""
    from radixlm.attention.torch_native import TorchNativeBackend
    from radixlm.attention.triton_backend import TritonBackend
    from radixlm.forward.batch import ForwardBatch, ForwardMode
    from radixlm.layers.basic import RotaryEmbedding
    from radixlm.mem_cache.kv_pool import KVPool

    gen = torch.Generator().manual_seed(12)
    heads, kv_heads, dim = 4, 2, 32
    rotary = RotaryEmbedding(dim, 256, {"rope_theta": 10000.0})
    rotary.init_cache(torch.device(device))
    contexts, rows_per = [40, 9], [5, 3]  # KV already stored; rows (last token + drafts) per request
    size = sum(contexts) + sum(rows_per) + 16
    slots = torch.randperm(size - 1, generator=gen) + 1
    table = torch.zeros((3, max(c + r for c, r in zip(contexts, rows_per))), dtype=torch.int64)
    used = 0
    for i, (c, r) in enumerate(zip(contexts, rows_per)):
        table[i + 1, : c - 1 + r] = slots[used : used + c - 1 + r]
        used += c - 1 + r
    pool_rows, positions = [], []
    for i, (c, r) in enumerate(zip(contexts, rows_per)):
        pool_rows += [i + 1] * r
        positions += reversed(range(c - 1, c - 1 + r))
    pool_rows, positions = torch.tensor(pool_rows), torch.tensor(positions)
    n = len(positions)
    table = table.to(device)
    fb = ForwardBatch(
        ForwardMode.DECODE,
        positions.to(device),
        positions.to(device),
        table[pool_rows.to(device), positions.to(device)],
        pool_rows.to(device),
        (positions + 1).to(device),
        (positions + 1).tolist(),
        positions.tolist(),
        [1] * n,
        torch.arange(n, device=device),
        table,
    )
    shape = KVPool(size, 1, 1, kv_heads, dim, dtype, torch.device(device)).k_buffers[0].shape
    k_init, v_init = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    qkv = torch.randn((n, (heads + 2 * kv_heads) * dim), generator=gen).to(device, dtype)
    results = []
    for backend_cls, kw in (
        (TorchNativeBackend, {}),
        (TritonBackend, {"rows_per_request": 5}),
        (TritonBackend, {"rows_per_request": 5, "num_splits": 1}),
        (TritonBackend, {"rows_per_request": 2, "num_splits": 3}),
        (TritonBackend, {"num_splits": 1}),
    ):
        pool = KVPool(size, 1, 1, kv_heads, dim, dtype, torch.device(device))
        pool.k_buffers[0].copy_(k_init)
        pool.v_buffers[0].copy_(v_init)
        q, k, v = (x.view(n, -1, dim).clone() for x in qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], -1))
        backend = backend_cls(pool, **kw)
        backend.init_forward_metadata(fb)
        out = backend.attend(rotary, fb.positions, q, k, v, 0, dim**-0.5, fb).float()
        results.append((out, pool.k_buffers[0].float(), pool.v_buffers[0].float()))
    for got in results[1:4]:
        for want, have in zip(results[0], got):
            err = ((want - have).norm() / want.norm()).item()
            assert err < tol, (dtype, err)
    fused_err = ((results[0][0] - results[4][0]).norm() / results[0][0].norm()).item()
    if device == "cpu":  # the interpreter's row order makes the race deterministic
        assert fused_err > 100 * tol, fused_err


def test_triton_matches_torch_native() -> None:
    if torch.cuda.is_available():
        for case in CASES:
            _run_case(case, "cuda", torch.float32, 2e-3)  # tf32 dots
            _run_case(case, "cuda", torch.bfloat16, 2e-2)
            _run_case(case, "cuda", torch.bfloat16, 2e-2, torch.float8_e4m3fn)
        check_fused_decode("cuda", torch.float32, torch.float32, 2e-3)
        check_fused_decode("cuda", torch.bfloat16, torch.bfloat16, 2e-2)
        check_fused_decode("cuda", torch.bfloat16, torch.float8_e4m3fn, 2e-2)
        check_shared_rows_decode("cuda", torch.float32, 2e-3)
        check_extend_attend("cuda", torch.float32, torch.float32, 2e-3)
        check_extend_attend("cuda", torch.bfloat16, torch.bfloat16, 2e-2)
        check_extend_attend("cuda", torch.bfloat16, torch.float8_e4m3fn, 2e-2)
        check_shared_rows_decode("cuda", torch.bfloat16, 2e-2)
        check_decode_loops("cuda", torch.float32, 2e-3)
        check_decode_loops("cuda", torch.bfloat16, 2e-2)
        return
    code = (
        "for c in t.CASES: t._run_case(c, 'cpu', torch.float32, 1e-4)\n"
        "t._run_case(t.CASES[2], 'cpu', torch.float32, 1e-4, torch.float8_e4m3fn)\n"
        "t.check_decode_loops('cpu', torch.float32, 1e-5)\n"
        "t.check_fused_decode('cpu', torch.float32, torch.float32, 1e-5)\n"
        "t.check_shared_rows_decode('cpu', torch.float32, 1e-5)\n"
        "t.check_extend_attend('cpu', torch.float32, torch.float32, 1e-5)\n"
    )
    run_interpreted("test_triton_attention", code)

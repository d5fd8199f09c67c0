"""Segmented LoRA shrink / expand: the torch reference against a per-row float64 product, and
the Triton kernels against the torch reference (through Triton's interpreter in a subprocess on
the CPU, compiled on a GPU), in both layouts the batch info produces: segments of several rows
(prefill) and one row per segment from the static buffers (decode, CUDA-graph shape)."""

from __future__ import annotations

import pytest
import torch
from helpers.interpreted import run_interpreted

SLOTS, R, K, N = 3, 24, 300, 56  # ragged sizes: masks on every edge; K > 256: the decode case splits K


def per_row_reference(x, a, b, scales, row_slots, out):  # type: ignore[no-untyped-def]
    """out + each row's (x A^T) B^T * scale, row by row in float64."""
    want = out.double().clone()
    for i, slot in enumerate(row_slots):
        if slot >= 0:
            want[i] += (x[i].double() @ a[slot].double().t() @ b[slot].double().t()) * scales[slot]
    return want


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def _case(gen: torch.Generator, rows_per_req: list[int], req_slots: list[int], device: str, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    from radixlm.lora.batch_info import LoraBatchInfo

    t = sum(rows_per_req)
    x = torch.randn(t, K, generator=gen).to(device, dtype)
    a = torch.randn(SLOTS, R, K, generator=gen).to(device, dtype)
    b = torch.randn(SLOTS, N, R, generator=gen).to(device, dtype)
    out = torch.randn(t, N, generator=gen).to(device, dtype)
    scales = [0.5, 2.0, 1.25]
    info = LoraBatchInfo(max_tokens=64, device=torch.device(device), num_slots=SLOTS)
    info.set_rows(req_slots, rows_per_req)
    row_slots = [s for s, n in zip(req_slots, rows_per_req) for _ in range(n)]
    return x, a, b, out, scales, info, row_slots


CASES = (
    ([5, 1, 20, 3, 2], [0, -1, 2, 2, 1]),  # prefill: runs merged (2, 2), a base request, a 20-row segment
    ([1, 1, 1, 1, 1], [1, -1, 0, 1, 1]),  # decode: one row each (grouped by slot, static buffers)
    ([1] * 40, [1 if i % 3 else (i // 3) % 3 - 1 for i in range(40)]),  # decode, interleaved: slot 1 > BLOCK_M rows
)


def test_torch_reference_matches_per_row_product() -> None:
    from radixlm.lora import ops_torch

    gen = torch.Generator().manual_seed(0)
    for rows, slots in CASES:
        x, a, b, out, scales, info, row_slots = _case(gen, rows, slots, "cpu", torch.float32)
        want = per_row_reference(x, a, b, scales, row_slots, out)
        s = ops_torch.shrink(x, a, info.host_segments)
        got = ops_torch.expand_add(out.clone(), s, b, scales, info.host_segments)
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-4)


def check_triton(device: str) -> None:
    from radixlm.lora import ops_torch, triton_ops

    gen = torch.Generator().manual_seed(1)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        for rows, slots in CASES:
            x, a, b, out, scales, info, row_slots = _case(gen, rows, slots, device, dtype)
            assert info.per_token == all(n == 1 for n in rows)
            seg = info.segments(x.shape[0])
            assert (triton_ops.split_k(seg, K, 2)[0] > 1) == info.per_token  # a short decode batch splits K
            s = triton_ops.shrink(x, a, seg)
            want_s = ops_torch.shrink(x, a, info.host_segments)
            lora_rows = [i for i, slot in enumerate(row_slots) if slot >= 0]  # base rows of s: unspecified
            total = s.float().sum(0)  # the split-K partial products
            assert rel_err(total[lora_rows], want_s[lora_rows]) <= tol, (dtype, rows)
            dev_scales = torch.tensor(scales, dtype=torch.float32, device=device)
            got = triton_ops.expand_add(out.clone(), s, b, dev_scales, seg)
            want = ops_torch.expand_add(out.clone(), want_s, b, scales, info.host_segments)
            assert rel_err(got, want) <= tol, (dtype, rows, rel_err(got, want))
            base_rows = [i for i, slot in enumerate(row_slots) if slot < 0]
            assert torch.equal(got[base_rows], out[base_rows])  # base rows untouched


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_kernels_on_gpu() -> None:
    check_triton("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the compiled kernels are checked instead")
def test_triton_kernels_interpreted() -> None:
    pytest.importorskip("triton")
    run_interpreted("test_lora_kernels", "t.check_triton('cpu')")


# -- fused projections: block-diagonal B, the expand reading only a tile's parts ---------------
PARTS = (40, 40, 24)  # a q/k/v-like fused projection: both 64-column output tiles straddle a part bound
PARTS_K, POOL_RANK, PARTS_SLOTS = 300, 24, 4
ADAPTER_RANKS = (24, 8, 16, 3)  # per slot; the pool's rank is the largest (--max-lora-rank)
PARTS_CASES = (
    [0],  # batch 1
    [-1],  # batch 1, base only: untouched
    [1, -1, 3, 1, 0, 2, -1, 3],  # every adapter, base rows interleaved
    [2] * 20 + [-1, 0, 0],  # more than BLOCK_ROWS rows on one adapter: two blocks
)


def _block_diagonal(gen: torch.Generator, n_in: int, parts: tuple[int, ...], slots: int, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    """Pool-shaped A [S, P*R, K] and block-diagonal B [S, N, P*R], each slot's adapter of rank
    ADAPTER_RANKS[slot] (zero beyond it), one part left untargeted (zero) on slot 1."""
    width = len(parts) * POOL_RANK
    a = torch.zeros(slots, width, n_in)
    b = torch.zeros(slots, sum(parts), width)
    for slot in range(slots):
        r, offset = ADAPTER_RANKS[slot], 0
        for p, size in enumerate(parts):
            if not (slot == 1 and p == 1):
                a[slot, p * POOL_RANK : p * POOL_RANK + r] = torch.randn(r, n_in, generator=gen) / n_in**0.5
                b[slot, offset : offset + size, p * POOL_RANK : p * POOL_RANK + r] = torch.randn(size, r, generator=gen)
            offset += size
    return a.to(dtype), b.to(dtype)


def check_parts(device: str) -> None:
    """Shrink + part-aware expand on a fused projection's pool layout, decode batches padded to a
    CUDA-graph bucket, against the torch reference (which multiplies all of B), float32 and bf16."""
    from radixlm.lora import ops_torch, triton_ops
    from radixlm.lora.batch_info import LoraBatchInfo

    gen = torch.Generator().manual_seed(2)
    bounds = (PARTS[0], PARTS[0] + PARTS[1])
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        for row_slots in PARTS_CASES:
            a, b = _block_diagonal(gen, PARTS_K, PARTS, PARTS_SLOTS, dtype)
            a, b = a.to(device), b.to(device)
            t = len(row_slots)
            x = torch.randn(t, PARTS_K, generator=gen).to(device, dtype)
            out = torch.randn(t, sum(PARTS), generator=gen).to(device, dtype)
            scales = [0.5, 2.0, 1.25, 3.0]
            info = LoraBatchInfo(max_tokens=32, device=torch.device(device), num_slots=PARTS_SLOTS)
            info.set_rows(row_slots, [1] * t)
            seg = info.segments(t + 1)  # a CUDA-graph bucket with a padding row
            x_pad = torch.cat([x, torch.zeros_like(x[:1])])
            out_pad = torch.cat([out, torch.zeros_like(out[:1])])
            dev_scales = torch.tensor(scales, dtype=torch.float32, device=device)
            s = triton_ops.shrink(x_pad, a, seg)
            got = triton_ops.expand_add(out_pad.clone(), s, b, dev_scales, seg, bounds, POOL_RANK)
            want_s = ops_torch.shrink(x, a, info.host_segments)
            want = ops_torch.expand_add(out.clone(), want_s, b, scales, info.host_segments)
            assert rel_err(got[:t], want) <= tol, (dtype, row_slots, rel_err(got[:t], want))
            base_rows = [i for i, slot in enumerate(row_slots) if slot < 0] + [t]
            assert torch.equal(got[base_rows], out_pad[base_rows])  # base and padding rows untouched
            if dtype == torch.float32:  # and it is a LoRA term: differs from out where an adapter is
                lora_rows = [i for i, slot in enumerate(row_slots) if slot >= 0]
                assert all(not torch.allclose(got[i], out[i]) for i in lora_rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_projection_parts_on_gpu() -> None:
    check_parts("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the compiled kernels are checked instead")
def test_fused_projection_parts_interpreted() -> None:
    pytest.importorskip("triton")
    run_interpreted("test_lora_kernels", "t.check_parts('cpu')")


def check_long_k(device: str) -> None:
    """Llama-sized K at decode (a base row between two adapters' rows): the most partials per
    row (K 4096: 64 one-tile programs of 64; K 14336: 56 of 256), summed by the expand."""
    from radixlm.lora import ops_torch, triton_ops
    from radixlm.lora.batch_info import LoraBatchInfo

    gen = torch.Generator().manual_seed(3)
    row_slots = [0, -1, 1]
    for k, dtype, tol in ((4096, torch.float32, 1e-5), (14336, torch.bfloat16, 2e-2)):
        t, r, n = len(row_slots), 16, 80
        x = torch.randn(t, k, generator=gen).to(device, dtype)
        a = (torch.randn(2, r, k, generator=gen) / k**0.5).to(device, dtype)
        b = torch.randn(2, n, r, generator=gen).to(device, dtype)
        out = torch.randn(t, n, generator=gen).to(device, dtype)
        info = LoraBatchInfo(max_tokens=8, device=torch.device(device), num_slots=2)
        info.set_rows(row_slots, [1] * t)
        seg = info.segments(t)
        s = triton_ops.shrink(x, a, seg)
        assert s.shape[0] == triton_ops.split_k(seg, k, 1)[0] > 16
        scales = torch.tensor([0.5, 2.0], device=device)
        got = triton_ops.expand_add(out.clone(), s, b, scales, seg)
        want_s = ops_torch.shrink(x, a, info.host_segments)
        want = ops_torch.expand_add(out.clone(), want_s, b, [0.5, 2.0], info.host_segments)
        assert rel_err(got, want) <= tol, (k, dtype, rel_err(got, want))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_long_k_split_on_gpu() -> None:
    check_long_k("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the compiled kernels are checked instead")
def test_long_k_split_interpreted() -> None:
    pytest.importorskip("triton")
    run_interpreted("test_lora_kernels", "t.check_long_k('cpu')")


@pytest.mark.parametrize("k", [64, 300, 4096, 14336])
@pytest.mark.parametrize("layout", ["decode-1", "decode-256", "prefill"])
def test_split_k_plan_covers_k_in_whole_tiles(k: int, layout: str) -> None:
    """Every K element in exactly one program's K slice, whole tiles per slice, at most MAX_SPLIT
    partials; a batch-1 decode spreads K over several programs, a prefill does not split."""
    pytest.importorskip("triton")
    from radixlm.lora import triton_ops
    from radixlm.lora.batch_info import LoraBatchInfo

    info = LoraBatchInfo(max_tokens=256, device=torch.device("cpu"), num_slots=8)
    if layout == "prefill":
        info.set_rows([0, 1], [40, 30])
        rows = 70
    else:
        rows = int(layout.split("-")[1])
        info.set_rows([i % 8 for i in range(rows)], [1] * rows)
    split, k_per, block_k = triton_ops.split_k(info.segments(rows), k, 1)
    assert 1 <= split <= triton_ops.MAX_SPLIT and k_per % block_k == 0
    assert (split - 1) * k_per < k <= split * k_per  # the last slice is not empty, none is missing
    if layout == "prefill":
        assert split == 1
    if layout == "decode-1" and k >= 4096:
        assert split >= 16 and block_k <= triton_ops.SPLIT_TILES[1]

"""Grouping the routed rows by expert for the fused MoE GEMMs (step 1 of `fused_moe`'s module
docstring): `align_by_expert` runs `_align_kernel` (+ `_scatter_kernel` beyond 1,024 rows) and
returns the `ExpertBlocks` both GEMMs read; no host sync, so a CUDA graph can capture it. The
one-program alignment is the jitted `align_one_program`, which `moe_route`'s one-launch
routing shares."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl

    from radixlm.kernels.pdl import pdl_enter, pdl_launch
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

# warps of the one-program alignment
ALIGN_WARPS = 4


def max_padded_rows(num_rows: int, num_experts: int, block_m: int) -> int:
    """Upper bound of the rows after padding each selected expert's rows to whole blocks: at
    most min(E, T*k) experts are selected, each wasting at most BLOCK_M - 1 rows."""
    return num_rows + min(num_experts, num_rows) * (block_m - 1)


if triton is not None:

    @triton.jit
    def _scatter_rows(ids_ptr, sorted_ptr, cursor_ptr, offs, num_rows, num_experts):
        """Each row r in `offs` with a valid expert e takes the next slot of e's blocks (an
        atomic on e's cursor) and writes r there."""
        e = tl.load(ids_ptr + offs, mask=offs < num_rows, other=-1)
        ok = (offs < num_rows) & (e >= 0) & (e < num_experts)
        dest = tl.atomic_add(cursor_ptr + tl.where(ok, e, 0), 1, mask=ok, sem="relaxed")
        tl.store(sorted_ptr + dest, offs, mask=ok)

    @triton.jit
    def _fill(ptr, first, stop, value, CHUNK: tl.constexpr):
        """ptr[first:stop] = value, CHUNK entries a step."""
        fill = tl.full([CHUNK], 0, tl.int32) + value
        for start in range(first, stop, CHUNK):
            offs = start + tl.arange(0, CHUNK)
            tl.store(ptr + offs, fill, mask=offs < stop)

    @triton.jit
    def _place_blocks(
        ids_ptr,
        cursor_ptr,
        block_expert_ptr,
        num_padded_ptr,
        num_rows,
        num_experts,
        max_blocks,
        BLOCK_M: tl.constexpr,
        E_POW2: tl.constexpr,
        CHUNK: tl.constexpr,
        BLOCKS_CHUNK: tl.constexpr,
    ):
        """Count the rows per expert and write each expert's padded start into `cursor`, each
        block's expert into `block_expert` (-1 past the used blocks) and `num_padded`."""
        counts = tl.zeros([E_POW2], dtype=tl.int32)
        for start in range(0, num_rows, CHUNK):
            offs = start + tl.arange(0, CHUNK)
            e = tl.load(ids_ptr + offs, mask=offs < num_rows, other=-1)
            ok = (offs < num_rows) & (e >= 0) & (e < num_experts)
            counts += tl.histogram(tl.where(ok, e, 0), E_POW2, mask=ok)
        padded = tl.cdiv(counts, BLOCK_M) * BLOCK_M
        ends = tl.cumsum(padded, axis=0)
        experts = tl.arange(0, E_POW2)
        tl.store(cursor_ptr + experts, ends - padded)
        total = tl.sum(padded, axis=0)
        tl.store(num_padded_ptr, total)
        _store_owners(ends, total, block_expert_ptr, max_blocks, BLOCK_M, BLOCKS_CHUNK)

    @triton.jit
    def _store_owners(ends, total, block_expert_ptr, max_blocks, BLOCK_M: tl.constexpr, BLOCKS_CHUNK: tl.constexpr):
        """block_expert[b] = the expert whose padded rows hold row b * BLOCK_M (`ends`: each
        expert's padded end, cumulative), -1 from `total` on."""
        for first in range(0, max_blocks, BLOCKS_CHUNK):  # [BLOCKS_CHUNK, E_POW2] comparisons a step
            blocks = first + tl.arange(0, BLOCKS_CHUNK)
            row0 = blocks * BLOCK_M
            owner = tl.sum((ends[None, :] <= row0[:, None]).to(tl.int32), axis=1)
            owner = tl.where(row0 < total, owner, -1)
            tl.store(block_expert_ptr + blocks, owner, mask=blocks < max_blocks)

    @triton.jit
    def align_in_registers(
        ids,
        rows,
        sorted_ptr,
        block_expert_ptr,
        num_padded_ptr,
        done_ptr,
        num_done,
        num_rows,
        max_padded,
        max_blocks,
        R: tl.constexpr,
        BLOCK_M: tl.constexpr,
        E_POW2: tl.constexpr,
        CHUNK: tl.constexpr,
        BLOCKS_CHUNK: tl.constexpr,
    ):
        """`align_one_program` on ids held in registers, with no memory read back: `ids` [R]
        (local expert ids, -1 for none), `rows` [R] their row numbers. Each expert's rows take its
        blocks in row order: row r goes to its expert's padded start (a [R, E_POW2] one-hot
        sum) plus the valid rows of that expert before it (a [R, R] count)."""
        _fill(sorted_ptr, 0, max_padded, num_rows, CHUNK)
        _fill(done_ptr, 0, num_done, 0, CHUNK)
        valid = ids >= 0
        experts = tl.arange(0, E_POW2)
        counts = tl.histogram(tl.where(valid, ids, 0), E_POW2, mask=valid)
        padded = tl.cdiv(counts, BLOCK_M) * BLOCK_M
        ends = tl.cumsum(padded, axis=0)
        total = tl.sum(padded, axis=0)
        tl.store(num_padded_ptr, total)
        _store_owners(ends, total, block_expert_ptr, max_blocks, BLOCK_M, BLOCKS_CHUNK)
        start = tl.sum(tl.where(ids[:, None] == experts[None, :], (ends - padded)[None, :], 0), axis=1)
        order = tl.arange(0, R)
        before = (ids[:, None] == ids[None, :]) & (order[None, :] < order[:, None])
        rank = tl.sum(before.to(tl.int32), axis=1)
        tl.debug_barrier()  # the pad fill, stored by other threads, comes first
        tl.store(sorted_ptr + start + rank, rows, mask=valid)

    @triton.jit
    def align_one_program(
        ids_ptr,
        sorted_ptr,
        cursor_ptr,
        block_expert_ptr,
        num_padded_ptr,
        done_ptr,
        num_done,
        num_rows,
        num_experts,
        max_padded,
        max_blocks,
        BLOCK_M: tl.constexpr,
        E_POW2: tl.constexpr,
        CHUNK: tl.constexpr,
        BLOCKS_CHUNK: tl.constexpr,
    ):
        """The whole alignment of at most CHUNK rows by one program (the caller's barrier made
        the ids visible to all its threads): the pad fill, `num_done` zeroed counters, the
        blocks, then (after a barrier) the scatter."""
        _fill(sorted_ptr, 0, max_padded, num_rows, CHUNK)
        _fill(done_ptr, 0, num_done, 0, CHUNK)
        _place_blocks(
            ids_ptr,
            cursor_ptr,
            block_expert_ptr,
            num_padded_ptr,
            num_rows,
            num_experts,
            max_blocks,
            BLOCK_M,
            E_POW2,
            CHUNK,
            BLOCKS_CHUNK,
        )
        tl.debug_barrier()  # the pad fill and the cursors, stored by other threads, come first
        _scatter_rows(ids_ptr, sorted_ptr, cursor_ptr, tl.arange(0, CHUNK), num_rows, num_experts)

    @triton.jit(do_not_specialize=["num_rows", "max_padded", "max_blocks", "num_done"])
    def _align_kernel(
        ids_ptr,
        sorted_ptr,
        cursor_ptr,
        block_expert_ptr,
        num_padded_ptr,
        done_ptr,
        num_done,
        num_rows,
        num_experts,
        max_padded,
        max_blocks,
        BLOCK_M: tl.constexpr,
        E_POW2: tl.constexpr,
        CHUNK: tl.constexpr,
        BLOCKS_CHUNK: tl.constexpr,
        SCATTER: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """With SCATTER (one program, num_rows <= CHUNK): `align_one_program`. Else each program
        fills its CHUNK of `sorted` with the pad value `num_rows` and program 0 also runs
        `_place_blocks`; `_scatter_kernel` then scatters the rows (no counters: num_done 0)."""
        if PDL:
            pdl_enter()
        if SCATTER:
            align_one_program(
                ids_ptr,
                sorted_ptr,
                cursor_ptr,
                block_expert_ptr,
                num_padded_ptr,
                done_ptr,
                num_done,
                num_rows,
                num_experts,
                max_padded,
                max_blocks,
                BLOCK_M,
                E_POW2,
                CHUNK,
                BLOCKS_CHUNK,
            )
        else:
            first = tl.program_id(0) * CHUNK
            _fill(sorted_ptr, first, tl.minimum(first + CHUNK, max_padded), num_rows, CHUNK)
            if tl.program_id(0) == 0:
                _place_blocks(
                    ids_ptr,
                    cursor_ptr,
                    block_expert_ptr,
                    num_padded_ptr,
                    num_rows,
                    num_experts,
                    max_blocks,
                    BLOCK_M,
                    E_POW2,
                    CHUNK,
                    BLOCKS_CHUNK,
                )

    @triton.jit(do_not_specialize=["num_rows"])
    def _scatter_kernel(ids_ptr, sorted_ptr, cursor_ptr, num_rows, num_experts, CHUNK: tl.constexpr):
        """`_scatter_rows` over this program's CHUNK of rows (after `_align_kernel`)."""
        offs = tl.program_id(0) * CHUNK + tl.arange(0, CHUNK)
        _scatter_rows(ids_ptr, sorted_ptr, cursor_ptr, offs, num_rows, num_experts)


@dataclass(frozen=True)
class ExpertBlocks:
    """The routed rows grouped by expert (see the module docstring): `sorted_rows` int32
    [max_blocks * block_m] (row r = t*k + j, or the pad value T*k), `block_expert` int32 [max_blocks]
    (-1 past the used blocks), `num_padded` int32 [1] (rows used, a multiple of block_m);
    `tile_done` int32 [n], zeroed by the alignment: the arrival counters of a down GEMM that sums
    the top-k in place (n = its N tiles; empty when it does not)."""

    sorted_rows: torch.Tensor
    block_expert: torch.Tensor
    num_padded: torch.Tensor
    block_m: int
    tile_done: torch.Tensor

    @property
    def max_blocks(self) -> int:
        return self.block_expert.numel()


_CHUNK = 1024
# the one-program alignment's bound on rows (and on zeroed counters): one CHUNK
ONE_PROGRAM_ROWS = _CHUNK


def empty_blocks(
    num_rows: int, num_experts: int, block_m: int, counters: int, device: torch.device
) -> tuple[ExpertBlocks, torch.Tensor]:
    """Unfilled `ExpertBlocks` for `num_rows` routed rows, and the alignment's scratch (one
    cursor per expert, padded to a power of two). `sorted_rows` holds whole blocks (the bound of
    `max_padded_rows` rounded up to `block_m`), so a GEMM program may load its block's rows
    before it knows whether the block is used."""
    max_padded = triton.cdiv(max_padded_rows(num_rows, num_experts, block_m), block_m) * block_m
    new = functools.partial(torch.empty, dtype=torch.int32, device=device)
    blocks = ExpertBlocks(new(max_padded), new(triton.cdiv(max_padded, block_m)), new(1), block_m, new(counters))
    return blocks, new(triton.next_power_of_2(max(num_experts, 2)))


def blocks_chunk(num_experts: int) -> int:
    """Blocks whose owner one step of `_place_blocks` finds: [BLOCKS_CHUNK, E_POW2] comparisons."""
    return max(16, 8192 // triton.next_power_of_2(max(num_experts, 2)))


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int, counters: int = 0) -> ExpertBlocks:
    """Group the rows of `topk_ids` [T, k] (int32, contiguous) by expert into blocks of
    `block_m` rows, on the device without a host sync: one launch for up to `ONE_PROGRAM_ROWS`
    rows (decode), else two (the fill and counts, then the scatter over many programs).
    `counters` > 0 (one launch only) also zeroes that many `tile_done` counters."""
    num_rows = topk_ids.numel()
    single = num_rows <= ONE_PROGRAM_ROWS
    if counters and not (single and counters <= ONE_PROGRAM_ROWS):
        raise ValueError(f"align_by_expert: {counters} counters need the one-launch alignment ({num_rows} rows)")
    blocks, cursor = empty_blocks(num_rows, num_experts, block_m, counters, topk_ids.device)
    max_padded = blocks.sorted_rows.numel()
    # beyond one chunk program 0 counts alone, so it takes 4 chunks a step with 16 warps (32,768
    # rows: 8 dependent steps instead of 32)
    chunk, warps = (_CHUNK, ALIGN_WARPS) if single else (4 * _CHUNK, 16)
    _align_kernel[(1 if single else triton.cdiv(max_padded, chunk),)](
        topk_ids,
        blocks.sorted_rows,
        cursor,
        blocks.block_expert,
        blocks.num_padded,
        blocks.tile_done,
        counters,
        num_rows,
        num_experts,
        max_padded,
        blocks.max_blocks,
        block_m,
        cursor.numel(),
        chunk,
        blocks_chunk(num_experts),
        single,
        num_warps=warps,
        **pdl_launch(topk_ids, topk_ids.shape[0]),
    )
    if not single:
        _scatter_kernel[(triton.cdiv(num_rows, _CHUNK),)](
            topk_ids, blocks.sorted_rows, cursor, num_rows, num_experts, _CHUNK
        )
    return blocks

"""Grouping the routed rows by expert for the fused MoE GEMMs (step 1 of `fused_moe`'s module
docstring): `align_by_expert` runs `_align_kernel` (+ `_scatter_kernel` beyond 1,024 rows) and
returns the `ExpertBlocks` both GEMMs read; no host sync, so a CUDA graph can capture it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl

    from radixlm.kernels.pdl import pdl_enter, pdl_launch
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None


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

    @triton.jit(do_not_specialize=["num_rows", "max_padded", "max_blocks"])
    def _align_kernel(
        ids_ptr,
        sorted_ptr,
        cursor_ptr,
        block_expert_ptr,
        num_padded_ptr,
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
        """Fills `sorted` with the pad value `num_rows` (each program its CHUNK; with SCATTER
        the single program all of it); program 0 also counts the rows per expert and writes each
        expert's padded start into `cursor`, each block's expert into `block_expert` (-1 past
        the used blocks) and `num_padded`. With SCATTER (one program, num_rows <= CHUNK) it then
        scatters the rows itself, after a barrier, instead of `_scatter_kernel`."""
        if PDL:
            pdl_enter()
        pid = tl.program_id(0)
        pad = tl.full([CHUNK], 0, tl.int32) + num_rows
        if SCATTER:
            for first in range(0, max_padded, CHUNK):
                fill = first + tl.arange(0, CHUNK)
                tl.store(sorted_ptr + fill, pad, mask=fill < max_padded)
        else:
            fill = pid * CHUNK + tl.arange(0, CHUNK)
            tl.store(sorted_ptr + fill, pad, mask=fill < max_padded)
        if pid == 0:
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
            for first in range(0, max_blocks, BLOCKS_CHUNK):  # [BLOCKS_CHUNK, E_POW2] comparisons a step
                blocks = first + tl.arange(0, BLOCKS_CHUNK)
                row0 = blocks * BLOCK_M
                owner = tl.sum((ends[None, :] <= row0[:, None]).to(tl.int32), axis=1)
                owner = tl.where(row0 < total, owner, -1)
                tl.store(block_expert_ptr + blocks, owner, mask=blocks < max_blocks)
            if SCATTER:
                tl.debug_barrier()  # the pad fill and the cursors, stored by other threads, come first
                _scatter_rows(ids_ptr, sorted_ptr, cursor_ptr, tl.arange(0, CHUNK), num_rows, num_experts)

    @triton.jit(do_not_specialize=["num_rows"])
    def _scatter_kernel(ids_ptr, sorted_ptr, cursor_ptr, num_rows, num_experts, CHUNK: tl.constexpr):
        """`_scatter_rows` over this program's CHUNK of rows (after `_align_kernel`)."""
        offs = tl.program_id(0) * CHUNK + tl.arange(0, CHUNK)
        _scatter_rows(ids_ptr, sorted_ptr, cursor_ptr, offs, num_rows, num_experts)


@dataclass(frozen=True)
class ExpertBlocks:
    """The routed rows grouped by expert (see the module docstring): `sorted_rows` int32
    [max_padded] (row r = t*k + j, or the pad value T*k), `block_expert` int32 [max_blocks]
    (-1 past the used blocks), `num_padded` int32 [1] (rows used, a multiple of block_m)."""

    sorted_rows: torch.Tensor
    block_expert: torch.Tensor
    num_padded: torch.Tensor
    block_m: int


_CHUNK = 1024


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> ExpertBlocks:
    """Group the rows of `topk_ids` [T, k] (int32, contiguous) by expert into blocks of
    `block_m` rows, on the device without a host sync: one launch for up to `_CHUNK` rows
    (decode), else two (the fill and counts, then the scatter over many programs)."""
    num_rows = topk_ids.numel()
    max_padded = max_padded_rows(num_rows, num_experts, block_m)
    max_blocks = triton.cdiv(max_padded, block_m)
    dev = topk_ids.device
    e_pow2 = triton.next_power_of_2(max(num_experts, 2))
    sorted_rows = torch.empty(max_padded, dtype=torch.int32, device=dev)
    block_expert = torch.empty(max_blocks, dtype=torch.int32, device=dev)
    num_padded = torch.empty(1, dtype=torch.int32, device=dev)
    cursor = torch.empty(e_pow2, dtype=torch.int32, device=dev)
    single = num_rows <= _CHUNK
    # beyond one chunk program 0 counts alone, so it takes 4 chunks a step with 16 warps (32,768
    # rows: 8 dependent steps instead of 32)
    chunk, warps = (_CHUNK, 4) if single else (4 * _CHUNK, 16)
    _align_kernel[(1 if single else triton.cdiv(max_padded, chunk),)](
        topk_ids,
        sorted_rows,
        cursor,
        block_expert,
        num_padded,
        num_rows,
        num_experts,
        max_padded,
        max_blocks,
        block_m,
        e_pow2,
        chunk,
        max(16, 8192 // e_pow2),
        single,
        num_warps=warps,
        **pdl_launch(topk_ids, topk_ids.shape[0]),
    )
    if not single:
        _scatter_kernel[(triton.cdiv(num_rows, _CHUNK),)](topk_ids, sorted_rows, cursor, num_rows, num_experts, _CHUNK)
    return ExpertBlocks(sorted_rows, block_expert, num_padded, block_m)

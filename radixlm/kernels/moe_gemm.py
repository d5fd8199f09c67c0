"""The grouped GEMMs of the fused MoE (steps 2 and 3 of `fused_moe`'s module docstring): per
block of routed rows of one expert, gate/up with SiLU-and-mul in the epilogue (`gate_up`), then
down scaled by the routing weights (`down`), which at decode sizes also sums the top-k results
in place (`_sum_tile`, run by the last program of each N tile)."""

from __future__ import annotations

import torch

from radixlm.kernels.moe_align import ExpertBlocks
from radixlm.kernels.moe_config import GemmConfig

try:
    import triton
    import triton.language as tl

    from radixlm.kernels.pdl import pdl_enter, pdl_launch
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None


if triton is not None:

    @triton.jit
    def _tile(num_blocks, n, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        """(block, N tile) of this program, GROUP_M blocks sharing each N tile in turn."""
        pid = tl.program_id(0)
        tiles_n = tl.cdiv(n, BLOCK_N)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        size_m = tl.minimum(num_blocks - first_m, GROUP_M)
        return first_m + (pid % per_group) % size_m, (pid % per_group) // size_m

    @triton.jit(do_not_specialize=["num_rows", "max_blocks"])
    def _gate_up_kernel(
        x_ptr,
        w_ptr,
        act_ptr,
        sorted_ptr,
        block_expert_ptr,
        num_rows,
        max_blocks,
        N,
        K,
        stride_x,
        stride_we,
        stride_wn,
        stride_act,
        top_k,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
        EVEN_K: tl.constexpr,
        PRECISION: tl.constexpr,
        WIDEN: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """act[r, n] = silu(x[r // k] . w[e, n]) * (x[r // k] . w[e, N + n]) for the rows r of one
        block of expert e and BLOCK_N columns n (w's last dimension contiguous). One dot of
        2 * BLOCK_N columns: gate and up rows interleaved (column 2c is gate row n0 + c, column
        2c + 1 up row N + n0 + c), split apart in the epilogue. Blocks past the used ones
        (expert -1) return at once; the block's expert and rows load together, so one L2 round
        trip precedes the first weight and activation loads."""
        if PDL:
            pdl_enter()
        pid_m, pid_n = _tile(max_blocks, N, BLOCK_N, GROUP_M)
        expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
        rows = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))  # whole blocks: in bounds
        if expert < 0:
            return
        row_ok = rows < num_rows
        tokens = (rows // top_k).to(tl.int64)
        cols = tl.arange(0, 2 * BLOCK_N)
        # wrapped, not masked: columns past N are computed from other rows and never stored
        w_rows = ((pid_n * BLOCK_N + cols // 2) % N + (cols % 2) * N).to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        a_ptrs = x_ptr + tokens[:, None] * stride_x + offs_k[None, :]
        b_ptrs = w_ptr + expert * stride_we + w_rows[None, :] * stride_wn + offs_k[:, None]
        acc = tl.zeros([BLOCK_M, 2 * BLOCK_N], dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
                b = tl.load(b_ptrs)
            else:
                k_ok = offs_k < K - k * BLOCK_K
                a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
            if WIDEN:
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
        gate, up = tl.split(tl.reshape(acc, [BLOCK_M, BLOCK_N, 2]))
        h = gate * tl.sigmoid(gate) * up
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        out_ptrs = act_ptr + rows[:, None].to(tl.int64) * stride_act + offs_n[None, :]
        tl.store(out_ptrs, h.to(act_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_n[None, :] < N))

    @triton.jit
    def _sum_tile(
        y_ptr,
        ids_ptr,
        out_ptr,
        n0,
        num_tokens,
        num_experts,
        N,
        stride_y,
        stride_out,
        TOP_K: tl.constexpr,
        T_POW2: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """out[t, n] = sum over slots j with a valid expert of y[t*k + j, n] for every token t
        and the BLOCK_N columns from n0: float32, j in order (`_sum_kernel`'s arithmetic). y is
        read from L2 (.cg): other programs wrote it."""
        tokens = tl.arange(0, T_POW2)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        t_ok = tokens < num_tokens
        n_ok = offs_n < N
        acc = tl.zeros([T_POW2, BLOCK_N], dtype=tl.float32)
        for j in tl.static_range(TOP_K):
            rows = tokens * TOP_K + j
            e = tl.load(ids_ptr + rows, mask=t_ok, other=-1)
            ok = t_ok & (e >= 0) & (e < num_experts)
            ptrs = y_ptr + rows[:, None].to(tl.int64) * stride_y + offs_n[None, :]
            acc += tl.load(ptrs, mask=ok[:, None] & n_ok[None, :], other=0.0, cache_modifier=".cg").to(tl.float32)
        out_ptrs = out_ptr + tokens[:, None].to(tl.int64) * stride_out + offs_n[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=t_ok[:, None] & n_ok[None, :])

    @triton.jit(do_not_specialize=["num_rows", "max_blocks", "num_tokens"])
    def _down_kernel(
        act_ptr,
        w_ptr,
        y_ptr,
        weights_ptr,
        sorted_ptr,
        block_expert_ptr,
        num_padded_ptr,
        ids_ptr,
        out_ptr,
        done_ptr,
        num_rows,
        max_blocks,
        N,
        K,
        stride_act,
        stride_we,
        stride_wn,
        stride_y,
        stride_out,
        num_tokens,
        num_experts,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
        EVEN_K: tl.constexpr,
        PRECISION: tl.constexpr,
        WIDEN: tl.constexpr,
        TOP_K: tl.constexpr,
        SUM: tl.constexpr,
        T_POW2: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """y[r, n] = weights[r] * (act[r] . w[e, n]) for the rows r of one block of expert e and
        N tile (w's last dimension contiguous). SUM "kernel": y [T*k, H] is stored for
        `_sum_kernel`. SUM "atomic": y is the float32 [T, H] sum instead (zeroed beforehand) and
        the product is added to row r // k. SUM "in_down": y [T*k, H] is stored, then the
        program counts itself in `done[N tile]` (zeroed by the alignment); the last of the tile's
        num_padded / BLOCK_M programs runs `_sum_tile` into `out` (T <= T_POW2), so the top-k sum
        needs no launch of its own and adds in `_sum_kernel`'s fixed order. With no routed rows
        at all, block 0's programs write the (zero) sums."""
        if PDL:
            pdl_enter()
        pid_m, pid_n = _tile(max_blocks, N, BLOCK_N, GROUP_M)
        # issued together (`sorted_rows` holds whole blocks, so the rows load is in bounds)
        num_padded = tl.load(num_padded_ptr)
        expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
        rows = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
        if pid_m * BLOCK_M >= num_padded:
            if SUM == "in_down":
                if (pid_m == 0) & (num_padded == 0):
                    _sum_tile(
                        y_ptr, ids_ptr, out_ptr, pid_n * BLOCK_N, num_tokens, num_experts, N, stride_y,
                        stride_out, TOP_K, T_POW2, BLOCK_N,
                    )  # fmt: skip
            return
        row_ok = rows < num_rows
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        w_rows = (offs_n % N).to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        a_ptrs = act_ptr + rows[:, None].to(tl.int64) * stride_act + offs_k[None, :]
        b_ptrs = w_ptr + expert * stride_we + w_rows[None, :] * stride_wn + offs_k[:, None]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
                b = tl.load(b_ptrs)
            else:
                k_ok = offs_k < K - k * BLOCK_K
                a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
            if WIDEN:
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
        acc *= tl.load(weights_ptr + rows, mask=row_ok, other=0.0)[:, None]
        mask = row_ok[:, None] & (offs_n[None, :] < N)
        if SUM == "atomic":
            out_ptrs = y_ptr + (rows // TOP_K)[:, None].to(tl.int64) * stride_y + offs_n[None, :]
            tl.atomic_add(out_ptrs, acc, mask=mask, sem="relaxed")
        else:
            out_ptrs = y_ptr + rows[:, None].to(tl.int64) * stride_y + offs_n[None, :]
            tl.store(out_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)
        if SUM == "in_down":
            # every thread's y stores precede the release; the acquire orders the last program's reads
            tl.debug_barrier()
            arrived = tl.atomic_add(done_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
            if arrived == num_padded // BLOCK_M - 1:
                _sum_tile(
                    y_ptr, ids_ptr, out_ptr, pid_n * BLOCK_N, num_tokens, num_experts, N, stride_y, stride_out,
                    TOP_K, T_POW2, BLOCK_N,
                )  # fmt: skip


def _dot_modes(x: torch.Tensor) -> tuple[str, bool]:
    """(input precision, widen): float32 inputs multiply in full precision; Triton's interpreter
    multiplies bf16 dot operands as raw 16-bit integers, so on the CPU they are widened first."""
    return ("ieee" if x.dtype == torch.float32 else "tf32"), (x.device.type == "cpu" and x.dtype == torch.bfloat16)


def gate_up(x: torch.Tensor, w13: torch.Tensor, blocks: ExpertBlocks, top_k: int, gemm: GemmConfig) -> torch.Tensor:
    """act [T*k, I] = silu(gate) * up of each routed row (rows of no block are left unwritten)."""
    num_rows, inter, hidden = x.shape[0] * top_k, w13.shape[1] // 2, w13.shape[2]
    max_blocks = blocks.block_expert.numel()
    act = torch.empty((num_rows, inter), dtype=x.dtype, device=x.device)
    precision, widen = _dot_modes(x)
    _gate_up_kernel[(max_blocks * triton.cdiv(inter, gemm.block_n),)](
        x,
        w13,
        act,
        blocks.sorted_rows,
        blocks.block_expert,
        num_rows,
        max_blocks,
        inter,
        hidden,
        x.stride(0),
        w13.stride(0),
        w13.stride(1),
        act.stride(0),
        top_k,
        blocks.block_m,
        gemm.block_n,
        gemm.block_k,
        gemm.group_m,
        hidden % gemm.block_k == 0,
        precision,
        widen,
        num_warps=gemm.num_warps,
        num_stages=gemm.num_stages,
        **pdl_launch(x, x.shape[0]),
    )
    return act


def down(
    act: torch.Tensor,
    w2: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    blocks: ExpertBlocks,
    y: torch.Tensor,
    out: torch.Tensor,
    gemm: GemmConfig,
    top_k_sum: str,
) -> None:
    """y [T*k, H] = weight * (act @ w2[e]^T) per routed row; `top_k_sum` "atomic": y is the
    zeroed float32 [T, H] sum and each row adds into its token's row; "in_down": the top-k sum
    lands in `out` too (`blocks.tile_done` holds one zeroed counter per N tile)."""
    num_rows, inter = act.shape
    num_tokens, top_k = ids.shape
    hidden = w2.shape[1]
    precision, widen = _dot_modes(act)
    _down_kernel[(blocks.max_blocks * triton.cdiv(hidden, gemm.block_n),)](
        act,
        w2,
        y,
        weights,
        blocks.sorted_rows,
        blocks.block_expert,
        blocks.num_padded,
        ids,
        out,
        blocks.tile_done,
        num_rows,
        blocks.max_blocks,
        hidden,
        inter,
        act.stride(0),
        w2.stride(0),
        w2.stride(1),
        y.stride(0),
        out.stride(0),
        num_tokens,
        w2.shape[0],
        blocks.block_m,
        gemm.block_n,
        gemm.block_k,
        gemm.group_m,
        inter % gemm.block_k == 0,
        precision,
        widen,
        top_k,
        top_k_sum,
        triton.next_power_of_2(num_tokens) if top_k_sum == "in_down" else 1,
        num_warps=gemm.num_warps,
        num_stages=gemm.num_stages,
        **pdl_launch(act, num_tokens),
    )

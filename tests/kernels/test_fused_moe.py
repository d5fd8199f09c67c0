"""The fused MoE kernels (`radixlm/kernels/fused_moe.py`) against `experts_reference` in float64.

Every case draws fresh random inputs (`helpers.moe_cases.make_case`: some experts without tokens,
a share of the ids -1), poisons the output with NaN and passes it as `out`; the reference runs in
float64 on the very same (rounded) inputs, within `helpers.moe_cases`' tolerances on the relative
Frobenius error (bf16 1e-2, 2e-2 through Triton's interpreter, fp16 2e-3, float32 1e-5).

A few small shapes run through Triton's interpreter (TRITON_INTERPRET=1, in a subprocess so
other tests keep the compiled mode), and the GEMM kernels are compiled ahead of time for sm_90
(no GPU needed: wgmma and pipelined loads checked on the PTX). The full grid (experts 8-128,
top-k 1-8, tokens 1-4096, the Qwen3-30B-A3B and a Mixtral-like shape), fp16/fp32, every
block-size class with either top-k sum, and a CUDA-graph capture replayed with new routing are
marked `gpu`. The decode path and its in-launch routing are tested in test_moe_decode.py.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from helpers.interpreted import run_interpreted
from helpers.moe_cases import INTERP_TOL, TOL, make_case, reference64, rel_err

triton = pytest.importorskip("triton")

# (tokens, experts, top_k, hidden, inter, experts used, share of -1 ids): small enough for the interpreter;
# hidden 96 and inter 48 leave partial K tiles
INTERP_CASES = (
    (1, 8, 2, 64, 32, 8, 0.0),
    (5, 8, 1, 64, 48, 3, 0.0),
    (9, 16, 4, 96, 32, 6, 0.2),
    (40, 8, 8, 64, 32, 8, 0.1),
)


def check_case(case: tuple, dtype: torch.dtype, device: str, gen: torch.Generator, config=None) -> float:
    """Run one case (through `moe_config`'s choice, or `config`) into a NaN-poisoned `out`; assert
    the error bound and that `out` was returned. Returns the error."""
    from radixlm.kernels.fused_moe import fused_experts, fused_experts_with_config

    x, w13, w2, weights, ids = make_case(*case, dtype, device, gen)
    out = torch.full_like(x, float("nan"))
    if config is None:
        got = fused_experts(x, w13, w2, weights, ids, out=out)
    else:
        got = fused_experts_with_config(x, w13, w2, weights, ids, config, out=out)
    assert got is out
    want = reference64(x, w13, w2, weights, ids)
    assert torch.isfinite(out).all(), (case, dtype, config)
    if want.norm() == 0:  # every id -1
        assert torch.equal(out, torch.zeros_like(out))
        return 0.0
    err = rel_err(out, want)
    assert err <= (TOL if x.is_cuda else INTERP_TOL)[dtype], (case, dtype, config, err)
    return err


def check_alignment(device: str, gen: torch.Generator) -> None:
    """`align_by_expert`'s invariants: each valid row exactly once, in a block of its own expert;
    padding only in each expert's last block; -1 ids in no block; blocks past the used ones -1;
    the used rows within the static bound."""
    from radixlm.kernels.fused_moe import align_by_expert, max_padded_rows

    # up to 1,024 rows one launch does it all; 1,200 rows take the fill-and-count and scatter launches
    for tokens, experts, top_k, used, invalid, block_m in (
        (300, 16, 4, 16, 0.1, 16),
        (3, 8, 2, 8, 0.0, 16),
        (37, 16, 4, 5, 0.3, 16),
        (50, 8, 2, 8, 0.0, 32),
    ):
        ids = make_case(tokens, experts, top_k, 16, 16, used, invalid, torch.float32, device, gen)[4]
        blocks = align_by_expert(ids, experts, block_m)
        flat = ids.reshape(-1).long().cpu()
        num_rows = flat.numel()
        counts = torch.bincount(flat[flat >= 0], minlength=experts)
        padded = (counts + block_m - 1) // block_m * block_m
        num_padded = int(blocks.num_padded.item())
        assert num_padded == int(padded.sum()) <= max_padded_rows(num_rows, experts, block_m)
        whole_blocks = -(-max_padded_rows(num_rows, experts, block_m) // block_m) * block_m
        assert blocks.sorted_rows.numel() == whole_blocks == blocks.max_blocks * block_m
        rows = blocks.sorted_rows.cpu().long()
        owner = blocks.block_expert.cpu().long()
        used_blocks = num_padded // block_m
        assert (owner[used_blocks:] == -1).all() and (owner[:used_blocks] >= 0).all()
        real = rows[:num_padded] < num_rows
        assert sorted(rows[:num_padded][real].tolist()) == (flat >= 0).nonzero().flatten().tolist()
        assert (rows[num_padded:] == num_rows).all()
        block_of_row = torch.arange(num_padded) // block_m
        assert torch.equal(flat[rows[:num_padded][real]], owner[block_of_row[real]])
        assert owner[:used_blocks].unique().numel() == int((counts > 0).sum())  # one run of blocks per expert


def check_interpreter_cases() -> None:
    """The small cases in bf16 through `moe_config` and through explicit small tiles (grouped
    program order, 32-row blocks, the atomic top-k sum), two of them in float32."""
    from radixlm.kernels.fused_moe import GemmConfig, MoeConfig

    gen = torch.Generator().manual_seed(0)
    check_alignment("cpu", gen)
    tiles = MoeConfig(32, GemmConfig(16, 32, 2, 4, 1), GemmConfig(32, 16, 2, 4, 1), atomic_sum=True)
    for i, case in enumerate(INTERP_CASES):
        check_case(case, torch.bfloat16, "cpu", gen)
        check_case(case, torch.bfloat16, "cpu", gen, tiles)
        if i % 2:
            check_case(case, torch.float32, "cpu", gen)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the compiled kernels are checked instead")
def test_fused_experts_through_the_interpreter() -> None:
    run_interpreted("test_fused_moe", "t.check_interpreter_cases()")


def test_config_table() -> None:
    """Decode-size batches take 16-row blocks, prefills 64 or 128 (wide N tiles for many experts
    of a few hundred rows each); N tiles are powers of
    two >= 16 and narrow for decode only as far as needed to fill the GPU."""
    from radixlm.kernels.fused_moe import moe_config

    for rows, experts, hidden, inter in ((8, 128, 2048, 768), (2, 8, 4096, 14336), (512, 128, 2048, 768)):
        assert moe_config(rows, experts, hidden, inter).block_m == 16
    assert moe_config(1024 * 8, 128, 2048, 768).block_m == 64  # 64 rows per expert
    qwen_prefill = moe_config(4096 * 8, 128, 2048, 768)  # 256 rows per expert: the H100 sweep's best
    assert (qwen_prefill.block_m, qwen_prefill.gate_up.block_n, qwen_prefill.down.block_n) == (128, 128, 256)
    assert moe_config(4096 * 2, 8, 4096, 14336).block_m == 128
    qwen_decode = moe_config(8, 128, 2048, 768)
    assert qwen_decode.gate_up.block_n < 64 and 8 * 768 // qwen_decode.gate_up.block_n >= 264
    assert moe_config(2, 8, 4096, 14336).gate_up.block_n == 64  # 448 programs already
    for rows in (1, 7, 64, 300, 2048, 32768):
        config = moe_config(rows, 64, 1024, 512)
        for gemm in (config.gate_up, config.down):
            assert gemm.block_n >= 16 and gemm.block_n & (gemm.block_n - 1) == 0
            assert gemm.block_k >= 16 and gemm.group_m >= 1


def test_no_routed_rows_give_zeros_without_a_launch() -> None:
    """k = 0 (or no tokens): nothing to launch, so this runs on the CPU without the interpreter."""
    from radixlm.kernels.fused_moe import fused_experts

    x, w13, w2 = torch.randn(3, 64), torch.randn(4, 64, 64), torch.randn(4, 64, 32)
    out = torch.full_like(x, float("nan"))
    got = fused_experts(x, w13, w2, torch.ones(3, 0), torch.zeros(3, 0, dtype=torch.int32), out=out)
    assert got is out and torch.equal(out, torch.zeros_like(x))
    assert fused_experts(x[:0], w13, w2, torch.ones(0, 2), torch.zeros(0, 2, dtype=torch.int32)).shape == (0, 64)


def test_rejects_mismatched_shapes() -> None:
    from radixlm.kernels.fused_moe import fused_experts

    x, w13, w2 = torch.zeros(2, 64), torch.zeros(4, 64, 64), torch.zeros(4, 64, 16)
    ids, weights = torch.zeros(2, 1, dtype=torch.int32), torch.ones(2, 1)
    with pytest.raises(ValueError):
        fused_experts(x, w13, w2, weights, ids)  # w2's inter 16 != w13's 64 / 2
    with pytest.raises(ValueError):
        fused_experts(x, w13, torch.zeros(4, 64, 32), torch.ones(2, 2), ids)  # weights [T, 2], ids [T, 1]
    with pytest.raises(ValueError):
        fused_experts(x, w13, torch.zeros(4, 64, 32), weights, ids, out=torch.zeros(64, 2).t())  # strided out


_INT_POINTERS = (
    "ids_ptr",
    "sorted_ptr",
    "cursor_ptr",
    "block_expert_ptr",
    "num_padded_ptr",
    "done_ptr",
    "arrivals_ptr",
)
# the one-launch routing at Qwen3-30B-A3B's decode (16 tokens, 128 experts, top-8, PDL)
ROUTE_ALIGN_QWEN3 = dict(
    TOP_K=8, K_POW2=8, E_POW2=128, BLOCK_T=16, RENORMALIZE=True, BLOCK_M=16, LOCAL_POW2=128, CHUNK=1024,
    BLOCKS_CHUNK=64, PDL=True,
)  # fmt: skip


def compile_for_hopper(kernel, constexprs: dict, num_warps: int, num_stages: int, fp32_pointers=("weights_ptr",)):
    """Compile a Triton kernel for sm_90 on this machine (no GPU needed), its pointers and
    strides marked 16-divisible as the JIT would find them at model shapes: bf16 data, int32
    ids and block tables, float32 routing weights."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    signature, attrs = {}, {}
    for i, name in enumerate(names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            signature[name] = "*i32" if name in _INT_POINTERS else "*fp32" if name in fp32_pointers else "*bf16"
        else:
            signature[name] = "i32"
        if name.endswith("_ptr") or name.startswith("stride") or name in ("N", "K", "H"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(
        fn=kernel, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()}, attrs=attrs
    )
    target = GPUTarget("cuda", 90, 32)
    return triton.compile(source, target=target, options=dict(num_warps=num_warps, num_stages=num_stages))


def check_hopper_compile() -> None:
    """Ahead of time, without a GPU: every block-size class `moe_config` picks for the
    Qwen3-30B-A3B and Mixtral-8x7B shapes compiles for sm_90; the prefill classes multiply with
    wgmma, and every GEMM's loads are pipelined (shared memory for more than one stage)."""
    from radixlm.kernels import fused_moe as fm
    from radixlm.kernels import moe_align as ma
    from radixlm.kernels import moe_gemm as mg
    from radixlm.kernels import moe_route as mr

    configs = {
        (fm.moe_config(tokens * top_k, experts, hidden, inter), top_k)
        for hidden, inter, experts, top_k in ((2048, 768, 128, 8), (4096, 14336, 8, 2))
        for tokens in (1, 64, 4096)
    }
    for config, top_k in configs:
        for kernel, gemm, extra in (
            (mg._gate_up_kernel, config.gate_up, {}),
            (mg._down_kernel, config.down, {"SUM": "kernel", "TOP_K": top_k, "T_POW2": 1}),
            (mg._down_kernel, config.down, {"SUM": "atomic", "TOP_K": top_k, "T_POW2": 1}),
            (mg._down_kernel, config.down, {"SUM": "in_down", "TOP_K": top_k, "T_POW2": 16}),
        ):
            constexprs = dict(
                extra,
                BLOCK_M=config.block_m,
                BLOCK_N=gemm.block_n,
                BLOCK_K=gemm.block_k,
                GROUP_M=gemm.group_m,
                EVEN_K=True,
                PRECISION="tf32",
                WIDEN=False,
                PDL=config.block_m == 16,
            )
            compiled = compile_for_hopper(kernel, constexprs, gemm.num_warps, gemm.num_stages)
            ptx = compiled.asm["ptx"]
            width = 2 * gemm.block_n if kernel is mg._gate_up_kernel else gemm.block_n
            one_stage = 2 * (config.block_m + width) * gemm.block_k
            assert compiled.metadata.shared > one_stage, (kernel.__name__, config)
            assert "cp.async" in ptx, (kernel.__name__, config)
            if config.block_m >= 64:
                assert "wgmma.mma_async" in ptx, (kernel.__name__, config)
    for kernel, constexprs, warps in (
        (ma._align_kernel, dict(BLOCK_M=64, E_POW2=128, CHUNK=4096, BLOCKS_CHUNK=64, SCATTER=False, PDL=False), 16),
        (mr._route_align_kernel, ROUTE_ALIGN_QWEN3, 4),
        (ma._align_kernel, dict(BLOCK_M=16, E_POW2=128, CHUNK=1024, BLOCKS_CHUNK=64, SCATTER=True, PDL=True), 4),
        (ma._scatter_kernel, dict(CHUNK=1024), 4),
        (fm._sum_kernel, dict(TOP_K=8, BLOCK_H=1024, PDL=True), 4),
    ):
        compile_for_hopper(kernel, constexprs, warps, 3)
    from radixlm.kernels import moe_router

    # Qwen3-30B-A3B at 1 and 8 tokens (the alignment in registers) and 16 (stored), Mixtral-8x7B
    for experts, hidden, block_t in ((128, 2048, 1), (128, 2048, 8), (128, 2048, 16), (8, 4096, 16)):
        per_program = moe_router.experts_per_program(experts)
        constexprs = dict(
            ROUTE_ALIGN_QWEN3, EXPERTS_PER_PROGRAM=per_program, BLOCK_H=min(hidden, 4096 // per_program),
            E_POW2=experts, LOCAL_POW2=experts, BLOCK_T=block_t, IN_REGISTERS=block_t * 8 * experts <= 8192,
        )  # fmt: skip
        compile_for_hopper(moe_router._router_route_kernel, constexprs, 4, 3, ("weights_ptr", "logits_ptr"))


@pytest.mark.slow
def test_gemm_kernels_compile_for_hopper_with_wgmma_and_pipelined_loads() -> None:
    """`check_hopper_compile` in a subprocess with Triton's compiler (not its interpreter)."""
    run_interpreted("test_fused_moe", "t.check_hopper_compile()", interpret=False)


# ---- GPU ----------------------------------------------------------------------------------------

GPU_GRID = [
    (tokens, experts, top_k, 256, 128, used, invalid)
    for experts in (8, 16, 64, 128)
    for top_k in (1, 2, 4, 8)
    for tokens, used, invalid in (
        (1, experts, 0.0),
        (3, experts, 0.0),
        (64, max(top_k, experts // 2), 0.1),
        (257, experts, 0.0),
        (4096, max(top_k, experts - 3), 0.05),
    )
]
GPU_LARGE = (
    (4096, 128, 8, 2048, 768, 128, 0.0),  # Qwen3-30B-A3B
    (1, 128, 8, 2048, 768, 128, 0.0),
    (64, 128, 8, 2048, 768, 128, 0.0),
    (4096, 8, 2, 1024, 3584, 8, 0.0),  # Mixtral-like proportions (128-row blocks)
    (2, 8, 2, 4096, 4096, 8, 0.0),  # Mixtral-8x7B's hidden size at decode
    (100, 32, 4, 200, 72, 20, 0.1),  # K not a multiple of any tile
)


@pytest.mark.parametrize("case", GPU_GRID + list(GPU_LARGE))
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_experts_grid_bf16(case: tuple) -> None:
    gen = torch.Generator("cuda").manual_seed(hash(case) % 2**31)
    check_case(case, torch.bfloat16, "cuda", gen)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_experts_fp16_fp32_and_alignment_on_gpu() -> None:
    gen = torch.Generator("cuda").manual_seed(7)
    check_alignment("cuda", gen)
    for case in INTERP_CASES + ((300, 64, 6, 512, 384, 50, 0.1), (4096, 16, 2, 256, 128, 16, 0.0)):
        for dtype in (torch.float16, torch.float32):
            check_case(case, dtype, "cuda", gen)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_every_config_class_on_one_shape() -> None:
    """The four block-size classes of `moe_config`, with either top-k sum, forced onto one
    routing of 500 tokens and one of 8 (launched under PDL on Hopper; each class must be right
    whatever shape it later gets), into a strided `out` (a column slice of a wider tensor)."""
    from radixlm.kernels.fused_moe import fused_experts_with_config, moe_config

    gen = torch.Generator("cuda").manual_seed(3)
    for tokens in (500, 8):
        x, w13, w2, weights, ids = make_case(tokens, 32, 4, 512, 256, 30, 0.1, torch.bfloat16, "cuda", gen)
        want = reference64(x, w13, w2, weights, ids)
        for rows, atomic in itertools.product((8, 600, 4096, 40000), (False, True)):
            config = dataclasses.replace(moe_config(rows, 32, 512, 256), atomic_sum=atomic)
            wide = torch.full((tokens, 600), float("nan"), dtype=torch.bfloat16, device="cuda")
            out = fused_experts_with_config(x, w13, w2, weights, ids, config, out=wide[:, 50:562])
            assert rel_err(out, want) <= TOL[torch.bfloat16], (tokens, config)
            assert wide[:, :50].isnan().all() and wide[:, 562:].isnan().all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("tokens", [1, 8, 256])
def test_cuda_graph_capture_replays_with_new_routing(tokens: int) -> None:
    """`fused_experts` captured once in a CUDA graph on static buffers, then replayed after new
    inputs and a new routing (other experts, other -1 ids) are copied in; each replay must
    match the reference on its own routing."""
    from radixlm.kernels.fused_moe import fused_experts

    gen = torch.Generator("cuda").manual_seed(11)
    experts, top_k, hidden, inter = 64, 4, 512, 256
    shape = (tokens, experts, top_k, hidden, inter)
    x, w13, w2, weights, ids = make_case(*shape, experts, 0.0, torch.bfloat16, "cuda", gen)
    out = torch.empty_like(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fused_experts(x, w13, w2, weights, ids, out=out)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fused_experts(x, w13, w2, weights, ids, out=out)
    for used, invalid in ((experts, 0.0), (top_k, 0.0), (10, 0.3), (experts, 1.0)):
        new = make_case(*shape, used, invalid, torch.bfloat16, "cuda", gen)
        x.copy_(new[0])
        weights.copy_(new[3])
        ids.copy_(new[4])
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        want = reference64(x, w13, w2, weights, ids)
        if invalid == 1.0:
            assert torch.equal(out, torch.zeros_like(out))
        else:
            assert rel_err(out, want) <= TOL[torch.bfloat16], (used, invalid)

"""Launch configurations of the fused MoE kernels (`fused_moe`): `moe_config` picks the rows per
block and each grouped GEMM's tiles, warps and stages from the batch's routed rows and the
expert shapes; cached, so a batch size pays for the choice once."""

from __future__ import annotations

import functools
from dataclasses import dataclass

try:
    import triton
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None


@dataclass(frozen=True)
class GemmConfig:
    """One grouped GEMM's launch: tile sizes (N, K; the gate/up kernel's N counts output
    columns, its weight tile is 2 * block_n wide), programs sharing an M band (`group_m`, for
    L2 reuse of the weight tiles), warps and pipeline stages."""

    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class MoeConfig:
    """The rows per block (shared by the alignment and both GEMMs) and each GEMM's launch;
    `atomic_sum`: the down GEMM adds its rows into a zeroed float32 [T, H] buffer (atomics,
    then a cast into `out`) instead of writing [T*k, H] for the reduction kernel."""

    block_m: int
    gate_up: GemmConfig
    down: GemmConfig
    atomic_sum: bool = False


# programs a launch should reach before its N tile stops being narrowed (about two waves of an
# H100's 132 SMs)
_MIN_PROGRAMS = 264


def _block_n_for(active_experts: int, n: int, widest: int) -> int:
    """The widest N tile (from `widest` down to 16) that still gives `_MIN_PROGRAMS` programs
    over the selected experts' blocks."""
    block_n = widest
    while block_n > 16 and active_experts * triton.cdiv(n, block_n) < _MIN_PROGRAMS:
        block_n //= 2
    return block_n


@functools.lru_cache(maxsize=256)
def moe_config(num_rows: int, num_experts: int, hidden: int, inter: int) -> MoeConfig:
    """Block sizes for T*k = `num_rows` routed rows over `num_experts` experts of hidden size
    `hidden` and intermediate size `inter`. Chosen by the mean rows per selected expert:
    <= 16 (decode) BLOCK_M 16 with long K tiles and N tiles narrowed until the selected experts
    fill the GPU; <= 48 BLOCK_M 32; <= 128 BLOCK_M 64; <= 384 BLOCK_M 128 with wide N tiles
    (many experts at prefill: Qwen3-30B-A3B at 4,096 tokens has 256 rows per expert); beyond,
    BLOCK_M 128 with narrower N tiles (large prefill of few experts). The gate/up kernel's
    `block_n` counts output columns: its weight tile and accumulator are twice as wide."""
    active = max(1, min(num_experts, num_rows))
    per_expert = num_rows / active
    if per_expert <= 16:
        return MoeConfig(
            16,
            GemmConfig(_block_n_for(active, inter, 64), 128, 1, 4, 4),
            GemmConfig(_block_n_for(active, hidden, 64), 128, 1, 4, 4),
        )
    if per_expert <= 48:
        return MoeConfig(32, GemmConfig(64, 64, 4, 4, 4), GemmConfig(64, 64, 4, 4, 4))
    if per_expert <= 128:
        return MoeConfig(64, GemmConfig(64, 64, 8, 4, 4), GemmConfig(128, 64, 8, 4, 4))
    if per_expert <= 384:
        return MoeConfig(128, GemmConfig(128, 64, 8, 8, 3), GemmConfig(256, 64, 8, 8, 3))
    return MoeConfig(128, GemmConfig(64, 64, 8, 8, 3), GemmConfig(128, 64, 8, 8, 3))

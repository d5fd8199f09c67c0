"""Launch configurations of the fused MoE kernels (`fused_moe`): `moe_config` picks the rows per
block and each grouped GEMM's tiles, warps and stages from the batch's routed rows and the
expert shapes; cached, so a batch size pays for the choice once."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from radixlm.kernels.moe_align import ONE_PROGRAM_ROWS
from radixlm.kernels.moe_route import fits_one_launch

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


# the decode sizes (pdl.MAX_ROWS) whose top-k sum runs inside the down GEMM
SUM_IN_DOWN_MAX_TOKENS = 16


@dataclass(frozen=True)
class MoePlan:
    """Which kernels one fused MoE call launches (`launches()`, in order). `route`: "one_launch"
    (router top-k and alignment in one kernel, `moe_route`), "topk" (`fused_topk`, then the
    alignment), "given" (the caller routed; the alignment only) or "hidden" (as "one_launch",
    the router's matmul included: `moe_router`). `router_gemm`: the router's matmul is a launch
    of its own before the routing (`fused_moe_from_hidden` where "hidden" does not fit).
    `align_launches`: the alignment's own launches, 0 inside the routing, 1 up to
    `ONE_PROGRAM_ROWS` rows, else 2.
    `top_k_sum`: "in_down" (the down GEMM's last program per N tile sums, no launch),
    "kernel" (`_sum_kernel`) or "atomic" (`MoeConfig.atomic_sum`: a memset before, a cast after)."""

    route: str
    align_launches: int
    top_k_sum: str
    router_gemm: bool = False

    def launches(self) -> tuple[str, ...]:
        routes = {"hidden": ("router_route_align",), "one_launch": ("route_align",), "topk": ("topk",), "given": ()}
        routing = ("router_gemm",) * self.router_gemm + routes[self.route]
        align = ("align", "scatter")[: self.align_launches]
        gemms = {"in_down": ("gate_up", "down_sum"), "kernel": ("gate_up", "down", "sum")}
        if self.top_k_sum == "atomic":
            return ("memset",) + routing + align + ("gate_up", "down_atomic", "cast")
        return routing + align + gemms[self.top_k_sum]


def plan_moe(
    num_tokens: int, top_k: int, hidden: int, config: MoeConfig, router_experts: int = 0, from_hidden: bool = False
) -> MoePlan:
    """The plan of T = `num_tokens` tokens routed to `top_k` experts under `config`, routed from
    logits over `router_experts` experts (0: the caller gives ids), or with `from_hidden` from
    the hidden states and the router's weight. Decode sizes (at most `SUM_IN_DOWN_MAX_TOKENS`
    tokens and one alignment program) sum in the down GEMM; routing is one launch where
    `moe_route.fits_one_launch`, the router's matmul included when `from_hidden`."""
    one_program = num_tokens * top_k <= ONE_PROGRAM_ROWS
    one_launch = bool(router_experts) and fits_one_launch(num_tokens, router_experts, top_k)
    if not router_experts:
        route = "given"
    elif one_launch:
        route = "hidden" if from_hidden else "one_launch"
    else:
        route = "topk"
    align = 0 if one_launch else 1 if one_program else 2
    in_down = (
        num_tokens <= SUM_IN_DOWN_MAX_TOKENS
        and one_program
        and triton.cdiv(hidden, config.down.block_n) <= ONE_PROGRAM_ROWS
    )
    top_k_sum = "atomic" if config.atomic_sum else "in_down" if in_down else "kernel"
    return MoePlan(route, align, top_k_sum, from_hidden and not one_launch)

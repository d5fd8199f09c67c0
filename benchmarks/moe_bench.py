"""Fused MoE layer on the GPU: radixlm's Triton `fused_experts` against the device's own ceilings
and the torch reference, bf16 random weights, in one run.

(a) prefill, 4,096 tokens: TFLOP/s over the experts' FLOPs (6 T k H I) against the dense bf16
    GEMM rate measured on the same FLOPs (`torch.mm` over the same M = T k, N, K: gate/up then
    down); target >= 60 %.
(b) decode, T = 1, 8, 32, 64: microseconds per layer and GB/s over the bytes of the distinct
    selected experts' weights (each counted once) against the measured device copy bandwidth
    (bytes read + written); target >= 70 %. Each timed call has its own routing and input, and
    the calls are replayed in one CUDA graph, so a layer finds its experts' weights cold in L2.
(c) the torch reference (`experts_reference`, a loop over experts) at the same shapes.
(d) the router: `fused_topk` (one launch) against `select_experts` (torch), 1 to 4,096 tokens.
(e) a routed decode, router logits to output, T = 1, 4, 8, 16 (each call its own logits and
    input, cold L2, one CUDA graph): `fused_moe` (3 launches: routing + alignment, gate/up,
    down + top-k sum) against `fused_topk` + `fused_experts` (4), the same with the top-k summed
    by its own kernel (5), and `select_experts` + `fused_experts` with that sum kernel (the MoE
    layer's decode before `fused_moe`: the torch router's launches + 4).
(f) a whole MoE block's decode from the hidden states, T = 1, 4, 8, 16 (each call its own input
    and router weight, cold L2, one CUDA graph): `fused_moe_from_hidden` (3 launches: the
    router's matmul inside the routing) against the router's matmul in torch + `fused_moe`, and
    GB/s over the bytes read (router weight + the distinct selected experts' weights) vs copy.

    python benchmarks/moe_bench.py [--quick] [--shapes qwen3-30b-a3b mixtral-8x7b] [--sweep] [--profile]
        [--only prefill decode router routed hidden]

Each row also times the other top-k sum (float32 atomics in the down GEMM vs the default: in the
down GEMM's last program per N tile at <= 16 tokens, a reduction kernel beyond) at the same
block sizes. `--quick`: fewer repetitions, neither the other top-k sum nor the
reference at 4,096 tokens.
`--sweep`: also time other block sizes (prefill; decode at 1 and 32 tokens) to tune
`moe_config`'s table. `--profile`: each kernel's device time in one call.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import itertools
import sys
from typing import Callable

import torch

from radixlm.kernels import moe_config as moe_config_module
from radixlm.kernels.fused_moe import (
    GemmConfig,
    MoeConfig,
    fused_experts,
    fused_experts_with_config,
    fused_moe,
    fused_moe_from_hidden,
    moe_config,
    new_arrivals,
    plan_moe,
)
from radixlm.kernels.moe_topk import fused_topk
from radixlm.layers.moe.reference import experts_reference
from radixlm.layers.moe.routing import select_experts

SHAPES = {  # hidden, intermediate (per expert), experts, top-k
    "qwen3-30b-a3b": (2048, 768, 128, 8),
    "mixtral-8x7b": (4096, 14336, 8, 2),
}
PREFILL_TOKENS = 4096
DECODE_TOKENS = (1, 8, 32, 64)
SWEEP = (
    MoeConfig(64, GemmConfig(64, 64, 8, 4, 4), GemmConfig(128, 64, 8, 4, 4)),
    MoeConfig(64, GemmConfig(128, 64, 8, 8, 3), GemmConfig(128, 64, 8, 4, 4)),
    MoeConfig(64, GemmConfig(64, 128, 8, 4, 3), GemmConfig(128, 128, 8, 8, 3)),
    MoeConfig(128, GemmConfig(64, 64, 8, 8, 3), GemmConfig(128, 64, 8, 8, 3)),
    MoeConfig(128, GemmConfig(128, 64, 8, 8, 3), GemmConfig(256, 64, 8, 8, 3)),
    MoeConfig(128, GemmConfig(64, 64, 8, 4, 4), GemmConfig(128, 64, 8, 4, 4)),
    MoeConfig(128, GemmConfig(128, 32, 8, 8, 4), GemmConfig(128, 64, 8, 8, 4)),
)


def time_ms(fn: Callable[[], object], iters: int) -> float:
    """Median milliseconds of `fn` (after two warm-up calls), timed with CUDA events."""
    fn()
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def graph_us_per_call(calls: list[Callable[[], object]], reps: int = 11) -> float:
    """Median microseconds per call, the calls captured back to back in one CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return time_ms(graph.replay, reps) * 1e3 / len(calls)


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB, bytes read + written per second (the memory ceiling)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    return 2 * src.numel() / (time_ms(lambda: dst.copy_(src), 20) / 1e3)


def dense_tflops(m: int, hidden: int, inter: int, iters: int) -> float:
    """TFLOP/s of torch.mm over the experts' FLOPs as two dense products: [M, H] x [H, 2I] then
    [M, I] x [I, H], with the weights in the F.linear layout (N x K, transposed view)."""
    a1 = torch.randn(m, hidden, device="cuda", dtype=torch.bfloat16)
    b1 = torch.randn(2 * inter, hidden, device="cuda", dtype=torch.bfloat16)
    a2 = torch.randn(m, inter, device="cuda", dtype=torch.bfloat16)
    b2 = torch.randn(hidden, inter, device="cuda", dtype=torch.bfloat16)
    ms = time_ms(lambda: torch.mm(a1, b1.t()), iters) + time_ms(lambda: torch.mm(a2, b2.t()), iters)
    return 6 * m * hidden * inter / ms / 1e9


def routed_inputs(tokens: int, hidden: int, experts: int, top_k: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """x [T, H] bf16 and (topk_weights, topk_ids) from random router logits (softmax, top-k,
    renormalised)."""
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
    logits = torch.randn(tokens, experts, device="cuda", generator=gen)
    return (x, *select_experts(logits, top_k, renormalize=True))


def expert_weights(hidden: int, inter: int, experts: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w13 = torch.randn(experts, 2 * inter, hidden, device="cuda", dtype=torch.bfloat16, generator=gen) * hidden**-0.5
    w2 = torch.randn(experts, hidden, inter, device="cuda", dtype=torch.bfloat16, generator=gen) * inter**-0.5
    return w13, w2


def flip_sum(config: MoeConfig) -> MoeConfig:
    """The same block sizes with the other top-k sum (reduction kernel <-> atomics)."""
    return dataclasses.replace(config, atomic_sum=not config.atomic_sum)


def sum_label(config: MoeConfig, tokens: int, top_k: int, hidden: int) -> str:
    """How the top-k results are summed: "atomic", "in_down" or "kernel" (`plan_moe`)."""
    return plan_moe(tokens, top_k, hidden, config).top_k_sum


@contextlib.contextmanager
def sum_kernel_only():
    """While inside (graph capture included), every plan sums the top-k in its own kernel."""
    limit = moe_config_module.SUM_IN_DOWN_MAX_TOKENS
    moe_config_module.SUM_IN_DOWN_MAX_TOKENS = 0
    try:
        yield
    finally:
        moe_config_module.SUM_IN_DOWN_MAX_TOKENS = limit


def short(config: MoeConfig) -> str:
    """e.g. `M64 gate_up N64 K64 g8 w4 s4, down N128 K64 g8 w4 s4, atomic`."""
    gemms = ", ".join(
        f"{label} N{g.block_n} K{g.block_k} g{g.group_m} w{g.num_warps} s{g.num_stages}"
        for label, g in (("gate_up", config.gate_up), ("down", config.down))
    )
    return f"M{config.block_m} {gemms}, {'atomic' if config.atomic_sum else 'default sum'}"


def kernel_breakdown(fn: Callable[[], object]) -> str:
    """Device microseconds per kernel of one call of `fn` (torch.profiler), largest first."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = sorted(
        ((e.key, e.device_time_total) for e in prof.key_averages() if e.device_time_total > 0), key=lambda r: -r[1]
    )
    return ", ".join(f"{name[:40]} {us:.1f}" for name, us in rows[:8])


def bench_prefill(name: str, w13: torch.Tensor, w2: torch.Tensor, top_k: int, args: argparse.Namespace) -> None:
    experts, two_i, hidden = w13.shape
    inter = two_i // 2
    gen = torch.Generator(device="cuda").manual_seed(1)
    x, weights, ids = routed_inputs(PREFILL_TOKENS, hidden, experts, top_k, gen)
    iters = 5 if args.quick else 20
    flops = 6 * PREFILL_TOKENS * top_k * hidden * inter
    dense = dense_tflops(PREFILL_TOKENS * top_k, hidden, inter, iters)
    out = torch.empty_like(x)
    config = moe_config(PREFILL_TOKENS * top_k, experts, hidden, inter)

    def run(c: MoeConfig) -> Callable[[], object]:
        return lambda: fused_experts_with_config(x, w13, w2, weights, ids, c, out=out)

    ms = time_ms(lambda: fused_experts(x, w13, w2, weights, ids, out=out), iters)
    label = functools.partial(sum_label, tokens=PREFILL_TOKENS, top_k=top_k, hidden=hidden)
    other = "-" if args.quick else f"{time_ms(run(flip_sum(config)), iters):.3f} ({label(flip_sum(config))})"
    ours = flops / ms / 1e9
    ref = "skipped (--quick)"
    if not args.quick:
        ref_ms = time_ms(lambda: experts_reference(x, w13, w2, weights, ids), 3)
        ref = f"{ref_ms:.2f} ms, {flops / ref_ms / 1e9:.0f} TFLOP/s"
    print(
        f"| {name} | {PREFILL_TOKENS} | {ms:.3f} ({label(config)}) | {ours:.0f} | {dense:.0f} "
        f"| {100 * ours / dense:.0f} % | {other} | {ref} "
        f"| BLOCK_M {config.block_m} |",
        flush=True,
    )
    if args.profile:
        print(f"    kernels (us): {kernel_breakdown(run(config))}", flush=True)
    if args.sweep:
        for sweep_config in SWEEP:
            sweep_ms = time_ms(run(sweep_config), iters)
            ratio = 100 * flops / sweep_ms / 1e9 / dense
            print(f"    sweep {short(sweep_config)}: {sweep_ms:.3f} ms, {ratio:.0f} % of dense", flush=True)


def distinct_expert_bytes(ids: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> int:
    """Bytes of the weights of the distinct experts in `ids` (valid ids only)."""
    per_expert = w13[0].numel() * w13.element_size() + w2[0].numel() * w2.element_size()
    return int(ids.unique().numel()) * per_expert


def fits_or_inf(timed: Callable[[MoeConfig], float], config: MoeConfig) -> float:
    """`timed(config)`, or infinity where the config needs more shared memory than the GPU has
    (raised by the warm-up call, before any graph capture starts)."""
    from triton.runtime.errors import OutOfResources

    try:
        return timed(config)
    except OutOfResources:
        return float("inf")


def decode_sweep(rows: int, experts: int, hidden: int, inter: int) -> list[MoeConfig]:
    """Other decode block sizes around `moe_config`'s: N tiles, K tiles and stages of both GEMMs."""
    base = moe_config(rows, experts, hidden, inter)
    out = []
    for block_n, block_k, stages in itertools.product((16, 32, 64), (64, 128, 256), (3, 5)):
        gemm = GemmConfig(block_n, block_k, 1, 4, stages)
        out.append(dataclasses.replace(base, gate_up=gemm, down=dataclasses.replace(gemm, block_n=2 * block_n)))
    return out


def bench_decode(name: str, w13: torch.Tensor, w2: torch.Tensor, top_k: int, copy_bw: float, args) -> None:
    gen = torch.Generator(device="cuda").manual_seed(2)
    for tokens in DECODE_TOKENS:
        decode_row(name, w13, w2, top_k, tokens, copy_bw, gen, args)


def decode_row(name: str, w13, w2, top_k: int, tokens: int, copy_bw: float, gen: torch.Generator, args) -> None:
    """One decode row: enough calls, each with its own routing and input, for >= ~1 GB of
    expert reads per graph replay."""
    experts, two_i, hidden = w13.shape
    inter = two_i // 2
    per_expert = w13[0].numel() * 2 + w2[0].numel() * 2
    calls_n = max(4, min(32, (1 << 30) // (per_expert * top_k)))
    inputs = [routed_inputs(tokens, hidden, experts, top_k, gen) for _ in range(calls_n)]
    outs = [torch.empty_like(x) for x, _, _ in inputs]
    nbytes = sum(distinct_expert_bytes(ids, w13, w2) for _, _, ids in inputs) / calls_n
    config = moe_config(tokens * top_k, experts, hidden, inter)
    reps = 5 if args.quick else 11

    def timed(c: MoeConfig) -> float:
        calls = [
            lambda x=x, w=w, i=i, o=o: fused_experts_with_config(x, w13, w2, w, i, c, out=o)
            for (x, w, i), o in zip(inputs, outs)
        ]
        return graph_us_per_call(calls, reps)

    us = graph_us_per_call(
        [lambda x=x, w=w, i=i, o=o: fused_experts(x, w13, w2, w, i, out=o) for (x, w, i), o in zip(inputs, outs)], reps
    )
    label = functools.partial(sum_label, tokens=tokens, top_k=top_k, hidden=hidden)
    other = "-" if args.quick else f"{timed(flip_sum(config)):.1f} ({label(flip_sum(config))})"
    x, w, i = inputs[0]
    ref_us = time_ms(lambda: experts_reference(x, w13, w2, w, i), 3 if args.quick else 5) * 1e3
    gbs = nbytes / us / 1e3
    print(
        f"| {name} | {tokens} | {nbytes / 1e6:.1f} | {us:.1f} ({label(config)}) | {gbs:.0f} "
        f"| {100 * gbs * 1e9 / copy_bw:.0f} % | {other} | {ref_us:.0f} "
        f"| BLOCK_M {config.block_m}, N {config.gate_up.block_n}/{config.down.block_n} |",
        flush=True,
    )
    if args.profile:
        print(f"    kernels (us): {kernel_breakdown(lambda: fused_experts(x, w13, w2, w, i))}", flush=True)
    if args.sweep and tokens in (1, 32):
        results = sorted(
            ((fits_or_inf(timed, c), c) for c in decode_sweep(tokens * top_k, experts, hidden, inter)),
            key=lambda r: r[0],
        )
        for sweep_us, c in results[:3]:
            print(f"    sweep best: {sweep_us:.1f} us, {nbytes / sweep_us / 1e3:.0f} GB/s: {short(c)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--profile", action="store_true", help="device time of each kernel of one call")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    sections = ["prefill", "decode", "router", "routed", "hidden"]
    ap.add_argument("--only", nargs="+", default=sections, choices=sections, help="sections to run (default all)")
    args = ap.parse_args()
    print(f"device {torch.cuda.get_device_name()}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"command: python {' '.join(sys.argv)}")
    copy_bw = copy_bandwidth()
    print(f"copy bandwidth (read + write): {copy_bw / 1e9:.0f} GB/s", flush=True)
    weights = {}
    for name in args.shapes:
        hidden, inter, experts, _ = SHAPES[name]
        weights[name] = expert_weights(hidden, inter, experts, torch.Generator(device="cuda").manual_seed(0))
    if "prefill" in args.only:
        print("\n(a) prefill: fused MoE vs dense bf16 GEMM (torch.mm) on the same FLOPs; (c) torch reference")
        print(
            "| shape | tokens | fused ms | fused TFLOP/s | dense TFLOP/s | ratio (>= 60 %) | other top-k sum ms "
            "| torch reference | config |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for name in args.shapes:
            bench_prefill(name, *weights[name], SHAPES[name][3], args)
    if "decode" in args.only:
        print(
            "\n(b) decode: bandwidth over the distinct selected experts' weights vs copy bandwidth; (c) torch reference"
        )
        print(
            "| shape | tokens | expert MB | fused us | GB/s | of copy bw (>= 70 %) | other top-k sum us "
            "| torch reference us | config |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for name in args.shapes:
            bench_decode(name, *weights[name], SHAPES[name][3], copy_bw, args)
    if "router" in args.only:
        print("\n(d) router: fused_topk (one launch) vs select_experts (torch), each in a CUDA graph")
        print("| shape | tokens | fused_topk us | select_experts us |")
        print("|---|---|---|---|")
        for name in args.shapes:
            bench_router(name, SHAPES[name][2], SHAPES[name][3])
    if "routed" in args.only:
        print("\n(e) routed decode from router logits, us per call in one CUDA graph (launches in brackets)")
        print(
            "| shape | tokens | fused_moe | fused_topk + fused_experts | same, sum kernel "
            "| select_experts + fused_experts, sum kernel | fused_moe launches |"
        )
        print("|---|---|---|---|---|---|---|")
        for name in args.shapes:
            bench_routed(name, *weights[name], SHAPES[name][3], args)
    if "hidden" in args.only:
        print("\n(f) MoE block decode from the hidden states, us per call in one CUDA graph")
        print("| shape | tokens | fused_moe_from_hidden us | GB/s | of copy bw | torch router matmul + fused_moe us |")
        print("|---|---|---|---|---|---|")
        for name in args.shapes:
            bench_from_hidden(name, *weights[name], SHAPES[name][3], copy_bw, args)


def bench_routed(name: str, w13: torch.Tensor, w2: torch.Tensor, top_k: int, args: argparse.Namespace) -> None:
    """Section (e): each call its own logits and input (enough calls for ~1 GB of expert reads
    per replay, as in (b)), the four paths over the same calls."""
    experts, two_i, hidden = w13.shape
    gen = torch.Generator(device="cuda").manual_seed(4)
    per_expert = w13[0].numel() * 2 + w2[0].numel() * 2
    calls_n = max(4, min(32, (1 << 30) // (per_expert * top_k)))
    reps = 5 if args.quick else 11
    for tokens in (1, 4, 8, 16):
        inputs = [
            (
                torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen),
                torch.randn(tokens, experts, device="cuda", dtype=torch.bfloat16, generator=gen),
            )
            for _ in range(calls_n)
        ]
        outs = [torch.empty_like(x) for x, _ in inputs]
        pairs = list(zip(inputs, outs))
        routed = [lambda x=x, g=g, o=o: fused_moe(x, g, w13, w2, top_k, True, out=o) for (x, g), o in pairs]
        topk = [
            lambda x=x, g=g, o=o: fused_experts(x, w13, w2, *fused_topk(g, top_k, True), out=o) for (x, g), o in pairs
        ]
        torch_router = [
            lambda x=x, g=g, o=o: fused_experts(x, w13, w2, *select_experts(g, top_k, True), out=o)
            for (x, g), o in pairs
        ]
        us = graph_us_per_call(routed, reps)
        topk_us = graph_us_per_call(topk, reps)
        with sum_kernel_only():
            sum_us = graph_us_per_call(topk, reps)
            torch_us = graph_us_per_call(torch_router, reps)
        config = moe_config(tokens * top_k, experts, hidden, two_i // 2)
        launches = plan_moe(tokens, top_k, hidden, config, experts).launches()
        print(
            f"| {name} | {tokens} | {us:.1f} | {topk_us:.1f} | {sum_us:.1f} | {torch_us:.1f} | {' '.join(launches)} |",
            flush=True,
        )
        if args.profile:
            x, g = inputs[0]
            print(f"    kernels (us): {kernel_breakdown(lambda: fused_moe(x, g, w13, w2, top_k, True))}", flush=True)


def bench_from_hidden(
    name: str, w13: torch.Tensor, w2: torch.Tensor, top_k: int, copy_bw: float, args: argparse.Namespace
) -> None:
    """Section (f): each call its own input and router weight; bytes: the router weight and each
    call's distinct selected experts (routing read back after one eager run of the calls)."""
    experts, two_i, hidden = w13.shape
    gen = torch.Generator(device="cuda").manual_seed(5)
    per_expert = w13[0].numel() * 2 + w2[0].numel() * 2
    calls_n = max(4, min(32, (1 << 30) // (per_expert * top_k)))
    reps = 5 if args.quick else 11
    arrivals = new_arrivals(w13.device)
    for tokens in (1, 4, 8, 16):
        draw = dict(device="cuda", dtype=torch.bfloat16, generator=gen)
        inputs = [
            (torch.randn(tokens, hidden, **draw), torch.randn(experts, hidden, **draw) / hidden**0.5)
            for _ in range(calls_n)
        ]
        outs = [torch.empty_like(x) for x, _ in inputs]
        pairs = list(zip(inputs, outs))
        fused = [
            lambda x=x, r=r, o=o: fused_moe_from_hidden(x, r, w13, w2, top_k, True, arrivals, out=o)
            for (x, r), o in pairs
        ]
        torch_matmul = [
            lambda x=x, r=r, o=o: fused_moe(x, torch.nn.functional.linear(x, r), w13, w2, top_k, True, out=o)
            for (x, r), o in pairs
        ]
        selected = sum(
            select_experts(torch.nn.functional.linear(x, r), top_k, True)[1].unique().numel() for x, r in inputs
        )
        read = selected * per_expert + calls_n * experts * hidden * 2
        us = graph_us_per_call(fused, reps)
        torch_us = graph_us_per_call(torch_matmul, reps)
        gbps = read / calls_n / (us * 1e-6) / 1e9
        print(
            f"| {name} | {tokens} | {us:.1f} | {gbps:.0f} | {100 * gbps * 1e9 / copy_bw:.0f} % | {torch_us:.1f} |",
            flush=True,
        )
        if args.profile:
            (x, r), o = pairs[0]
            kernels = kernel_breakdown(lambda: fused_moe_from_hidden(x, r, w13, w2, top_k, True, arrivals))
            print(f"    kernels (us): {kernels}", flush=True)


def bench_router(name: str, experts: int, top_k: int) -> None:
    for tokens in (1, 64, PREFILL_TOKENS):
        logits = [torch.randn(tokens, experts, device="cuda", dtype=torch.bfloat16) for _ in range(8)]
        fused = graph_us_per_call([lambda g=g: fused_topk(g, top_k, True) for g in logits])
        torch_us = graph_us_per_call([lambda g=g: select_experts(g, top_k, True) for g in logits])
        print(f"| {name} | {tokens} | {fused:.1f} | {torch_us:.1f} |", flush=True)


if __name__ == "__main__":
    main()

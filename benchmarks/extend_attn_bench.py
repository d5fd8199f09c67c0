"""Long-prompt extend attention against the bf16 matmul peak and torch's flash attention.

One request per case, Llama-3-8B attention layout (32 query heads, 8 KV heads, head dim 128),
bf16: 8k, 16k and 32k new tokens on an empty prefix, and 1k / 2k / 4k new tokens after a
7k / 14k / 28k cached prefix. Each case prints the Triton extend kernel's time (median of 9)
with its default tiles (`launch_config`'s pick, shown) and with the fastest of those and the
settings in `TILES` (Hopper-sized tiles with and without TMA, and the small ones), reading the
new tokens' K/V from views of one fused qkv tensor as the engine does; the default tiles again
with the new K/V gathered back from the pool (the path without them); the same causal attention through
torch's flash-attention kernel (`aten._scaled_dot_product_flash_attention`, SDPA's flash backend;
contiguous K/V expanded to 32 heads outside the timing; lower-right causal alignment when a
prefix is cached; its largest difference from the Triton output is printed), and each one's
TFLOP/s as a % of the bf16 matmul peak measured in the same run (`torch.matmul`
8192x8192x8192, best of 10).

Attention FLOPs count only the (query, key) pairs the causal mask keeps: a request of n new
tokens after p cached ones has sum_{i<n} (p + i + 1) pairs, each 2 * D multiply-adds for QK^T
and 2 * D for PV, per query head:

    FLOPs = 4 * H_q * D * sum_{i=0}^{n-1} (p + i + 1) = 4 * H_q * D * n * (p + (n + 1) / 2)

(about half of the dense 4 * H_q * D * n * (p + n) when p = 0).

    python benchmarks/extend_attn_bench.py                  # ~1 min on an H100
    python benchmarks/extend_attn_bench.py --ordered-slots  # K/V slots in order (a fresh pool)
    TRITON_INTERPRET=1 python benchmarks/extend_attn_bench.py --smoke   # tiny float32 cases on the CPU,
                                                                        # kernel and SDPA checked against torch
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

import torch
from extend_sweep import SHAPES, Case, default_tiles, make_case, median_us, run, torch_reference

CASES = ((8192, 0), (16384, 0), (32768, 0), (1024, 7168), (2048, 14336), (4096, 28672))  # (new, cached)
SMOKE_CASES = ((24, 0), (8, 40))
TILES = (  # (block_m, block_n, warps, stages, tma)
    (128, 128, 8, 3, True),
    (128, 128, 8, 2, True),
    (128, 64, 8, 3, True),
    (128, 64, 8, 4, True),
    (128, 64, 4, 3, True),
    (128, 128, 8, 3, False),
    (128, 64, 8, 3, False),
    (128, 64, 4, 3, False),
    (64, 64, 4, 3, False),
    (32, 32, 4, 3, False),
)


def causal_flops(new: int, cached: int, heads: int, dim: int) -> float:
    """4 * H_q * D * sum_{i<new} (cached + i + 1): the (query, key) pairs the causal mask keeps."""
    return 4.0 * heads * dim * new * (cached + (new + 1) / 2)


def matmul_peak_tflops(n: int = 8192, reps: int = 10) -> float:
    """bf16 `torch.matmul` of n x n by n x n, best of `reps`, in TFLOP/s."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(a, b)
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end))
    return 2.0 * n**3 / (best / 1e3) / 1e12


def sdpa_inputs(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The case's one request as SDPA takes it: q [1, H, n, D], k and v [1, H, p + n, D] read
    from the pool in order and expanded to every query head (outside any timing)."""
    hq, hkv = case.q.shape[1], case.k.shape[1]
    seq = int(case.prefix[0]) + int(case.ext[0])
    slots = case.table[0, :seq]
    k = case.k[slots].repeat_interleave(hq // hkv, dim=1).transpose(0, 1).unsqueeze(0).contiguous()
    v = case.v[slots].repeat_interleave(hq // hkv, dim=1).transpose(0, 1).unsqueeze(0).contiguous()
    return case.q.transpose(0, 1).unsqueeze(0).contiguous(), k, v


def sdpa_fn(case: Case, flash: bool) -> Callable[[], torch.Tensor]:
    """Causal attention over the case, lower-right aligned (new token i sees the prefix and the
    new keys <= i), [1, H, n, D]. `flash`: torch's flash-attention op called directly (it raises
    rather than falling back; its causal mask is lower-right aligned when there are more keys
    than queries); else SDPA's math backend with `causal_lower_right` (the CPU reference)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    q, k, v = sdpa_inputs(case)
    if flash:
        return lambda: torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True)[0]
    mask = causal_lower_right(q.shape[2], k.shape[2])

    def call() -> torch.Tensor:
        with sdpa_kernel([SDPBackend.MATH]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return call


def time_us(fn: Callable[[], object], reps: int = 9) -> float:
    fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def tile_times(case: Case, tiles: tuple) -> dict[tuple, float]:
    """Microseconds of the kernel per tile setting (block_m, block_n, warps, stages, tma);
    settings that fail to compile (shared memory, registers) are left out."""
    out = {}
    for setting in tiles:
        try:
            out[setting] = median_us(case, setting)
        except Exception as exc:  # a tile that does not fit this GPU
            print(f"  tiles {setting}: failed ({type(exc).__name__})", flush=True)
    return out


def measure(new: int, cached: int, heads: tuple[int, int, int], peak: float, ordered: bool) -> dict:
    hq, _, dim = heads
    case = make_case(1, new, cached, 1, heads, "cuda", shuffle=not ordered)
    flops = causal_flops(new, cached, hq, dim)
    default = default_tiles(case)
    times = tile_times(case, (default,) + tuple(t for t in TILES if t != default))
    best = min(times, key=times.get)
    pool_us = median_us(case, None, from_pool=True)
    flash_us, flash_diff = float("nan"), float("nan")
    try:
        flash = sdpa_fn(case, flash=True)
        flash_diff = (flash()[0].transpose(0, 1).float() - run(case, None).float()).abs().max().item()
        flash_us = time_us(flash)
    except RuntimeError as exc:  # no flash kernel for this GPU / dtype
        print(f"  flash SDPA unavailable: {exc}", flush=True)
    row = {
        "new": new,
        "cached": cached,
        "tflop": flops / 1e12,
        "triton_default_tiles": default,
        "triton_default_us": times.get(default, float("nan")),
        "triton_best_tiles": best,
        "triton_best_us": times[best],
        "triton_pool_us": pool_us,
        "flash_sdpa_us": flash_us,
        "flash_vs_triton_max_diff": flash_diff,
        "triton_us_by_tiles": {str(k): v for k, v in times.items()},
    }
    for key in ("triton_default", "triton_best", "triton_pool", "flash_sdpa"):
        row[f"{key}_tflops"] = flops / row[f"{key}_us"] / 1e6
        row[f"{key}_pct_peak"] = 100 * row[f"{key}_tflops"] / peak
    return row


def smoke() -> None:
    """Tiny float32 cases through the Triton interpreter: kernel (each source of the new K/V) and SDPA agree with
    the request-by-request torch reference, and the FLOP formula counts the causal pairs."""
    heads = (4, 2, 16)
    for new, cached in SMOKE_CASES:
        case = make_case(1, new, cached, 1, heads, "cpu", torch.float32)
        reference = torch_reference(case)
        kernel = run(case, None).float()
        pool = run(case, None, from_pool=True).float()
        tma = run(case, (32, 32, 4, 3, True)).float()
        sdpa = sdpa_fn(case, flash=False)()[0].transpose(0, 1)
        for name, out in (("triton", kernel), ("triton from pool", pool), ("triton tma", tma), ("sdpa", sdpa)):
            error = (out - reference).abs().max().item()
            assert error < 1e-4, f"{name} ({new} new, {cached} cached) off from torch by {error}"
        pairs = sum(cached + i + 1 for i in range(new))
        assert causal_flops(new, cached, heads[0], heads[2]) == 4.0 * heads[0] * heads[2] * pairs == case.flops
        print(f"smoke: {new} new on {cached} cached: triton and sdpa match torch (3 K/V sources); {pairs} causal pairs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--ordered-slots", action="store_true", help="K/V slots in order instead of shuffled")
    ap.add_argument("--smoke", action="store_true", help="tiny cases on the CPU interpreter, checked, no timing")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.smoke:
        smoke()
        return
    torch.manual_seed(0)
    heads = SHAPES[a.shape]
    peak = matmul_peak_tflops()
    print(f"{torch.cuda.get_device_name()}: bf16 matmul 8192^3 peak {peak:.0f} TFLOP/s; heads {heads}", flush=True)
    print(
        "| new | cached | TFLOP | default tiles | Triton default us | % peak | best tiles | us | % peak "
        "| new K/V from pool us | % peak | flash SDPA us | % peak | max diff flash vs Triton |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for new, cached in CASES:
        r = measure(new, cached, heads, peak, a.ordered_slots)
        rows.append(r)
        print(
            f"| {new} | {cached} | {r['tflop']:.2f} | {r['triton_default_tiles']} | {r['triton_default_us']:.0f} | "
            f"{r['triton_default_pct_peak']:.0f} | {r['triton_best_tiles']} | {r['triton_best_us']:.0f} | "
            f"{r['triton_best_pct_peak']:.0f} | {r['triton_pool_us']:.0f} | {r['triton_pool_pct_peak']:.0f} | "
            f"{r['flash_sdpa_us']:.0f} | {r['flash_sdpa_pct_peak']:.0f} | "
            f"{r['flash_vs_triton_max_diff']:.1e} |",
            flush=True,
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "peak_tflops": peak, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

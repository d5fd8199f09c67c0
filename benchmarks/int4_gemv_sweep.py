"""Batch-1 int4 GEMV A/B on one GPU: old kernels vs `int4_packed` vs `int4_kmajor`, per config.

For Llama-3-8B's linear shapes (qkv 4096->6144, o 4096->4096, gate_up 4096->28672, down
14336->4096; lm_head 4096->128256 in bf16 for reference) and each format (GPTQ group 128; GGUF
Q4_K: `q4k-f16` / `q4k-f32` name the `PackedInt4` scale dtype), times the old kernel
(`int4_gemv.w4a16_gemv` for GPTQ, `gguf_gemv.gemv` for Q4_K blocks), `int4_packed` (row-major
`PackedInt4`: its default launch, with --all every candidate) and `int4_kmajor` (the serving
path: GPTQ's stored form, Q4_K repacked exactly by `q4k_kmajor`; default launch with the inline
PTX unpack and with the portable one, then candidate launches with PTX); prints µs, GB/s (the
weight bytes one call reads / time) and % of the measured copy bandwidth (read + write), and the
best launch per (shape, format, kernel).

Timing: each call inside one CUDA graph (no launch gaps; a K split's zero-fill and cast are
part of the call), cycling through enough weight copies (>= 3x a 50 MB L2) that every call
reads from HBM; the median of several replays. A config that fails to compile or run is
reported and skipped.

    python benchmarks/int4_gemv_sweep.py --quick          # < 2 min on an H100: every shape, gptq + q4k-f16
    python benchmarks/int4_gemv_sweep.py --all            # int4_packed's candidates too
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from gpu_bench import copy_bandwidth

from radixlm.kernels import int4_kmajor as KM
from radixlm.kernels import int4_packed as K
from radixlm.layers.quantization import gguf_blocks, q4k_kmajor
from radixlm.layers.quantization.packed_int4 import PackedInt4, from_q4k, pack_codes

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
LM_HEAD = (128256, 4096)
ROTATE_BYTES = 160 * 2**20  # weight copies cycled per timing: > 3x the H100's 50 MB L2
# (block_n, block_k, num_warps, num_stages); K splits are tried per shape. Pruned with
# `int4_gemv_sass.py` (offline sm_90 SASS): these keep every tile in one layout (no barrier in
# the K loop); 16-row x 1024 and 2-warp x 512 tiles did not. num_stages does not change the code
# (Triton does not pipeline these loads; the kernel prefetches the next tile itself).
CANDIDATES = [
    (32, 512, 4, 1),
    (64, 256, 4, 1),
    (64, 512, 4, 1),
    (64, 512, 8, 1),
    (32, 256, 4, 1),
    (32, 512, 8, 1),
    (16, 512, 4, 1),
    (8, 512, 4, 1),
]
QUICK = CANDIDATES[:4]
# int4_kmajor launches (block_n, block_w, num_warps) tried besides the default; K split by the
# kernel's own rule for ~4 and ~8 programs per SM. Q4_K tiles are one group (block_w 4).
KMAJOR = {
    "gptq": [(64, 16, 4), (128, 16, 8), (512, 8, 4), (256, 8, 2)],
    "q4k": [(256, 4, 2), (512, 4, 2), (512, 4, 4), (1024, 4, 4)],
}


def graph_us(calls: list[Callable[[], object]], replays: int = 7, at_least: int = 32) -> float:
    """Microseconds per call: `calls` (repeated to `at_least`) captured once in a CUDA graph,
    median of `replays` replays."""
    calls = calls * -(-at_least // len(calls))
    for fn in calls[:2]:
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return sorted(times)[len(times) // 2]


def copies_for(nbytes: int) -> int:
    return max(2, math.ceil(ROTATE_BYTES / nbytes))


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def packed_weights(fmt: str, n: int, k: int, gen: torch.Generator) -> list[PackedInt4]:
    """Rotating copies of one random weight in the packed layout (`fmt`: gptq, q4k-f16, q4k-f32)."""
    if fmt == "gptq":
        q = torch.randint(0, 16, (n, k), generator=gen, device="cuda")
        s = torch.full((n, k // 128), 0.04 / 15, dtype=torch.bfloat16, device="cuda")
        one = PackedInt4(pack_codes(q, 32), s, -8 * s.float(), 128, 32)
    else:
        one = from_q4k(q4k_rows(n, k, gen), k, torch.float16 if fmt == "q4k-f16" else torch.float32)
    count = copies_for(nbytes(one.codes, one.scales, one.bias))
    clone = lambda: dataclasses.replace(one, codes=one.codes.clone(), scales=one.scales.clone(), bias=one.bias.clone())  # noqa: E731
    return [clone() for _ in range(count)]


def q4k_rows(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Random Q4_K blocks with small float16 d and dmin (uint8 [n, row_bytes])."""
    rows = torch.randint(0, 256, (n, k // 256 * 144), generator=gen, device="cuda", dtype=torch.uint8)
    blocks = rows.view(-1, 144)
    blocks[:, 0:4] = torch.tensor([0.02 / 16 / 63] * 2, dtype=torch.float16, device="cuda").view(torch.uint8)
    return rows


def old_calls(fmt: str, n: int, k: int, x: torch.Tensor, gen: torch.Generator) -> tuple[list[Callable], int]:
    """The previous kernel's calls on rotating copies, and one copy's bytes."""
    if fmt == "gptq":
        from radixlm.kernels.int4_gemv import w4a16_gemv

        qw = torch.randint(-(2**31), 2**31 - 1, (k // 8, n), generator=gen, device="cuda", dtype=torch.int32)
        qz = torch.randint(-(2**31), 2**31 - 1, (k // 128, n // 8), generator=gen, device="cuda", dtype=torch.int32)
        s = torch.full((k // 128, n), 0.04 / 15, dtype=torch.bfloat16, device="cuda")
        size = nbytes(qw, qz, s)
        sets = [(qw.clone(), qz.clone(), s.clone()) for _ in range(copies_for(size))]
        return [lambda t=t: w4a16_gemv(t[0], t[1], t[2], 128, x) for t in sets], size
    from radixlm.kernels import gguf_gemv

    rows = q4k_rows(n, k, gen)
    sets = [rows.clone() for _ in range(copies_for(nbytes(rows)))]
    return [lambda r=r: gguf_gemv.gemv(x, r, gguf_blocks.Q4_K, k) for r in sets], nbytes(rows)


def splits(n: int, k: int, group: int, block_n: int, block_k: int) -> list[int]:
    """K splits worth trying: whole groups per split, 128 to ~2,200 programs."""
    tiles = -(-n // block_n)
    out = []
    for split in (1, 2, 4, 8, 16):
        groups = k // group
        if groups % split or (groups // split) * group < block_k:
            continue
        if split > 1 and tiles * split > 2200:
            continue
        if tiles * split >= 128 or split == 16:
            out.append(split)
    return out or [1]


def line(label: str, us: float, size: int, copy_gbps: float) -> dict:
    gbps = size / (us / 1e6) / 1e9
    print(f"    {label:44s} {us:8.1f} us {gbps:7.0f} GB/s {100 * gbps / copy_gbps:5.1f} % of copy", flush=True)
    return {"us": us, "gbps": gbps, "pct_copy": 100 * gbps / copy_gbps}


def kmajor_calls(
    fmt: str, n: int, k: int, x: torch.Tensor, gen: torch.Generator
) -> tuple[Callable, int, KM.KMajorConfig]:
    """(call(config, asm) -> list of calls on rotating copies, one copy's bytes, default config)."""
    ws = K.workspace(n, torch.device("cuda"))
    if fmt == "gptq":
        qw = torch.randint(-(2**31), 2**31 - 1, (k // 8, n), generator=gen, device="cuda", dtype=torch.int32)
        qz = torch.randint(-(2**31), 2**31 - 1, (k // 128, n // 8), generator=gen, device="cuda", dtype=torch.int32)
        s = torch.full((k // 128, n), 0.04 / 15, dtype=torch.bfloat16, device="cuda")
        size = nbytes(qw, qz, s)
        sets = [(qw.clone(), qz.clone(), s.clone()) for _ in range(copies_for(size))]

        def calls(cfg: KM.KMajorConfig, asm: bool) -> list[Callable]:
            return [lambda t=t: KM.gptq_gemv(*t, 128, x, cfg, ws, asm) for t in sets]

        return calls, size, KM.gptq_config(1, n, k, 128)
    one = q4k_kmajor.from_q4k(q4k_rows(n, k, gen), k)
    size = nbytes(one.codes, one.scale_min, one.d_dmin)
    clone = lambda: dataclasses.replace(  # noqa: E731
        one, codes=one.codes.clone(), scale_min=one.scale_min.clone(), d_dmin=one.d_dmin.clone()
    )
    weights = [clone() for _ in range(copies_for(size))]

    def q4k_calls(cfg: KM.KMajorConfig, asm: bool) -> list[Callable]:
        return [lambda w=w: KM.q4k_gemv(w, x, cfg, ws, asm) for w in weights]

    return q4k_calls, size, KM.q4k_config(1, n, k)


def kmajor_configs(fmt: str, n: int, k: int) -> list[KM.KMajorConfig]:
    kind = "gptq" if fmt == "gptq" else "q4k"
    out = []
    for block_n, block_w, warps in KMAJOR[kind]:
        k_tiles = k // (8 * block_w)
        for programs, min_elements in ((4 * K.SMS, 256), (8 * K.SMS, 256), (8 * K.SMS, 64)):
            split = KM._split(-(-n // block_n), k_tiles, programs, max(min_elements // (8 * block_w), 1))
            cfg = KM.KMajorConfig(block_n, block_w, split, warps)
            if cfg not in out:
                out.append(cfg)
    return out


def short(cfg: object) -> str:
    return str(cfg).replace("GemvConfig", "").replace("KMajorConfig", "").replace("block_", "").replace("num_", "")


def timed(rows: dict, key: str, calls: Callable[[], list[Callable]], size: int, copy_gbps: float, cfg: object) -> None:
    """Time one launch into rows[key]; a launch that fails to compile or run is reported and skipped."""
    try:
        rows[key] = {**line(key, graph_us(calls()), size, copy_gbps), "config": cfg}
    except Exception as exc:  # noqa: BLE001 - one failing config must not end the sweep
        print(f"    {key} failed: {type(exc).__name__}: {str(exc)[:200]}")


def sweep_format(fmt: str, name: str, n: int, k: int, copy_gbps: float, candidates: list, out: dict) -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    print(f"  {name} [{n} x {k}] {fmt}", flush=True)
    rows: dict[str, dict] = {}
    try:
        calls, size = old_calls(fmt, n, k, x, gen)
        rows["old"] = line("old", graph_us(calls), size, copy_gbps)
    except Exception as exc:  # noqa: BLE001 - report and go on
        print(f"    old kernel failed: {type(exc).__name__}: {str(exc)[:200]}")
    weights = packed_weights(fmt, n, k, gen)
    size = nbytes(weights[0].codes, weights[0].scales, weights[0].bias)
    group = weights[0].group
    ws = K.workspace(n, torch.device("cuda"))  # K splits reduce here, as in serving (`int4_packed.bind`)
    configs: list[Optional[K.GemvConfig]] = [None]
    for block_n, block_k, warps, stages in candidates:
        for split in splits(n, k, group, block_n, block_k):
            configs.append(K.GemvConfig(block_n, block_k, split, warps, stages))
    for cfg in configs:
        resolved = cfg or K.gemv_config(1, n, k, group)
        key = f"packed {'default ' if cfg is None else ''}{short(resolved)}"
        timed(rows, key, lambda c=cfg: [lambda w=w: K.gemv(w, x, c, ws) for w in weights], size, copy_gbps, resolved)
    if fmt != "q4k-f32":
        kcalls, ksize, default = kmajor_calls(fmt, n, k, x, gen)
        for asm in (True, False):
            key = f"kmajor default {'ptx' if asm else 'portable'} {short(default)}"
            timed(rows, key, lambda a=asm: kcalls(default, a), ksize, copy_gbps, default)
        for cfg in kmajor_configs(fmt, n, k):
            if cfg != default:
                timed(rows, f"kmajor ptx {short(cfg)}", lambda c=cfg: kcalls(c, True), ksize, copy_gbps, cfg)
    old = rows.get("old", {}).get("us", float("nan"))
    for kernel in ("packed", "kmajor"):  # kmajor's best among PTX launches (what bf16 activations run)
        tuned = {key: r for key, r in rows.items() if key.startswith(kernel) and "portable" not in key}
        if tuned:
            best_key = min(tuned, key=lambda key: tuned[key]["us"])
            best = tuned[best_key]
            pct, speedup = best["pct_copy"], old / best["us"]
            print(f"    best {kernel}: {best_key} {best['us']:.1f} us ({pct:.1f} % of copy; x{speedup:.2f} vs old)")
            out[(fmt, name, kernel)] = {"n": n, "k": k, "group": group, "best": best, "rows": rows}


def bf16_line(name: str, n: int, k: int, copy_gbps: float) -> None:
    w = torch.empty(n, k, device="cuda", dtype=torch.bfloat16).uniform_(-0.02, 0.02)
    ws = [w.clone() for _ in range(copies_for(nbytes(w)) - 1)] + [w]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    print(f"  {name} [{n} x {k}] bf16", flush=True)
    line("F.linear", graph_us([lambda w=w: F.linear(x, w) for w in ws]), nbytes(w), copy_gbps)


def as_json(out: dict) -> dict:
    """The sweep's rows with configs as strings."""
    return {
        f"{fmt}/{name}/{kernel}": {
            "n": r["n"],
            "k": r["k"],
            "group": r["group"],
            "rows": {key: {**row, "config": str(row.get("config"))} for key, row in r["rows"].items()},
        }
        for (fmt, name, kernel), r in out.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="int4_packed's default launch only (< 2 min)")
    parser.add_argument(
        "--all", action="store_true", help=f"int4_packed's {len(CANDIDATES)} candidates, not {len(QUICK)}"
    )
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--formats", nargs="+", default=["gptq", "q4k-f16"], help="also: q4k-f32")
    parser.add_argument("--json", default=None, help="write every figure here")
    a = parser.parse_args()
    started = time.time()
    copy_gbps = copy_bandwidth() / 1e9
    print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {copy_gbps:,.0f} GB/s (read + write)", flush=True)
    out: dict = {}
    candidates = [] if a.quick else (CANDIDATES if a.all else QUICK)
    for name in a.shapes:
        n, k = SHAPES[name]
        bf16_line(name, n, k, copy_gbps)
        for fmt in a.formats:
            sweep_format(fmt, name, n, k, copy_gbps, candidates, out)
            torch.cuda.empty_cache()
    bf16_line("lm_head", *LM_HEAD, copy_gbps)
    print("\nbest per shape (us, % of copy; old kernel us):")
    for (fmt, name, kernel), r in out.items():
        old = r["rows"].get("old", {}).get("us", float("nan"))
        best = r["best"]
        us, pct, cfg = best["us"], best["pct_copy"], short(best["config"])
        print(f"    {name:8s} {fmt:8s} {kernel:7s} {us:7.1f} us {pct:5.1f} % (old {old:.1f} us)  {cfg}")
    print("\nint4_kmajor.TUNED entries (the best kmajor launch per shape): (kind, n, k) -> KMajorConfig")
    for (fmt, name, kernel), r in out.items():
        if kernel == "kmajor":
            kind = "gptq" if fmt == "gptq" else "q4k"
            print(f'    ("{kind}", {r["n"]}, {r["k"]}): {r["best"]["config"]},  # {name}')
    print(f"sweep took {time.time() - started:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            figures = {"device": torch.cuda.get_device_name(), "copy_gbps": copy_gbps, "shapes": as_json(out)}
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()

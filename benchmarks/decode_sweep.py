"""Decode attention tile settings on the GPU: the split kernel + reduce of one layer, as a decode
step runs them, for the next tuning run.

Each case is `batch` requests at `context` tokens (Llama-3.2-1B attention by default: 32 query
heads, 8 KV heads, head dim 64; `--shape 8b`: head dim 128), bf16, slots shuffled over the pool.
Every setting (splits, block_n, warps, stages) is timed inside one CUDA graph over enough
distinct KV pools that the L2 cache holds none of them (a layer's K/V is cold in a real step),
with programmatic dependent launch where the engine uses it (batch <= 16). Prints microseconds
per layer, the K/V read bandwidth it reaches, and its largest difference from the setting the
engine picks (`decode_launch_config`, marked *), which comes first.

    python benchmarks/decode_sweep.py [--shape 1b|8b] [--full]
    TRITON_INTERPRET=1 python benchmarks/decode_sweep.py --smoke   # tiny float32 shapes on the CPU,
                                                                   # checked against torch
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from dataclasses import dataclass

import torch

from radixlm.kernels.decode_attention import decode_attention, decode_launch_config

sys.path.insert(0, os.path.dirname(__file__))
SHAPES = {"1b": (32, 8, 64), "8b": (32, 8, 128)}  # query heads, KV heads, head dim
CASES = ((1, 256), (1, 2048), (16, 2048), (256, 512))  # (batch, context)
COLD_BYTES = 600 << 20


@dataclass
class Case:
    q: torch.Tensor
    ks: list[torch.Tensor]
    vs: list[torch.Tensor]
    table: torch.Tensor
    rows: torch.Tensor
    seq_lens: torch.Tensor
    kv_bytes: int


def make_case(
    batch: int, context: int, heads: tuple[int, int, int], device: str, dtype: torch.dtype, copies: int
) -> Case:
    """`batch` requests of `context` tokens over a shuffled pool; `copies` distinct K/V pools."""
    hq, hkv, dim = heads
    slots = torch.randperm(batch * context, device=device).view(batch, context)
    pool = batch * context
    ks = [torch.randn(pool, hkv, dim, device=device, dtype=dtype) for _ in range(copies)]
    vs = [torch.randn(pool, hkv, dim, device=device, dtype=dtype) for _ in range(copies)]
    q = torch.randn(batch, hq, dim, device=device, dtype=dtype)
    lens = torch.full((batch,), context, dtype=torch.int64, device=device)
    return Case(q, ks, vs, slots, torch.arange(batch, device=device), lens, 2 * pool * hkv * dim * ks[0].element_size())


def run(case: Case, setting: tuple[int, int, int, int], copy: int = 0) -> torch.Tensor:
    splits, block_n, warps, stages = setting
    return decode_attention(
        case.q,
        case.ks[copy],
        case.vs[copy],
        case.table,
        case.rows,
        case.seq_lens,
        case.q.shape[-1] ** -0.5,
        splits,
        block_n,
        warps,
        stages,
    )


def torch_reference(case: Case) -> torch.Tensor:
    """Each request's attention over all its tokens, float32 torch."""
    group = case.q.shape[1] // case.ks[0].shape[1]
    out = torch.empty(case.q.shape, dtype=torch.float32)
    for b in range(case.q.shape[0]):
        slots = case.table[b, : int(case.seq_lens[b])]
        k = case.ks[0][slots].float().repeat_interleave(group, dim=1)
        v = case.vs[0][slots].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,khd->hk", case.q[b].float(), k) * case.q.shape[-1] ** -0.5
        out[b] = torch.einsum("hk,khd->hd", scores.softmax(-1), v)
    return out


def settings(engine: tuple[int, int], smoke: bool, full: bool) -> list[tuple[int, int, int, int]]:
    """The engine's setting first (the backend launches decode with 4 warps, 2 stages), then
    splits x block_n at those warps and stages, or (`full`) also 2 / 4 warps x 1-3 stages."""
    first = (*engine, 4, 2)
    if smoke:
        grid = [(1, 16, 4, 2), (2, 32, 2, 1)]
    else:
        grid = itertools.product(
            (1, 2, 4, 8, 16), (16, 32, 64, 128), (2, 4) if full else (4,), (1, 2, 3) if full else (2,)
        )
    return [first] + [s for s in grid if s != first]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, no timing (CPU interpreter)")
    ap.add_argument("--full", action="store_true", help="also sweep warps and pipeline stages")
    a = ap.parse_args()
    device, dtype = ("cpu", torch.float32) if a.smoke else ("cuda", torch.bfloat16)  # interpreter bf16 dot is off
    heads = (4, 2, 16) if a.smoke else SHAPES[a.shape]
    torch.manual_seed(0)
    print(
        f"shape {heads} (query heads, KV heads, head dim), {dtype}, "
        f"{'cpu' if a.smoke else torch.cuda.get_device_name()}"
    )
    print("| batch | context | splits | block_n | warps | stages | us per layer | K/V GB/s | max diff vs engine's |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch, context in ((2, 40), (1, 7)) if a.smoke else CASES:
        one = make_case(batch, context, heads, device, dtype, 1)
        copies = 1 if a.smoke else max(2, min(1024, COLD_BYTES // one.kv_bytes))
        case = one if copies == 1 else make_case(batch, context, heads, device, dtype, copies)
        engine = decode_launch_config(batch, heads[1], heads[2])
        reference = run(case, (*engine, 4, 2)).float()
        if a.smoke:
            error = (reference - torch_reference(case)).abs().max().item()
            assert error < 1e-4, f"batch {batch}, context {context}: engine's setting is off from torch by {error}"
        for setting in settings(engine, a.smoke, a.full):
            try:
                diff = (run(case, setting).float() - reference).abs().max().item()
                us = float("nan") if a.smoke else time_layers(case, setting, copies)
            except Exception as exc:  # a tile that does not fit (shared memory, registers)
                print(f"| {batch} | {context} | {' | '.join(map(str, setting))} | failed: {type(exc).__name__} | | |")
                continue
            mark = "*" if setting[:2] == engine and setting[2:] == (4, 2) else ""
            print(
                f"| {batch} | {context} | {' | '.join(map(str, setting))}{mark} | {us:.1f} | "
                f"{case.kv_bytes / us / 1e3:.0f} | {diff:.2e} |",
                flush=True,
            )
        del case, one
        if not a.smoke:
            torch.cuda.empty_cache()


def time_layers(case: Case, setting: tuple[int, int, int, int], copies: int) -> float:
    """Microseconds per layer: one call per K/V copy, replayed in one CUDA graph (gemv.py's timer)."""
    from gemv import us_per_call

    return us_per_call([lambda c=c: run(case, setting, c) for c in range(copies)])


if __name__ == "__main__":
    main()

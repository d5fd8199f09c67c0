"""Extend (prefill) attention tile settings on the GPU, for the next tuning run.

Times `extend_attention` on the two prefill steps the GPU benchmarks run: `cached`, 128
requests of 128 new tokens after a 2,048-token prefix that 64 of them share (a step of the
shared-prefix benchmark), and `fresh`, 8 requests of 2,048 new tokens (an uncached prefill step).
Llama-3.2-1B attention by default (32 query heads, 8 KV heads, head dim 64; `--shape 8b`: head
dim 128), bf16. Each setting (block_m, block_n, warps, stages) prints microseconds per call
(median of 9), the causal attention TFLOP/s it reaches, and its largest difference from the
default's output; the default (`launch_config`'s pick for the case, shown) comes first. The
new tokens' K/V are read from views of the fused qkv tensor, as the engine passes them.

    python benchmarks/extend_sweep.py [--shape 1b|8b]
    TRITON_INTERPRET=1 python benchmarks/extend_sweep.py --smoke   # tiny float32 shapes on the CPU,
                                                                    # checked against torch
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import astuple, dataclass
from typing import Optional

import torch

from radixlm.kernels.extend_attention import ExtendConfig, extend_attention, launch_config

SHAPES = {"1b": (32, 8, 64), "8b": (32, 8, 128)}  # query heads, KV heads, head dim


@dataclass
class Case:
    """q, new_k and new_v: views of one fused [T, Hq + 2 Hkv, D] tensor (the models' qkv
    output); k and v: the pool, holding the prefixes and the new tokens' K/V at their slots."""

    q: torch.Tensor
    new_k: torch.Tensor
    new_v: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    table: torch.Tensor
    rows: torch.Tensor
    q_start: torch.Tensor
    prefix: torch.Tensor
    ext: torch.Tensor
    max_ext: int
    flops: float


def make_case(
    reqs: int,
    new: int,
    prefix: int,
    share: int,
    heads: tuple[int, int, int],
    device: str,
    dtype: torch.dtype = torch.bfloat16,
    shuffle: bool = True,
) -> Case:
    """`reqs` requests of `new` tokens after a `prefix`-token prefix, groups of `share` requests
    reading the same prefix slots; slots are shuffled over the pool as a running server's are
    (`shuffle=False`: in order, as a fresh pool hands them out)."""
    hq, hkv, dim = heads
    groups = -(-reqs // share)
    count = groups * prefix + reqs * new
    slots = torch.randperm(count, device=device) if shuffle else torch.arange(count, device=device)
    prefix_slots = slots[: groups * prefix].view(groups, prefix)
    own = slots[groups * prefix :].view(reqs, new)
    table = torch.cat([prefix_slots.repeat_interleave(share, dim=0)[:reqs], own], dim=1)
    pool = slots.numel()
    k = torch.randn(pool, hkv, dim, device=device, dtype=dtype)
    v = torch.randn(pool, hkv, dim, device=device, dtype=dtype)
    qkv = torch.randn(reqs * new, hq + 2 * hkv, dim, device=device, dtype=dtype)
    q, new_k, new_v = qkv[:, :hq], qkv[:, hq : hq + hkv], qkv[:, hq + hkv :]
    k[own.reshape(-1)], v[own.reshape(-1)] = new_k, new_v
    full = lambda value: torch.full((reqs,), value, dtype=torch.int64, device=device)  # noqa: E731
    keys = sum(prefix + i + 1 for i in range(new)) * reqs  # causal (query, key) pairs
    return Case(
        q,
        new_k,
        new_v,
        k,
        v,
        table,
        torch.arange(reqs, device=device),
        torch.arange(reqs, device=device) * new,
        full(prefix),
        full(new),
        new,
        4.0 * keys * hq * dim,
    )


Setting = tuple  # (block_m, block_n, warps, stages[, tma]): `ExtendConfig`'s fields


def run(case: Case, setting: Optional[Setting], from_pool: bool = False) -> torch.Tensor:
    """The kernel on the case with tiles `setting` (None: its default), reading the new tokens'
    K/V from the fused views as the engine does (`from_pool`: gathered back from the pool)."""
    return extend_attention(
        case.q,
        case.k,
        case.v,
        case.table,
        case.rows,
        case.q_start,
        case.prefix,
        case.ext,
        case.max_ext,
        case.q.shape[-1] ** -0.5,
        None if setting is None else ExtendConfig(*setting),
        new_k=None if from_pool else case.new_k,
        new_v=None if from_pool else case.new_v,
    )


def default_tiles(case: Case) -> Setting:
    """The (block_m, block_n, warps, stages, tma) `extend_attention` picks for the case."""
    return astuple(launch_config(case.q, case.max_ext))


def torch_reference(case: Case) -> torch.Tensor:
    """The same causal attention in float32 torch, request by request."""
    out = torch.empty(case.q.shape, dtype=torch.float32)
    group = case.q.shape[1] // case.k.shape[1]
    for r in range(case.rows.numel()):
        prefix, new, q0 = int(case.prefix[r]), int(case.ext[r]), int(case.q_start[r])
        slots = case.table[r, : prefix + new]
        k = case.k[slots].float().repeat_interleave(group, dim=1)  # [keys, heads, dim]
        v = case.v[slots].float().repeat_interleave(group, dim=1)
        q = case.q[q0 : q0 + new].float()
        scores = torch.einsum("qhd,khd->hqk", q, k) * q.shape[-1] ** -0.5
        visible = torch.arange(prefix + new)[None, :] <= (prefix + torch.arange(new))[:, None]
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        out[q0 : q0 + new] = torch.einsum("hqk,khd->qhd", probs, v)
    return out


def median_us(case: Case, setting: Optional[Setting], from_pool: bool = False) -> float:
    run(case, setting, from_pool)
    times = []
    for _ in range(9):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(case, setting, from_pool)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[4]


def settings(smoke: bool, default: Setting) -> list[Setting]:
    """The default first, then the grid without it (block_m a multiple of block_n; TMA tried
    with 128-row blocks)."""
    if smoke:
        grid = [(16, 16, 4, 3), (64, 32, 8, 2), (128, 64, 8, 3), (32, 32, 4, 3, True)]
    else:
        grid = [
            (*s, tma)
            for s in itertools.product((32, 64, 128), (32, 64, 128), (4, 8), (2, 3, 4))
            for tma in (False, True)
            if s[0] % s[1] == 0 and (s[0] == 128 or not tma)
        ]
    grid = [astuple(ExtendConfig(*s)) for s in grid]
    return [default] + [s for s in grid if s != default]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, no timing (CPU interpreter)")
    a = ap.parse_args()
    device = "cpu" if a.smoke else "cuda"
    torch.manual_seed(0)
    heads = (4, 2, 16) if a.smoke else SHAPES[a.shape]
    cases = (
        {
            "cached": make_case(4, 8, 16, 2, heads, device, torch.float32),  # the interpreter's bf16 dot is off
            "fresh": make_case(2, 24, 0, 1, heads, device, torch.float32),
        }
        if a.smoke
        else {"cached": make_case(128, 128, 2048, 64, heads, device), "fresh": make_case(8, 2048, 0, 1, heads, device)}
    )
    print(
        f"shape {heads} (query heads, KV heads, head dim), bf16, "
        f"{torch.cuda.get_device_name() if not a.smoke else 'cpu'}"
    )
    print("| case | block_m | block_n | warps | stages | tma | us | TFLOP/s | max diff vs default |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, case in cases.items():
        default = default_tiles(case)
        reference = run(case, None).float()
        if a.smoke:
            error = (reference - torch_reference(case)).abs().max().item()
            assert error < 1e-4, f"{name}: default setting is off from torch by {error}"
        for setting in settings(a.smoke, default):
            try:
                diff = (run(case, setting).float() - reference).abs().max().item()
                us = float("nan") if a.smoke else median_us(case, setting)
            except Exception as exc:  # a tile that does not fit (shared memory, registers)
                print(f"| {name} | {' | '.join(map(str, setting))} | failed: {type(exc).__name__} | | |", flush=True)
                continue
            print(
                f"| {name} | {' | '.join(map(str, setting))} | {us:.0f} | {case.flops / us / 1e6:.0f} | {diff:.2e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Programmatic dependent launch (PDL) for the small kernels of a decode step.

On Hopper and newer GPUs a kernel launched with PDL is scheduled while the kernel before it on
the stream is still finishing, so the launch gap between two kernels (a few microseconds, which
adds up over the ~10 kernels of each layer at batch 1) overlaps the earlier kernel's tail; CUDA
graphs keep the programmatic edges. The price is a contract on the kernel:

    a kernel launched with `launch_pdl=True` reaches `pdl_wait()` (alone or in `pdl_enter()`,
    when its PDL constexpr is set) before it loads memory another kernel writes or stores to
    memory another kernel reads or writes.

`pdl_enter()` lets the next kernel launch, then waits until the previous kernel has completed
and its writes are visible. Completion is transitive: the next kernel's wait returns only after this
one completed, which was after the one before it completed, so three kernels in a row never
see each other's data early. Loads of memory no PDL kernel writes may come before the wait:
weights (the GEMV issues its first weight tile there, so a layer's weight stream starts while
the small kernels before it still run) and metadata written only by the host or by plain
(non-PDL) kernels, which completed before any PDL kernel after them launched (decode
attention reads its request's length, table row and first block of slots there; rotary + KV
store its slot, position and cos/sin row). A kernel that broke the contract could read stale
data, only on Hopper and only sometimes, so `tests/kernels/test_pdl.py` checks it on the
kernels' source, and every launch site passes `**pdl_launch(tensor, rows)`,
which sets the kernel's `PDL` constexpr and Triton's `launch_pdl` option together.

Only small launches use it (at most `MAX_ROWS` tokens or requests): there kernels last a few
microseconds and the launch gap is a large share of each (at batch 1 on an H200 it shortens the
Llama-3-8B decode step by about 4 %; `benchmarks/gpu_bench.py --shapes llama-3-8b --skip sched
offline shared`, run with `pdl_enabled` returning False and as is, re-derives it). Larger
launches keep plain stream order: no same-run comparison has shown PDL helping them, and the
shared-prefix run of `gpu_bench.py` (batches of ~256) is the one that would.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

MAX_ROWS = 16


@functools.cache
def _capable(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (9, 0)


def pdl_enabled(t: torch.Tensor, rows: int) -> bool:
    """True for a launch over at most `MAX_ROWS` rows (tokens, requests) of a tensor on a CUDA
    device of compute capability 9.0 or newer; never on the CPU, where Triton's interpreter has
    no grid-dependency instructions."""
    return (
        rows <= MAX_ROWS
        and t.is_cuda
        and _capable(t.device.index if t.device.index is not None else torch.cuda.current_device())
    )


def pdl_launch(t: torch.Tensor, rows: int) -> dict[str, bool]:
    """The launch keywords of a PDL-aware kernel (one with a `PDL: tl.constexpr` parameter that
    keeps the contract above): PDL on or off for both, per `pdl_enabled`."""
    on = pdl_enabled(t, rows)
    return {"PDL": on, "launch_pdl": on}


@triton.jit
def pdl_release():
    """Allow the next kernel on the stream to launch (it still waits for this one in `pdl_wait`)."""
    tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def pdl_wait():
    """Block until the previous kernel has completed and its writes are visible."""
    tl.extra.cuda.gdc_wait()


@triton.jit
def pdl_enter():
    """`pdl_release` then `pdl_wait`: the next kernel launches as soon as every program of this
    one has started, so its own memory-independent work (a GEMV's weight loads) overlaps this
    kernel and the one before it."""
    pdl_release()
    pdl_wait()

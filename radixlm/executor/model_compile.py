"""`--enable-torch-compile`: the decode forward compiled by `torch.compile` (inductor) for the
small batch sizes, then captured in CUDA graphs like the eager forward.

Invariant: a compiled forward returns what the eager one does up to float rounding (inductor may
reorder reductions); it is only ever traced for decode batches of one fixed size per graph
bucket (`dynamic=False`), and only called while capturing, so its guards never fire at replay.
While tracing, the model's small ops use their torch implementations (`native_layers`), which
inductor can fuse, instead of the hand-written Triton kernels it cannot see into.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator

import torch

logger = logging.getLogger(__name__)

COMPILE_MODE = "max-autotune-no-cudagraphs"  # we capture the graphs ourselves


def compile_forward(model: Any, attention: Any, backend: str = "inductor") -> Callable[..., torch.Tensor]:
    """`model(input_ids, positions, batch)` compiled for fixed shapes, traced and run with the
    model's native layers (`native_layers`) and the attention backend's calls left out of the
    trace (`opaque_attention`); each new batch size traces anew. A `backend` other than
    inductor (e.g. "aot_eager") is for tests without a GPU."""
    mode = COMPILE_MODE if backend == "inductor" else None
    compiled = torch.compile(model.forward, dynamic=False, backend=backend, mode=mode)

    def forward(*args: Any) -> torch.Tensor:
        with native_layers(model), opaque_attention(attention):
            return compiled(*args)

    return forward


@contextlib.contextmanager
def opaque_attention(attention: Any) -> Iterator[None]:
    """Within the block the backend's per-layer calls run as they are, outside the trace (a graph
    break each): inductor re-generates user Triton kernels it traces and fails on ours (nested
    jit helpers); eager calls outside the block never pay for the wrapper."""
    names = ("rotate_and_store", "forward", "attend")
    for name in names:
        setattr(attention, name, torch.compiler.disable(getattr(type(attention), name).__get__(attention)))
    try:
        yield
    finally:
        for name in names:
            delattr(attention, name)


@contextlib.contextmanager
def native_layers(model: Any) -> Iterator[None]:
    """Within the block, every module that can switch (`use_native(bool)`) runs its torch
    implementation; on exit each goes back to what it used before."""
    switchable = [m for m in model.modules() if hasattr(m, "use_native")]
    for module in switchable:
        module.use_native(True)
    try:
        yield
    finally:
        for module in switchable:
            module.use_native(False)

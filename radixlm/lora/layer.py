"""A linear layer plus the batched LoRA term of each row's adapter.

`LoraLinear` wraps one of the model's projections (a fused q/k/v or gate/up projection, o_proj or
down_proj) after its weights are loaded. Its adapter weights live in per-slot device buffers:

* `a` [slots, P * R, in_local]: the A matrices of the P fused parts stacked (part p at rows
  p*R .. p*R + r, zero beyond an adapter's rank r and for parts it does not target);
* `b` [slots, out_local, P * R]: block-diagonal, part p's B at its output rows (where the fused
  base output puts that part on this rank) and columns p*R .. p*R + r.

So one shrink and one expand cover all parts and every adapter lands on its own output slice
(two launches per projection). A forward with no row on an adapter (`LoraBatchInfo.active`
false) launches nothing beyond the base layer.
Under tensor parallelism a column-parallel layer holds B's rows of its output shard (A whole);
a row-parallel one holds A's columns of its input shard (B whole) and all-reduces the shrunk
rows before expanding, so the term is added once, after the base all-reduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from radixlm.lora.batch_info import LoraBatchInfo


@dataclass(frozen=True)
class PartLayout:
    """Where a fused part's B rows go: local output rows [offset, offset + size), read from the
    full checkpoint-shaped B by `rows(B_full)`; A columns of this rank by `cols(A_full)`."""

    module: str  # the HF target name (q_proj, ...)
    offset: int
    size: int
    rows: Callable[[torch.Tensor], torch.Tensor]
    cols: Callable[[torch.Tensor], torch.Tensor]


class LoraKernels:
    """The shrink / expand pair, chosen once: Triton on CUDA, the torch reference elsewhere
    (`triton` forces a choice: the interpreter tests run the Triton path on the CPU)."""

    def __init__(self, device: torch.device, triton: Optional[bool] = None) -> None:
        self.triton = device.type == "cuda" if triton is None else triton
        if self.triton:
            from radixlm.lora import triton_ops

            self._ops: Any = triton_ops
        else:
            from radixlm.lora import ops_torch

            self._ops = ops_torch

    def delta_add(
        self,
        out: torch.Tensor,
        x: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        scales: tuple[torch.Tensor, list[float]],
        info: LoraBatchInfo,
        reduce: Optional[Callable[[torch.Tensor], torch.Tensor]],
        bounds: Optional[tuple[int, int]] = None,
        rank: int = 0,
    ) -> torch.Tensor:
        """out += the LoRA term of every row, in place: one shrink and one expand launch (none
        beyond them: the expand adds into `out`). `bounds`, `rank`: where the layer's second
        and third parts start in `out` and the pool's rank (None, 0: one part; see `expand_add`)."""
        if not self.triton:
            s = self._ops.shrink(x, a, info.host_segments)
            s = s if reduce is None else reduce(s)
            return self._ops.expand_add(out, s, b, scales[1], info.host_segments)
        seg = info.segments(x.shape[0])
        s = self._ops.shrink(x.contiguous(), a, seg)
        s = s if reduce is None else reduce(s)
        return self._ops.expand_add(out, s, b, scales[0], seg, bounds, rank)


class LoraLinear(nn.Module):
    """`base(x)` plus each row's LoRA term. The buffers are filled by the pool (`load_slot`)."""

    def __init__(
        self,
        base: nn.Module,
        parts: list[PartLayout],
        in_local: int,
        out_local: int,
        shape: tuple[int, int, torch.dtype, torch.device],
        info: LoraBatchInfo,
        kernels: LoraKernels,
        scales: tuple[torch.Tensor, list[float]],
        reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> None:
        super().__init__()
        slots, rank, dtype, device = shape
        self.base, self.parts, self.rank = base, parts, rank
        self.info, self.kernels, self.scales, self.reduce = info, kernels, scales, reduce
        width = len(parts) * rank
        assert len(parts) <= 3, "a fused projection has at most 3 parts (q/k/v)"
        starts = [p.offset for p in parts[1:]] + [out_local] * (3 - len(parts))
        self.bounds = (starts[0], starts[1])  # where parts 1 and 2 start in the local output
        self.register_buffer("a", torch.zeros(slots, width, in_local, dtype=dtype, device=device), persistent=False)
        self.register_buffer("b", torch.zeros(slots, out_local, width, dtype=dtype, device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)  # rows of x (and out) are the forward's rows, in order, whatever the leading dims
        if not self.info.active:
            return out  # no row on an adapter: nothing to add, nothing launched
        flat = out.view(-1, out.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        self.kernels.delta_add(flat, x2, self.a, self.b, self.scales, self.info, self.reduce, self.bounds, self.rank)
        return out

    def targets(self) -> set[str]:
        return {p.module for p in self.parts}

    def load_slot(self, slot: int, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Put one adapter's (A, B) per targeted part (full checkpoint shapes, host) in `slot`."""
        a, b = self.a[slot], self.b[slot]
        a.zero_()
        b.zero_()
        for p, part in enumerate(self.parts):
            if part.module not in weights:
                continue
            full_a, full_b = weights[part.module]
            r = full_a.shape[0]
            lo = p * self.rank
            a[lo : lo + r].copy_(part.cols(full_a))
            b[part.offset : part.offset + part.size, lo : lo + r].copy_(part.rows(full_b))

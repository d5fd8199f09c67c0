"""Which adapter slot each row of the current forward uses, in the form the LoRA kernels read.

Rows of one request are consecutive and share an adapter. Two device layouts:

* grouped (every request has one row: decode): blocks of at most BLOCK_ROWS rows of one slot,
  over a static permutation `rows` that lists the rows of slot 0, then slot 1, ... (base rows in
  none), so a program's rows share one adapter's weight tiles however the batch interleaves its
  adapters. Block starts, lengths, slots (-1: an unused block) and the permutation live in static
  device buffers (a CUDA graph captured once reads each replay's); the block count is bounded by
  `block_bound(rows, slots)`, a function of the layer's row count, so the grid is fixed per batch
  size and a batch-1 step runs one block, not one per slot.
* segmented (prefill / extend): maximal runs of consecutive rows with one slot (-1: the base
  model, no LoRA term), as fresh device tensors of starts, lengths and slots; rows are direct.

`host_segments` (start, end, slot) of the runs is what the torch reference reads, in both layouts.
`active` says whether any row of the forward is on an adapter: when not, the layers launch nothing
(and a CUDA-graph runner replays a graph captured without the LoRA launches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from radixlm.forward.device_copy import to_device, to_device_split

BLOCK_ROWS = 16  # rows per block of the grouped layout: the kernels' BLOCK_M (tl.dot's smallest M)


def block_bound(rows: int, slots: int) -> int:
    """The most blocks `rows` rows over at most `slots` adapters can need: each used slot's rows
    split into blocks of BLOCK_ROWS, and never more blocks than rows."""
    if rows <= 0:
        return 0
    return min(rows, (rows + min(slots, rows) * (BLOCK_ROWS - 1)) // BLOCK_ROWS)


@dataclass
class Segments:
    """Device view of a batch's segments for one layer call. Segment i covers `lens[i]` rows on
    slot `slots[i]`: rows `starts[i] + j`, or with `rows` given, rows `rows[starts[i] + j]`."""

    starts: torch.Tensor
    lens: torch.Tensor
    slots: torch.Tensor
    count: int
    max_len: int
    rows: Optional[torch.Tensor] = None


@dataclass
class LoraBatchInfo:
    """Owned by the LoRA manager, read by every LoRA layer. Invariant: after `set_rows`, every
    row of the forward on an adapter is in exactly one segment, with its slot; base rows in none."""

    max_tokens: int
    device: torch.device
    num_slots: int = 1
    per_token: bool = True
    active: bool = False
    host_segments: list[tuple[int, int, int]] = field(default_factory=list)
    _segmented: Segments | None = None

    def __post_init__(self) -> None:
        n, b = self.max_tokens, block_bound(self.max_tokens, self.num_slots)
        # one buffer, one copy per forward of its prefix: [block starts | lengths | slots | permutation]
        self._plan = torch.zeros(3 * b + n, dtype=torch.int64, device=self.device)
        self.block_starts, self.block_lens, self.block_slots, self.token_rows = self._plan.split((b, b, b, n))
        self.reset()

    def reset(self, active: bool = False) -> None:
        """Every row on the base model, grouped layout (before CUDA-graph capture); `active`: the
        layers launch their (then empty) LoRA kernels anyway, to capture a graph that has them."""
        self._plan.zero_()
        self.block_slots.fill_(-1)
        self.per_token, self.active, self.host_segments = True, active, []

    def set_rows(self, row_slots: list[int], rows_per_req: list[int]) -> None:
        """Request i has `rows_per_req[i]` consecutive rows, all on slot `row_slots[i]`."""
        segments = _runs(row_slots, rows_per_req)
        self.host_segments = segments
        self.active = any(slot >= 0 for slot in row_slots)
        if not self.active:
            self.per_token = all(n == 1 for n in rows_per_req)
            return  # the layers launch nothing: no plan to send
        if len(rows_per_req) <= self.max_tokens and all(n == 1 for n in rows_per_req):
            self.per_token = True
            plan = _grouped_plan(row_slots, self.max_tokens, self.num_slots)  # the permutation's used prefix
            self._plan[: len(plan)].copy_(to_device(plan, self.device))
            return
        self.per_token = False
        starts = [s for s, _, _ in segments]
        lens = [e - s for s, e, _ in segments]
        slots = [slot for _, _, slot in segments]
        dev = to_device_split(starts + lens + slots, (len(starts),) * 3, self.device)
        self._segmented = Segments(*dev, len(segments), max(lens, default=0))

    def segments(self, num_rows: int) -> Segments:
        """The segments of a forward of `num_rows` rows (the layer's `x.shape[0]`)."""
        if self.per_token:
            assert num_rows <= self.max_tokens, "the static buffers hold max_tokens rows (size them for the graphs)"
            count, longest = block_bound(num_rows, self.num_slots), min(num_rows, BLOCK_ROWS)
            return Segments(self.block_starts, self.block_lens, self.block_slots, count, longest, self.token_rows)
        assert self._segmented is not None
        return self._segmented


def _grouped_plan(row_slots: list[int], max_tokens: int, num_slots: int) -> list[int]:
    """[block starts | block lengths | block slots | rows by slot], blocks of at most BLOCK_ROWS
    rows of one slot, padded to `block_bound(max_tokens)` with empty blocks on slot -1; the rows
    (the permutation) are not padded: no block reads past them."""
    by_slot: list[list[int]] = [[] for _ in range(num_slots)]
    for row, slot in enumerate(row_slots):
        if slot >= 0:
            by_slot[slot].append(row)
    rows: list[int] = []
    starts, lens, slots = [], [], []
    for slot, group in enumerate(by_slot):
        for lo in range(0, len(group), BLOCK_ROWS):
            starts.append(len(rows) + lo)
            lens.append(min(BLOCK_ROWS, len(group) - lo))
            slots.append(slot)
        rows += group
    pad = block_bound(max_tokens, num_slots) - len(starts)
    return starts + [0] * pad + lens + [0] * pad + slots + [-1] * pad + rows


def _runs(row_slots: list[int], rows_per_req: list[int]) -> list[tuple[int, int, int]]:
    """Maximal runs (start, end, slot) of consecutive rows with one slot, base rows included."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    for slot, n in zip(row_slots, rows_per_req):
        if out and out[-1][2] == slot:
            out[-1] = (out[-1][0], pos + n, slot)
        elif n:
            out.append((pos, pos + n, slot))
        pos += n
    return out

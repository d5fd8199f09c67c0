"""Which adapter slot each row of the current forward uses, in the form the LoRA kernels read.

Rows of one request are consecutive and share an adapter. Two device layouts:

* grouped (every request has one row: decode): one segment per adapter slot, over a static
  permutation `rows` that lists the rows of slot 0, then slot 1, ... (base rows in none), so a
  program's BLOCK_M rows share one adapter's weight tiles however the batch interleaves its
  adapters. Starts, lengths and the permutation live in static device buffers (a CUDA graph
  captured once reads each replay's); the segment count is the slot count and the longest
  segment is bounded by the layer's row count, so the grid is fixed per batch size.
* segmented (prefill / extend): maximal runs of consecutive rows with one slot (-1: the base
  model, no LoRA term), as fresh device tensors of starts, lengths and slots; rows are direct.

`host_segments` (start, end, slot) of the runs is what the torch reference reads, in both layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from radixlm.forward.device_copy import to_device, to_device_split


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
    host_segments: list[tuple[int, int, int]] = field(default_factory=list)
    _segmented: Segments | None = None

    def __post_init__(self) -> None:
        n, s = self.max_tokens, self.num_slots
        # one buffer, one copy per forward: [permutation (max_tokens) | starts (slots) | lengths (slots)]
        self._plan = torch.zeros(n + 2 * s, dtype=torch.int64, device=self.device)
        self.token_rows, self.slot_starts, self.slot_lens = self._plan.split((n, s, s))
        self.slot_ids = torch.arange(s, dtype=torch.int64, device=self.device)

    def reset(self) -> None:
        """Every row on the base model, grouped layout (before CUDA-graph capture)."""
        self._plan.zero_()
        self.per_token, self.host_segments = True, []

    def set_rows(self, row_slots: list[int], rows_per_req: list[int]) -> None:
        """Request i has `rows_per_req[i]` consecutive rows, all on slot `row_slots[i]`."""
        segments = _runs(row_slots, rows_per_req)
        self.host_segments = segments
        if len(rows_per_req) <= self.max_tokens and all(n == 1 for n in rows_per_req):
            self.per_token = True
            self._plan.copy_(to_device(_grouped_plan(row_slots, self.max_tokens, self.num_slots), self.device))
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
            return Segments(self.slot_starts, self.slot_lens, self.slot_ids, self.num_slots, num_rows, self.token_rows)
        assert self._segmented is not None
        return self._segmented


def _grouped_plan(row_slots: list[int], max_tokens: int, num_slots: int) -> list[int]:
    """[rows by slot, padded to max_tokens | each slot's start | each slot's row count]."""
    by_slot: list[list[int]] = [[] for _ in range(num_slots)]
    for row, slot in enumerate(row_slots):
        if slot >= 0:
            by_slot[slot].append(row)
    rows, starts, lens = [], [], []
    for group in by_slot:
        starts.append(len(rows))
        lens.append(len(group))
        rows += group
    return rows + [0] * (max_tokens - len(rows)) + starts + lens


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

"""Which adapter slot each row of the current forward uses, in the form the LoRA kernels read.

Rows of one request are consecutive and share an adapter, so the batch is cut into segments:
maximal runs of rows with the same slot (-1: the base model, no LoRA term). Two layouts:

* per-token (every request has one row: decode): the slots live in a static device buffer
  (`token_slots`, padded with -1), so a CUDA graph captured once reads each replay's slots;
  segment i is row i, and a layer takes the first `x.shape[0]` rows of the static views.
* segmented (prefill / extend): fresh device tensors of segment starts, lengths and slots.

`host_segments` (start, end, slot) is what the torch reference reads, in both layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from radixlm.forward.device_copy import to_device, to_device_split


@dataclass
class Segments:
    """Device view of a batch's segments for one layer call."""

    starts: torch.Tensor
    lens: torch.Tensor
    slots: torch.Tensor
    count: int
    max_len: int


@dataclass
class LoraBatchInfo:
    """Owned by the LoRA manager, read by every LoRA layer. Invariant: after `set_rows`, the
    segments cover rows [0, T) of the forward in order."""

    max_tokens: int
    device: torch.device
    per_token: bool = True
    host_segments: list[tuple[int, int, int]] = field(default_factory=list)
    _segmented: Segments | None = None

    def __post_init__(self) -> None:
        n = self.max_tokens
        self.token_slots = torch.full((n,), -1, dtype=torch.int64, device=self.device)
        self.token_starts = torch.arange(n, dtype=torch.int64, device=self.device)
        self.token_lens = torch.ones(n, dtype=torch.int64, device=self.device)

    def reset(self) -> None:
        """Every row on the base model, per-token layout (before CUDA-graph capture)."""
        self.token_slots.fill_(-1)
        self.per_token, self.host_segments = True, []

    def set_rows(self, row_slots: list[int], rows_per_req: list[int]) -> None:
        """Request i has `rows_per_req[i]` consecutive rows, all on slot `row_slots[i]`."""
        segments = _runs(row_slots, rows_per_req)
        self.host_segments = segments
        if len(rows_per_req) <= self.max_tokens and all(n == 1 for n in rows_per_req):
            self.per_token = True
            padded = row_slots + [-1] * (self.max_tokens - len(row_slots))
            self.token_slots.copy_(to_device(padded, self.device), non_blocking=True)
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
            return Segments(
                self.token_starts[:num_rows], self.token_lens[:num_rows], self.token_slots[:num_rows], num_rows, 1
            )
        assert self._segmented is not None
        return self._segmented


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

"""CPU attention over the paged pool (the default on CPU): decode as two small matmuls.

torch's CPU SDPA kernel (flash) is tuned for long queries: for a decode step (one query row per
request) it spent ~9 ms a call on SmolLM2-135M at batch 1 (56 % of the step; `torch.profiler`,
2-core AMD EPYC), against ~1.5 ms for each of the step's projection matmuls. Decode here is
scores = q K^T (query heads grouped per KV head), a float32 softmax, then probs V.

Where a decode batch is one request whose KV slots are one contiguous run (the allocator hands a
fresh request consecutive slots), K and V are read in place as views of the pool; otherwise they
are gathered once per layer into a padded [B, L, Hkv, D] block, as the reference does. The choice
is made once per step in `init_forward_metadata`. Extend (prefill) is the reference's SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from radixlm.attention.torch_native import TorchNativeBackend, _gather
from radixlm.forward.batch import ForwardBatch, ForwardMode


@dataclass
class _RunMeta:
    """A one-request decode whose sequence occupies slots `start .. start + length - 1`."""

    start: int
    length: int


@dataclass
class _GatherMeta:
    """A padded decode batch: slot indices [B, Lmax] and `blocked` [B, 1, 1, Lmax] (True = padding)."""

    slots: torch.Tensor
    blocked: torch.Tensor


@dataclass
class _CpuDecodeMeta:
    """The decode implementation chosen for this step and what it reads."""

    attend: Callable[..., torch.Tensor]
    meta: _RunMeta | _GatherMeta


class CpuBackend(TorchNativeBackend):
    """Same contract and results (up to float rounding) as `TorchNativeBackend`; decode differs."""

    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        if batch.mode is not ForwardMode.DECODE:
            super().init_forward_metadata(batch)
            return
        run = _contiguous_run(batch)
        if run is not None:
            batch.attn_metadata = _CpuDecodeMeta(self._decode_in_place, run)
        else:
            padded = self._decode_meta(batch)
            batch.attn_metadata = _CpuDecodeMeta(self._decode_gathered, _GatherMeta(padded.slots, ~padded.mask))

    def forward_decode(self, q: torch.Tensor, layer_id: int, scale: float, batch: ForwardBatch) -> torch.Tensor:
        chosen: _CpuDecodeMeta = batch.attn_metadata
        return chosen.attend(q, layer_id, scale, chosen.meta)

    def _decode_in_place(self, q: torch.Tensor, layer_id: int, scale: float, meta: _RunMeta) -> torch.Tensor:
        end = meta.start + meta.length
        keys = self.pool.k_buffers[layer_id][meta.start : end].unsqueeze(0)  # [1, L, Hkv, D], a view
        values = self.pool.v_buffers[layer_id][meta.start : end].unsqueeze(0)
        return grouped_decode(q, keys, values, scale, None)

    def _decode_gathered(self, q: torch.Tensor, layer_id: int, scale: float, meta: _GatherMeta) -> torch.Tensor:
        keys = _gather(self.pool.k_buffers[layer_id], meta.slots)
        values = _gather(self.pool.v_buffers[layer_id], meta.slots)
        return grouped_decode(q, keys, values, scale, meta.blocked)


def grouped_decode(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float, blocked: torch.Tensor | None
) -> torch.Tensor:
    """One query row per request: q [B, H, D] against keys / values [B, L, Hkv, D] (any strides),
    query head h reading KV head h // (H / Hkv); `blocked` [B, 1, 1, L] (True = padding, not
    attended) or None for all L. Scores and softmax in float32; returns [B, H, D] in q's dtype."""
    b, h, d = q.shape
    hkv = keys.shape[2]
    qg = q.view(b, hkv, h // hkv, d)
    scores = torch.matmul(qg, keys.permute(0, 2, 3, 1).to(q.dtype)).float()  # [B, Hkv, G, L]
    if blocked is not None:
        scores = scores.masked_fill_(blocked, float("-inf"))
    probs = torch.softmax(scores.mul_(scale), dim=-1).to(q.dtype)
    out = torch.matmul(probs, values.permute(0, 2, 1, 3).to(q.dtype))  # [B, Hkv, G, D]
    return out.view(b, h, d)


def _contiguous_run(batch: ForwardBatch) -> _RunMeta | None:
    """The slot run of a one-request decode batch whose slots are consecutive, else None."""
    if batch.batch_size != 1:
        return None
    length = batch.seq_lens_cpu[0]
    row = batch.req_to_token[int(batch.req_pool_indices[0]), :length]
    start = int(row[0])
    if length > 1 and int(row[-1]) - start != length - 1:
        return None
    if not torch.equal(row, torch.arange(start, start + length, dtype=row.dtype, device=row.device)):
        return None
    return _RunMeta(start, length)

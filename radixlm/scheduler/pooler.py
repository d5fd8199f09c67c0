"""Embedding mode's counterpart of `TokenSampler`: pools each request's final-norm hidden states
into one vector as its prefill chunks run, and finishes the request after its last chunk.

Same two-step contract as the sampler, so the scheduler and both loops run it unchanged:
`launch` queues the device work of one batch (in batch order, so chunk sums accumulate in
prompt order), `finish` reads the vectors of the requests whose last chunk ran."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from radixlm.ipc.finish import FinishLength
from radixlm.model_loader.pooling_config import PoolingConfig
from radixlm.scheduler.batch import ExtendItem, ScheduledBatch
from radixlm.scheduler.request import Req
from radixlm.scheduler.token_sampler import LaunchedBatch

# (item, its hidden rows [length, H] float32) -> None; updates `item.req.pool_state`
Accumulate = Callable[[ExtendItem, torch.Tensor], None]


def _last(item: ExtendItem, rows: torch.Tensor) -> None:
    if item.sample:
        item.req.pool_state = rows[-1]


def _mean(item: ExtendItem, rows: torch.Tensor) -> None:
    total = rows.sum(dim=0)
    state = item.req.pool_state
    item.req.pool_state = total if state is None else state + total
    if item.sample:
        item.req.pool_state = item.req.pool_state / item.req.prompt_len


def _cls(item: ExtendItem, rows: torch.Tensor) -> None:
    if item.start == 0:  # a copy: a view would keep the chunk's whole hidden tensor alive until the last chunk
        item.req.pool_state = rows[0].clone()


ACCUMULATORS: dict[str, Accumulate] = {"last": _last, "mean": _mean, "cls": _cls}


class EmbeddingPooler:
    """Invariants: a request's chunks reach `launch` in prompt order and with no cached prefix
    unless the method is `last` (the scheduler's `full_prefill`); after `finish`, a request whose
    last chunk ran has `embedding` (the pooled vector, truncated to its `dimensions`, then
    L2-normalised when the model's config says so) and finish reason length 0.
    `structured` is the idle structured-output hook, kept only for the scheduler's counters."""

    def __init__(self, pooling: PoolingConfig, structured: Any) -> None:
        self.pooling, self.structured = pooling, structured
        self.accumulate = ACCUMULATORS[pooling.method]

    def launch(self, batch: ScheduledBatch, hidden: torch.Tensor, token_buf: torch.Tensor) -> LaunchedBatch:
        """`hidden` [T, H]: the batch's final-norm hidden states, one row per new token."""
        offset = 0
        for item in batch.items:
            self.accumulate(item, hidden[offset : offset + item.length].float())
            offset += item.length
            if item.sample:
                item.req.pool_state = self._finalize(item.req.pool_state, item.req.embed_dimensions)
        return LaunchedBatch(batch, hidden, batch.samplers, None, list)

    def _finalize(self, vector: torch.Tensor, dimensions: Optional[int]) -> torch.Tensor:
        if dimensions is not None:
            vector = vector[:dimensions]
        return F.normalize(vector, dim=-1) if self.pooling.normalize else vector

    def finish(self, launched: LaunchedBatch, next_ids: list[int]) -> list[Req]:
        """Finish the requests whose last chunk ran (one device-to-host copy for all of them)."""
        live = [req for req in launched.batch.reqs if req.finished_reason is None]
        done = [req for req in launched.takers if req.finished_reason is None]
        if done:
            vectors = torch.stack([req.pool_state for req in done]).cpu().tolist() if _same_size(done) else None
            for i, req in enumerate(done):
                req.embedding = vectors[i] if vectors is not None else req.pool_state.cpu().tolist()
                req.pool_state = None
                req.finished_reason = FinishLength(0)
        return live


def _same_size(reqs: list[Req]) -> bool:
    return len({req.pool_state.shape[0] for req in reqs}) == 1

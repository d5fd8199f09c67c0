"""CUDA graphs for decode: one graph per batch-size bucket, replayed with static input buffers.

Requires an attention backend whose decode reads lengths from device tensors only (Triton).
Padded rows point at the reserved slot 0 with length 1, so they never touch real KV.
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import Any

import torch

from radixlm.forward_batch import ForwardBatch, ForwardMode

logger = logging.getLogger(__name__)


def default_buckets(max_bs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, max_bs + 1, 8))
    return sorted(set(s for s in sizes if s <= max_bs) | {max_bs})


class CudaGraphRunner:
    """Invariant: `replay(batch)` returns exactly what the eager decode forward returns."""

    def __init__(self, model: Any, backend: Any, req_to_token: torch.Tensor, max_bs: int,
                 device: torch.device) -> None:
        self.model, self.backend, self.req_to_token = model, backend, req_to_token
        self.buckets = default_buckets(max_bs)
        self.max_bs = max_bs
        n = max_bs
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.out_cache_loc = torch.zeros(n, dtype=torch.int64, device=device)
        self.req_pool_indices = torch.zeros(n, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int64, device=device)
        self.logit_indices = torch.arange(n, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = torch.cuda.graph_pool_handle()
        start = time.perf_counter()
        for bs in reversed(self.buckets):
            self._capture(bs)
        self.capture_seconds = time.perf_counter() - start
        logger.info("captured %d CUDA graphs (bs %s) in %.1f s", len(self.buckets), self.buckets,
                    self.capture_seconds)

    def _batch(self, bs: int) -> ForwardBatch:
        return ForwardBatch(ForwardMode.DECODE, self.input_ids[:bs], self.positions[:bs], self.out_cache_loc[:bs],
                            self.req_pool_indices[:bs], self.seq_lens[:bs], [1] * bs, [0] * bs, [1] * bs,
                            self.logit_indices[:bs], self.req_to_token)

    def _run(self, batch: ForwardBatch) -> torch.Tensor:
        self.backend.init_forward_metadata(batch)
        hidden = self.model(batch.input_ids, batch.positions, batch)
        return self.model.compute_logits(hidden[batch.logit_indices])

    @torch.inference_mode()
    def _capture(self, bs: int) -> None:
        batch = self._batch(bs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up: Triton compiles, cuBLAS picks kernels
                self._run(batch)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.outputs[bs] = self._run(batch)
        self.graphs[bs] = graph

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.mode is ForwardMode.DECODE and batch.batch_size <= self.max_bs

    @torch.inference_mode()
    def replay(self, batch: ForwardBatch) -> torch.Tensor:
        bs = batch.batch_size
        padded = self.buckets[bisect.bisect_left(self.buckets, bs)]
        if padded > bs:
            self.input_ids[bs:padded].zero_()
            self.positions[bs:padded].zero_()
            self.out_cache_loc[bs:padded].zero_()
            self.req_pool_indices[bs:padded].zero_()
            self.seq_lens[bs:padded].fill_(1)
        self.input_ids[:bs].copy_(batch.input_ids)
        self.positions[:bs].copy_(batch.positions)
        self.out_cache_loc[:bs].copy_(batch.out_cache_loc)
        self.req_pool_indices[:bs].copy_(batch.req_pool_indices)
        self.seq_lens[:bs].copy_(batch.seq_lens)
        self.graphs[padded].replay()
        return self.outputs[padded][:bs]

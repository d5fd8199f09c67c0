"""CUDA graphs for decode: one graph per batch-size bucket, replayed with static input buffers.

Requires an attention backend whose decode reads lengths from device tensors only (Triton).
Padded rows point at the reserved slot 0 with length 1, so they never touch real KV. A coarser
set of buckets (`plan_buckets`) has a second graph,
replayed when the batch has a shared-prefix plan (`radixlm.attention.shared_prefix`), whose
static plan buffers are copied in like the inputs; batches without one replay the plain graph,
which has no launch for it.
With `lora` (a LoRA manager), every graph also has a variant captured with the LoRA launches,
replayed when a row of the batch is on an adapter; base-only batches replay the one without.
With `compile_max_bs`, the buckets up to it capture a torch.compile'd forward (model_compile).
All graphs write their logits into the first rows of one [max_bs, vocab] float32 buffer.
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import Any, Callable, Optional

import torch

from radixlm.attention.shared_prefix import StaticPlanBuffers
from radixlm.forward.batch import ForwardBatch, ForwardMode, logit_hidden

logger = logging.getLogger(__name__)


def default_buckets(max_bs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, max_bs + 1, 8))
    return sorted(set(s for s in sizes if s <= max_bs) | {max_bs})


def plan_buckets(buckets: list[int]) -> list[int]:
    """The buckets that also get a shared-prefix graph: 8, 16, multiples of 32, and the largest."""
    return [b for b in buckets if b in (8, 16) or b % 32 == 0 or b == buckets[-1]]


def logits_buffer_bytes(max_bs: int, vocab_size: int) -> int:
    """Bytes of the float32 logits that the captured graphs keep between replays: one
    [max_bs, vocab] buffer, which every graph writes its first bs rows of. Each graph's other
    activations come from the shared graph pool and are reused across graphs."""
    return max_bs * vocab_size * 4


class CudaGraphRunner:
    """Invariant: `replay(batch)` returns exactly what the eager decode forward returns (up to
    float rounding where a bucket runs a compiled forward). The logits it returns are rows of
    the one logits buffer all graphs write: valid until the next replay of any graph.

    Static inputs live in one [4, max_bs] buffer (ids, positions, slots, table rows) so padding
    is one fill; `seq_lens` is computed inside the graph as positions + 1 (a decode invariant)."""

    def __init__(
        self,
        model: Any,
        backend: Any,
        req_to_token: torch.Tensor,
        max_bs: int,
        device: torch.device,
        compiled: Optional[Callable[..., torch.Tensor]] = None,
        compile_max_bs: int = 0,
        lora: Optional[Any] = None,
    ) -> None:
        self.model, self.backend, self.req_to_token, self.lora = model, backend, req_to_token, lora
        self.buckets = default_buckets(max_bs)
        self.plan_buckets = plan_buckets([b for b in self.buckets if b >= 2])  # a group needs 2 requests
        self.max_bs = max_bs
        self.inputs = torch.zeros((4, max_bs), dtype=torch.int64, device=device)
        self.input_ids, self.positions, self.out_cache_loc, self.req_pool_indices = self.inputs
        self.seq_lens = torch.ones(max_bs, dtype=torch.int64, device=device)
        self.logit_indices = torch.arange(max_bs, dtype=torch.int64, device=device)
        self.plan_buffers = StaticPlanBuffers(max_bs, device)
        # (bs, with a shared-prefix plan, with the LoRA launches)
        self.graphs: dict[tuple[int, bool, bool], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, bool, bool], torch.Tensor] = {}
        self.logits: Optional[torch.Tensor] = None  # [max_bs, vocab] float32, made at the first capture
        self.pool = torch.cuda.graph_pool_handle()
        start = time.perf_counter()
        for bs in reversed(self.buckets):
            forward = compiled if compiled is not None and bs <= compile_max_bs else model
            for plan in (False, True) if bs in self.plan_buckets else (False,):
                for with_lora in (False, True) if lora is not None else (False,):
                    if lora is not None:
                        lora.capture_variant(with_lora)
                    self._capture(bs, plan, with_lora, forward)
        self.capture_seconds = time.perf_counter() - start
        logger.info(
            "captured %d CUDA graphs (bs %s; with shared-prefix plans: %s) in %.1f s",
            len(self.graphs),
            self.buckets,
            self.plan_buckets,
            self.capture_seconds,
        )

    def _batch(self, bs: int, plan: bool) -> ForwardBatch:
        return ForwardBatch(
            ForwardMode.DECODE,
            self.input_ids[:bs],
            self.positions[:bs],
            self.out_cache_loc[:bs],
            self.req_pool_indices[:bs],
            self.seq_lens[:bs],
            [1] * bs,
            [0] * bs,
            [1] * bs,
            self.logit_indices[:bs],
            self.req_to_token,
            prefix_plan=self.plan_buffers.view(bs) if plan else None,
        )

    def _run(
        self, batch: ForwardBatch, forward: Callable[..., torch.Tensor], out: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        torch.add(batch.positions, 1, out=batch.seq_lens)
        self.backend.init_forward_metadata(batch)
        hidden = forward(batch.input_ids, batch.positions, batch)
        return self.model.compute_logits(logit_hidden(hidden, batch), out)

    @torch.inference_mode()
    def _capture(self, bs: int, plan: bool, with_lora: bool, forward: Callable[..., torch.Tensor]) -> None:
        batch = self._batch(bs, plan)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up: Triton compiles, cuBLAS picks kernels, torch.compile traces
                logits = self._run(batch, forward)
        torch.cuda.current_stream().wait_stream(stream)
        if self.logits is None:  # the largest bucket is captured first
            self.logits = torch.empty((self.max_bs, logits.shape[1]), dtype=torch.float32, device=logits.device)
        del logits
        out = self.logits[:bs]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self._run(batch, forward, out)
        self.outputs[bs, plan, with_lora] = out
        self.graphs[bs, plan, with_lora] = graph

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.mode is ForwardMode.DECODE and batch.batch_size <= self.max_bs

    def load_inputs(self, batch: ForwardBatch, padded: int) -> None:
        """Copy the batch's ids, positions, slots and table rows into the static inputs, in one
        copy when the batch carries them as one block (`decode_inputs`), and pad the rows up to
        `padded` with id 0 at position 0 into the reserved slot 0."""
        bs = batch.batch_size
        if padded > bs:
            self.inputs[:, bs:padded].zero_()
        if batch.decode_inputs is not None:
            assert batch.decode_inputs[0].data_ptr() == batch.input_ids.data_ptr(), "decode_inputs is stale"
            self.inputs[:, :bs].copy_(batch.decode_inputs)
            return
        for static, given in zip(
            self.inputs, (batch.input_ids, batch.positions, batch.out_cache_loc, batch.req_pool_indices)
        ):
            static[:bs].copy_(given)

    @torch.inference_mode()
    def replay(self, batch: ForwardBatch) -> torch.Tensor:
        bs = batch.batch_size
        plan = batch.prefix_plan is not None  # a plan has a group, so bs >= 2
        buckets = self.plan_buckets if plan else self.buckets
        padded = buckets[bisect.bisect_left(buckets, bs)]
        self.load_inputs(batch, padded)
        if plan:
            self.plan_buffers.load(batch.prefix_plan, bs, padded)
        key = (padded, plan, self.lora is not None and self.lora.info.active)
        self.graphs[key].replay()
        return self.outputs[key][:bs]

"""The attention-backend contract every implementation (torch-native, Triton, ...) follows."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from radixlm.forward_batch import ForwardBatch, ForwardMode
from radixlm.mem_cache.kv_pool import KVPool


class AttentionBackend(ABC):
    """Computes attention over the paged KV pool.

    Contract: `init_forward_metadata` is called once per forward before any layer runs and
    may precompute index tensors into `batch.attn_metadata`. `forward_*` first writes the new
    tokens' k and v into the pool at `batch.out_cache_loc` for `layer_id`, then attends each
    new query to its request's whole sequence (cached prefix + new tokens, causally).
    Shapes: q [T, H, D], k and v [T, Hkv, D]; returns [T, H, D].
    """

    def __init__(self, pool: KVPool) -> None:
        self.pool = pool

    @abstractmethod
    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        """Prepare per-forward indices shared by all layers."""

    @abstractmethod
    def forward_extend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                       scale: float, batch: ForwardBatch) -> torch.Tensor:
        """Attention for new tokens after a cached prefix (prefill and chunked prefill)."""

    @abstractmethod
    def forward_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                       scale: float, batch: ForwardBatch) -> torch.Tensor:
        """Attention for exactly one new token per request."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                scale: float, batch: ForwardBatch) -> torch.Tensor:
        """Dispatch on the batch's mode (chosen once per batch, not per token)."""
        if batch.mode is ForwardMode.DECODE:
            return self.forward_decode(q, k, v, layer_id, scale, batch)
        return self.forward_extend(q, k, v, layer_id, scale, batch)

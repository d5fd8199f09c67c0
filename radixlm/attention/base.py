"""The attention-backend contract every implementation (torch-native, Triton, ...) follows."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional

import torch

from radixlm.forward.batch import ForwardBatch, ForwardMode
from radixlm.layers.basic import RotaryEmbedding
from radixlm.mem_cache.kv_pool import KVPool


class AttentionBackend(ABC):
    """Computes attention over the paged KV pool.

    Contract, per forward: `init_forward_metadata` is called once before any layer runs and
    may precompute index tensors into `batch.attn_metadata`. Then, per layer:
    `rotate_and_store` applies rotary to q and k and writes the new tokens' k and v into the
    pool at `batch.out_cache_loc` for `layer_id`; `forward` (`forward_extend` /
    `forward_decode`) then only attends: each new query to its request's whole sequence
    (cached prefix + new tokens, causally), all of whose K/V is already in the pool.
    Shapes: q [T, H, D], k and v [T, Hkv, D], any strides with the last dim contiguous (e.g.
    views of one fused qkv output); attention returns [T, H, D].
    """

    def __init__(self, pool: KVPool) -> None:
        self.pool = pool

    def bind_pool(self, pool: KVPool) -> None:
        """Read and write `pool` from now on. The model runner builds the model with a scratch
        pool, then binds the pool it sized from the memory left once the model was loaded."""
        self.pool = pool

    @abstractmethod
    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        """Prepare per-forward indices shared by all layers."""

    def rotate_and_store(
        self,
        rotary: Optional[RotaryEmbedding],
        positions: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer_id: int,
        batch: ForwardBatch,
    ) -> torch.Tensor:
        """Rotate q and k at `positions` [T] with `rotary` (None: they are already rotated), write
        k and v into layer `layer_id`'s K/V buffers at `batch.out_cache_loc` (cast to the pool's
        dtype), and return the rotated q. q and k may be rotated in place.
        This reference does rotary, then `KVPool.set_kv`; fast backends fuse the two."""
        if rotary is not None:
            q, k = rotary(positions, q, k)
        self.pool.set_kv(layer_id, batch.out_cache_loc, k, v)
        return q

    @abstractmethod
    def forward_extend(self, q: torch.Tensor, layer_id: int, scale: float, batch: ForwardBatch) -> torch.Tensor:
        """Attention for new tokens after a cached prefix (prefill and chunked prefill)."""

    @abstractmethod
    def forward_decode(self, q: torch.Tensor, layer_id: int, scale: float, batch: ForwardBatch) -> torch.Tensor:
        """Attention for exactly one new token per request."""

    def attend(
        self,
        rotary: Optional[RotaryEmbedding],
        positions: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer_id: int,
        scale: float,
        batch: ForwardBatch,
    ) -> torch.Tensor:
        """A layer's whole attention step: `rotate_and_store`, then `forward`. Backends that can
        do both in fewer launches override this; the result and the pool afterwards are the same."""
        return self.forward(self.rotate_and_store(rotary, positions, q, k, v, layer_id, batch), layer_id, scale, batch)

    def forward(self, q: torch.Tensor, layer_id: int, scale: float, batch: ForwardBatch) -> torch.Tensor:
        """Dispatch on the batch's mode (chosen once per batch, not per token). The layer's new
        K/V must already be in the pool (`rotate_and_store`)."""
        if batch.mode is ForwardMode.DECODE:
            return self.forward_decode(q, layer_id, scale, batch)
        return self.forward_extend(q, layer_id, scale, batch)

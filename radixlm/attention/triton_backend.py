"""Triton attention backend: paged decode (split-K over the sequence) and prefix-extend kernels.

Decode metadata lives in device tensors only, so a decode forward can be captured in a CUDA
graph; extend metadata (request offsets) is built once per forward and shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixlm.attention.base import AttentionBackend
from radixlm.attention.triton_kernels import decode_attention, extend_attention
from radixlm.device_copy import to_device
from radixlm.forward_batch import ForwardBatch, ForwardMode
from radixlm.mem_cache.kv_pool import KVPool


@dataclass
class _ExtendMeta:
    q_start: torch.Tensor
    prefix_lens: torch.Tensor
    ext_lens: torch.Tensor
    max_ext: int


class TritonBackend(AttentionBackend):
    """Same contract and results as the torch-native backend (up to float rounding)."""

    def __init__(self, pool: KVPool, num_splits: int = 8) -> None:
        super().__init__(pool)
        self.num_splits = num_splits

    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        if batch.mode is ForwardMode.DECODE:
            batch.attn_metadata = None
            return
        device = batch.input_ids.device
        ext = batch.extend_seq_lens_cpu
        starts = [0]
        for n in ext[:-1]:
            starts.append(starts[-1] + n)
        batch.attn_metadata = _ExtendMeta(
            q_start=to_device(starts, device),
            prefix_lens=to_device(batch.extend_prefix_lens_cpu, device),
            ext_lens=to_device(ext, device),
            max_ext=max(ext))

    def forward_extend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                       scale: float, batch: ForwardBatch) -> torch.Tensor:
        self.pool.set_kv(layer_id, batch.out_cache_loc, k, v)
        meta: _ExtendMeta = batch.attn_metadata
        return extend_attention(q.contiguous(), self.pool.k_buffers[layer_id], self.pool.v_buffers[layer_id],
                                batch.req_to_token, batch.req_pool_indices, meta.q_start, meta.prefix_lens,
                                meta.ext_lens, meta.max_ext, scale)

    def forward_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                       scale: float, batch: ForwardBatch) -> torch.Tensor:
        self.pool.set_kv(layer_id, batch.out_cache_loc, k, v)
        return decode_attention(q.contiguous(), self.pool.k_buffers[layer_id], self.pool.v_buffers[layer_id],
                                batch.req_to_token, batch.req_pool_indices, batch.seq_lens, scale,
                                num_splits=self.num_splits)

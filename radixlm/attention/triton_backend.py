"""Triton attention backend: paged decode (split-K over the sequence) and prefix-extend kernels.

Decode metadata lives in device tensors only, so a decode forward can be captured in a CUDA
graph; extend metadata (request offsets) is built once per forward and shared by all layers.
Rotary and the KV store are one fused launch per layer (`rope_store.py`); the kernels read q
through its strides, so the views of the fused qkv output are never copied. An extend leaves k
rotated in place and reads the new tokens' K/V from k and v, gathering only the cached prefix
from the pool. A decode batch with a shared-prefix plan attends each group's prefix once for all
its members (`triton_cascade.py`).
A backend built with `rows_per_request` > 1 (speculative verify steps run as decode rows,
several rows of one request in a launch) runs decode attention through `verify_attention.py`,
which reads each request's K/V once for all its rows and stores their K/V in the same launch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from radixlm.attention.base import AttentionBackend
from radixlm.forward.batch import ForwardBatch, ForwardMode
from radixlm.forward.device_copy import to_device_split
from radixlm.kernels.cascade import cascade_decode_attention
from radixlm.kernels.decode_attention import NewKV, decode_attention, decode_launch_config
from radixlm.kernels.extend_attention import extend_attention
from radixlm.kernels.rope_store import rope_and_store
from radixlm.kernels.verify_attention import verify_attention, verify_programs
from radixlm.layers.basic import RotaryEmbedding
from radixlm.mem_cache.kv_pool import KVPool


@dataclass
class _ExtendMeta:
    q_start: torch.Tensor
    prefix_lens: torch.Tensor
    ext_lens: torch.Tensor
    max_ext: int


class TritonBackend(AttentionBackend):
    """Same contract and results as the torch-native backend (up to float rounding)."""

    def __init__(
        self,
        pool: KVPool,
        num_splits: Optional[int] = None,
        suffix_splits: int = 2,
        prefix_splits: int = 2,
        member_progs: int = 4,
        rows_per_request: int = 1,
    ) -> None:
        """`num_splits`: parts of a decode request's sequence (None: chosen from the batch size by
        `decode_launch_config`); with a shared-prefix plan, a grouped
        request's own suffix gets `suffix_splits` parts, its group's prefix `prefix_splits`, each
        prefix part read by `member_progs` programs (the defaults are the fastest of the settings
        tried on an H200 for 4 groups x 64 requests sharing 2,048 tokens).
        `rows_per_request` (>= 1): the most decode rows one request may have in a batch (a
        speculative verify as decode rows: its last token and drafts, consecutive rows of its
        table row); a row reads K/V that other rows of the same launch write, so with more
        than one, decode attention is `verify_attention` (the rows of a request scored by one
        set of programs, which also store their K/V), with splits chosen for
        ceil(rows / rows_per_request) requests."""
        super().__init__(pool)
        if rows_per_request < 1:
            raise ValueError(f"rows_per_request must be >= 1, got {rows_per_request}")
        self.rows_per_request = rows_per_request
        self.num_splits, self.suffix_splits, self.prefix_splits = num_splits, suffix_splits, prefix_splits
        self.member_progs = member_progs

    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        if batch.mode is ForwardMode.DECODE:
            batch.attn_metadata = None
            return
        ext = batch.extend_seq_lens_cpu
        starts = [0]
        for n in ext[:-1]:
            starts.append(starts[-1] + n)
        b = len(ext)  # the three lists in one host-to-device copy
        q_start, prefix_lens, ext_lens = to_device_split(
            starts + batch.extend_prefix_lens_cpu + ext, (b, b, b), batch.input_ids.device
        )
        batch.attn_metadata = _ExtendMeta(q_start=q_start, prefix_lens=prefix_lens, ext_lens=ext_lens, max_ext=max(ext))

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
        """One launch: q rotated in place, rotated k and v cast into the pool (the neox
        `RotaryEmbedding`, or none); any other rotary goes through the reference."""
        if rotary is not None and not isinstance(rotary, RotaryEmbedding):
            return super().rotate_and_store(rotary, positions, q, k, v, layer_id, batch)
        rope_and_store(
            q,
            k,
            v,
            self.pool.k_buffers[layer_id],
            self.pool.v_buffers[layer_id],
            batch.out_cache_loc,
            positions,
            None if rotary is None else rotary.cos,
            None if rotary is None else rotary.sin,
        )
        return q

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
        """A decode without a shared-prefix plan, with the neox rotary: rotary, the KV store and
        attention in the attention kernel's launch (`NewKV`); an extend: `_extend`; anything else
        as the base class does."""
        if batch.mode is not ForwardMode.DECODE:
            return self._extend(rotary, positions, q, k, v, layer_id, scale, batch)
        if batch.prefix_plan is not None or type(rotary) is not RotaryEmbedding:
            return super().attend(rotary, positions, q, k, v, layer_id, scale, batch)
        return self._own_decode(q, layer_id, scale, batch, NewKV(k, v, batch.out_cache_loc, rotary.cos, rotary.sin))

    def _extend(
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
        """Rotary and the KV store (fused, leaving k rotated in place; another rotary through
        the reference, keeping its rotated k), then extend attention reading the new tokens'
        K/V from k and v rather than gathering them back from the pool, when the pool holds
        them in the same dtype (an fp8 pool's rounded copies are read from the pool instead).
        Output and pool as `rotate_and_store`, then `forward_extend`."""
        k_buf, v_buf = self.pool.k_buffers[layer_id], self.pool.v_buffers[layer_id]
        if rotary is not None and not isinstance(rotary, RotaryEmbedding):
            q, k = rotary(positions, q, k)
            self.pool.set_kv(layer_id, batch.out_cache_loc, k, v)
        else:
            cos, sin = (None, None) if rotary is None else (rotary.cos, rotary.sin)
            rope_and_store(q, k, v, k_buf, v_buf, batch.out_cache_loc, positions, cos, sin, k_in_place=True)
        same = k.dtype == k_buf.dtype and v.dtype == v_buf.dtype
        return self._extend_attention(q, layer_id, scale, batch, (k, v) if same else (None, None))

    def forward_extend(self, q: torch.Tensor, layer_id: int, scale: float, batch: ForwardBatch) -> torch.Tensor:
        return self._extend_attention(q, layer_id, scale, batch, (None, None))

    def _extend_attention(
        self,
        q: torch.Tensor,
        layer_id: int,
        scale: float,
        batch: ForwardBatch,
        new_kv: tuple[Optional[torch.Tensor], Optional[torch.Tensor]],
    ) -> torch.Tensor:
        meta: _ExtendMeta = batch.attn_metadata
        return extend_attention(
            q,
            self.pool.k_buffers[layer_id],
            self.pool.v_buffers[layer_id],
            batch.req_to_token,
            batch.req_pool_indices,
            meta.q_start,
            meta.prefix_lens,
            meta.ext_lens,
            meta.max_ext,
            scale,
            new_k=new_kv[0],
            new_v=new_kv[1],
        )

    def forward_decode(self, q: torch.Tensor, layer_id: int, scale: float, batch: ForwardBatch) -> torch.Tensor:
        """Requests in a shared-prefix group (`batch.prefix_plan`) attend to the prefix together."""
        k_buf, v_buf, plan = self.pool.k_buffers[layer_id], self.pool.v_buffers[layer_id], batch.prefix_plan
        if plan is None:
            return self._own_decode(q, layer_id, scale, batch)
        return cascade_decode_attention(
            q,
            k_buf,
            v_buf,
            batch.req_to_token,
            batch.req_pool_indices,
            batch.seq_lens,
            plan,
            scale,
            self.suffix_splits,
            self.prefix_splits,
            self.member_progs,
        )

    def _own_decode(
        self, q: torch.Tensor, layer_id: int, scale: float, batch: ForwardBatch, new_kv: Optional[NewKV] = None
    ) -> torch.Tensor:
        """Split-K decode attention over each request's whole sequence (`decode_launch_config`
        for the batch's requests unless `num_splits` is forced), storing the new K/V first when
        given (`NewKV`): `verify_attention` when a request may have several rows, else the
        split decode."""
        k_buf, v_buf = self.pool.k_buffers[layer_id], self.pool.v_buffers[layer_id]
        rows = self.rows_per_request
        requests = verify_programs(q.shape[0], rows)  # q.shape[0] when rows == 1
        splits, block_n = (
            (self.num_splits, 64) if self.num_splits else decode_launch_config(requests, k_buf.shape[1], q.shape[2])
        )
        if rows > 1:
            return verify_attention(
                q,
                k_buf,
                v_buf,
                batch.req_to_token,
                batch.req_pool_indices,
                batch.seq_lens,
                scale,
                rows,
                splits,
                block_n,
                new_kv,
            )
        return decode_attention(
            q,
            k_buf,
            v_buf,
            batch.req_to_token,
            batch.req_pool_indices,
            batch.seq_lens,
            scale,
            splits,
            block_n,
            num_warps=4,
            num_stages=2,
            new_kv=new_kv,
        )

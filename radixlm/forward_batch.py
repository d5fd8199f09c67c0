"""The tensors one model forward needs: what the scheduler's batch becomes on the device."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

import torch


class ForwardMode(enum.Enum):
    """EXTEND runs new tokens after a (possibly empty) cached prefix; DECODE runs one token per request."""

    EXTEND = "extend"
    DECODE = "decode"


@dataclass
class ForwardBatch:
    """One model step. Invariants: `input_ids`, `positions` and `out_cache_loc` have one row per
    new token, requests concatenated in order; for request i, `extend_seq_lens[i]` new tokens
    follow `extend_prefix_lens[i]` tokens whose KV is already in the pool, and
    `seq_lens[i] == extend_prefix_lens[i] + extend_seq_lens[i]`. `req_to_token[req_pool_indices[i], :seq_lens[i]]`
    holds the pool slot of every token of request i, the new ones included (already written
    by the scheduler before the forward)."""

    mode: ForwardMode
    input_ids: torch.Tensor
    positions: torch.Tensor
    out_cache_loc: torch.Tensor
    req_pool_indices: torch.Tensor
    seq_lens: torch.Tensor
    seq_lens_cpu: list[int]
    extend_prefix_lens_cpu: list[int]
    extend_seq_lens_cpu: list[int]
    logit_indices: torch.Tensor
    req_to_token: torch.Tensor
    attn_metadata: Optional[Any] = field(default=None)

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens_cpu)

"""The tensors one model forward needs: what the scheduler's batch becomes on the device."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch

if TYPE_CHECKING:
    from radixlm.attention.shared_prefix import SharedPrefixPlan


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
    by the scheduler before the forward). `prefix_plan` (DECODE only, else None): which requests
    share a long cached prefix (see `radixlm.attention.shared_prefix`); backends may ignore it.
    `decode_inputs` (a DECODE batch built by the scheduler, else None): a [4, B] tensor whose
    rows are `input_ids`, `positions`, `out_cache_loc` and `req_pool_indices` (those fields are
    its row views), so a CUDA graph takes the four in one copy. `mm_inputs` (an EXTEND whose
    new tokens cover image placeholders, else None): `ImageSlice`s naming the batch rows
    whose embeddings come from an image encoder. `mrope_positions` (an EXTEND with a request
    whose images carry an M-RoPE grid, else None): [3, T] rotary positions of the rows (see
    `radixlm.multimodal.mrope`), with `rope_deltas` [B] each request's rotary shift after its
    images; only M-RoPE models read them. `lora_ids` (a server with LoRA adapters, else
    None): request i's adapter uid, 0 for the base model; the LoRA manager turns it into each
    row's device slot (-1 for the base) before the forward (`radixlm.lora.manager`)."""

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
    prefix_plan: Optional[SharedPrefixPlan] = field(default=None)
    decode_inputs: Optional[torch.Tensor] = field(default=None)
    mm_inputs: Optional[list] = field(default=None)  # an EXTEND's image slices (radixlm.multimodal.inputs)
    mrope_positions: Optional[torch.Tensor] = field(default=None)
    rope_deltas: Optional[torch.Tensor] = field(default=None)
    lora_ids: Optional[list[int]] = field(default=None)  # per request: adapter uid, 0 = base

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens_cpu)


def logit_hidden(hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
    """The rows of `hidden` [T, ...] named by `batch.logit_indices`. A DECODE batch keeps every
    row, in order (one token per request, each sampled), so it is returned without a gather launch."""
    return hidden if batch.mode is ForwardMode.DECODE else hidden[batch.logit_indices]

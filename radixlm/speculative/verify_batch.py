"""The verify step's batch: each request's tokens without KV (its last token, or more after a
jump-forward) followed by its draft tokens, run as one extend over the paged KV cache, or, when
each request has exactly one token without KV, as a decode with one row per token (which the
decode CUDA graphs run)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from radixlm.forward.batch import ForwardBatch, ForwardMode
from radixlm.forward.device_copy import pinned_to_device, to_device, to_device_rows, to_device_split
from radixlm.multimodal.mrope import batch_mrope
from radixlm.scheduler.batch import ScheduledBatch
from radixlm.scheduler.request import Req


@dataclass
class VerifyBatch(ScheduledBatch):
    """A decode step that scores drafts. `drafts[i]` are request i's draft tokens; its logits rows
    are `len(drafts[i]) + 1` consecutive rows (positions `seq_len - 1` .. `seq_len - 1 + k`), in
    request order. The scheduler sees a DECODE of running requests; the model runs an EXTEND."""

    drafts: list[list[int]] = field(default_factory=list)


def build_verify(
    reqs: list[Req], starts: list[int], drafts: list[list[int]], req_to_token: torch.Tensor, device: torch.device
) -> VerifyBatch:
    """Request i runs positions `starts[i]` (its KV length before its slots were allocated) to
    `seq_len + len(drafts[i])`; those slots are in `req.kv_slots` and in the table already.
    All host lists go to the device in one copy."""
    ids: list[int] = []
    positions: list[int] = []
    locs: list[int] = []
    logit_idx: list[int] = []
    seq_lens: list[int] = []
    for req, start, chain in zip(reqs, starts, drafts):
        end = req.seq_len + len(chain)
        first = len(ids) + req.seq_len - 1 - start  # row of the last real token
        ids += req.fill_slice(start, req.seq_len) + chain
        positions += range(start, end)
        locs += req.kv_slots[start:end]
        logit_idx += range(first, first + len(chain) + 1)
        seq_lens.append(end)
    pool_idx = [req.req_pool_idx for req in reqs]
    t, b = len(ids), len(reqs)
    dev_ids, dev_pos, dev_locs, dev_pool, dev_lens, dev_logit = to_device_split(
        ids + positions + locs + pool_idx + seq_lens + logit_idx, (t, t, t, b, b, len(logit_idx)), device
    )
    fb = ForwardBatch(
        mode=ForwardMode.EXTEND,
        input_ids=dev_ids,
        positions=dev_pos,
        out_cache_loc=dev_locs,
        req_pool_indices=dev_pool,
        seq_lens=dev_lens,
        seq_lens_cpu=seq_lens,
        extend_prefix_lens_cpu=list(starts),
        extend_seq_lens_cpu=[end - start for end, start in zip(seq_lens, starts)],
        logit_indices=dev_logit,
        req_to_token=req_to_token,
    )
    ends = [req.seq_len + len(chain) for req, chain in zip(reqs, drafts)]
    mrope = batch_mrope([(req.images, start, end) for req, start, end in zip(reqs, starts, ends)])
    if mrope is not None:  # M-RoPE models: an extend sets each request's rotary shift
        fb.mrope_positions = pinned_to_device(torch.from_numpy(mrope[0]), device)
        fb.rope_deltas = to_device(mrope[1], device)
    lora = [req.lora_uid for req in reqs]
    fb.lora_ids = lora if any(lora) else None
    return VerifyBatch(ForwardMode.DECODE, list(reqs), fb, list(reqs), None, drafts=drafts)


def can_verify_as_decode(reqs: list[Req], starts: list[int]) -> bool:
    """Whether every request has exactly one token without KV (no jump-forward text pending), so
    each row of a decode-shaped verify is a row whose logits are wanted."""
    return all(start == req.seq_len - 1 for req, start in zip(reqs, starts))


def build_verify_as_decode(
    reqs: list[Req], starts: list[int], drafts: list[list[int]], req_to_token: torch.Tensor, device: torch.device
) -> VerifyBatch:
    """The same step as `build_verify`, run as a DECODE of one row per token: row j of request i
    is its token at position `starts[i] + j`, with its request's table row and `seq_len` =
    position + 1, a request's rows consecutive. Every layer stores all rows' K/V before its
    attention reads them (on CUDA the Triton backend, built with `rows_per_request` = drafts + 1
    when speculation is on, scores a request's rows together in one set of programs that store
    their K/V first: `kernels/verify_attention.py`), so row j sees the draft rows before it and
    none after: the chain's causal mask without an extend kernel. The rows are exactly the logits rows of
    `build_verify` (requires `can_verify_as_decode`), so the decode CUDA graphs run verification
    when the rows fit their largest batch."""
    if not can_verify_as_decode(reqs, starts):
        raise ValueError("a decode-shaped verify needs exactly one token without KV per request")
    ids: list[int] = []
    positions: list[int] = []
    locs: list[int] = []
    pool_idx: list[int] = []
    lora: list[int] = []
    for req, start, chain in zip(reqs, starts, drafts):
        end = req.seq_len + len(chain)
        ids += req.fill_slice(start, req.seq_len) + chain
        positions += range(start, end)
        locs += req.kv_slots[start:end]
        pool_idx += [req.req_pool_idx] * (end - start)
        lora += [req.lora_uid] * (end - start)
    n = len(ids)
    inputs = to_device_rows(ids + positions + locs + pool_idx, 4, device)
    dev_ids, dev_pos, dev_locs, dev_pool = inputs
    fb = ForwardBatch(
        mode=ForwardMode.DECODE,
        input_ids=dev_ids,
        positions=dev_pos,
        out_cache_loc=dev_locs,
        req_pool_indices=dev_pool,
        seq_lens=dev_pos + 1,
        seq_lens_cpu=[p + 1 for p in positions],
        extend_prefix_lens_cpu=list(positions),
        extend_seq_lens_cpu=[1] * n,
        logit_indices=torch.arange(n, device=device),
        req_to_token=req_to_token,
        decode_inputs=inputs,
        lora_ids=lora if any(lora) else None,
    )
    return VerifyBatch(ForwardMode.DECODE, list(reqs), fb, list(reqs), None, drafts=drafts)

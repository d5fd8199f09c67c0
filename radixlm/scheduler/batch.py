"""Turns the scheduler's choice of requests into a ForwardBatch (tensors for one model step)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

from radixlm.attention.shared_prefix import plan_shared_prefixes
from radixlm.forward.batch import ForwardBatch, ForwardMode
from radixlm.forward.device_copy import pinned_to_device, to_device, to_device_rows, to_device_split
from radixlm.multimodal.inputs import chunk_slices
from radixlm.multimodal.mrope import batch_mrope
from radixlm.scheduler.request import Req


@dataclass
class ExtendItem:
    """`length` new tokens of `req` starting at position `start` (its KV length before the step).
    `sample` is set when the chunk reaches the end of the request's tokens, so the next token
    is sampled from the last row. `logit_positions` are absolute positions whose logits are needed."""

    req: Req
    start: int
    length: int
    sample: bool
    logit_positions: list[int] = field(default_factory=list)


@dataclass
class ScheduledBatch:
    """What the scheduler decided to run this step.

    `reqs` are the batch's requests in order; `samplers` those of them that sample a token this
    step (in order), `sample_rows[k]` being the logits row of `samplers[k]`, or None when every
    request samples from its own row (a plain decode: row i is request i, the logits are used
    as they are). `items` and `logit_rows` describe an extend: each request's chunk and where
    the logits of each wanted position land (prompt logprobs); a plain decode has neither."""

    mode: ForwardMode
    reqs: list[Req]
    forward: ForwardBatch
    samplers: list[Req]
    sample_rows: Optional[list[int]]
    items: list[ExtendItem] = field(default_factory=list)
    logit_rows: list[dict[int, int]] = field(default_factory=list)


def build_extend(items: list[ExtendItem], req_to_token: torch.Tensor, device: torch.device) -> ScheduledBatch:
    """Prefill/extend batch. Slots for the new tokens must already be in `req.kv_slots` (and be
    in `req_to_token` before the forward runs); every host list goes to the device in one copy."""
    ids, positions, locs, logit_idx, rows = [], [], [], [], []
    image_slices: list = []
    offset = 0
    for item in items:
        req, end = item.req, item.start + item.length
        ids += req.fill_slice(item.start, end)
        positions += range(item.start, end)
        locs += req.kv_slots[item.start : end]
        wanted = sorted(set(item.logit_positions) | ({end - 1} if item.sample else set()))
        row_map = {}
        for pos in wanted:
            row_map[pos] = len(logit_idx)
            logit_idx.append(offset + pos - item.start)
        rows.append(row_map)
        if req.images:
            image_slices += chunk_slices(req.images, item.start, end, offset)
        offset += item.length
    fb = _extend_forward_batch(items, ids, positions, locs, logit_idx, req_to_token, device)
    fb.mm_inputs = image_slices or None
    mrope = batch_mrope([(item.req.images, item.start, item.start + item.length) for item in items])
    if mrope is not None:
        fb.mrope_positions = pinned_to_device(torch.from_numpy(mrope[0]), device)
        fb.rope_deltas = to_device(mrope[1], device)
    fb.lora_ids = _lora_ids([item.req for item in items])
    sampling = [(item.req, row_map[item.start + item.length - 1]) for item, row_map in zip(items, rows) if item.sample]
    return ScheduledBatch(
        ForwardMode.EXTEND,
        [item.req for item in items],
        fb,
        [req for req, _ in sampling],
        [row for _, row in sampling],
        items,
        rows,
    )


def build_decode(
    reqs: list[Req], slots: list[int], req_to_token: torch.Tensor, device: torch.device, token_buf: torch.Tensor
) -> ScheduledBatch:
    """One token per request: the last token of each, at position `seq_len - 1`, whose KV goes to
    `slots[i]` (just allocated, see `KVCacheManager.alloc_decode`). A last token still being
    sampled on the device (a placeholder, id < 0) is read from `token_buf[req_pool_idx]`, where
    the sampler puts it (in place, in the batch's own buffer), without waiting for the host.
    The ids, positions, slots and table rows go to the device in one copy, as the rows of the
    forward batch's `decode_inputs` (the order of a CUDA graph's static inputs); its
    `input_ids`, `positions`, `out_cache_loc` and `req_pool_indices` are those rows (the caller
    writes the slots into the table from them)."""
    n = len(reqs)
    seq_lens = [req.prompt_len + len(req.output_ids) for req in reqs]
    positions = [s - 1 for s in seq_lens]
    ids = [req.output_ids[-1] if req.output_ids else req.origin_input_ids[-1] for req in reqs]
    pool_idx = [req.req_pool_idx for req in reqs]
    lowest = min(ids)  # < 0: some last tokens are placeholders
    inputs = to_device_rows(ids + positions + slots + pool_idx, 4, device)
    dev_ids, dev_pos, dev_slots, dev_pool = inputs
    if lowest < 0:
        torch.where(dev_ids < 0, token_buf[dev_pool], dev_ids, out=dev_ids)
    fb = ForwardBatch(
        mode=ForwardMode.DECODE,
        input_ids=dev_ids,
        positions=dev_pos,
        out_cache_loc=dev_slots,
        req_pool_indices=dev_pool,
        seq_lens=dev_pos + 1,
        seq_lens_cpu=seq_lens,
        extend_prefix_lens_cpu=positions,
        extend_seq_lens_cpu=[1] * n,
        logit_indices=torch.arange(n, device=device),
        req_to_token=req_to_token,
        prefix_plan=plan_shared_prefixes(reqs, device),
        decode_inputs=inputs,
        lora_ids=_lora_ids(reqs),
    )
    return ScheduledBatch(ForwardMode.DECODE, reqs, fb, reqs, None)


def _lora_ids(reqs: list[Req]) -> Optional[list[int]]:
    """Each request's adapter uid, or None when every request is on the base model."""
    ids = [req.lora_uid for req in reqs]
    return ids if any(ids) else None


def build_multi_token_decode(
    reqs: list[Req], starts: list[int], req_to_token: torch.Tensor, device: torch.device
) -> ScheduledBatch:
    """A decode step in which some requests carry several new tokens (jump-forward appended
    forced text): request i runs its tokens from position `starts[i]` (its KV length before
    the slots were allocated) to its end. The model runs it as an EXTEND; the scheduler treats
    it as a decode of running requests (`mode` DECODE), so nothing is re-admitted or re-cached."""
    items = [ExtendItem(req, start, req.seq_len - start, True) for req, start in zip(reqs, starts)]
    return dataclasses.replace(build_extend(items, req_to_token, device), mode=ForwardMode.DECODE)


def _extend_forward_batch(
    items: list[ExtendItem],
    ids: list[int],
    positions: list[int],
    locs: list[int],
    logit_idx: list[int],
    req_to_token: torch.Tensor,
    device: torch.device,
) -> ForwardBatch:
    """The tensors are views of one device buffer (one copy): nothing may write into them."""
    seq_lens = [item.start + item.length for item in items]
    pool_idx = [item.req.req_pool_idx for item in items]
    t, b = len(ids), len(items)
    dev_ids, dev_pos, dev_locs, dev_pool, dev_lens, dev_logit = to_device_split(
        ids + positions + locs + pool_idx + seq_lens + logit_idx, (t, t, t, b, b, len(logit_idx)), device
    )
    return ForwardBatch(
        mode=ForwardMode.EXTEND,
        input_ids=dev_ids,
        positions=dev_pos,
        out_cache_loc=dev_locs,
        req_pool_indices=dev_pool,
        seq_lens=dev_lens,
        seq_lens_cpu=seq_lens,
        extend_prefix_lens_cpu=[item.start for item in items],
        extend_seq_lens_cpu=[item.length for item in items],
        logit_indices=dev_logit,
        req_to_token=req_to_token,
    )

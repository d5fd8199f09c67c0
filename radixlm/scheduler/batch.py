"""Turns the scheduler's choice of requests into a ForwardBatch (tensors for one model step)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from radixlm.device_copy import to_device
from radixlm.forward_batch import ForwardBatch, ForwardMode
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
    """What the scheduler decided to run this step, plus where each request's logits land."""

    mode: ForwardMode
    items: list[ExtendItem]
    forward: ForwardBatch
    logit_rows: list[dict[int, int]]


def build_extend(items: list[ExtendItem], req_to_token: torch.Tensor, device: torch.device) -> ScheduledBatch:
    """Prefill/extend batch. Slots for the new tokens must already be in `req_to_token`."""
    ids, positions, locs, logit_idx, rows = [], [], [], [], []
    offset = 0
    for item in items:
        req, end = item.req, item.start + item.length
        ids.extend(req.fill_ids[item.start:end])
        positions.extend(range(item.start, end))
        locs.append(req_to_token[req.req_pool_idx, item.start:end])
        wanted = sorted(set(item.logit_positions) | ({end - 1} if item.sample else set()))
        row_map = {}
        for pos in wanted:
            row_map[pos] = len(logit_idx)
            logit_idx.append(offset + pos - item.start)
        rows.append(row_map)
        offset += item.length
    return ScheduledBatch(ForwardMode.EXTEND, items, _forward_batch(
        ForwardMode.EXTEND, items, ids, positions, torch.cat(locs), logit_idx, req_to_token, device), rows)


def build_decode(reqs: list[Req], req_to_token: torch.Tensor, device: torch.device,
                 token_buf: torch.Tensor) -> ScheduledBatch:
    """One token per request: the last token of each, whose slot was just allocated. A last
    token still being sampled on the device (a placeholder, id < 0) is read from
    `token_buf[req_pool_idx]`, where the sampler puts it, without waiting for the host."""
    positions = [req.seq_len - 1 for req in reqs]
    items = [ExtendItem(req, pos, 1, True) for req, pos in zip(reqs, positions)]
    ids = [req.last_token for req in reqs]
    pool_idx = to_device([req.req_pool_idx for req in reqs], device)
    locs = req_to_token[pool_idx, to_device(positions, device)]
    if any(req.pending_tokens for req in reqs):
        host_ids = to_device(ids, device)
        ids = torch.where(host_ids < 0, token_buf[pool_idx], host_ids)
    rows = [{pos: i} for i, pos in enumerate(positions)]
    fb = _forward_batch(ForwardMode.DECODE, items, ids, positions, locs, list(range(len(reqs))), req_to_token, device)
    return ScheduledBatch(ForwardMode.DECODE, items, fb, rows)


def build_multi_token_decode(reqs: list[Req], starts: list[int], req_to_token: torch.Tensor,
                             device: torch.device) -> ScheduledBatch:
    """A decode step in which some requests carry several new tokens (jump-forward appended
    forced text): request i runs its tokens from position `starts[i]` (its KV length before
    the slots were allocated) to its end. The model runs it as an EXTEND; the scheduler treats
    it as a decode of running requests (`mode` DECODE), so nothing is re-admitted or re-cached."""
    items = [ExtendItem(req, start, req.seq_len - start, True) for req, start in zip(reqs, starts)]
    batch = build_extend(items, req_to_token, device)
    return ScheduledBatch(ForwardMode.DECODE, batch.items, batch.forward, batch.logit_rows)


def _forward_batch(mode: ForwardMode, items: list[ExtendItem], ids: list[int] | torch.Tensor, positions: list[int],
                   locs: torch.Tensor, logit_idx: list[int], req_to_token: torch.Tensor,
                   device: torch.device) -> ForwardBatch:
    seq_lens = [item.start + item.length for item in items]
    return ForwardBatch(
        mode=mode,
        input_ids=ids if isinstance(ids, torch.Tensor) else to_device(ids, device),
        positions=to_device(positions, device),
        out_cache_loc=locs,
        req_pool_indices=to_device([item.req.req_pool_idx for item in items], device),
        seq_lens=to_device(seq_lens, device),
        seq_lens_cpu=seq_lens,
        extend_prefix_lens_cpu=[item.start for item in items],
        extend_seq_lens_cpu=[item.length for item in items],
        logit_indices=to_device(logit_idx, device),
        req_to_token=req_to_token,
    )

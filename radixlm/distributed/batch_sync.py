"""Rank 0 mirrors each ForwardBatch to the follower ranks, which run the same forward on their shard.

Wire format (int64, one or two broadcasts): a fixed-size first message `[kind, tokens, batch,
logit rows, max_len, plan groups, plan table length, ...]` whose tail carries the body when it
fits (most decode steps: one broadcast); otherwise the body follows in a second broadcast.
Body: input ids, positions, out_cache_loc (one per token), req_pool_indices, seq_lens, extend
prefix lens, extend lens (one per request), logit indices, the request rows
`req_to_token[req_pool_indices, :max_len]` (rank 0 owns slot allocation, so followers copy its
rows into their own table and their KV pools hold the same tokens in the same slots), then,
when plan groups > 0, the decode batch's shared-prefix plan (`prefix_lens`, then its packed
`groups` table), so every rank runs the same attention path (and CUDA graph) as rank 0, then,
when the header's LoRA flag is 1, each request's LoRA adapter uid (`lora_ids`).
"""

from __future__ import annotations

from typing import Optional

import torch

from radixlm.attention.shared_prefix import SharedPrefixPlan
from radixlm.distributed.group import TPGroup
from radixlm.forward.batch import ForwardBatch, ForwardMode
from radixlm.forward.device_copy import to_device

HEADER = 8
FIRST = 2048  # int64 entries in the first broadcast (16 KiB), header included
KIND_EXTEND, KIND_DECODE, KIND_IDLE, KIND_STOP = 0, 1, 2, 3
_MODES = {ForwardMode.EXTEND: KIND_EXTEND, ForwardMode.DECODE: KIND_DECODE}


class BatchSender:
    """Rank 0's side. `send` must be called before rank 0 runs the batch itself."""

    def __init__(self, tp: TPGroup, device: torch.device) -> None:
        self.tp, self.device = tp, device
        self.first = torch.zeros(FIRST, dtype=torch.int64, device=device)

    def send(self, batch: ForwardBatch) -> None:
        bs, max_len = batch.batch_size, max(batch.seq_lens_cpu)
        lens = to_device(batch.seq_lens_cpu + batch.extend_prefix_lens_cpu + batch.extend_seq_lens_cpu, self.device)
        rows = batch.req_to_token[batch.req_pool_indices, :max_len]
        parts = [
            batch.input_ids,
            batch.positions,
            batch.out_cache_loc.to(torch.int64),
            batch.req_pool_indices.to(torch.int64),
            lens,
            batch.logit_indices,
            rows.reshape(-1),
        ]
        plan = batch.prefix_plan if batch.prefix_plan is not None and batch.prefix_plan.num_groups > 0 else None
        if plan is not None:  # sent exactly when the header's group count is > 0 (the receiver's test)
            parts += [plan.prefix_lens, plan.groups]
        if batch.lora_ids is not None:
            parts.append(to_device(batch.lora_ids, self.device))
        header = [
            _MODES[batch.mode],
            batch.input_ids.numel(),
            bs,
            batch.logit_indices.numel(),
            max_len,
            0 if plan is None else plan.num_groups,
            0 if plan is None else plan.groups.numel(),
            int(batch.lora_ids is not None),
        ]
        self._send_header(header, torch.cat(parts))

    def send_idle(self) -> None:
        """A heartbeat while rank 0 has nothing to run: followers' waits never reach the timeout."""
        self._send_header([KIND_IDLE, 0, 0, 0, 0], None)

    def send_stop(self) -> None:
        """Tell the followers to exit; returns once they have the message (a process group torn
        down with the broadcast still in flight would leave them waiting on it)."""
        self._send_header([KIND_STOP, 0, 0, 0, 0], None)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _send_header(self, header: list[int], body: Optional[torch.Tensor]) -> None:
        self.first[: len(header)] = to_device(header, self.device)  # never waits for the GPU
        inline = body is not None and body.numel() <= FIRST - HEADER
        if inline:
            self.first[HEADER : HEADER + body.numel()] = body
        self.tp.broadcast(self.first)
        if body is not None and not inline:
            self.tp.broadcast(body)


class BatchReceiver:
    """A follower's side: `recv` blocks for rank 0's next batch, writes its request rows into
    this rank's `req_to_token` table and returns the batch; None once rank 0 stops."""

    def __init__(self, tp: TPGroup, device: torch.device, req_to_token: torch.Tensor) -> None:
        self.tp, self.device, self.req_to_token = tp, device, req_to_token
        self.first = torch.zeros(FIRST, dtype=torch.int64, device=device)

    def recv(self) -> Optional[ForwardBatch]:
        while True:
            self.tp.broadcast(self.first)
            first_cpu = self.first.cpu()  # the one wait for rank 0 in the usual (inline) case
            kind = int(first_cpu[0])
            if kind == KIND_STOP:
                return None
            if kind != KIND_IDLE:
                return self._unpack(first_cpu)

    def _unpack(self, first_cpu: torch.Tensor) -> ForwardBatch:
        kind, n, bs, n_logits, max_len, plan_groups, plan_table, lora = first_cpu[:HEADER].tolist()
        sizes = [n, n, n, bs, 3 * bs, n_logits, bs * max_len, bs if plan_groups else 0, plan_table, bs if lora else 0]
        size = sum(sizes)
        if size <= FIRST - HEADER:
            body = self.first[HEADER : HEADER + size].clone()
            host = first_cpu[HEADER : HEADER + size].split(sizes)
        else:
            body = self.tp.broadcast(torch.empty(size, dtype=torch.int64, device=self.device))
            host = body.split(sizes)
        lens_cpu = host[4].tolist()  # (non-inline: the two small reads back from the device)
        ids, pos, locs, pool_idx, lens, logit_idx, rows, plan_lens, plan_table_t, _ = body.split(sizes)
        self.req_to_token[pool_idx, :max_len] = rows.view(bs, max_len)
        mode = ForwardMode.EXTEND if kind == KIND_EXTEND else ForwardMode.DECODE
        plan = SharedPrefixPlan(plan_groups, plan_lens, plan_table_t) if plan_groups else None
        return ForwardBatch(
            mode=mode,
            input_ids=ids,
            positions=pos,
            out_cache_loc=locs,
            req_pool_indices=pool_idx,
            seq_lens=lens[:bs],
            seq_lens_cpu=lens_cpu[:bs],
            extend_prefix_lens_cpu=lens_cpu[bs : 2 * bs],
            extend_seq_lens_cpu=lens_cpu[2 * bs :],
            logit_indices=logit_idx,
            req_to_token=self.req_to_token,
            prefix_plan=plan,
            lora_ids=host[9].tolist() if lora else None,
        )

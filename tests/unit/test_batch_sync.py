"""Rank 0's BatchSender and a follower's BatchReceiver over an in-process wire: the follower's
batch equals rank 0's field by field, its table gets rank 0's request rows, and a decode batch's
shared-prefix plan and the requests' LoRA adapter uids arrive too (so every rank runs the same
attention path, CUDA graph and adapters),
whether the body fits in the first broadcast or follows in a second one."""

from __future__ import annotations

from collections import deque
from typing import Optional

import pytest
import torch

from radixlm.attention.shared_prefix import GROUP_HEAD, pack_plan
from radixlm.distributed.batch_sync import FIRST, BatchReceiver, BatchSender
from radixlm.forward.batch import ForwardBatch, ForwardMode


class Wire:
    """Rank 0's broadcasts, replayed in order to one follower: the sender's side records each
    tensor, the receiver's side copies the next one into its buffer (shapes must agree)."""

    def __init__(self) -> None:
        self.sent: deque[torch.Tensor] = deque()

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        self.sent.append(x.clone())
        return x


class WireEnd:
    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        got = self.wire.sent.popleft()
        assert got.shape == x.shape, (got.shape, x.shape)
        return x.copy_(got)


def make_batch(
    mode: ForwardMode, bs: int, ctx: int, table: torch.Tensor, plan_groups: Optional[list] = None, seed: int = 0
) -> ForwardBatch:
    """A batch of `bs` requests at `ctx` cached tokens (DECODE: one new token each; EXTEND: 3)."""
    gen = torch.Generator().manual_seed(seed)
    new = 1 if mode is ForwardMode.DECODE else 3
    pool_idx = torch.randperm(table.shape[0] - 1, generator=gen)[:bs] + 1
    table[pool_idx, : ctx + new] = torch.randint(1, 10_000, (bs, ctx + new), generator=gen)
    n = bs * new
    plan = pack_plan(bs, plan_groups, torch.device("cpu")) if plan_groups else None
    return ForwardBatch(
        mode,
        torch.randint(0, 1000, (n,), generator=gen),
        torch.arange(n) % (ctx + new),
        torch.randint(1, 10_000, (n,), generator=gen),
        pool_idx,
        torch.full((bs,), ctx + new),
        [ctx + new] * bs,
        [ctx] * bs,
        [new] * bs,
        torch.arange(n) if new == 1 else torch.arange(new - 1, n, new),
        table,
        prefix_plan=plan,
    )


FIELDS = ("input_ids", "positions", "out_cache_loc", "req_pool_indices", "seq_lens", "logit_indices")


def check_same(got: ForwardBatch, want: ForwardBatch, follower_table: torch.Tensor) -> None:
    assert got.mode is want.mode
    for name in FIELDS:
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert (got.seq_lens_cpu, got.extend_prefix_lens_cpu, got.extend_seq_lens_cpu) == (
        want.seq_lens_cpu,
        want.extend_prefix_lens_cpu,
        want.extend_seq_lens_cpu,
    )
    assert got.lora_ids == want.lora_ids
    rows = want.req_pool_indices
    assert torch.equal(
        follower_table[rows, : max(want.seq_lens_cpu)], want.req_to_token[rows, : max(want.seq_lens_cpu)]
    )
    if want.prefix_plan is None or want.prefix_plan.num_groups == 0:
        assert got.prefix_plan is None
    else:
        assert got.prefix_plan is not None
        assert got.prefix_plan.num_groups == want.prefix_plan.num_groups
        assert torch.equal(got.prefix_plan.prefix_lens, want.prefix_plan.prefix_lens)
        assert torch.equal(got.prefix_plan.groups, want.prefix_plan.groups)


@pytest.mark.parametrize("bs,ctx", [(4, 20), (64, 40)])  # body inline in the first broadcast; a second one
def test_follower_gets_rank0_batch_and_its_shared_prefix_plan(bs: int, ctx: int) -> None:
    cpu = torch.device("cpu")
    wire = Wire()
    sender = BatchSender(wire, cpu)
    follower_table = torch.zeros(80, 64, dtype=torch.int64)
    receiver = BatchReceiver(WireEnd(wire), cpu, follower_table)
    table = torch.zeros(80, 64, dtype=torch.int64)
    groups = [(7, 16, [0, 2]), (9, 12, [1, 3])]
    empty = make_batch(ForwardMode.DECODE, bs, ctx, table, seed=4)
    empty.prefix_plan = pack_plan(bs, [], torch.device("cpu"))  # no groups: travels as no plan
    batches = [
        make_batch(ForwardMode.EXTEND, bs, ctx, table, seed=1),
        make_batch(ForwardMode.DECODE, bs, ctx, table, groups, seed=2),
        make_batch(ForwardMode.DECODE, bs, ctx, table, seed=3),  # no plan after one with a plan
        empty,
    ]
    batches[0].lora_ids = [(3 * i) % 4 for i in range(bs)]  # LoRA adapter uids ride at the end of the body
    batches[1].lora_ids = [i % 2 for i in range(bs)]  # ... also after a shared-prefix plan
    inline = []
    for batch in batches:
        before = len(wire.sent)
        sender.send(batch)
        inline.append(len(wire.sent) - before == 1)
        sender.send_idle()  # heartbeats between batches are skipped
        check_same(receiver.recv(), batch, follower_table)
    assert all(inline) if bs * ctx < FIRST // 2 else not any(inline)
    assert batches[1].prefix_plan.groups.numel() == GROUP_HEAD + 4
    sender.send_stop()
    assert receiver.recv() is None and not wire.sent

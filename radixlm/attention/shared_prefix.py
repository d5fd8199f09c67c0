"""Shared-prefix ("cascade") decode plans: which requests of a decode batch read the same prefix KV.

Requests whose radix-tree paths pass through the same node hold the same physical KV slots for
every token up to that node's end, so the Triton backend can attend to that prefix once per
group (one read of its K/V for all members' queries) instead of once per request. Planning runs
on the host every decode step: a walk up each request's locked path plus one non-blocking copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import torch

from radixlm.forward.device_copy import to_device

if TYPE_CHECKING:
    from radixlm.mem_cache.radix_cache import TreeNode
    from radixlm.scheduler.request import Req

MIN_SHARED_PREFIX = 256  # tokens: a shorter shared prefix is not worth a group
MAX_GROUPS = 32  # groups per batch: the prefix kernel's grid, fixed when a CUDA graph is captured
GROUP_HEAD = 3 * MAX_GROUPS + 1  # packed table before the members: starts, rows, lengths

Group = tuple[int, int, list[int]]  # (req_pool row of a member, shared length, member batch indices)


@dataclass
class SharedPrefixPlan:
    """Device tensors (int64) of one decode batch's shared-prefix groups.

    `prefix_lens[i]` ([B]) is 0 for a request outside every group, else its group's shared
    length, always < its sequence length. `groups` packs `starts[MAX_GROUPS + 1]` (CSR offsets
    into the member list; group g >= `num_groups` is empty), `rows[MAX_GROUPS]` (a member's
    req_pool row: its table row holds the prefix's slots), `lens[MAX_GROUPS]` (shared lengths),
    then the member batch indices. Invariant: for every member i of group g the first `lens[g]`
    entries of its table row equal those of `rows[g]`, and `prefix_lens[i] == lens[g]`.
    `num_groups` (host) bounds the groups a kernel launch must visit.
    """

    num_groups: int
    prefix_lens: torch.Tensor
    groups: torch.Tensor


def plan_shared_prefixes(
    reqs: Sequence[Req], device: torch.device, min_len: int = MIN_SHARED_PREFIX
) -> Optional[SharedPrefixPlan]:
    """The plan for a one-token-per-request decode batch, or None when no two requests share
    `min_len` cached tokens. Reads only the radix tree (each request's `last_node`, locked, and
    `tree_len`), so it is exact after node splits, whose upper halves the path walk just visits."""
    found = find_groups(reqs, min_len)
    if not found:
        return None
    groups = [(reqs[members[0]].req_pool_idx, length, members) for length, members in found]
    return pack_plan(len(reqs), groups, device)


def find_groups(
    reqs: Sequence[Req], min_len: int = MIN_SHARED_PREFIX, max_groups: int = MAX_GROUPS
) -> list[tuple[int, list[int]]]:
    """(shared length, member batch indices) per group, at most `max_groups`, most reads saved first.

    Candidates are the tree nodes ending at >= `min_len` tokens that >= 2 of the requests pass
    through; members of a group all pass through its node, so they hold its slots. Bottom-up,
    each candidate either takes every request below it as one group or keeps the groups chosen
    below and groups the requests left over, whichever saves more K/V reads ((members - 1) *
    length summed over groups; a tie goes to the single group). Groups have >= 2 members."""
    paths = [(i, _path(req, min_len)) for i, req in enumerate(reqs) if req.tree_len >= min_len]
    tops = []
    for node in sorted(_candidates(paths), key=lambda c: c.depth, reverse=True):
        node.choose()
        if node.up is None:
            tops.append(node)
        else:
            node.up.free += node.free
            node.up.groups += node.groups
            node.up.saved += node.saved
    groups = [g for node in tops for g in node.groups]
    groups.sort(key=lambda g: (len(g[1]) - 1) * g[0], reverse=True)
    return groups[:max_groups]


class _Candidate:
    """A tree node that >= 2 of the batch's requests pass through, while `find_groups` runs:
    `members` pass through it, `free` reach it in no group yet, `groups` were chosen below it
    (or at it), saving `saved` reads; `up` is the next candidate towards the root."""

    __slots__ = ("depth", "up", "members", "free", "groups", "saved")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.up: Optional[_Candidate] = None
        self.members: list[int] = []
        self.free: list[int] = []
        self.groups: list[tuple[int, list[int]]] = []
        self.saved = 0

    def choose(self) -> None:
        """One group of all members here, or the groups below plus one group of the free requests
        (fewer than two stay free for the candidates above)."""
        whole = (len(self.members) - 1) * self.depth
        rest = self.saved + (len(self.free) - 1) * self.depth if len(self.free) > 1 else self.saved
        if whole >= rest:
            self.groups, self.free, self.saved = [(self.depth, self.members)], [], whole
        elif len(self.free) > 1:
            self.groups, self.free, self.saved = self.groups + [(self.depth, self.free)], [], rest


def _candidates(paths: list[tuple[int, list[tuple[TreeNode, int]]]]) -> list[_Candidate]:
    """The candidates on the paths of the requests (batch index, path), linked upwards, with
    their members; each request is `free` at the deepest candidate on its path."""
    through: dict[TreeNode, int] = {}
    for _, path in paths:
        for node, _ in path:
            through[node] = through.get(node, 0) + 1
    found: dict[TreeNode, _Candidate] = {}
    for i, path in paths:
        below = None
        for node, depth in path:
            if through[node] < 2:
                continue
            cand = found.get(node)
            if cand is None:
                cand = found[node] = _Candidate(depth)
            cand.members.append(i)
            if below is None:
                cand.free.append(i)
            else:
                below.up = cand
            below = cand
    return list(found.values())


def _path(req: Req, min_len: int) -> list[tuple[TreeNode, int]]:
    """(node, end depth) from `req.last_node` up, for the nodes ending at >= `min_len` tokens
    (the root's depth is 0, so the walk stops before it)."""
    node, depth = req.last_node, req.tree_len
    path = []
    while depth >= min_len:
        path.append((node, depth))
        depth -= len(node.key)
        node = node.parent
    return path


def pack_plan(batch_size: int, groups: list[Group], device: torch.device) -> SharedPrefixPlan:
    """The device plan for `groups` (at most MAX_GROUPS, disjoint members), in one host-to-device copy."""
    assert len(groups) <= MAX_GROUPS
    prefix_lens = [0] * batch_size
    starts, rows, lens, members = [0], [], [], []
    for row, length, group in groups:
        members.extend(group)
        starts.append(len(members))
        rows.append(row)
        lens.append(length)
        for i in group:
            prefix_lens[i] = length
    pad = [0] * (MAX_GROUPS - len(groups))
    host = prefix_lens + starts + [len(members)] * len(pad) + rows + pad + lens + pad + members
    packed = to_device(host, device)
    return SharedPrefixPlan(len(groups), packed[:batch_size], packed[batch_size:])


class StaticPlanBuffers:
    """Fixed device buffers a CUDA graph is captured with; `load` copies a live plan into them.
    Freshly made, every group is empty and no request is grouped."""

    def __init__(self, max_bs: int, device: torch.device) -> None:
        self.prefix_lens = torch.zeros(max_bs, dtype=torch.int64, device=device)
        self.groups = torch.zeros(GROUP_HEAD + max_bs, dtype=torch.int64, device=device)

    def view(self, bs: int) -> SharedPrefixPlan:
        """The plan a graph for `bs` rows captures: room for every group `bs` requests can form."""
        return SharedPrefixPlan(min(MAX_GROUPS, bs // 2), self.prefix_lens[:bs], self.groups[: GROUP_HEAD + bs])

    def load(self, plan: SharedPrefixPlan, bs: int, padded: int) -> None:
        """Copy `plan` (for `bs` requests) in; padding rows `bs..padded` join no group."""
        self.prefix_lens[:bs].copy_(plan.prefix_lens)
        if padded > bs:
            self.prefix_lens[bs:padded].zero_()
        self.groups[: plan.groups.numel()].copy_(plan.groups)

"""Owns every KV slot: the allocator, the request-to-token table and the radix tree.

Invariant (checked by `check_no_leak` when idle): every usable slot is in exactly one of
the free list, a running request's own range, or the radix tree. A request's slots are kept on
the host too (`req.kv_slots`, equal to its table row's first `kv_len` entries), so no
bookkeeping ever reads the device table back (that would wait for the GPU). The one exception
is brief: `take_row` and `alloc_slots` change only the host side, and their caller writes the
new entries with `write_rows` (one copy for a whole prefill batch) before a forward reads them.
"""

from __future__ import annotations

import torch

from radixlm.forward.device_copy import to_device
from radixlm.mem_cache.kv_pool import ReqToTokenPool, SlotAllocator
from radixlm.mem_cache.radix_cache import RadixCache
from radixlm.scheduler.request import Req


class KVCacheManager:
    """Moves slots between requests, the tree and the free list; the scheduler's only door to KV memory."""

    def __init__(self, allocator: SlotAllocator, req_pool: ReqToTokenPool, tree: RadixCache) -> None:
        self.allocator = allocator
        self.req_pool = req_pool
        self.tree = tree
        self.page_size = allocator.page_size

    # -- capacity -------------------------------------------------------------
    def available(self) -> int:
        """Slots obtainable now: free ones plus those the tree could evict."""
        return self.allocator.available_size() + self.tree.evictable_size()

    def capacity(self) -> int:
        return self.allocator.num_pages * self.page_size

    # -- request lifecycle ----------------------------------------------------
    def match(self, req: Req, max_len: int) -> None:
        """Point a request without KV at the longest cached prefix of its first `max_len` tokens."""
        assert req.kv_len == 0 and req.last_node is None
        match = self.tree.match_prefix(req.tree_key(max_len))
        self.tree.inc_lock_ref(match.last_node)
        req.last_node, req.tree_len, req.kv_len = match.last_node, len(match.values), len(match.values)
        req.kv_slots = match.values  # a new list, the request's own
        req.last_slot = match.values[-1] if match.values else 0

    def take_row(self, req: Req) -> bool:
        """Give the request a row of the request-to-token table, if it has none, without writing
        to it: the caller writes the row (`write_rows`) before a forward reads it."""
        if req.req_pool_idx is not None:
            return True
        idx = self.req_pool.alloc()
        if idx is None:
            return False
        req.req_pool_idx = idx
        return True

    def assign_row(self, req: Req) -> bool:
        """Give the request a row of the request-to-token table and copy its prefix slots there."""
        had_row = req.req_pool_idx is not None
        if not self.take_row(req):
            return False
        if not had_row and req.tree_len:
            self.write_rows([(req, 0, req.tree_len)])
        return True

    def alloc_slots(self, req: Req, count: int) -> list[int] | None:
        """Slots for the next `count` positions of `req`, evicting from the tree if needed; host
        side only (`req.kv_slots` grows, its table row does not: see `write_rows`)."""
        return self._alloc(req, count)

    def alloc_tokens(self, req: Req, count: int) -> list[int] | None:
        """`alloc_slots`, then the new slots written to the request's table row."""
        slots = self._alloc(req, count)
        if slots:
            self.write_rows([(req, req.kv_len - count, req.kv_len)])
        return slots

    def write_rows(self, spans: list[tuple[Req, int, int]]) -> None:
        """`table[req.req_pool_idx, lo:hi] = req.kv_slots[lo:hi]` for every `(req, lo, hi)`, with
        one host-to-device copy for all of them. A span's part inside the request's tree prefix
        (`[0, tree_len)`, the path of `last_node`) is uploaded once per tree node, however many
        of the spans share it: 64 requests admitted on one 2,048-token system prompt send those
        slots once, not 64 times."""
        values: list[int] = []
        pieces: list[list[int]] = []  # [row, column, length, offset in values]
        uploaded: dict[tuple[int, int, int], int] = {}  # (node, lo, hi) of a tree prefix -> offset
        for req, lo, hi in spans:
            cut = min(max(lo, req.tree_len), hi)  # [lo, cut) lies inside the tree prefix
            if cut > lo:
                key = (id(req.last_node), lo, cut)
                offset = uploaded.get(key)
                if offset is None:
                    offset = uploaded[key] = len(values)
                    values += req.kv_slots[lo:cut]
                _add_piece(pieces, req.req_pool_idx, lo, cut - lo, offset)
            if hi > cut:
                _add_piece(pieces, req.req_pool_idx, cut, hi - cut, len(values))
                values += req.kv_slots[cut:hi]
        if not pieces:
            return
        src, table = self._dev(values), self.req_pool.table
        for row, column, length, offset in pieces:
            table[row, column : column + length] = src[offset : offset + length]

    def alloc_decode(self, reqs: list[Req]) -> list[int]:
        """One slot for each request's next position (position `kv_len`, then `kv_len += 1`),
        returned in order. The host bookkeeping is done here; the table entries are not: the
        caller writes them with `write_slots` before the step runs, from the device copy it makes
        for the batch anyway (one copy per step instead of three more). The caller has made sure
        they fit (see the scheduler's retraction)."""
        if self.page_size == 1:  # one slot per request: take them from the free list at once
            self.evict(len(reqs))
            slots = self.allocator.alloc_singles(len(reqs))
            if slots is None:
                raise RuntimeError("KV pool exhausted during decode despite retraction")
            for req, slot in zip(reqs, slots):
                req.kv_len += 1
                req.kv_slots.append(slot)
                req.last_slot = slot
            return slots
        slots = []
        for req in reqs:
            got = self._alloc(req, 1)
            if got is None:
                raise RuntimeError("KV pool exhausted during decode despite retraction")
            slots.append(got[0])
        return slots

    def write_slots(self, rows: torch.Tensor, cols: torch.Tensor, slots: torch.Tensor) -> None:
        """`table[rows[i], cols[i]] = slots[i]` (device tensors): completes `alloc_decode`."""
        self.req_pool.table[rows, cols] = slots

    def _alloc(self, req: Req, count: int) -> list[int] | None:
        slots = self.allocator.alloc(req.last_slot, req.kv_len, count)
        if slots is None:
            self.evict(count + self.page_size)
            slots = self.allocator.alloc(req.last_slot, req.kv_len, count)
        if slots:
            req.kv_len += count
            req.kv_slots.extend(slots)
            req.last_slot = slots[-1]
        return slots

    def trim(self, req: Req, kv_len: int) -> None:
        """Forget the request's KV past `kv_len` (rejected draft tokens): whole pages past it go
        back to the free list; a partly kept page stays the request's (its next slots continue it).
        Requires `tree_len <= kv_len <= req.kv_len`."""
        assert req.tree_len <= kv_len <= req.kv_len, (req.tree_len, kv_len, req.kv_len)
        if kv_len == req.kv_len:
            return
        kept_pages_end = -(-kv_len // self.page_size) * self.page_size
        self.allocator.free(req.kv_slots[kept_pages_end : req.kv_len])
        del req.kv_slots[kv_len:]
        req.kv_len = kv_len
        req.last_slot = req.kv_slots[-1] if kv_len else 0

    def evict(self, num_tokens: int) -> None:
        if self.allocator.available_size() < num_tokens:
            self.tree.evict(num_tokens - self.allocator.available_size(), self.allocator.free)

    def cache_unfinished(self, req: Req) -> None:
        """After a prefill chunk: hand the computed full pages to the tree and lock the new node,
        so other requests can share them while this one keeps running."""
        self._insert(req)

    def cache_finished(self, req: Req) -> None:
        """The request is done: the tree keeps its KV (as full pages), the rest is freed."""
        self._insert(req)
        self._free_own(req)
        self._drop(req)

    def release(self, req: Req) -> None:
        """Retract: free the request's own slots, unlock its prefix, forget its KV (it will re-prefill)."""
        self._free_own(req)
        self._drop(req)

    # -- internals -------------------------------------------------------------
    def _dev(self, values: list[int]) -> torch.Tensor:
        """Values for the request-to-token table, copied without waiting for the device."""
        return to_device(values, self.req_pool.table.device)

    def _insert(self, req: Req) -> None:
        n = req.kv_len - req.kv_len % self.page_size
        if n <= req.tree_len:
            return
        key, slots = req.tree_key(n), req.kv_slots[:n]
        present, node = self.tree.insert_node(key, slots)
        if self.tree.disable:
            return
        old = req.tree_len
        if present > old:
            # Another request cached [old, present) meanwhile: our slots there are duplicates we
            # own; the tree's replace them. The rest of the row already holds the tree's slots:
            # [0, old) came from the tree, [present, n) went into it.
            theirs = self.tree.match_prefix(key).values[old:present]
            self.allocator.free(slots[old:present])
            req.kv_slots[old:present] = theirs
            self.req_pool.table[req.req_pool_idx, old:present] = self._dev(theirs)
        self.tree.dec_lock_ref(req.last_node)
        self.tree.inc_lock_ref(node)
        req.last_node, req.tree_len = node, n
        if req.kv_len == n:
            req.last_slot = req.kv_slots[n - 1]

    def _free_own(self, req: Req) -> None:
        if req.kv_len > req.tree_len:
            self.allocator.free(req.kv_slots[req.tree_len : req.kv_len])

    def _drop(self, req: Req) -> None:
        if req.last_node is not None:
            self.tree.dec_lock_ref(req.last_node)
        if req.req_pool_idx is not None:
            self.req_pool.free(req.req_pool_idx)
        req.req_pool_idx, req.last_node, req.tree_len, req.kv_len = None, None, 0, 0
        req.kv_slots = []

    def flush(self) -> bool:
        """Drop the whole tree when nothing is running; returns whether it did."""
        if self.tree.protected_size() > 0:
            return False
        self.tree.evict(self.tree.total_size(), self.allocator.free)
        return True

    def check_no_leak(self) -> None:
        """Raise if, with no request running, free + cached != capacity."""
        free, cached = self.allocator.available_size(), self.tree.total_size()
        if free + cached != self.capacity() or self.tree.protected_size() != 0:
            raise AssertionError(
                f"KV leak: free {free} + cached {cached} != capacity {self.capacity()} "
                f"(protected {self.tree.protected_size()})"
            )


def _add_piece(pieces: list[list[int]], row: int, column: int, length: int, offset: int) -> None:
    """Append a [row, column, length, offset] copy, merged into the previous one when it continues it."""
    if pieces:
        last = pieces[-1]
        if last[0] == row and last[1] + last[2] == column and last[3] + last[2] == offset:
            last[2] += length
            return
    pieces.append([row, column, length, offset])

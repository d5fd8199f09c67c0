"""Owns every KV slot: the allocator, the request-to-token table and the radix tree.

Invariant (checked by `check_no_leak` when idle): every usable slot is in exactly one of
the free list, a running request's own range, or the radix tree. A request's slots are kept on
the host too (`req.kv_slots`, equal to its table row's first `kv_len` entries), so no
bookkeeping ever reads the device table back (that would wait for the GPU).
"""

from __future__ import annotations

import torch

from radixlm.device_copy import to_device
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
        match = self.tree.match_prefix(req.fill_ids[:max_len])
        self.tree.inc_lock_ref(match.last_node)
        req.last_node, req.tree_len, req.kv_len = match.last_node, len(match.values), len(match.values)
        req.kv_slots = list(match.values)
        req.last_slot = match.values[-1] if match.values else 0

    def assign_row(self, req: Req) -> bool:
        """Give the request a row of the request-to-token table and copy its prefix slots there."""
        if req.req_pool_idx is not None:
            return True
        idx = self.req_pool.alloc()
        if idx is None:
            return False
        req.req_pool_idx = idx
        if req.tree_len:
            self.req_pool.table[req.req_pool_idx, :req.tree_len] = self._dev(req.kv_slots)
        return True

    def alloc_tokens(self, req: Req, count: int) -> list[int] | None:
        """Slots for the next `count` positions of `req`, evicting from the tree if needed."""
        start = req.kv_len
        slots = self._alloc(req, count)
        if slots is not None:
            self.req_pool.table[req.req_pool_idx, start:start + count] = self._dev(slots)
        return slots

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
        row = self.req_pool.table[req.req_pool_idx]
        slots = req.kv_slots[:n]
        present = self.tree.insert(req.fill_ids[:n], slots)
        if self.tree.disable:
            return
        # Slots between the old tree prefix and what the tree already had are duplicates we own.
        self.allocator.free(slots[req.tree_len:present])
        match = self.tree.match_prefix(req.fill_ids[:n])
        row[:len(match.values)] = self._dev(match.values)
        req.kv_slots[:len(match.values)] = match.values
        self.tree.dec_lock_ref(req.last_node)
        self.tree.inc_lock_ref(match.last_node)
        req.last_node, req.tree_len = match.last_node, len(match.values)
        if req.kv_len == req.tree_len:
            req.last_slot = match.values[-1]

    def _free_own(self, req: Req) -> None:
        if req.kv_len > req.tree_len:
            self.allocator.free(req.kv_slots[req.tree_len:req.kv_len])

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

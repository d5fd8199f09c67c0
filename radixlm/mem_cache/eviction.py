"""The radix cache's eviction order: a lazy min-heap of evictable leaves by last access.

Pure Python, no torch. Entries are ``(access time, node id, node)``; (time, id) is unique, so
nodes are never compared. The heap never has to be told when a leaf stops being evictable or
is touched: `pop_lru` drops entries whose node was evicted, locked or gained children, and
re-queues one whose access time moved on. It does have to be told when a node *becomes* an
evictable leaf (`offer`).
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Iterable, Optional

SLACK = 1024  # stale entries tolerated beyond twice the tree's size before a rebuild


def evictable(node: Any) -> bool:
    """An attached, unlocked leaf (the root has no parent and is never evictable)."""
    return node.parent is not None and not node.children and not node.lock_ref


class LeafHeap:
    """Invariant: every evictable leaf has at least one entry whose time is at most its current
    `last_access`. The heap is rebuilt from `all_nodes()` once it holds more than
    2 x `num_nodes()` + SLACK entries, so stale entries stay bounded and `offer` is O(log n)
    amortized."""

    def __init__(self, all_nodes: Callable[[], Iterable[Any]], num_nodes: Callable[[], int]) -> None:
        self._all_nodes, self._num_nodes = all_nodes, num_nodes
        self._entries: list[tuple[int, int, Any]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def offer(self, node: Any) -> None:
        """Give `node` an entry if it is an evictable leaf (duplicates are harmless)."""
        if not evictable(node):
            return
        if len(self._entries) > 2 * self._num_nodes() + SLACK:
            self._entries = [(n.last_access, n.id, n) for n in self._all_nodes() if evictable(n)]
            heapq.heapify(self._entries)  # the rebuild included `node`
            return
        heapq.heappush(self._entries, (node.last_access, node.id, node))

    def pop_lru(self) -> Optional[Any]:
        """Remove and return the evictable leaf accessed longest ago (ties: smallest id); None
        when there is none."""
        entries = self._entries
        while entries:
            stamp, _, node = heapq.heappop(entries)
            if not evictable(node):
                continue  # re-offered when it is an evictable leaf again
            if stamp != node.last_access:
                heapq.heappush(entries, (node.last_access, node.id, node))  # touched since it was offered
                continue
            return node
        return None

    def oldest_offers(self) -> dict[int, int]:
        """Node id -> the smallest access time among its entries (for invariant checks)."""
        oldest: dict[int, int] = {}
        for stamp, node_id, _ in self._entries:
            oldest[node_id] = min(stamp, oldest.get(node_id, stamp))
        return oldest

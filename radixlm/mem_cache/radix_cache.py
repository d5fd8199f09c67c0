"""Radix-tree prefix cache (RadixAttention) mapping token-id prefixes to KV slots.

Pure Python and stdlib only: the scheduler calls this on every request, and it
must stay importable without torch.  Keys are token ids, values are KV-cache
slot indices, one slot per token.  Both are stored as plain ``list[int]``.

Ownership contract (who frees which slot):

* Slots stored in the tree are owned by the tree.  They leave the tree only via
  :meth:`RadixCache.evict`, which hands them to ``free_fn`` exactly once, or via
  :meth:`RadixCache.reset`, which simply forgets them (the caller is then
  responsible for resetting its allocator too).
* :meth:`RadixCache.insert` returns ``n``: the first ``n`` tokens were already
  cached, so the tree kept its own slots for them and the caller must free its
  duplicates ``value[:n]``.  ``value[n:]`` now belongs to the tree.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator, Optional, Sequence

from radixlm.mem_cache.eviction import LeafHeap

# int for page_size == 1 (cheaper to hash), tuple of page_size ints otherwise.
ChildKey = Hashable


class TreeNode:
    """One node of the radix tree; it owns the edge (key/value run) leading to it.

    Invariants (maintained by :class:`RadixCache`):

    * ``len(key) == len(value)``; for non-root nodes both are non-empty
      multiples of the cache's ``page_size``.  The root has empty key/value.
    * ``children`` maps the first page of ``child.key`` (an int when
      ``page_size == 1``, else a tuple) to ``child``, so siblings always differ
      in their first page, and ``child.parent is self``.
    * ``lock_ref`` equals the number of outstanding ``inc_lock_ref`` calls made
      on this node or any descendant; a node with ``lock_ref > 0`` is never
      evicted.  The root's ``lock_ref`` is unused and stays 0.
    * ``last_access`` is a logical clock value; larger means more recent.
    * An evicted node has ``parent is None`` and must not be used again.
    """

    __slots__ = ("id", "key", "value", "children", "parent", "lock_ref", "last_access")

    def __init__(
        self,
        node_id: int,
        key: list[int],
        value: list[int],
        parent: Optional[TreeNode],
        last_access: int,
    ) -> None:
        """Create a detached-from-children node; the caller links it into ``parent``."""
        self.id = node_id  # unique per cache; deterministic heap tie-breaker
        self.key = key
        self.value = value
        self.children: dict[ChildKey, TreeNode] = {}
        self.parent = parent
        self.lock_ref = 0
        self.last_access = last_access

    @property
    def is_leaf(self) -> bool:
        """True iff the node has no children."""
        return not self.children

    def __repr__(self) -> str:
        return (
            f"TreeNode(id={self.id}, len={len(self.key)}, lock_ref={self.lock_ref}, "
            f"last_access={self.last_access}, children={len(self.children)})"
        )


@dataclass
class MatchResult:
    """Result of :meth:`RadixCache.match_prefix`.

    ``values`` are the KV slots of the matched prefix (``len(values)`` is the
    number of matched tokens), a new list the caller may keep and change.
    ``last_node`` is the deepest node whose path from the root spells exactly
    that prefix (the root when nothing matched); lock it with ``inc_lock_ref``
    to keep ``values`` alive.
    """

    values: list[int]
    last_node: TreeNode


class RadixCache:
    """Prefix cache over token ids with LRU eviction of unlocked leaves.

    Invariants:

    * Every node's key length is a multiple of ``page_size``; matches and
      splits happen only on page boundaries.
    * ``evictable_size() + protected_size() == total_size() ==
      len(all_values())`` and ``all_values()`` has no duplicates (provided
      callers never insert the same slot twice).
    * Size counters are maintained incrementally (O(depth) per operation).
    * Access times come from a per-instance monotonic counter, so eviction
      order is deterministic.
    * Every node that becomes an evictable leaf (unlocked, no children) is
      offered to the eviction heap (:class:`LeafHeap`), so ``evict`` costs
      O(log n) per node it frees, not a walk of the tree.
    * With ``disable=True`` the tree stays empty: nothing matches, nothing is
      stored, nothing is evicted.
    """

    def __init__(self, page_size: int = 1, disable: bool = False) -> None:
        """Create an empty cache; ``page_size`` must be >= 1."""
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page_size = page_size
        self.disable = disable
        self.reset()

    def reset(self) -> None:
        """Drop every node and zero all counters.

        Slots held by the tree are forgotten, not passed to any free function;
        the caller must reset its slot allocator alongside.
        """
        self._ids = itertools.count()
        self._clock = 0
        self._root = TreeNode(next(self._ids), [], [], None, 0)
        self._evictable = 0
        self._protected = 0
        self._nodes = 0
        self._leaves = LeafHeap(self._iter_nodes, lambda: self._nodes)

    @property
    def root(self) -> TreeNode:
        """The root node (empty key; never evicted, never locked)."""
        return self._root

    # ------------------------------------------------------------------ queries

    def match_prefix(self, key: Sequence[int]) -> MatchResult:
        """Return the longest cached prefix of ``key``.

        The match length is rounded down to a multiple of ``page_size``.  If
        the match ends inside a node, that node is split so ``last_node`` ends
        exactly at the match.  Every node on the path gets a fresh access
        time.  With ``disable=True`` returns ``MatchResult([], root)``.
        """
        if self.disable:
            return MatchResult([], self._root)
        usable = len(key) - len(key) % self.page_size
        node, _ = self._walk(key, usable, self._tick())
        return MatchResult(self._path_values(node), node)

    def insert(self, key: Sequence[int], value: Sequence[int]) -> int:
        """Cache ``key -> value`` and return how many leading tokens were already cached.

        Requires ``len(key) == len(value)`` and ``len(key) % page_size == 0``
        (raises ``ValueError`` otherwise).  For the returned ``n`` leading
        tokens the tree keeps its existing slots and the caller must free its
        duplicates ``value[:n]``; ``value[n:]`` is now owned by the tree.
        The path is marked as just accessed.

        With ``disable=True`` nothing is stored and 0 is returned; note that in
        that mode the tree does NOT take ownership of ``value``, so the caller
        must free all of ``value`` itself (not just ``value[:0]``).
        """
        return self.insert_node(key, value)[0]

    def insert_node(self, key: Sequence[int], value: Sequence[int]) -> tuple[int, TreeNode]:
        """:meth:`insert`, also returning the node whose path from the root spells all of
        ``key`` (what ``match_prefix(key).last_node`` would then be; the root when ``key`` is
        empty or ``disable=True``), so a caller need not walk the tree again to lock it."""
        if len(key) != len(value):
            raise ValueError(f"key/value length mismatch: {len(key)} != {len(value)}")
        if len(key) % self.page_size:
            raise ValueError(f"key length {len(key)} not a multiple of page_size {self.page_size}")
        if self.disable:
            return 0, self._root
        now = self._tick()
        node, matched = self._walk(key, len(key), now)
        if matched < len(key):
            leaf = TreeNode(next(self._ids), list(key[matched:]), list(value[matched:]), node, now)
            node.children[self._child_key(leaf.key, 0)] = leaf
            self._evictable += len(leaf.key)  # new nodes start unlocked
            self._nodes += 1
            self._leaves.offer(leaf)
            node = leaf
        return matched, node

    def prefix_len(self, key: Sequence[int]) -> int:
        """``len(match_prefix(key).values)`` without its side effects: no node is split, no
        access time changes, no slot list is built (a length query for ordering decisions)."""
        if self.disable:
            return 0
        if not isinstance(key, list):
            key = list(key)
        limit = len(key) - len(key) % self.page_size
        node, pos = self._root, 0
        while pos < limit:
            child = node.children.get(self._child_key(key, pos))
            if child is None:
                break
            m = self._match_len(key, pos, limit, child.key)
            pos += m
            if m < len(child.key):
                break
            node = child
        return pos

    # ----------------------------------------------------------------- eviction

    def evict(self, num_tokens: int, free_fn: Callable[[list[int]], None]) -> int:
        """Evict least-recently-used unlocked leaves until ``num_tokens`` are freed.

        Stops early when nothing evictable remains.  ``free_fn`` is called once
        per evicted node with that node's slots (ownership passes to the
        callee).  A parent whose children are all gone becomes a candidate in
        the same call.  Never touches nodes with ``lock_ref > 0``.  Returns the
        number of tokens freed (may exceed ``num_tokens`` by < one node).
        """
        if num_tokens <= 0 or self.disable:
            return 0
        freed = 0
        while freed < num_tokens:
            node = self._leaves.pop_lru()
            if node is None:
                break
            parent = node.parent
            self._remove_leaf(node)
            free_fn(node.value)
            freed += len(node.value)
            self._leaves.offer(parent)
        return freed

    def inc_lock_ref(self, node: TreeNode) -> None:
        """Lock ``node`` and all its ancestors (root excluded) against eviction.

        Each call must be paired with one :meth:`dec_lock_ref` on the same
        node.  Locking the root is a no-op.  Raises ``ValueError`` for an
        evicted node.
        """
        self._check_attached(node)
        while node is not self._root:
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.lock_ref += 1
            assert node.parent is not None
            node = node.parent

    def dec_lock_ref(self, node: TreeNode) -> None:
        """Undo one :meth:`inc_lock_ref` on ``node``.

        Raises ``ValueError`` if ``node`` is not locked (ancestors always hold
        at least their descendants' count, so checking ``node`` suffices).
        """
        self._check_attached(node)
        if node is not self._root and node.lock_ref <= 0:
            raise ValueError(f"dec_lock_ref on unlocked node {node!r}")
        while node is not self._root:
            if node.lock_ref == 1:
                self._protected -= len(node.key)
                self._evictable += len(node.key)
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._leaves.offer(node)
            assert node.parent is not None
            node = node.parent

    # -------------------------------------------------------------------- sizes

    def evictable_size(self) -> int:
        """Tokens held in unlocked nodes (``lock_ref == 0``)."""
        return self._evictable

    def protected_size(self) -> int:
        """Tokens held in locked nodes (``lock_ref > 0``)."""
        return self._protected

    def total_size(self) -> int:
        """All tokens held by the tree; equals evictable + protected."""
        return self._evictable + self._protected

    def all_values(self) -> list[int]:
        """Every slot held by the tree, in DFS order (O(tree) walk; for leak checks)."""
        out: list[int] = []
        for node in self._iter_nodes():
            out.extend(node.value)
        return out

    def check_invariants(self) -> None:
        """Debug helper: walk the tree and assert every documented invariant.

        O(tree size); intended for tests, not the serving hot path.
        """
        evictable = protected = 0
        for node in self._iter_nodes():
            self._check_node(node)
            if node.lock_ref:
                protected += len(node.key)
            else:
                evictable += len(node.key)
        assert (evictable, protected) == (self._evictable, self._protected), (
            f"counters {(self._evictable, self._protected)} != walk {(evictable, protected)}"
        )
        nodes = list(self._iter_nodes())
        assert self._nodes == len(nodes), (self._nodes, len(nodes))
        offered = self._leaves.oldest_offers()
        for node in nodes:
            if node.is_leaf and not node.lock_ref:
                assert offered.get(node.id, node.last_access + 1) <= node.last_access, f"{node!r} not in the heap"

    # ---------------------------------------------------------------- internals

    def _tick(self) -> int:
        """Advance and return the logical clock."""
        self._clock += 1
        return self._clock

    def _child_key(self, key: Sequence[int], start: int) -> ChildKey:
        """Dictionary key for the page of ``key`` starting at ``start``."""
        if self.page_size == 1:
            return key[start]
        return tuple(key[start : start + self.page_size])

    def _match_len(self, key: list[int], start: int, limit: int, node_key: list[int]) -> int:
        """Common-prefix length of ``key[start:limit]`` and ``node_key``, rounded down to a page."""
        i = common_prefix_len(key, start, node_key, min(limit - start, len(node_key)))
        return i - i % self.page_size

    def _walk(self, key: Sequence[int], limit: int, now: int) -> tuple[TreeNode, int]:
        """Descend along ``key[:limit]`` (a page multiple), stamping ``now`` on the path.

        Splits the node where the match ends mid-node.  Returns the deepest
        node covering the match and the matched length.
        """
        if not isinstance(key, list):
            key = list(key)  # `common_prefix_len` compares list slices
        node = self._root
        node.last_access = now
        pos = 0
        while pos < limit:
            child = node.children.get(self._child_key(key, pos))
            if child is None:
                break
            m = self._match_len(key, pos, limit, child.key)
            assert m > 0, "first page matched via dict lookup, so m >= page_size"
            if m < len(child.key):
                child = self._split(child, m)
            child.last_access = now
            node = child
            pos += m
        return node, pos

    def _split(self, child: TreeNode, at: int) -> TreeNode:
        """Split ``child`` so its first ``at`` tokens form a new parent; return that parent.

        ``child`` keeps its identity as the deeper half so that references the
        caller holds (e.g. a locked ``last_node``) still denote the same full
        prefix.  The new node inherits ``lock_ref`` because every lock on
        ``child`` passes through it; size counters are unchanged.
        """
        parent = child.parent
        assert parent is not None and 0 < at < len(child.key) and at % self.page_size == 0
        upper = TreeNode(next(self._ids), child.key[:at], child.value[:at], parent, child.last_access)
        upper.lock_ref = child.lock_ref
        parent.children[self._child_key(child.key, 0)] = upper
        child.key = child.key[at:]
        child.value = child.value[at:]
        child.parent = upper
        upper.children[self._child_key(child.key, 0)] = child
        self._nodes += 1
        return upper

    def _remove_leaf(self, node: TreeNode) -> None:
        """Unlink an unlocked leaf and drop its tokens from the evictable count."""
        parent = node.parent
        assert parent is not None and node.is_leaf and node.lock_ref == 0
        del parent.children[self._child_key(node.key, 0)]
        node.parent = None  # marks the node as evicted
        self._evictable -= len(node.key)
        self._nodes -= 1

    def _path_values(self, node: TreeNode) -> list[int]:
        """Concatenate slot values from the root down to ``node``."""
        chunks: list[list[int]] = []
        cur: Optional[TreeNode] = node
        while cur is not None:
            chunks.append(cur.value)
            cur = cur.parent
        out: list[int] = []
        for chunk in reversed(chunks):
            out.extend(chunk)
        return out

    def _iter_nodes(self) -> Iterator[TreeNode]:
        """Yield every non-root node (iterative DFS; no recursion limit issues)."""
        stack = list(self._root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def _check_attached(self, node: TreeNode) -> None:
        """Raise if ``node`` was evicted (its ancestors are then irrelevant)."""
        if node is not self._root and node.parent is None:
            raise ValueError(f"node {node!r} has been evicted")

    def _check_node(self, node: TreeNode) -> None:
        """Assert the per-node invariants documented on :class:`TreeNode`."""
        p = self.page_size
        assert node.parent is not None
        assert len(node.key) == len(node.value) and len(node.key) > 0 and len(node.key) % p == 0
        assert node.parent.children.get(self._child_key(node.key, 0)) is node
        child_locks = sum(c.lock_ref for c in node.children.values())
        assert node.lock_ref >= child_locks >= 0
        for ck, child in node.children.items():
            assert child.parent is node and self._child_key(child.key, 0) == ck


SCAN_BELOW = 32  # a mismatch is narrowed down by halving to a run this short, then scanned


def common_prefix_len(a: list[int], start: int, b: list[int], n: int) -> int:
    """Length of the common prefix of ``a[start:start+n]`` and ``b[:n]`` (both at least that long).

    Compares list slices (C speed) instead of stepping token by token in Python: one comparison
    when the whole run matches (the usual case for a cached prefix), else a halving search for the
    first mismatch, O(n) element comparisons in O(log n) Python steps. ``a`` and ``b`` are lists:
    a tuple slice never equals a list slice."""
    if a[start : start + n] == (b if n == len(b) else b[:n]):
        return n
    lo, hi = 0, n  # a[start:start+lo] == b[:lo]; the first mismatch is in [lo, hi)
    while hi - lo > SCAN_BELOW:
        mid = (lo + hi) // 2
        if a[start + lo : start + mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    while lo < hi and a[start + lo] == b[lo]:
        lo += 1
    return lo

"""Tests for radixlm.mem_cache.radix_cache: unit cases plus a stateful model check."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from typing import Sequence

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from radixlm.mem_cache.eviction import SLACK
from radixlm.mem_cache.radix_cache import MatchResult, RadixCache, TreeNode


class Freed:
    """Collects everything passed to free_fn, per call."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, values: list[int]) -> None:
        self.calls.append(list(values))

    @property
    def flat(self) -> list[int]:
        return [v for call in self.calls for v in call]


def _sizes_consistent(cache: RadixCache) -> None:
    cache.check_invariants()
    vals = cache.all_values()
    assert cache.evictable_size() + cache.protected_size() == cache.total_size() == len(vals)
    assert len(set(vals)) == len(vals)


# ---------------------------------------------------------------------- unit


def test_empty_match_returns_root() -> None:
    cache = RadixCache()
    res = cache.match_prefix([1, 2, 3])
    assert isinstance(res, MatchResult)
    assert res.values == [] and res.last_node is cache.root
    assert cache.match_prefix([]).last_node is cache.root


def test_insert_and_full_match() -> None:
    cache = RadixCache()
    assert cache.insert([1, 2, 3], [10, 11, 12]) == 0
    res = cache.match_prefix([1, 2, 3, 4])
    assert res.values == [10, 11, 12]
    assert res.last_node.key == [1, 2, 3]
    _sizes_consistent(cache)


def test_split_on_partial_match() -> None:
    cache = RadixCache()
    cache.insert([1, 2, 3, 4], [10, 11, 12, 13])
    res = cache.match_prefix([1, 2, 9])
    assert res.values == [10, 11]
    upper = res.last_node
    assert upper.key == [1, 2] and upper.value == [10, 11]
    assert list(upper.children.keys()) == [3]
    lower = upper.children[3]
    assert lower.key == [3, 4] and lower.value == [12, 13] and lower.parent is upper
    assert cache.total_size() == 4
    _sizes_consistent(cache)


def test_split_preserves_identity_and_lock_of_deeper_node() -> None:
    cache = RadixCache()
    cache.insert([1, 2, 3, 4], [10, 11, 12, 13])
    deep = cache.match_prefix([1, 2, 3, 4]).last_node
    cache.inc_lock_ref(deep)
    upper = cache.match_prefix([1, 2]).last_node
    assert upper is not deep and deep.parent is upper
    assert upper.lock_ref == 1 and cache.protected_size() == 4
    assert cache.match_prefix([1, 2, 3, 4]).last_node is deep
    cache.dec_lock_ref(deep)
    assert cache.protected_size() == 0 and cache.evictable_size() == 4
    _sizes_consistent(cache)


def test_insert_returns_prefix_already_present() -> None:
    cache = RadixCache()
    assert cache.insert([1, 2, 3], [10, 11, 12]) == 0
    assert cache.insert([1, 2, 3, 4, 5], [20, 21, 22, 23, 24]) == 3
    assert cache.insert([1, 2, 7], [30, 31, 32]) == 2
    assert cache.insert([1, 2, 3], [40, 41, 42]) == 3
    # The tree keeps the first-inserted slots for shared positions.
    assert cache.match_prefix([1, 2, 3, 4, 5]).values == [10, 11, 12, 23, 24]
    assert cache.match_prefix([1, 2, 7]).values == [10, 11, 32]
    assert sorted(cache.all_values()) == [10, 11, 12, 23, 24, 32]
    _sizes_consistent(cache)


def test_insert_validates_lengths() -> None:
    with pytest.raises(ValueError):
        RadixCache().insert([1, 2], [1])
    with pytest.raises(ValueError):
        RadixCache(page_size=4).insert([1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError):
        RadixCache(page_size=0)


def test_lock_protects_from_eviction() -> None:
    cache = RadixCache()
    cache.insert([1, 2, 3], [10, 11, 12])
    cache.insert([5, 6], [15, 16])
    node = cache.match_prefix([1, 2, 3]).last_node
    cache.inc_lock_ref(node)
    assert cache.protected_size() == 3 and cache.evictable_size() == 2
    freed = Freed()
    assert cache.evict(100, freed) == 2
    assert freed.flat == [15, 16]
    assert cache.match_prefix([1, 2, 3]).values == [10, 11, 12]
    cache.dec_lock_ref(node)
    assert cache.evict(100, freed) == 3
    assert cache.total_size() == 0
    with pytest.raises(ValueError):
        cache.inc_lock_ref(node)  # evicted


def test_lock_on_child_protects_ancestor_but_not_sibling() -> None:
    cache = RadixCache()
    cache.insert([1, 2, 3], [10, 11, 12])
    cache.insert([1, 2, 4], [20, 21, 22])
    locked = cache.match_prefix([1, 2, 3]).last_node
    cache.inc_lock_ref(locked)
    assert cache.protected_size() == 3  # [1,2] + [3]
    freed = Freed()
    cache.evict(100, freed)
    assert freed.flat == [22]
    assert sorted(cache.all_values()) == [10, 11, 12]


def test_dec_lock_ref_on_unlocked_raises() -> None:
    cache = RadixCache()
    cache.insert([1], [1])
    node = cache.match_prefix([1]).last_node
    with pytest.raises(ValueError):
        cache.dec_lock_ref(node)
    cache.inc_lock_ref(cache.root)  # root lock is a harmless no-op
    cache.dec_lock_ref(cache.root)
    assert cache.protected_size() == 0


def test_evict_lru_order() -> None:
    cache = RadixCache()
    cache.insert([1, 1], [10, 11])
    cache.insert([2, 2], [20, 21])
    cache.insert([3, 3], [30, 31])
    cache.match_prefix([1, 1])  # touch: now [2,2] is the oldest
    freed = Freed()
    assert cache.evict(1, freed) == 2
    assert freed.calls == [[20, 21]]
    assert cache.evict(3, freed) == 4
    assert freed.calls == [[20, 21], [30, 31], [10, 11]]
    assert cache.evict(1, freed) == 0


def test_evict_parent_becomes_candidate() -> None:
    cache = RadixCache()
    cache.insert([1, 2], [10, 11])
    cache.insert([1, 2, 3], [10, 11, 12])
    cache.insert([9], [90])
    cache.match_prefix([9])  # [9] is most recent; chain [1,2]->[3] older
    freed = Freed()
    assert cache.evict(3, freed) == 3
    assert freed.calls == [[12], [10, 11]]
    assert cache.all_values() == [90]


def test_eviction_heap_stays_bounded_and_lru_under_lock_churn() -> None:
    """Thousands of lock/unlock cycles offer the same leaves again and again; the heap is
    rebuilt instead of growing without bound, and eviction still goes oldest first."""
    cache = RadixCache()
    nodes = [cache.insert_node([i, 100 + i], [2 * i, 2 * i + 1])[1] for i in range(8)]
    for step in range(5000):
        node = nodes[step % 7]  # every leaf but the last gets touched and re-offered
        cache.match_prefix([step % 7, 100 + step % 7])
        cache.inc_lock_ref(node)
        cache.dec_lock_ref(node)
    assert len(cache._leaves) <= 2 * 8 + SLACK + 1
    cache.check_invariants()
    freed = Freed()
    assert cache.evict(2, freed) == 2 and freed.flat == [14, 15]  # node 7 was never touched
    oldest = 4993 % 7  # of the touched leaves, the one touched longest ago
    assert cache.evict(2, freed) == 2 and freed.flat == [14, 15, 2 * oldest, 2 * oldest + 1]
    cache.check_invariants()


def test_evict_nonpositive_is_noop() -> None:
    cache = RadixCache()
    cache.insert([1], [1])
    freed = Freed()
    assert cache.evict(0, freed) == 0 and freed.calls == []


def test_page_size_rounding() -> None:
    cache = RadixCache(page_size=4)
    key = list(range(8))
    cache.insert(key, [100 + k for k in key])
    # Partial page at the end of the query is not matched.
    assert cache.match_prefix(key[:7]).values == [100, 101, 102, 103]
    # Divergence inside the second page rounds the match down to one page.
    res = cache.match_prefix([0, 1, 2, 3, 4, 5, 99, 99])
    assert res.values == [100, 101, 102, 103]
    assert res.last_node.key == [0, 1, 2, 3]
    assert list(res.last_node.children) == [(4, 5, 6, 7)]
    # Divergence inside the first page matches nothing.
    assert cache.match_prefix([0, 1, 2, 9]).values == []
    # Insert sharing 6 tokens only shares one full page.
    assert cache.insert([0, 1, 2, 3, 4, 5, 8, 8], list(range(200, 208))) == 4
    assert cache.match_prefix([0, 1, 2, 3, 4, 5, 8, 8]).values == [100, 101, 102, 103, 204, 205, 206, 207]
    _sizes_consistent(cache)


def test_disable() -> None:
    cache = RadixCache(disable=True)
    assert cache.insert([1, 2, 3], [10, 11, 12]) == 0
    res = cache.match_prefix([1, 2, 3])
    assert res.values == [] and res.last_node is cache.root
    assert cache.total_size() == 0 and cache.all_values() == []
    cache.inc_lock_ref(res.last_node)
    cache.dec_lock_ref(res.last_node)
    freed = Freed()
    assert cache.evict(10, freed) == 0 and freed.calls == []


def test_reset() -> None:
    cache = RadixCache()
    cache.insert([1, 2], [1, 2])
    cache.inc_lock_ref(cache.match_prefix([1, 2]).last_node)
    cache.reset()
    assert cache.total_size() == 0 and cache.protected_size() == 0
    assert cache.match_prefix([1, 2]).values == []
    assert cache.root.children == {}


def test_no_torch_import() -> None:
    code = "import sys, radixlm.mem_cache.radix_cache; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_treenode_repr() -> None:
    assert "TreeNode" in repr(TreeNode(0, [], [], None, 0))


# --------------------------------------------------------------- stateful model

TOKENS = st.lists(st.integers(0, 3), min_size=0, max_size=12)


class RadixModel(RuleBasedStateMachine):
    """Checks RadixCache against a dict model of cached pages.

    The model maps each cached page-aligned prefix tuple to the slots of its
    last page.  Evictions are mirrored by dropping entries whose slots were
    freed; the tree only ever evicts leaves, so the model stays prefix-closed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cache = RadixCache()
        self.page = 1
        self.model: dict[tuple[int, ...], list[int]] = {}
        self.next_slot = 0
        self.kept: set[int] = set()  # slots ever taken over by the tree
        self.freed: Counter[int] = Counter()
        self.locks: list[tuple[TreeNode, tuple[int, ...]]] = []

    @initialize(page=st.sampled_from([1, 2, 4]))
    def setup(self, page: int) -> None:
        self.page = page
        self.cache = RadixCache(page_size=page)

    def _pages(self, key: Sequence[int]) -> list[tuple[int, ...]]:
        """Page-aligned non-empty prefixes of key, shortest first (partial tail dropped)."""
        return [tuple(key[:j]) for j in range(self.page, len(key) + 1, self.page)]

    def _model_match(self, key: list[int]) -> list[int]:
        out: list[int] = []
        for prefix in self._pages(key):
            if prefix not in self.model:
                break
            out.extend(self.model[prefix])
        return out

    def _free(self, values: list[int]) -> None:
        self.freed.update(values)

    @rule(key=TOKENS)
    def insert(self, key: list[int]) -> None:
        key = key[: len(key) - len(key) % self.page]
        value = list(range(self.next_slot, self.next_slot + len(key)))
        self.next_slot += len(key)
        present = len(self._model_match(key))
        assert self.cache.insert(key, value) == present
        for prefix in self._pages(key)[present // self.page :]:
            assert prefix not in self.model
            self.model[prefix] = value[len(prefix) - self.page : len(prefix)]
        self.kept.update(value[present:])

    @rule(key=TOKENS)
    def match(self, key: list[int]) -> None:
        res = self.cache.match_prefix(key)
        assert res.values == self._model_match(key)
        if not res.values:
            assert res.last_node is self.cache.root

    @rule(key=TOKENS)
    def lock(self, key: list[int]) -> None:
        res = self.cache.match_prefix(key)
        self.cache.inc_lock_ref(res.last_node)
        self.locks.append((res.last_node, tuple(key[: len(res.values)])))

    @precondition(lambda self: self.locks)
    @rule(idx=st.integers(0, 1000))
    def unlock(self, idx: int) -> None:
        node, _ = self.locks.pop(idx % len(self.locks))
        self.cache.dec_lock_ref(node)

    @rule(n=st.integers(0, 20))
    def evict(self, n: int) -> None:
        before = Counter(self.freed)
        evictable = self.cache.evictable_size()
        got = self.cache.evict(n, self._free)
        newly = self.freed - before
        assert got == sum(newly.values())
        assert got >= min(n, evictable)
        assert got >= n or self.cache.evictable_size() == 0
        gone = set(newly)
        self.model = {k: v for k, v in self.model.items() if not gone.intersection(v)}
        for _, prefix in self.locks:  # locked prefixes survive intact
            assert all(p in self.model for p in self._pages(prefix))

    @rule()
    def evict_one_is_least_recent(self) -> None:
        """One eviction frees the evictable leaf with the oldest access (ties: oldest id), as a
        walk of the whole tree would pick it."""
        leaves = [n for n in self.cache._iter_nodes() if n.is_leaf and n.lock_ref == 0]
        if not leaves:
            assert self.cache.evict(1, self._free) == 0
            return
        victim = min(leaves, key=lambda n: (n.last_access, n.id))
        value = list(victim.value)
        self.evict(1)
        assert victim.parent is None and not set(value) - set(self.freed)

    @invariant()
    def sizes(self) -> None:
        _sizes_consistent(self.cache)
        assert sorted(self.cache.all_values()) == sorted(v for page in self.model.values() for v in page)
        locked = {p for _, prefix in self.locks for p in self._pages(prefix)}
        assert self.cache.protected_size() == self.page * len(locked)
        assert all(c == 1 for c in self.freed.values())
        assert set(self.freed) <= self.kept

    def teardown(self) -> None:
        for node, _ in self.locks:
            self.cache.dec_lock_ref(node)
        self.locks.clear()
        assert self.cache.protected_size() == 0
        self.cache.evict(10**9, self._free)
        assert self.cache.total_size() == 0 and self.cache.all_values() == []
        assert self.cache.root.children == {}
        assert set(self.freed) == self.kept and all(c == 1 for c in self.freed.values())


RadixModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRadixModel = RadixModel.TestCase

"""Request routing for data parallelism: which replica serves a new request.

Pure Python, no torch: the router runs in the front process on every submit and is tested
alone. A router sees only what the front knows: the prompt's token ids and, per live replica,
how many requests it has in flight. It never talks to the replicas.

Two policies (`--load-balance-method`):

- `round_robin`: replicas in turn, skipping dead ones.
- `cache_aware`: keep, per replica, an approximate radix tree of the prompts routed to it
  (what its prefix cache most likely holds, LRU-bounded by its KV capacity). A request goes to
  the replica whose tree matches the longest prefix when that match covers at least
  `cache_threshold` of the prompt; otherwise to the least loaded replica (ties: the smallest
  tree, so new prefixes spread over replicas). When loads diverge by more than both balance
  thresholds, the least loaded replica wins regardless of the cache.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

from radixlm.mem_cache.radix_cache import RadixCache

# When an approximate tree outgrows its bound it is cut to this fraction of it, so eviction runs
# once per many inserts rather than on every one.
EVICT_TO_FRACTION = 0.9


class Router(ABC):
    """Chooses a replica per request. Not thread-safe: the caller serializes all calls."""

    def __init__(self, num_replicas: int) -> None:
        if num_replicas < 1:
            raise ValueError(f"need at least one replica, got {num_replicas}")
        self.num_replicas = num_replicas
        self.decisions: Counter[str] = Counter()  # why requests were routed where they were
        self.routed = [0] * num_replicas  # requests sent to each replica

    def select(self, input_ids: Sequence[int], loads: Mapping[int, int]) -> int:
        """The replica for a request with prompt `input_ids`. `loads` maps every live replica
        to its number of requests in flight (dead replicas are absent; at least one is live).
        Returns a key of `loads`."""
        if not loads:
            raise ValueError("no live replica to route to")
        choice, reason = self._choose(input_ids, loads)
        self.decisions[reason] += 1
        self.routed[choice] += 1
        return choice

    @abstractmethod
    def _choose(self, input_ids: Sequence[int], loads: Mapping[int, int]) -> tuple[int, str]:
        """(replica, reason) for one request."""

    def reset(self, replica: int) -> None:  # noqa: B027 (optional hook: stateless routers keep nothing)
        """Forget what `replica` may have cached (its cache was flushed)."""

    def stats(self) -> dict:
        """Routing counters for `get_server_info`."""
        return {"routed": list(self.routed), "decisions": dict(self.decisions)}


class RoundRobinRouter(Router):
    """Replicas in index order, skipping the ones absent from `loads`."""

    def __init__(self, num_replicas: int) -> None:
        super().__init__(num_replicas)
        self._next = 0

    def _choose(self, input_ids: Sequence[int], loads: Mapping[int, int]) -> tuple[int, str]:
        for step in range(self.num_replicas):
            replica = (self._next + step) % self.num_replicas
            if replica in loads:
                self._next = replica + 1
                return replica, "round_robin"
        raise ValueError(f"no replica of {sorted(loads)} is in range({self.num_replicas})")


class ApproxPrefixTree:
    """The prompts routed to one replica, as a radix tree over token ids bounded to
    `capacity` tokens by LRU eviction. Approximate by design: the replica may have evicted
    (or not yet computed) what this tree holds. Invariant: `size() <= capacity` after each insert."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._tree = RadixCache()

    def match(self, input_ids: Sequence[int]) -> int:
        """Length of the longest prefix of `input_ids` in the tree (marks it as recently used)."""
        return len(self._tree.match_prefix(input_ids).values)

    def insert(self, input_ids: Sequence[int]) -> None:
        """Record `input_ids` as seen; evicts least recently used prompts past the capacity."""
        ids = list(input_ids[: self.capacity])
        self._tree.insert(ids, ids)  # values are unused: the tree is only a set of prefixes
        excess = self._tree.total_size() - self.capacity
        if excess > 0:
            target = int(self.capacity * EVICT_TO_FRACTION)
            self._tree.evict(self._tree.total_size() - target, lambda values: None)

    def size(self) -> int:
        return self._tree.total_size()

    def reset(self) -> None:
        self._tree.reset()


@dataclass(frozen=True)
class CacheAwarePolicy:
    """Knobs of cache-aware routing.

    cache_threshold: minimum matched fraction of a prompt for the match to decide the replica.
    balance_abs_threshold, balance_rel_threshold: loads count as diverged when
    max - min > abs and max > rel * min; then the least loaded replica is chosen.
    """

    cache_threshold: float = 0.5
    balance_abs_threshold: int = 32
    balance_rel_threshold: float = 1.5


class CacheAwareRouter(Router):
    """Longest approximate prefix match, unless loads diverge or the match is too short."""

    def __init__(self, capacities: Sequence[int], policy: CacheAwarePolicy = CacheAwarePolicy()) -> None:
        super().__init__(len(capacities))
        self.policy = policy
        self.trees = [ApproxPrefixTree(c) for c in capacities]

    def _choose(self, input_ids: Sequence[int], loads: Mapping[int, int]) -> tuple[int, str]:
        if self._diverged(loads):
            choice, reason = self._least_loaded(loads), "balance"
        else:
            choice, reason = self._by_cache(input_ids, loads)
        self.trees[choice].insert(input_ids)
        return choice, reason

    def _diverged(self, loads: Mapping[int, int]) -> bool:
        low, high = min(loads.values()), max(loads.values())
        return high - low > self.policy.balance_abs_threshold and high > self.policy.balance_rel_threshold * low

    def _by_cache(self, input_ids: Sequence[int], loads: Mapping[int, int]) -> tuple[int, str]:
        matched = {r: self.trees[r].match(input_ids) for r in loads}
        best = max(loads, key=lambda r: (matched[r], -loads[r], -r))
        if matched[best] > 0 and matched[best] >= self.policy.cache_threshold * len(input_ids):
            return best, "cache"
        return self._least_loaded(loads), "least_loaded"

    def _least_loaded(self, loads: Mapping[int, int]) -> int:
        return min(loads, key=lambda r: (loads[r], self.trees[r].size(), r))

    def reset(self, replica: int) -> None:
        self.trees[replica].reset()

    def stats(self) -> dict:
        return {**super().stats(), "tree_tokens": [t.size() for t in self.trees]}


def make_router(method: str, capacities: Sequence[int]) -> Router:
    """The router `--load-balance-method` names; `capacities` are the replicas' KV pool sizes."""
    if method == "round_robin":
        return RoundRobinRouter(len(capacities))
    if method == "cache_aware":
        return CacheAwareRouter(capacities)
    raise ValueError(f"unknown load balance method {method!r}")

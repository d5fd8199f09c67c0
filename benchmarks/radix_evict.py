"""Cost of one `RadixCache.evict` call once the cache fills the pool, against the walk it replaced.

A server whose KV pool is full of cached prefixes evicts on every admission. The cache keeps a
lazy heap of evictable leaves; the earlier code (and the obvious one) walked the whole tree and
heapified its leaves on every call. Both are timed here on the same trees: `--requests` finished
requests of `--system-len` shared system-prompt tokens (16 prompts) + `--own-len` own tokens.

    python benchmarks/radix_evict.py [--requests 4000 16000]
"""

from __future__ import annotations

import argparse
import heapq
import random
import time

from radixlm.mem_cache.radix_cache import RadixCache


def build(requests: int, system_len: int, own_len: int) -> RadixCache:
    rng, cache, slot = random.Random(0), RadixCache(), 0
    for i in range(requests):
        system = list(range((i % 16) * 100_000, (i % 16) * 100_000 + system_len))
        key = system + [rng.randrange(50_000) for _ in range(own_len)]
        cache.insert(key, list(range(slot, slot + len(key))))
        slot += len(key)
    return cache


def walk_first_victim(cache: RadixCache) -> object:
    """What a walk-and-heapify eviction does before freeing its first node."""
    heap = [(n.last_access, n.id, n) for n in cache._iter_nodes() if n.is_leaf and n.lock_ref == 0]
    heapq.heapify(heap)
    return heap[0][2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, nargs="+", default=[1000, 4000, 16000])
    ap.add_argument("--system-len", type=int, default=256)
    ap.add_argument("--own-len", type=int, default=256)
    ap.add_argument("--calls", type=int, default=50)
    a = ap.parse_args()
    print("| cached requests | tree nodes | walk + heapify per call (ms) | radixlm evict per call (ms) | ratio |")
    print("|---|---|---|---|---|")
    for n in a.requests:
        cache = build(n, a.system_len, a.own_len)
        nodes = sum(1 for _ in cache._iter_nodes())
        start = time.perf_counter()
        for _ in range(a.calls):
            walk_first_victim(cache)
        walk_ms = (time.perf_counter() - start) / a.calls * 1e3
        start = time.perf_counter()
        for _ in range(a.calls):
            cache.evict(a.own_len, lambda values: None)  # one request's own tokens per call
        ours_ms = (time.perf_counter() - start) / a.calls * 1e3
        print(f"| {n} | {nodes} | {walk_ms:.3f} | {ours_ms:.4f} | {walk_ms / ours_ms:.0f}x |", flush=True)


if __name__ == "__main__":
    main()

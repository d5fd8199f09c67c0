"""The prefill (extend) host path's fast helpers against the plain versions they replace: prefix
comparison by list slices, the length-only and node-returning tree queries, page-1 slot
allocation as one slice, `Req.fill_slice`, table rows written in one copy (`write_rows`), and
`build_extend` reading the new slots from the host instead of the table."""

from __future__ import annotations

import random

import pytest
import torch

from radixlm.mem_cache.cache_manager import KVCacheManager
from radixlm.mem_cache.kv_pool import ReqToTokenPool, SlotAllocator
from radixlm.mem_cache.radix_cache import SCAN_BELOW, RadixCache, common_prefix_len
from radixlm.sampling.sampling_params import SamplingParams
from radixlm.scheduler.batch import ExtendItem, build_extend
from radixlm.scheduler.request import Req

CPU = torch.device("cpu")


def naive_common_prefix_len(a: list[int], start: int, b: list[int], n: int) -> int:
    i = 0
    while i < n and a[start + i] == b[i]:
        i += 1
    return i


def test_common_prefix_len_equals_the_token_loop() -> None:
    rng = random.Random(0)
    for _ in range(500):
        b = [rng.randrange(5) for _ in range(rng.randrange(0, 3 * SCAN_BELOW + 5))]
        start = rng.randrange(0, 4)
        a = [rng.randrange(5) for _ in range(start)] + list(b) + [rng.randrange(5) for _ in range(3)]
        for _ in range(rng.randrange(0, 3)):  # a few mismatches anywhere, or none
            if b:
                a[start + rng.randrange(len(b))] = 9
        n = rng.randrange(0, len(b) + 1)
        assert common_prefix_len(a, start, b, n) == naive_common_prefix_len(a, start, b, n)


def random_tree(page: int, rng: random.Random) -> tuple[RadixCache, list[list[int]]]:
    """A tree over keys that share prefixes of many lengths (so matches end mid-node too)."""
    tree, keys, slot = RadixCache(page_size=page), [], 1
    base = [rng.randrange(3) for _ in range(40 * page)]
    for _ in range(12):
        key = base[: rng.randrange(0, len(base))] + [rng.randrange(3) for _ in range(rng.randrange(0, 8 * page))]
        key = key[: len(key) - len(key) % page]
        keys.append(key)
        tree.insert(key, list(range(slot, slot + len(key))))
        slot += len(key)
    return tree, keys


def snapshot(tree: RadixCache) -> list[tuple]:
    return sorted((tuple(n.key), n.last_access) for n in tree._iter_nodes())


@pytest.mark.parametrize("page", [1, 4])
def test_prefix_len_is_match_length_without_side_effects(page: int) -> None:
    rng = random.Random(page)
    tree, keys = random_tree(page, rng)
    queries = keys + [k[: rng.randrange(0, len(k) + 1)] + [7, 7] for k in keys] + [[], [5] * page]
    for key in queries:
        before = snapshot(tree)
        got = tree.prefix_len(key)
        assert snapshot(tree) == before  # no split, no access stamp
        assert got == len(tree.match_prefix(key).values)
        assert tree.prefix_len(tuple(key)) == got


@pytest.mark.parametrize("page", [1, 4])
def test_insert_node_returns_the_node_match_prefix_finds(page: int) -> None:
    rng = random.Random(10 + page)
    tree, keys = random_tree(page, rng)
    twin, slot = RadixCache(page_size=page), 10_000  # the same keys, through `insert`
    for k in keys:
        twin.insert(k, list(range(len(k))))
    for key in keys + [keys[0] + [1] * page, []]:
        present, node = tree.insert_node(key, list(range(slot, slot + len(key))))
        slot += len(key)
        assert present == twin.insert(key, list(range(len(key))))
        assert node is tree.match_prefix(key).last_node
        tree.check_invariants()
    off = RadixCache(disable=True)
    assert off.insert_node([1], [1]) == (0, off.root)


def test_page_one_alloc_equals_popping_pages() -> None:
    rng = random.Random(1)
    alloc, free = SlotAllocator(64, 1), list(range(64, 0, -1))
    for _ in range(300):
        count = rng.randrange(0, 12)
        want = [free.pop() for _ in range(count)] if count <= len(free) else None
        assert alloc.alloc(rng.randrange(100), rng.randrange(9), count) == want
        assert alloc._free_pages == free
        if want and rng.random() < 0.5:
            back = want[: rng.randrange(len(want) + 1)]
            alloc.free(back)
            free.extend(back)


def test_fill_slice_equals_slicing_fill_ids() -> None:
    req = Req("r", [5, 6, 7, 8], SamplingParams(max_new_tokens=8))
    req.output_ids = [9, 10, -1]
    n = len(req.fill_ids)
    for start in range(n + 1):
        for end in range(start, n + 2):
            assert req.fill_slice(start, end) == req.fill_ids[start:end]


def make_cache(page: int) -> KVCacheManager:
    return KVCacheManager(SlotAllocator(8192, page), ReqToTokenPool(24, 640, CPU), RadixCache(page_size=page))


def admit(cache: KVCacheManager, rid: str, ids: list[int]) -> tuple[Req, int]:
    """Match, a row and slots for the rest, host side only (as the PrefillAdder does)."""
    req = Req(rid, ids, SamplingParams(max_new_tokens=4))
    cache.match(req, len(ids) - 1)
    assert cache.take_row(req) and cache.alloc_slots(req, len(ids) - req.kv_len) is not None
    return req, req.tree_len


def shared_prompt_step(
    cache: KVCacheManager, systems: list[list[int]], rng: random.Random, step: int
) -> list[tuple[Req, int]]:
    """One step's requests on three system prompts, admitted before any of them is cached."""
    return [
        admit(cache, f"{step}-{i}", systems[i % 3] + [rng.randrange(3, 400) for _ in range(rng.randrange(1, 30))])
        for i in range(9)
    ]


@pytest.mark.parametrize("page", [1, 4])
def test_write_rows_fills_every_row_and_sends_shared_prefixes_once(page: int) -> None:
    """The second step's requests start from the first step's cached system prompts: each
    prompt's slots go to the device once, however many rows they are written to."""
    cache, rng = make_cache(page), random.Random(page)
    systems = [[rng.randrange(3, 400) for _ in range(rng.randrange(40, 200))] for _ in range(3)]
    first = shared_prompt_step(cache, systems, rng, 0)
    cache.write_rows([(req, 0, req.kv_len) for req, _ in first])
    for req, _ in first:
        cache.cache_unfinished(req)
    second = shared_prompt_step(cache, systems, rng, 1)
    sent, dev = [], cache._dev
    cache._dev = lambda values: sent.append(len(values)) or dev(values)
    cache.write_rows([(req, 0, req.kv_len) for req, _ in second])
    for req, _ in first + second:
        assert cache.req_pool.table[req.req_pool_idx, : req.kv_len].tolist() == req.kv_slots
    prefixes = {id(req.last_node): tree_len for req, tree_len in second}
    assert all(tree_len > 0 for _, tree_len in second) and len(prefixes) == 3
    own = sum(req.kv_len - tree_len for req, tree_len in second)
    assert sent == [own + sum(prefixes.values())]  # one copy; each system prompt once, not three times


def old_build_extend_fields(items: list[ExtendItem], table: torch.Tensor) -> dict:
    """What the extend batch held when its slots were gathered from the table."""
    ids, pos, locs = [], [], []
    for item in items:
        end = item.start + item.length
        ids += item.req.fill_ids[item.start : end]
        pos += range(item.start, end)
        locs += table[item.req.req_pool_idx, item.start : end].tolist()
    return dict(
        input_ids=ids,
        positions=pos,
        out_cache_loc=locs,
        req_pool_indices=[i.req.req_pool_idx for i in items],
        seq_lens=[i.start + i.length for i in items],
    )


def test_build_extend_takes_the_slots_from_the_host_copy() -> None:
    rng = random.Random(3)
    cache = make_cache(1)
    reqs = [admit(cache, str(i), [rng.randrange(3, 400) for _ in range(rng.randrange(2, 50))])[0] for i in range(6)]
    cache.write_rows([(r, 0, r.kv_len) for r in reqs])
    items = [ExtendItem(r, 0, r.kv_len, True) for r in reqs]
    fb = build_extend(items, cache.req_pool.table, CPU).forward
    for name, want in old_build_extend_fields(items, cache.req_pool.table).items():
        assert getattr(fb, name).tolist() == want, name


def test_a_prompt_cached_meanwhile_replaces_the_duplicate_slots() -> None:
    """Two identical prompts in one step: the second to be cached gives back its own slots and
    takes the tree's, in its host list and in its table row; nothing leaks."""
    cache = make_cache(1)
    ids = list(range(3, 60))
    (a, _), (b, _) = admit(cache, "a", ids), admit(cache, "b", ids)
    cache.write_rows([(a, 0, a.kv_len), (b, 0, b.kv_len)])
    free_before = cache.allocator.available_size()
    cache.cache_unfinished(a)
    cache.cache_unfinished(b)
    assert b.kv_slots == a.kv_slots and b.last_node is a.last_node and b.tree_len == a.tree_len == len(ids)
    assert cache.allocator.available_size() == free_before + len(ids)
    assert cache.req_pool.table[b.req_pool_idx, : b.kv_len].tolist() == b.kv_slots
    for req in (a, b):
        cache.cache_finished(req)
    cache.check_no_leak()

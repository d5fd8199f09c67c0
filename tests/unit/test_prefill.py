"""PrefillAdder without a model: which waiting requests one prefill step admits, and what it defers."""

from __future__ import annotations

import numpy as np
import torch

from radixlm.mem_cache.cache_manager import KVCacheManager
from radixlm.mem_cache.kv_pool import ReqToTokenPool, SlotAllocator
from radixlm.mem_cache.radix_cache import RadixCache
from radixlm.multimodal.inputs import ImageInput
from radixlm.sampling.sampling_params import SamplingParams
from radixlm.scheduler.prefill import IN_BATCH_SHARE_MIN, PrefillAdder, PrefillBudget
from radixlm.scheduler.request import Req


def make_cache(disable: bool = False) -> KVCacheManager:
    return KVCacheManager(
        SlotAllocator(4096, 1), ReqToTokenPool(16, 512, torch.device("cpu")), RadixCache(disable=disable)
    )


def make_adder(cache: KVCacheManager) -> PrefillAdder:
    budget = PrefillBudget(
        max_prefill_tokens=4096, chunk_size=None, max_running=16, reserved_tokens=0, new_token_ratio=0.0
    )
    return PrefillAdder(cache, budget, num_running=0)


def req(rid: str, ids: list[int]) -> Req:
    return Req(rid, ids, SamplingParams(max_new_tokens=4))


def test_a_prefix_shared_within_the_step_is_deferred_to_the_next() -> None:
    cache, shared = make_cache(), list(range(10, 10 + IN_BATCH_SHARE_MIN + 8))
    reqs = [req("a", shared + [1]), req("b", shared + [2]), req("c", [3] * 50), req("d", shared[:8] + [4] * 40)]
    adder = make_adder(cache)
    assert all(adder.add(r) for r in reqs)
    assert [i.req.rid for i in adder.items] == ["a", "c", "d"]  # d shares only 8 tokens: not worth a step
    assert adder.num_deferred == 1 and reqs[1].req_pool_idx is None and reqs[1].last_node is None


def test_the_first_request_and_cached_prefixes_are_never_deferred() -> None:
    cache, shared = make_cache(), list(range(10, 10 + 2 * IN_BATCH_SHARE_MIN))
    first = make_adder(cache)
    assert first.add(req("a", shared + [1])) and [i.req.rid for i in first.items] == ["a"]
    cache.cache_unfinished(first.items[0].req)  # what the scheduler does after the prefill ran
    second = make_adder(cache)
    assert second.add(req("b", shared + [2])) and second.add(req("c", shared + [3]))
    assert [i.req.rid for i in second.items] == ["b", "c"] and second.num_deferred == 0  # both hit the tree
    assert all(i.start == len(shared) and i.length == 1 for i in second.items)  # only the last token runs


def test_without_a_radix_cache_nothing_is_deferred() -> None:
    adder, shared = make_adder(make_cache(disable=True)), list(range(10, 10 + 2 * IN_BATCH_SHARE_MIN))
    assert adder.add(req("a", shared + [1])) and adder.add(req("b", shared + [2]))
    assert len(adder.items) == 2 and adder.num_deferred == 0


def test_a_chunk_ends_before_an_image_span_rather_than_inside_it() -> None:
    """A request whose budgeted chunk would end inside its image runs up to the image; the next
    step runs the whole image span (so the image is encoded once)."""
    cache = make_cache()
    image = ImageInput(np.zeros((3, 2, 2), np.float32), 20, 30, 5000)
    ids = list(range(10, 30)) + [5000] * 30 + list(range(30, 40))
    budget = PrefillBudget(max_prefill_tokens=64, chunk_size=32, max_running=4, reserved_tokens=0, new_token_ratio=0)
    r = Req("a", ids, SamplingParams(max_new_tokens=4), images=[image])
    adder = PrefillAdder(cache, budget, num_running=0)
    assert not adder.add(r)  # chunked: admission stops
    assert (adder.items[0].start, adder.items[0].length) == (0, 20)
    again = PrefillAdder(cache, budget, num_running=0)
    again.add(r)
    assert (again.items[0].start, again.items[0].length) == (20, 32)  # the whole image span in one chunk

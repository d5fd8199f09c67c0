"""The radix cache is namespaced by LoRA adapter: a prompt cached under one adapter is never
matched by another adapter or by the base model, at every page size, while requests of one
adapter share their prefix as before (`Req.tree_key`, used by the KV cache manager)."""

from __future__ import annotations

import pytest
import torch

from radixlm.mem_cache.cache_manager import KVCacheManager
from radixlm.mem_cache.kv_pool import ReqToTokenPool, SlotAllocator
from radixlm.mem_cache.radix_cache import RadixCache
from radixlm.sampling.sampling_params import SamplingParams
from radixlm.scheduler.request import Req

PROMPT = list(range(3, 40))


def _cached(cache: KVCacheManager, rid: str, lora_uid: int) -> int:
    """Admit a request as a prefill would (match, allocate the rest, finish): its cache hit."""
    req = Req(rid, PROMPT, SamplingParams(max_new_tokens=1), lora_uid=lora_uid)
    cache.match(req, len(PROMPT) - 1)
    hit = req.kv_len
    assert cache.take_row(req) and cache.alloc_slots(req, len(PROMPT) - req.kv_len) is not None
    cache.cache_finished(req)
    return hit


@pytest.mark.parametrize("page", [1, 4])
def test_kv_is_reused_only_under_the_same_adapter(page: int) -> None:
    cache = KVCacheManager(SlotAllocator(1024, page), ReqToTokenPool(8, 128, torch.device("cpu")), RadixCache(page))
    usable = (len(PROMPT) - 1) // page * page
    assert _cached(cache, "a1", 1) == 0
    assert _cached(cache, "b", 2) == 0  # another adapter
    assert _cached(cache, "base", 0) == 0  # the base model
    assert _cached(cache, "a2", 1) == usable  # the same adapter again
    assert _cached(cache, "base2", 0) == usable
    cache.tree.check_invariants()
    assert cache.tree.total_size() == 3 * (len(PROMPT) // page * page)
    cache.check_no_leak()


def test_tree_key_tags_only_the_first_id() -> None:
    base = Req("r", PROMPT, SamplingParams())
    tagged = Req("r", PROMPT, SamplingParams(), lora_uid=3)
    assert base.tree_key(5) == PROMPT[:5]
    assert tagged.tree_key(5) == [PROMPT[0] + (3 << 32)] + PROMPT[1:5]
    assert tagged.tree_key(0) == [] and tagged.origin_input_ids == PROMPT  # the prompt itself is untouched

"""Shared-prefix decode plans on a real radix tree: who is grouped, at what length, after node
splits, with pages of 1 and 4; the scheduler's decode batch carries the plan; on a GPU, the engine's
outputs with cascade decode equal those without the radix cache."""

from __future__ import annotations

import random

import pytest
import torch

from radixlm.attention.shared_prefix import MIN_SHARED_PREFIX, find_groups, plan_shared_prefixes
from radixlm.mem_cache.cache_manager import KVCacheManager
from radixlm.mem_cache.kv_pool import ReqToTokenPool, SlotAllocator
from radixlm.mem_cache.radix_cache import RadixCache
from radixlm.sampling.sampling_params import SamplingParams
from radixlm.scheduler.batch import build_decode
from radixlm.scheduler.request import Req

SHARED = MIN_SHARED_PREFIX + 46  # a system prompt's length (not a multiple of 4)
CPU = torch.device("cpu")


def make_cache(page: int, disable: bool = False) -> KVCacheManager:
    return KVCacheManager(SlotAllocator(16384, page), ReqToTokenPool(16, 1024, CPU), RadixCache(page, disable=disable))


def tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(3, 400) for _ in range(n)]


def prefill(cache: KVCacheManager, rid: str, ids: list[int]) -> Req:
    """What the scheduler does for a prompt: match, a table row, slots for the rest, cache it."""
    req = Req(rid, ids, SamplingParams(max_new_tokens=8))
    cache.match(req, len(ids))
    assert cache.assign_row(req)
    assert cache.alloc_tokens(req, len(ids) - req.kv_len) is not None
    cache.cache_unfinished(req)
    req.output_ids.append(7)  # sampled: the next decode step runs it
    return req


def groups_by_rid(reqs: list[Req], cache: KVCacheManager) -> set[tuple[int, tuple[str, ...]]]:
    """The plan's groups as (length, member rids), after checking the invariants it promises:
    members' table rows (and host slot lists) agree on the shared length, which is whole pages."""
    found, table = set(), cache.req_pool.table
    for length, members in find_groups(reqs):
        assert len(members) >= 2 and MIN_SHARED_PREFIX <= length and length % cache.page_size == 0
        group = [reqs[i] for i in members]
        first = table[group[0].req_pool_idx, :length]
        for req in group:
            assert length < req.seq_len and req.kv_slots[:length] == group[0].kv_slots[:length]
            assert torch.equal(table[req.req_pool_idx, :length], first)
        found.add((length, tuple(r.rid for r in group)))
    return found


def workload(cache: KVCacheManager, seed: int = 0) -> list[Req]:
    """Two system prompts (three and two requests), one unrelated request; every prompt starts
    with the same token (a BOS), so the tree's first node is shared by all of them."""
    rng = random.Random(seed)
    sys_a, sys_b = [0] + tokens(rng, SHARED - 1), [0] + tokens(rng, SHARED - 1)
    prompts = {
        "a1": sys_a + tokens(rng, 20),
        "b1": sys_b + tokens(rng, 9),
        "x": [0] + tokens(rng, 400),
        "a2": sys_a + tokens(rng, 31),
        "a3": sys_a + tokens(rng, 5),
        "b2": sys_b + tokens(rng, 17),
    }
    reqs = [prefill(cache, rid, ids) for rid, ids in prompts.items()]
    cache.alloc_decode(reqs)
    return reqs


@pytest.mark.parametrize("page", [1, 4])
def test_requests_on_one_system_prompt_form_a_group(page: int) -> None:
    cache = make_cache(page)
    reqs = workload(cache)
    length = SHARED - SHARED % page
    assert groups_by_rid(reqs, cache) == {(length, ("a1", "a2", "a3")), (length, ("b1", "b2"))}
    plan = plan_shared_prefixes(reqs, CPU)
    assert plan.num_groups == 2
    assert plan.prefix_lens.tolist() == [length, length, 0, length, length, length]


def test_groups_follow_node_splits() -> None:
    cache = make_cache(1)
    reqs = workload(cache)
    a1 = reqs[0]
    # Shares a1's prompt and part of its question: splits a1's leaf below the shared node.
    reqs.append(prefill(cache, "a1-twin", a1.origin_input_ids[: SHARED + 10] + [5, 6]))
    assert groups_by_rid(reqs, cache) == {(SHARED, ("a1", "a2", "a3", "a1-twin")), (SHARED, ("b1", "b2"))}
    # Shares only the first MIN_SHARED_PREFIX + 4 tokens of system prompt b: splits b's shared node.
    # One more member at a slightly shorter prefix saves more reads (3 * 260 > 2 * 302): b's group moves up.
    short = MIN_SHARED_PREFIX + 4
    reqs.append(prefill(cache, "b-short", reqs[1].origin_input_ids[:short] + [9] * 30))
    assert groups_by_rid(reqs, cache) == {(SHARED, ("a1", "a2", "a3", "a1-twin")), (short, ("b1", "b2", "b-short"))}


def test_the_deeper_group_wins_when_it_saves_more() -> None:
    """Two requests sharing a long question under a short shared node are grouped there, not
    with the shallow crowd; requests sharing nothing long stay alone."""
    cache, rng = make_cache(1), random.Random(3)
    base, long_q = tokens(rng, MIN_SHARED_PREFIX), tokens(rng, 600)
    reqs = [prefill(cache, f"r{i}", base + tokens(rng, 8)) for i in range(3)]
    reqs += [prefill(cache, f"q{i}", base + long_q + tokens(rng, 4)) for i in range(2)]
    reqs.append(prefill(cache, "alone", tokens(rng, MIN_SHARED_PREFIX + 50)))
    assert groups_by_rid(reqs, cache) == {
        (MIN_SHARED_PREFIX + 600, ("q0", "q1")),
        (MIN_SHARED_PREFIX, ("r0", "r1", "r2")),
    }


@pytest.mark.parametrize("page", [1, 4])
def test_random_trees_give_valid_disjoint_groups(page: int) -> None:
    """Prompts built from a few random stems and forks (many node splits); every plan keeps its
    invariants, members are disjoint, and requests sharing a long prefix with another one get grouped."""
    for seed in range(6):
        cache, rng = make_cache(page), random.Random(seed)
        stems = [tokens(rng, rng.randrange(200, 700)) for _ in range(3)]
        reqs = []
        for i in range(14):
            stem = rng.choice(stems)
            ids = stem[: rng.randrange(len(stem) // 2, len(stem) + 1)] + tokens(rng, rng.randrange(1, 60))
            reqs.append(prefill(cache, f"r{i}", ids))
            if rng.random() < 0.3:
                stems.append(ids)
        cache.alloc_decode(reqs)
        found = groups_by_rid(reqs, cache)
        members = [rid for _, rids in found for rid in rids]
        assert len(members) == len(set(members))
        share = [r.rid for r in reqs if any(o is not r and _common(r, o) >= MIN_SHARED_PREFIX for o in reqs)]
        assert set(members) <= set(share) and (not share or found)


def _common(a: Req, b: Req) -> int:
    n = 0
    while n < min(a.tree_len, b.tree_len) and a.kv_slots[n] == b.kv_slots[n]:
        n += 1
    return n


def test_no_plan_without_sharing_or_without_the_tree() -> None:
    assert plan_shared_prefixes(workload(make_cache(1, disable=True)), CPU) is None
    cache, rng = make_cache(1), random.Random(1)
    short = tokens(rng, MIN_SHARED_PREFIX - 1)  # shared, but too short to be worth a group
    reqs = [prefill(cache, f"r{i}", short + tokens(rng, 40)) for i in range(3)]
    assert plan_shared_prefixes(reqs, CPU) is None


def test_the_decode_batch_carries_the_plan() -> None:
    cache = make_cache(1)
    reqs = workload(cache)
    fresh = [prefill(cache, "late", reqs[0].origin_input_ids)]  # all cached but its last token
    slots = cache.alloc_decode(fresh)
    batch = build_decode(
        reqs[3:] + fresh,
        [r.kv_slots[-1] for r in reqs[3:]] + slots,
        cache.req_pool.table,
        CPU,
        torch.zeros(16, dtype=torch.int64),
    )
    plan = batch.forward.prefix_plan
    assert plan is not None and plan.num_groups == 1  # a2, a3 and late; b2 alone
    assert plan.prefix_lens.tolist() == [SHARED, SHARED, 0, SHARED]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (cascade decode is Triton-only)")
def test_engine_with_shared_prompts_matches_no_cache(tiny_llama_dir: str) -> None:
    """Greedy tokens with grouped decode (radix cache on; CUDA graphs, then eager past their
    largest batch) equal those of the plain decode (cache off), in float32; a first difference
    must be a near-tie (top two within 1e-3) in the plain run's own logprobs."""
    import radixlm

    path, rng = tiny_llama_dir, random.Random(5)
    systems = [tokens(rng, SHARED) for _ in range(2)]
    prompts = [systems[i % 2] + tokens(rng, rng.randrange(3, 30)) for i in range(12)] + [tokens(rng, 40)]
    params = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
    runs = []
    for kwargs in ({"disable_radix_cache": True}, {}, {"cuda_graph_max_bs": 4}):
        with radixlm.Engine(path, dtype="float32", max_total_tokens=8192, log_level="warning", **kwargs) as engine:
            engine.generate(input_ids=systems[0] + [3], sampling_params=params)  # cached before the batch
            runs.append(
                engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True, top_logprobs_num=2)
            )
            engine.check_no_leak()
    for run in runs[1:]:
        for ref, out in zip(runs[0], run):
            assert_same_up_to_ties(ref, out)


def assert_same_up_to_ties(ref: dict, out: dict) -> None:
    if out["output_ids"] == ref["output_ids"]:
        return
    step = next(i for i, (a, b) in enumerate(zip(out["output_ids"], ref["output_ids"])) if a != b)
    (first, _), (second, _) = ref["meta_info"]["output_top_logprobs"][step][:2]
    assert first - second < 1e-3, (step, out["output_ids"], ref["output_ids"])

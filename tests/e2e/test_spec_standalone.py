"""STANDALONE speculative decoding on tiny random models, schedulers built in-process: greedy
outputs equal the plain scheduler's with an unrelated draft model (few drafts accepted) and with
the target drafting for itself (nearly all accepted, so the draft side's KV bookkeeping across
accepted, rejected and bonus tokens is exercised); page sizes 1 and 4; the draft pool's leak
check runs with the target's after every run (`generate` calls `check_leak`)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers.inproc_scheduler import generate
from helpers.spec_setup import LENGTHS, PROMPTS, greedy, plain_outputs, spec_scheduler

from radixlm.ipc.messages import TokenizedGenerateReq
from radixlm.scheduler.loop import step_function


@pytest.fixture(scope="module")
def plain_runs(tiny_llama_dir: str) -> list[list[int]]:
    return plain_outputs(tiny_llama_dir)


def test_unrelated_draft_equals_plain(tiny_llama_dir: str, tiny_model: Any, plain_runs: list) -> None:
    sched = spec_scheduler("STANDALONE", tiny_llama_dir, tiny_model("qwen3"), speculative_num_steps=3)
    spec = generate(sched, PROMPTS, [greedy(n) for n in LENGTHS])
    assert [r["ids"] for r in spec] == plain_runs
    info = sched.info()
    assert info["spec_verify_steps"] > 0 and info["spec_draft_tokens"] > 0


@pytest.mark.parametrize("page_size", [1, 4])
def test_self_draft_accepts_nearly_everything(tiny_llama_dir: str, plain_runs: list, page_size: int) -> None:
    sched = spec_scheduler("STANDALONE", tiny_llama_dir, tiny_llama_dir, speculative_num_steps=4, page_size=page_size)
    spec = generate(sched, PROMPTS, [greedy(n) for n in LENGTHS])
    assert [r["ids"] for r in spec] == plain_runs
    info = sched.info()
    assert info["spec_accepted_tokens"] >= 0.9 * info["spec_draft_tokens"], info
    assert info["avg_spec_accept_length"] > 3.5, info
    assert spec[2]["meta"]["spec_accept_length"] > 3.5


def test_abort_mid_decode_frees_draft_kv(tiny_llama_dir: str) -> None:
    sched = spec_scheduler("STANDALONE", tiny_llama_dir, tiny_llama_dir, speculative_num_steps=2)
    for i, prompt in enumerate(PROMPTS[:2]):
        sched.handle(TokenizedGenerateReq(rid=str(i), input_ids=prompt, params=greedy(40)))
    step = step_function(sched)
    for _ in range(4):
        step()
    assert sched.spec.drafter.shadows, "no draft-side state after decoding started"
    sched.abort("0")
    while sched.has_work():
        step()
    sched.check_leak()
    assert not sched.spec.drafter.shadows


def test_full_draft_pool_means_fewer_drafts_not_errors(tiny_llama_dir: str, plain_runs: list) -> None:
    """A draft pool of 60 slots for four 18-token prompts: some requests get no drafts, others
    run out mid-chain; the outputs are still the plain ones and nothing leaks."""
    from radixlm.mem_cache.cache_manager import KVCacheManager
    from radixlm.mem_cache.kv_pool import SlotAllocator
    from radixlm.mem_cache.radix_cache import RadixCache

    sched = spec_scheduler("STANDALONE", tiny_llama_dir, tiny_llama_dir, speculative_num_steps=4)
    drafter = sched.spec.drafter
    drafter.cache = KVCacheManager(SlotAllocator(60, 1), drafter.cache.req_pool, RadixCache(1, disable=True))
    spec = generate(sched, PROMPTS, [greedy(n) for n in LENGTHS])
    assert [r["ids"] for r in spec] == plain_runs
    assert sched.info()["spec_accepted_tokens"] > 0

"""Speculative decoding's pure parts: the `--speculative-*` checks, NGRAM lookup, KV trimming,
and rejection sampling against point-mass drafts (chi-square against the target distribution)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers.chi_square import chi_square_p

from radixlm.config.server_args import ServerArgs
from radixlm.speculative.acceptance import accept_drafts, accept_rows
from radixlm.speculative.ngram import NgramDrafter


# -- flags -----------------------------------------------------------------------------------------
def test_plan_defaults_and_sglang_convention() -> None:
    assert ServerArgs(speculative_algorithm="NGRAM").speculative_plan().num_drafts == 7
    plan = ServerArgs(speculative_algorithm="ngram", speculative_num_draft_tokens=5).speculative_plan()
    assert plan.algorithm == "NGRAM" and plan.num_drafts == 4
    assert ServerArgs().speculative_plan() is None
    eagle = ServerArgs(speculative_algorithm="EAGLE", speculative_draft_model_path="/x").speculative_plan()
    assert (eagle.algorithm, eagle.num_drafts, eagle.draft_model_path) == ("EAGLE", 3, "/x")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(speculative_algorithm="EAGLE"), "EAGLE needs --speculative-draft-model-path"),
        (
            dict(speculative_algorithm="EAGLE", speculative_draft_model_path="/x", speculative_eagle_topk=4),
            "eagle-topk 4",
        ),
        (
            dict(speculative_algorithm="EAGLE", speculative_draft_model_path="/x", tp_size=2),
            "EAGLE is not supported with --tp",
        ),
        (dict(speculative_algorithm="EAGLE3"), "EAGLE3 needs --speculative-draft-model-path"),
        (dict(speculative_algorithm="EAGLE3", speculative_draft_model_path="/x", speculative_eagle_topk=2), "topk 2"),
        (dict(speculative_algorithm="MEDUSA"), "speculative_algorithm"),
        (dict(speculative_algorithm="NGRAM", speculative_eagle_topk=4), "topk"),
        (dict(speculative_algorithm="NGRAM", speculative_num_steps=3, speculative_num_draft_tokens=8), "num_steps"),
        (dict(speculative_algorithm="NGRAM", speculative_num_draft_tokens=1), ">= 2"),
        (dict(speculative_algorithm="NGRAM", speculative_draft_model_path="/x"), "STANDALONE"),
        (dict(speculative_algorithm="STANDALONE"), "draft-model-path"),
        (dict(speculative_num_steps=3), "speculative_algorithm is not"),
        (dict(speculative_algorithm="NGRAM", is_embedding=True), "embedding"),
    ],
)
def test_unsupported_settings_are_refused(kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ServerArgs(**kwargs)


def test_cli_accepts_sglang_spellings() -> None:
    from radixlm.config.cli_args import parse_args

    args = parse_args(
        ["--speculative-algorithm", "NGRAM", "--speculative-num-steps", "3", "--speculative-eagle-topk", "1"]
    )
    assert args.speculative_plan().num_drafts == 3


# -- NGRAM -----------------------------------------------------------------------------------------
def test_ngram_copies_what_followed_the_latest_longest_match() -> None:
    d = NgramDrafter(1, 3, 4)
    #          0  1  2  3  4  5  6  7  8  9
    tokens = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    assert d.lookup(tokens, 4) == [7, 8, 5, 1]  # latest earlier "1 2 3" is at 5..7
    assert d.lookup([4, 5, 6, 5], 3) == [6, 5]  # only a 1-token window matches
    assert d.lookup([1, 2, 3], 3) == []
    assert NgramDrafter(2, 3, 4).lookup([4, 5, 6, 5], 3) == []  # windows shorter than 2 not tried
    req = SimpleNamespace(fill_ids=tokens)
    assert d.propose([req, req], [2, 0]) == [[7, 8], []]


# -- acceptance ------------------------------------------------------------------------------------
def _req(**params: object) -> SimpleNamespace:
    from radixlm.sampling.sampling_params import SamplingParams

    p = SamplingParams(**params)
    plain = p.is_greedy and p.repetition_penalty == 1.0 and not p.logit_bias
    return SimpleNamespace(params=p, output_ids=[], seed=None, plain_greedy=plain)


def test_greedy_acceptance_keeps_drafts_up_to_the_first_miss() -> None:
    logits = torch.full((7, 10), -5.0)
    argmax = [3, 4, 5, 6, 1, 2, 8]
    logits[torch.arange(7), torch.tensor(argmax)] = 5.0
    drafts = [[3, 4, 9], [1, 2]]  # request 0: 2 accepted then a miss; request 1: all accepted
    reqs = [_req(temperature=0), _req(temperature=0)]
    assert accept_drafts(logits, reqs, drafts, 10, {1}) == [[3, 4, 5], [1, 2, 8]]


def test_rejection_sampling_matches_the_target_distribution() -> None:
    """Each row's output (draft if accepted, else residual draw) is distributed as p."""
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(12) * 1.5, dim=0)
    n = 40_000
    probs = p.expand(n, -1).contiguous()
    draft = torch.full((n,), int(p.argmax()))
    draft[n // 2 :] = int(p.argmin())  # a likely and an unlikely draft
    residual, accepted = accept_rows(probs, draft, torch.rand(n), torch.rand(n))
    out = torch.where(accepted, draft, residual)
    for half in (out[: n // 2], out[n // 2 :]):
        counts = torch.bincount(half, minlength=12).double()
        assert chi_square_p(counts, p.double() * half.numel()) > 1e-3


def test_sampled_chain_matches_target_with_top_k_top_p_and_penalty() -> None:
    """Through `accept_drafts` with top-k, top-p and a repetition penalty: the first emitted token
    follows row 0's processed distribution, and the second, given the first draft was kept, row 1's
    (penalised with the first draft counted as generated)."""
    torch.manual_seed(1)
    vocab, n = 10, 6000
    row0, row1 = torch.randn(vocab), torch.randn(vocab)
    kw = dict(temperature=0.8, top_k=6, top_p=0.95, repetition_penalty=1.5, max_new_tokens=8)
    d0, d1 = int(row0.argmax()), int(row1.argsort()[-2])
    logits = torch.stack([row0, row1, torch.randn(vocab)]).repeat(n, 1)
    reqs = [_req(**kw) for _ in range(n)]
    out = accept_drafts(logits, reqs, [[d0, d1]] * n, vocab, {1})
    first = torch.tensor([o[0] for o in out])
    second = torch.tensor([o[1] for o in out if o[0] == d0])
    for token_ids, row, seen in ((first, row0, []), (second, row1, [d0])):
        want = _processed(row, seen, **kw)
        counts = torch.bincount(token_ids, minlength=vocab).double()
        assert chi_square_p(counts, want * token_ids.numel()) > 1e-3


def _processed(row: torch.Tensor, seen: list[int], temperature: float, top_k: int, top_p: float, **kw) -> torch.Tensor:
    """The target distribution by hand: penalty on seen tokens, temperature, top-k, top-p."""
    row = row.clone()
    for t in seen:
        row[t] = row[t] / kw["repetition_penalty"] if row[t] > 0 else row[t] * kw["repetition_penalty"]
    p = torch.softmax(row / temperature, dim=0).double()
    vals, idx = p.sort(descending=True)
    vals[top_k:] = 0
    vals = vals / vals.sum()
    keep = torch.cumsum(vals, 0) - vals < top_p
    vals = torch.where(keep, vals, 0)
    out = torch.zeros_like(p).scatter(0, idx, vals)
    return out / out.sum()


# -- KV trimming -----------------------------------------------------------------------------------
@pytest.mark.parametrize("page", [1, 4])
def test_trim_frees_whole_pages_past_the_kept_length(page: int) -> None:
    from radixlm.mem_cache.cache_manager import KVCacheManager
    from radixlm.mem_cache.kv_pool import ReqToTokenPool, SlotAllocator
    from radixlm.mem_cache.radix_cache import RadixCache
    from radixlm.sampling.sampling_params import SamplingParams
    from radixlm.scheduler.request import Req

    alloc = SlotAllocator(64, page)
    cache = KVCacheManager(alloc, ReqToTokenPool(2, 64, torch.device("cpu")), RadixCache(page_size=page))
    req = Req("r", list(range(10, 17)), SamplingParams(max_new_tokens=4))
    cache.match(req, 7)
    assert cache.assign_row(req)
    cache.alloc_tokens(req, 7)
    free_before = alloc.available_size()
    cache.alloc_tokens(req, 6)  # positions 7..12, as a verify step with drafts would take
    cache.trim(req, 9)
    assert req.kv_len == 9 and len(req.kv_slots) == 9 and req.last_slot == req.kv_slots[-1]
    assert alloc.available_size() == free_before - (-(-9 // page) * page - -(-7 // page) * page)
    again = cache.alloc_tokens(req, 3)  # continues the partly kept page
    assert len(set(req.kv_slots)) == 12 and again == req.kv_slots[9:]
    req.output_ids = [1] * (req.kv_len - req.prompt_len)
    cache.cache_finished(req)
    cache.check_no_leak()


# -- metrics ---------------------------------------------------------------------------------------
def _spec_info(steps: int, emitted: int, drafts: int, accepted: int) -> dict:
    from radixlm.speculative.stats import SpecStats

    stats = SpecStats(verify_steps=steps, emitted=emitted, proposed=drafts, accepted=accepted)
    return {
        **dict(num_running_reqs=0, num_waiting_reqs=0, max_total_num_tokens=100, available_kv_tokens=100),
        **stats.info(),
    }


def test_prometheus_reports_accept_length_and_rate_under_both_names() -> None:
    from radixlm.entrypoints.http.metrics import Metrics

    text = Metrics(lambda: _spec_info(10, 35, 40, 25), "m").render().decode()
    assert "radixlm_spec_accept_length 3.5" in text and "radixlm_spec_accept_rate 0.625" in text
    assert 'sglang:spec_accept_length{model_name="m"} 3.5' in text
    off = {k: v for k, v in _spec_info(0, 0, 0, 0).items() if not k.startswith(("spec_", "avg_spec"))}
    assert "radixlm_spec_accept_length 0.0" in Metrics(lambda: off).render().decode()


def test_data_parallel_info_recomputes_the_ratios_from_summed_counters() -> None:
    from radixlm.ipc.dp_client import aggregate_info

    out = aggregate_info([_spec_info(10, 30, 40, 20), _spec_info(30, 50, 60, 10)], {})
    assert (out["spec_verify_steps"], out["spec_emitted_tokens"]) == (40, 80)
    assert out["avg_spec_accept_length"] == 2.0 and out["spec_accept_rate"] == 0.3


def test_drafts_end_at_an_id_outside_the_vocabulary() -> None:
    """NGRAM copies from the prompt, where an image's pad ids (past the vocabulary) may sit."""
    from types import SimpleNamespace

    from radixlm.speculative.decoder import SpecDecoder

    dec = SpecDecoder(None, None, 512, 100, torch.device("cpu"))
    req = SimpleNamespace(grammar=None)
    assert dec._checked(req, [5, 99, 100 + (1 << 30), 7]) == [5, 99]
    assert dec._checked(req, [-1, 5]) == [] and dec._checked(req, [1, 2]) == [1, 2]

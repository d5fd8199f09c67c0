"""Speculative decoding end to end on tiny random models, with the scheduler built in-process:
greedy outputs equal the plain scheduler's exactly (NGRAM drafts, and an oracle drafter whose
drafts are mostly right so long runs are accepted and then cut by stop tokens, stop strings and
max_new_tokens); logprobs of accepted tokens equal the plain ones; page size 4; constrained
requests mixed in; the pool leak check after every run (`generate` does it)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers.chi_square import two_sample_p
from helpers.inproc_scheduler import generate, make_scheduler

from radixlm.ipc.messages import TokenizedGenerateReq
from radixlm.sampling.sampling_params import SamplingParams
from radixlm.scheduler.loop import step_function
from radixlm.speculative.verify_batch import VerifyBatch

PROMPTS = [[5 + (i * 7 + j) % 50 for j in range(20)] * 2 for i in range(3)] + [[9, 8, 7, 6, 5, 4, 3] * 3]


class OracleDrafter:
    """Drafts the reference continuation of each request, with every `bad`-th draft token
    replaced by a wrong one, so some runs are accepted whole and others cut."""

    def __init__(self, reference: dict[tuple[int, ...], list[int]], bad: int = 5) -> None:
        self.reference, self.bad, self.calls = reference, bad, 0

    def propose(self, reqs: list[Any], limits: list[int]) -> list[list[int]]:
        out = []
        for req, limit in zip(reqs, limits):
            ref = self.reference[tuple(req.origin_input_ids)]
            chain = list(ref[len(req.output_ids) : len(req.output_ids) + min(limit, 6)])
            self.calls += 1
            if chain and self.calls % self.bad == 0:
                chain[len(chain) // 2] = (chain[len(chain) // 2] + 1) % 300
            out.append(chain)
        return out

    def check_leak(self) -> None:
        """Stateless between steps."""


def _greedy(n: int = 30, **kw: Any) -> SamplingParams:
    return SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True, **kw)


@pytest.fixture(scope="module")
def reference(tiny_llama_dir: str) -> dict[tuple[int, ...], list[int]]:
    """The plain scheduler's greedy continuation (40 tokens) of every prompt."""
    runs = generate(make_scheduler(tiny_llama_dir), PROMPTS, [_greedy(40)] * len(PROMPTS))
    return {tuple(p): r["ids"] for p, r in zip(PROMPTS, runs)}


def _oracle(path: str, reference: dict, **kw: Any) -> Any:
    sched = make_scheduler(path, speculative_algorithm="NGRAM", **kw)
    sched.spec.drafter = OracleDrafter(reference)
    return sched


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_ngram_greedy_equals_plain(tiny_model: Any, arch: str) -> None:
    path = tiny_model(arch)
    params = [_greedy(n) for n in (30, 12, 25, 1)]  # mixed lengths: requests leave the batch mid-run
    plain = generate(make_scheduler(path), PROMPTS, params)
    sched = make_scheduler(path, speculative_algorithm="NGRAM", speculative_num_draft_tokens=5)
    spec = generate(sched, PROMPTS, params)
    assert [r["ids"] for r in spec] == [r["ids"] for r in plain]
    info = sched.info()
    assert info["spec_draft_tokens"] > 0 and info["spec_verify_steps"] > 0
    assert not sched.overlap  # speculation runs the plain loop (overlap was not disabled here)
    assert spec[0]["meta"]["spec_verify_ct"] >= 1


def test_chunked_prefill_beside_verify_steps(tiny_llama_dir: str, reference: dict) -> None:
    """Two requests verify drafts; two 40-token prompts then arrive and are prefilled in chunks
    of 16 between their verify steps. Every output is the plain one."""
    sched = _oracle(tiny_llama_dir, reference, chunked_prefill_size=16)
    got: dict[str, list[int]] = {str(i): [] for i in range(len(PROMPTS))}
    kinds: list[str] = []
    choose = sched.next_batch
    sched.next_batch = lambda *a: _kind(choose(*a), kinds)
    step = step_function(sched)
    for i in (0, 1, 2, 3):
        sched.handle(TokenizedGenerateReq(rid=str(i), input_ids=PROMPTS[i], params=_greedy(40)))
        while i == 1 and "verify" not in kinds:  # the first two verify before the others arrive
            for out in step():
                got[out.rid] += out.new_ids
    while sched.has_work():
        for out in step():
            got[out.rid] += out.new_ids
    sched.check_leak()
    assert [got[str(i)] for i in range(len(PROMPTS))] == [reference[tuple(p)] for p in PROMPTS]
    assert sched.info()["spec_accepted_tokens"] > 0 and len(got["0"]) == 40
    first_verify = kinds.index("verify")
    chunks = -(-sum(map(len, PROMPTS[2:])) // 16)  # the late prompts' tokens in chunks of 16
    assert kinds[first_verify:].count("extend") == chunks, kinds


def _kind(batch: Any, kinds: list[str]) -> Any:
    if batch is not None:
        kinds.append("verify" if isinstance(batch, VerifyBatch) else batch.mode.value)
    return batch


@pytest.mark.parametrize("page_size", [1, 4])
def test_oracle_long_runs_equal_plain(tiny_llama_dir: str, reference: dict, page_size: int) -> None:
    sched = _oracle(tiny_llama_dir, reference, page_size=page_size)
    spec = generate(sched, PROMPTS, [_greedy(40)] * len(PROMPTS))
    assert [r["ids"] for r in spec] == [reference[tuple(p)] for p in PROMPTS]
    info = sched.info()
    assert info["avg_spec_accept_length"] > 2.5, info  # long runs were accepted
    assert info["spec_accepted_tokens"] < info["spec_draft_tokens"]  # and some drafts rejected
    assert spec[0]["meta"]["spec_accept_length"] > 2.0


def test_stops_inside_accepted_runs(tiny_llama_dir: str, reference: dict) -> None:
    """A stop token or max_new_tokens met in the middle of an accepted run ends the request there."""
    ref = reference[tuple(PROMPTS[0])]
    stop_tok = ref[17]
    first = ref.index(stop_tok)
    params = [_greedy(40, stop_token_ids=[stop_tok]), _greedy(13), _greedy(40), _greedy(7)]
    spec = generate(_oracle(tiny_llama_dir, reference), PROMPTS, params)
    assert spec[0]["ids"] == ref[: first + 1] and spec[0]["finish"].to_json()["type"] == "stop"
    assert spec[1]["ids"] == reference[tuple(PROMPTS[1])][:13]
    assert spec[3]["ids"] == reference[tuple(PROMPTS[3])][:7]


def test_stop_string_inside_accepted_run(tiny_llama_dir: str, tiny_tokenizer: Any, reference: dict) -> None:
    ref = reference[tuple(PROMPTS[2])]
    text = tiny_tokenizer.decode(ref)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    plain = generate(make_scheduler(tiny_llama_dir, tokenizer=tiny_tokenizer), PROMPTS, [_greedy(40, stop=stop)] * 4)
    sched = _oracle(tiny_llama_dir, reference, tokenizer=tiny_tokenizer)
    spec = generate(sched, PROMPTS, [_greedy(40, stop=stop)] * 4)
    assert [r["ids"] for r in spec] == [r["ids"] for r in plain]
    assert len(spec[2]["ids"]) < 40 and spec[2]["finish"].to_json()["matched"] == stop


def test_logprobs_of_accepted_tokens(tiny_llama_dir: str, reference: dict) -> None:
    kw = dict(return_logprob=True, top_logprobs_num=3)
    plain = generate(make_scheduler(tiny_llama_dir), PROMPTS[:2], [_greedy(20)] * 2, **kw)
    spec = generate(_oracle(tiny_llama_dir, reference), PROMPTS[:2], [_greedy(20)] * 2, **kw)
    for a, b in zip(plain, spec):
        got, want = b["meta"]["output_token_logprobs"], a["meta"]["output_token_logprobs"]
        assert [t for _, t in got] == [t for _, t in want] == b["ids"]
        torch.testing.assert_close([lp for lp, _ in got], [lp for lp, _ in want], atol=1e-4, rtol=0)
        tops = [[t for _, t in row] for row in b["meta"]["output_top_logprobs"]]
        assert tops == [[t for _, t in row] for row in a["meta"]["output_top_logprobs"]]


def test_constrained_request_mixed_with_speculating_ones(tiny_llama_dir: str, tiny_tokenizer: Any) -> None:
    """A request with a grammar gets no drafts but decodes in the same verify batches."""
    params = [_greedy(20), SamplingParams(temperature=0, max_new_tokens=20, regex="(ab|cd){3,8}"), _greedy(20)]
    prompts = PROMPTS[:3]
    plain = generate(make_scheduler(tiny_llama_dir, tokenizer=tiny_tokenizer), prompts, params)
    sched = make_scheduler(tiny_llama_dir, tokenizer=tiny_tokenizer, speculative_algorithm="NGRAM")
    seen: list[bool] = []
    build = sched.spec.decode_batch
    sched.spec.decode_batch = lambda reqs: _note(build(reqs), seen)
    spec = generate(sched, prompts, params)
    assert [r["ids"] for r in spec] == [r["ids"] for r in plain]
    assert any(seen), "no verify batch held the constrained request"


@pytest.mark.parametrize("regex", ["[a-d ]{10,40}", "(ab|cd){3,12}"])
def test_constrained_drafts_pruned_by_the_grammar(tiny_llama_dir: str, tiny_tokenizer: Any, regex: str) -> None:
    """Drafts of constrained requests (the plain constrained output, every fifth chain with a
    wrong token) are kept while the grammar allows them: outputs equal the plain ones and drafts
    were accepted; the second pattern forces text (jump-forward) after every 'a' and 'c'."""
    prompts = PROMPTS[:3]
    params = [SamplingParams(temperature=0, max_new_tokens=30, regex=regex)] * 2 + [_greedy(30)]
    plain = generate(make_scheduler(tiny_llama_dir, tokenizer=tiny_tokenizer), prompts, params)
    sched = make_scheduler(tiny_llama_dir, tokenizer=tiny_tokenizer, speculative_algorithm="NGRAM")
    sched.spec.drafter = OracleDrafter({tuple(p): r["ids"] for p, r in zip(prompts, plain)})
    spec = generate(sched, prompts, params)
    assert [r["ids"] for r in spec] == [r["ids"] for r in plain]
    assert all(r["meta"]["spec_accepted_tokens"] > 0 for r in spec[:2]), [r["meta"] for r in spec]


def _note(batch: Any, seen: list[bool]) -> Any:
    if isinstance(batch, VerifyBatch):
        seen.append(any(r.grammar is not None for r in batch.reqs))
    return batch


class FixedDrafter:
    """Drafts the same chain for every request: a likely and an unlikely continuation mixed."""

    def __init__(self, chain: list[int]) -> None:
        self.chain = chain

    def propose(self, reqs: list[Any], limits: list[int]) -> list[list[int]]:
        return [self.chain[:limit] for limit in limits]

    def check_leak(self) -> None:
        """Stateless between steps."""


@pytest.fixture(scope="module")
def small_vocab_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Llama over 12 tokens (no tokenizer), flatter logits than the shared one."""
    from helpers.tiny_models import tiny_config
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama_tied", 12)
    config.initializer_range = 0.05
    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("vocab12") / "model"
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(str(out))
    return str(out)


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=8, top_p=0.9, min_p=0.02)])
def test_sampled_distribution_matches_plain(small_vocab_model: str, kw: dict) -> None:
    """Chi-square (two samples) on the tokens at output positions 1 and 2 (the drafted ones) and 3
    (the token after an accepted chain), and on the pairs at 1 and 2: the speculative and the
    plain scheduler sample the same distribution. The first draft is the plain run's most
    frequent token at position 1, where a biased acceptance shows most."""
    n = 1500
    prompts = [[3, 5, 7, 4, 6]] * n
    params = [SamplingParams(max_new_tokens=4, ignore_eos=True, **kw)] * n
    plain = generate(make_scheduler(small_vocab_model), prompts, params)
    sched = make_scheduler(small_vocab_model, speculative_algorithm="NGRAM")
    mode = int(torch.tensor([r["ids"][1] for r in plain]).bincount().argmax())
    sched.spec.drafter = FixedDrafter([mode, 9])
    spec = generate(sched, prompts, params)
    assert sched.info()["spec_accepted_tokens"] > 0
    a = torch.tensor([r["ids"] for r in plain])
    b = torch.tensor([r["ids"] for r in spec])
    for col in (1, 2, 3):
        assert two_sample_p(a[:, col], b[:, col], 12) > 1e-3
    assert two_sample_p(a[:, 1] * 12 + a[:, 2], b[:, 1] * 12 + b[:, 2], 144) > 1e-3


def test_engine_reports_acceptance_per_request_and_server_wide(shared_engine: Any) -> None:
    """Through the Engine (scheduler process): the meta info of a speculating request and
    get_server_info count the same verify steps; every token after the prefill's came from one."""
    plain = shared_engine()
    engine = shared_engine(speculative_algorithm="NGRAM", speculative_num_draft_tokens=4)
    params = {"temperature": 0, "max_new_tokens": 60, "ignore_eos": True}
    out = engine.generate(input_ids=PROMPTS[3], sampling_params=params)
    assert out["output_ids"] == plain.generate(input_ids=PROMPTS[3], sampling_params=params)["output_ids"]
    meta = out["meta_info"]
    decoded = meta["completion_tokens"] - 1  # the first token comes from the prefill
    assert meta["spec_accept_length"] == pytest.approx(decoded / meta["spec_verify_ct"])
    assert meta["spec_accept_length"] > 1.0  # this prompt's output repeats itself: some drafts kept
    info = engine.get_server_info()
    assert (info["spec_verify_steps"], info["spec_emitted_tokens"]) == (meta["spec_verify_ct"], decoded)
    assert info["avg_spec_accept_length"] == pytest.approx(meta["spec_accept_length"])
    assert info["spec_accepted_tokens"] == meta["spec_accepted_tokens"] > 0
    assert info["spec_accept_rate"] == pytest.approx(info["spec_accepted_tokens"] / info["spec_draft_tokens"])
    engine.check_no_leak()

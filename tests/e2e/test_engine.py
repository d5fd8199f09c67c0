"""Engine features on a tiny random Llama: stop conditions, n, seeds, streaming, async,
logprob shapes, validation, abort and cache flushing.

Exact token equality with HF is tests/test_golden.py's job; here the reference is the
engine's own greedy output, and each test checks how one feature reshapes it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import radixlm

EOS_ID = 1
GREEDY = {"temperature": 0.0}
PROMPT = "hello world, the quick brown fox"
REPLACEMENT = "\ufffd"

# A crashed receiver thread would hang every later request: fail fast and loudly instead.
pytestmark = [
    pytest.mark.usefixtures("no_leak"),  # every test leaves the KV pool fully accounted for
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]


@pytest.fixture(scope="module")
def engine(llama_engine: radixlm.Engine) -> radixlm.Engine:
    return llama_engine


def greedy(engine: Any, prompt: str, max_new_tokens: int, **extra: Any) -> dict:
    """One greedy generation that ignores EOS, so it always has `max_new_tokens` tokens."""
    params = {**GREEDY, "max_new_tokens": max_new_tokens, "ignore_eos": True, **extra}
    return engine.generate(prompt, params)


def token_boundaries(engine: Any, ids: list[int]) -> set[int]:
    """Character offsets in decode(ids) where one token ends and the next starts
    (only where the prefix decodes to complete characters)."""
    bounds = set()
    for k in range(1, len(ids)):
        text = engine.tokenizer.decode(ids[:k], skip_special_tokens=True)
        if not text.endswith(REPLACEMENT):
            bounds.add(len(text))
    return bounds


def pick_stop_string(engine: Any, text: str, ids: list[int]) -> tuple[str, int]:
    """A substring of `text` from its middle, free of U+FFFD, that first occurs where it is
    taken and crosses a token boundary; returns (stop, its index in `text`)."""
    bounds = token_boundaries(engine, ids)
    for start in list(range(len(text) // 2, len(text) - 3)) + list(range(1, len(text) // 2)):
        for length in (3, 4, 2, 5, 6):
            stop = text[start : start + length]
            crosses = any(start < b < start + length for b in bounds)
            if len(stop) == length and REPLACEMENT not in stop and text.find(stop) == start and crosses:
                return stop, start
    raise AssertionError(f"no usable stop string in {text!r}")


def collect_stream(chunks: Any) -> tuple[str, list[int], list[dict]]:
    chunks = list(chunks)
    return "".join(c["text"] for c in chunks), [t for c in chunks for t in c["output_ids"]], chunks


# -- stop strings / stop tokens / EOS / length ---------------------------------------------


def test_stop_string_truncates_before_the_match(engine: Any) -> None:
    full = greedy(engine, PROMPT, 40)
    stop, index = pick_stop_string(engine, full["text"], full["output_ids"])
    out = greedy(engine, PROMPT, 40, stop=[stop])
    assert out["text"] == full["text"][:index]
    assert stop not in out["text"]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    n = len(out["output_ids"])
    assert 0 < n < 40 and out["output_ids"] == full["output_ids"][:n]
    assert out["meta_info"]["completion_tokens"] == n


def test_stop_string_streaming_never_emits_the_stop(engine: Any) -> None:
    full = greedy(engine, PROMPT, 40)
    stop, index = pick_stop_string(engine, full["text"], full["output_ids"])
    params = {**GREEDY, "max_new_tokens": 40, "ignore_eos": True, "stop": stop}
    whole = engine.generate(PROMPT, params)
    text, ids, chunks = collect_stream(engine.generate(PROMPT, params, stream=True))
    assert text == whole["text"] == full["text"][:index]
    assert ids == whole["output_ids"]
    emitted = ""
    for chunk in chunks:  # every streamed prefix is a prefix of the trimmed text
        emitted += chunk["text"]
        assert full["text"][:index].startswith(emitted)
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}


def test_partial_stop_match_is_released_when_it_does_not_complete(engine: Any) -> None:
    """A stop string whose prefix appears in the output holds that text back while streaming,
    and must hand it out again once the rest of the stop string fails to follow."""
    full = greedy(engine, PROMPT, 40)
    stop, _ = pick_stop_string(engine, full["text"], full["output_ids"])
    never = stop + "\u2603\u2603"  # a snowman pair the byte-level output cannot plausibly reach
    assert never not in full["text"]
    params = {**GREEDY, "max_new_tokens": 40, "ignore_eos": True, "stop": [never]}
    text, ids, chunks = collect_stream(engine.generate(PROMPT, params, stream=True))
    assert text == full["text"] and ids == full["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 40}


def test_stop_token_id_ends_generation_right_after_it(engine: Any) -> None:
    full = greedy(engine, PROMPT, 32)
    ids = full["output_ids"]
    k = next(i for i in range(3, len(ids)) if ids.index(ids[i]) == i and ids[i] != EOS_ID)
    out = greedy(engine, PROMPT, 32, stop_token_ids=[ids[k]])
    assert out["output_ids"] == ids[: k + 1]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": ids[k]}
    assert out["meta_info"]["completion_tokens"] == k + 1


def test_eos_stops_unless_ignored(engine: Any) -> None:
    force_eos = {**GREEDY, "max_new_tokens": 8, "logit_bias": {EOS_ID: 100.0}}
    out = engine.generate(PROMPT, force_eos)
    assert out["output_ids"] == [EOS_ID]
    assert out["text"] == ""
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": EOS_ID}
    ignored = engine.generate(PROMPT, {**force_eos, "ignore_eos": True})
    assert ignored["output_ids"] == [EOS_ID] * 8
    assert ignored["meta_info"]["finish_reason"] == {"type": "length", "length": 8}


def test_min_new_tokens_bans_eos_until_reached(engine: Any) -> None:
    params = {**GREEDY, "max_new_tokens": 16, "min_new_tokens": 5, "logit_bias": {EOS_ID: 100.0}}
    out = engine.generate(PROMPT, params)
    assert len(out["output_ids"]) == 6
    assert EOS_ID not in out["output_ids"][:5] and out["output_ids"][5] == EOS_ID
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": EOS_ID}


@pytest.mark.parametrize("max_new_tokens", [0, 1, 7, 25])
def test_max_new_tokens_and_token_counts(engine: Any, max_new_tokens: int) -> None:
    prompt_ids = engine.tokenizer.encode(PROMPT)
    out = greedy(engine, PROMPT, max_new_tokens)
    meta = out["meta_info"]
    assert len(out["output_ids"]) == max_new_tokens == meta["completion_tokens"]
    assert meta["prompt_tokens"] == len(prompt_ids)
    assert meta["finish_reason"] == {"type": "length", "length": max_new_tokens}
    by_ids = engine.generate(
        input_ids=prompt_ids, sampling_params={**GREEDY, "max_new_tokens": max_new_tokens, "ignore_eos": True}
    )
    assert by_ids["output_ids"] == out["output_ids"]
    assert by_ids["meta_info"]["prompt_tokens"] == len(prompt_ids)


# -- n, seeds ------------------------------------------------------------------------------


def test_n_greedy_samples_are_identical_and_share_the_prompt(engine: Any) -> None:
    prompt = "the lazy dog naps under the warm sun, n=2"
    single = greedy(engine, prompt, 12)
    engine.flush_cache()
    pair = greedy(engine, prompt, 12, n=2)
    assert isinstance(pair, list) and len(pair) == 2
    for sample in pair:
        assert sample["output_ids"] == single["output_ids"]
        assert sample["text"] == single["text"]
    prompt_len = len(engine.tokenizer.encode(prompt))
    cached = sorted(s["meta_info"]["cached_tokens"] for s in pair)
    assert cached[0] == 0 and 0 < cached[1] < prompt_len


def test_n_sampled_counts_and_lengths(engine: Any) -> None:
    out = engine.generate(PROMPT, {"temperature": 1.0, "n": 4, "max_new_tokens": 10, "ignore_eos": True})
    assert len(out) == 4
    assert all(len(s["output_ids"]) == 10 == s["meta_info"]["completion_tokens"] for s in out)
    assert len({s["meta_info"]["id"] for s in out}) == 4


def test_seeded_n_samples_differ_and_are_reproducible(engine: Any) -> None:
    params = {"temperature": 1.0, "n": 4, "max_new_tokens": 32, "ignore_eos": True, "seed": 7}
    first = [s["output_ids"] for s in engine.generate(PROMPT, params)]
    again = [s["output_ids"] for s in engine.generate(PROMPT, params)]
    assert first == again
    assert len({tuple(ids) for ids in first}) == 4
    single = engine.generate(PROMPT, {**params, "n": 1})
    assert single["output_ids"] == first[0]


def test_seed_is_batch_invariant(engine: Any) -> None:
    seeded = {"temperature": 1.0, "max_new_tokens": 32, "ignore_eos": True, "seed": 123}
    alone = engine.generate(PROMPT, seeded)["output_ids"]
    others = ["the capital of France", "héllo wörld", "emoji 🙂 test 🚀"]
    other_params = {"temperature": 1.0, "max_new_tokens": 20, "ignore_eos": True}
    for position in (0, 2, 3):
        prompts = others[:position] + [PROMPT] + others[position:]
        params = [other_params] * position + [seeded] + [other_params] * (len(others) - position)
        batch = engine.generate(prompts, params)
        assert batch[position]["output_ids"] == alone, position
    different = engine.generate(PROMPT, {**seeded, "seed": 124})["output_ids"]
    assert different != alone


# -- streaming and async -------------------------------------------------------------------


def test_stream_concatenates_to_the_non_stream_result(engine: Any) -> None:
    params = {**GREEDY, "max_new_tokens": 24, "ignore_eos": True}
    whole = engine.generate(PROMPT, params)
    text, ids, chunks = collect_stream(engine.generate(PROMPT, params, stream=True))
    assert text == whole["text"] and ids == whole["output_ids"]
    assert len(chunks) > 1
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 24}
    assert chunks[-1]["meta_info"]["completion_tokens"] == 24


def test_text_decoded_once_at_the_end_equals_the_streamed_text(engine: Any) -> None:
    """A non-streaming request without stop strings is detokenized once, when it finishes; its
    text equals the streamed deltas joined and the tokenizer's decode of its ids, on seeded random
    samples over multilingual prompts (which cut multi-byte characters across tokens)."""
    params = {"temperature": 1.0, "max_new_tokens": 32, "ignore_eos": True}
    for i, prompt in enumerate(("héllo wörld", "日本語のテキスト", "привет мир", "🙂 emoji 🙂", "plain text")):
        seeded = {**params, "seed": 100 + i}
        whole = engine.generate(prompt, seeded)
        text, ids, _ = collect_stream(engine.generate(prompt, seeded, stream=True))
        assert ids == whole["output_ids"]
        assert text == whole["text"] == engine.tokenizer.decode(ids, skip_special_tokens=True), prompt


def test_stream_with_n_keeps_samples_apart(engine: Any) -> None:
    params = {**GREEDY, "max_new_tokens": 10, "ignore_eos": True, "n": 2}
    whole = engine.generate(PROMPT, params)
    chunks = list(engine.generate(PROMPT, params, stream=True))
    for index in (0, 1):
        mine = [c for c in chunks if c["index"] == index]
        assert [t for c in mine for t in c["output_ids"]] == whole[index]["output_ids"]
        assert "".join(c["text"] for c in mine) == whole[index]["text"]
        assert mine[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 10}


def test_async_generate_matches_generate(engine: Any) -> None:
    params = {**GREEDY, "max_new_tokens": 16, "ignore_eos": True}
    whole = engine.generate(PROMPT, params)
    result = asyncio.run(engine.async_generate(PROMPT, params))
    assert result["output_ids"] == whole["output_ids"] and result["text"] == whole["text"]

    async def stream() -> list[dict]:
        return [chunk async for chunk in await engine.async_generate(PROMPT, params, stream=True)]

    chunks = asyncio.run(stream())
    assert "".join(c["text"] for c in chunks) == whole["text"]
    assert [t for c in chunks for t in c["output_ids"]] == whole["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 16}


def test_concurrent_async_generate(engine: Any) -> None:
    prompts = [f"request number {i}: the quick brown fox" for i in range(20)]
    lengths = [4 + i % 7 for i in range(20)]
    params = [{**GREEDY, "max_new_tokens": n, "ignore_eos": True} for n in lengths]
    expected = [engine.generate(p, q)["output_ids"] for p, q in zip(prompts, params)]

    async def run_all() -> list[dict]:
        return await asyncio.gather(*(engine.async_generate(p, q) for p, q in zip(prompts, params)))

    results = asyncio.run(run_all())
    assert [r["output_ids"] for r in results] == expected
    assert [r["meta_info"]["completion_tokens"] for r in results] == lengths


# -- logprobs ------------------------------------------------------------------------------


def test_logprob_shapes_and_top_lists(engine: Any) -> None:
    prompt_ids = engine.tokenizer.encode(PROMPT)
    out = engine.generate(
        PROMPT,
        {**GREEDY, "max_new_tokens": 8, "ignore_eos": True},
        return_logprob=True,
        top_logprobs_num=3,
        logprob_start_len=0,
    )
    meta = out["meta_info"]
    inputs = meta["input_token_logprobs"]
    assert len(inputs) == len(prompt_ids)
    assert inputs[0][0] is None and [t for _, t in inputs] == prompt_ids
    assert all(lp <= 0.0 for lp, _ in inputs[1:])
    outputs, tops = meta["output_token_logprobs"], meta["output_top_logprobs"]
    assert len(outputs) == len(tops) == meta["completion_tokens"] == 8
    assert [t for _, t in outputs] == out["output_ids"]
    for (chosen_lp, chosen), top in zip(outputs, tops):
        assert len(top) == 3
        values = [lp for lp, _ in top]
        assert values == sorted(values, reverse=True)
        assert top[0][1] == chosen and top[0][0] == pytest.approx(chosen_lp)
    input_tops = meta["input_top_logprobs"]
    assert len(input_tops) == len(prompt_ids) and input_tops[0] is None
    assert all(len(top) == 3 for top in input_tops[1:])


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"n": 0}, "n"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"no_such_param": 1}, "no_such_param"),
    ],
)
def test_bad_sampling_params_raise_naming_the_field(engine: Any, bad: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        engine.generate(PROMPT, {**GREEDY, "max_new_tokens": 4, **bad})
    assert len(engine.generate(PROMPT, {**GREEDY, "max_new_tokens": 3})["output_ids"]) >= 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": ""}, "empty"),
        ({"input_ids": []}, "empty"),
        ({"input_ids": [5, 400]}, "input_ids"),
        ({"input_ids": [5, -1]}, "input_ids"),
        ({"input_ids": [5] * 600}, "context length"),
        ({"input_ids": [5] * 512}, "context length"),
    ],
)
def test_bad_prompts_raise(engine: Any, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        engine.generate(sampling_params={**GREEDY, "max_new_tokens": 4}, **kwargs)
    out = engine.generate(input_ids=[5] * 511, sampling_params={**GREEDY, "max_new_tokens": 1})
    assert len(out["output_ids"]) == 1


def test_engine_serves_after_errors(engine: Any) -> None:
    for bad in ({"temperature": -1}, {"n": 0}, {"bogus": True}):
        with pytest.raises(ValueError):
            engine.generate(PROMPT, bad)
    out = greedy(engine, PROMPT, 5)
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 5}


# -- abort, cache control -------------------------------------------------------------------


def assert_pool_whole(engine: Any) -> dict:
    info = engine.get_server_info()
    assert info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0
    assert info["available_kv_tokens"] + info["cached_tokens"] == info["max_total_num_tokens"]
    return info


def test_closing_a_stream_aborts_the_request(engine: Any) -> None:
    params = {**GREEDY, "max_new_tokens": 400, "ignore_eos": True}
    received = 0
    for chunk in engine.generate(PROMPT, params, stream=True):
        received += len(chunk["output_ids"])
        if received >= 3:
            break
    # The abort was sent when the generator closed, ahead of this call on the same pipe.
    assert_pool_whole(engine)
    engine.check_no_leak()
    assert greedy(engine, PROMPT, 4)["meta_info"]["completion_tokens"] == 4


def test_closing_an_async_stream_aborts_the_request(engine: Any) -> None:
    params = {**GREEDY, "max_new_tokens": 400, "ignore_eos": True}

    async def read_two() -> int:
        chunks = 0
        stream = await engine.async_generate(PROMPT, params, stream=True)
        async for _ in stream:
            chunks += 1
            if chunks == 2:
                break
        await stream.aclose()
        return chunks

    assert asyncio.run(read_two()) == 2
    assert_pool_whole(engine)
    # The aborted request's last output reaches a closed loop; the engine must shrug it off.
    assert greedy(engine, PROMPT, 4)["meta_info"]["completion_tokens"] == 4


def cached_tokens_of(engine: Any, prompt: str) -> int:
    return greedy(engine, prompt, 2)["meta_info"]["cached_tokens"]


def test_flush_cache_when_idle(engine: Any) -> None:
    prompt = "flush me: the capital of Japan is Tokyo"
    cached_tokens_of(engine, prompt)
    assert cached_tokens_of(engine, prompt) > 0
    assert engine.flush_cache() is True
    assert engine.get_server_info()["cached_tokens"] == 0
    assert cached_tokens_of(engine, prompt) == 0


def test_flush_cache_refused_while_running(engine: Any) -> None:
    params = {**GREEDY, "max_new_tokens": 400, "ignore_eos": True}
    stream = engine.generate("a long running request: the lazy dog", params, stream=True)
    first = next(stream)  # the prompt is prefilled and its prefix locked in the tree
    assert first["meta_info"]["finish_reason"] is None
    assert engine.flush_cache() is False
    stream.close()
    assert_pool_whole(engine)

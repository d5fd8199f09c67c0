"""The `OpenAI` backend (official `openai` client) against radixlm's own `/v1` API, and API
speculative execution. The server runs a character-level tiny model, so the model's own
greedy text tokenizes back to the same tokens and speculation can be compared exactly."""

from __future__ import annotations

import collections
from typing import Iterator

import pytest
from helpers.lang_checks import GREEDY
from helpers.lang_utils import metric, multi_turn_question, tool_use
from helpers.server_utils import launch_server, stop

import radixlm as sgl


@pytest.fixture(scope="module")
def server(char_model_dir: str) -> Iterator[str]:
    base_url, proc = launch_server(char_model_dir)
    try:
        yield base_url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def chat(server):
    return sgl.OpenAI("default", base_url=f"{server}/v1")


@pytest.fixture(scope="module")
def completion(server):
    return sgl.OpenAI("default", base_url=f"{server}/v1", is_chat_model=False)


def test_chat_model_gets_messages(server, chat) -> None:
    s = multi_turn_question.run(question_1="Hi there", question_2="And then?", backend=chat, **GREEDY)
    msgs = s.messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    direct = chat.client.chat.completions.create(model="default", messages=msgs[:4], max_tokens=12, temperature=0)
    assert s["answer_2"] == direct.choices[0].message.content
    native = multi_turn_question.run(
        question_1="Hi there", question_2="And then?", backend=sgl.RuntimeEndpoint(server), **GREEDY
    )
    assert native["answer_2"] == s["answer_2"]  # same prompt through the chat template


def test_completion_model_select_matches_native_select(server, completion) -> None:
    s = tool_use.run(question="What is 2 * 2?", backend=completion, **GREEDY)
    native = tool_use.run(question="What is 2 * 2?", backend=sgl.RuntimeEndpoint(server), **GREEDY)
    assert s["tool"] == native["tool"]
    assert s.get_meta_info("tool")["normalized_prompt_logprobs"] == pytest.approx(
        native.get_meta_info("tool")["normalized_prompt_logprobs"], abs=1e-4
    )


def test_chat_model_limits_are_clear_errors(chat) -> None:
    with pytest.raises(sgl.ProgramError, match="needs a completion model"):
        tool_use.run(question="What is 2 * 2?", backend=chat)

    @sgl.function
    def gen_outside_assistant(s):
        s += sgl.user("Hi") + sgl.gen("x", max_tokens=4)

    with pytest.raises(sgl.ProgramError, match="chat model: gen must come right after"):
        gen_outside_assistant.run(backend=chat)

    @sgl.function
    def regex_gen(s):
        s += sgl.user("Hi")
        s += sgl.assistant(sgl.gen("x", regex="[0-9]+"))

    with pytest.raises(sgl.ProgramError, match="cannot honour regex"):
        regex_gen.run(backend=chat)


def _separator(text: str) -> str:
    """The character the model's greedy text repeats most (used as stop string and constant)."""
    sep, count = collections.Counter(text).most_common(1)[0]
    assert count >= 3, text
    return sep


def test_speculative_completion_cuts_api_calls_with_identical_results(server, completion) -> None:
    prompt = "Name: Alice\nAge:"
    reply = completion.client.completions.create(model="default", prompt=prompt, max_tokens=48, temperature=0)
    sep = _separator(reply.choices[0].text)

    def body(s):
        s += prompt
        s += (
            sgl.gen("a", stop=sep, max_tokens=48)
            + sep
            + sgl.gen("b", stop=sep, max_tokens=48)
            + sep
            + sgl.gen("c", stop=sep, max_tokens=48)
        )

    results, calls = [], []
    for program in (sgl.function(body), sgl.function(num_api_spec_tokens=48)(body)):
        before = metric(server, "radixlm_num_requests")
        s = program.run(backend=completion, **GREEDY)
        calls.append(metric(server, "radixlm_num_requests") - before)
        results.append((s["a"], s["b"], s["c"], s.text()))
    assert results[0] == results[1]
    assert calls == [3, 1]


def test_speculative_chat_fills_one_assistant_message_with_one_call(server, chat) -> None:
    question = [{"role": "user", "content": "Tell me about Bob."}]
    reply = chat.client.chat.completions.create(model="default", messages=question, max_tokens=48, temperature=0)
    text = reply.choices[0].message.content
    sep = _separator(text)

    @sgl.function(num_api_spec_tokens=48)
    def describe(s):
        s += sgl.user("Tell me about Bob.")
        s += sgl.assistant(sgl.gen("a", stop=sep) + sep + sgl.gen("b", stop=sep))

    before = metric(server, "radixlm_num_requests")
    s = describe.run(backend=chat, **GREEDY)
    assert metric(server, "radixlm_num_requests") - before == 1
    assert [s["a"], s["b"]] == text.split(sep)[:2]
    assert s.messages()[-1]["content"] == s["a"] + sep + s["b"]

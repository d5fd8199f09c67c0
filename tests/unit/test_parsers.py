"""Tool-call and reasoning parsers (radixlm.parsers): published example outputs per format,
malformed calls left as content, and streams cut anywhere agreeing with the whole parse."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixlm.parsers.reasoning import ReasoningStream, parse_reasoning, split_reasoning
from radixlm.parsers.tool_call.base import ToolCall
from radixlm.parsers.tool_call.registry import CONSTRAINED_SPLIT, detect_tool_parser, tool_split
from radixlm.parsers.tool_call.stream import ToolCallStream, parse

HYPO = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOOLS = frozenset({"get_current_temperature", "get_temperature_date", "get_current_weather", "search"})

# Qwen2.5's function-calling guide: two parallel calls in the Hermes format.
QWEN_TWO_CALLS = (
    '<tool_call>\n{"name": "get_current_temperature", "arguments": {"location": "San Francisco, CA, USA"}}\n'
    "</tool_call>\n<tool_call>\n"
    '{"name": "get_temperature_date", "arguments": {"location": "San Francisco, CA, USA", "date": "2024-10-01"}}\n'
    "</tool_call>"
)
NESTED = {"query": {"filters": [{"field": "year", "op": ">=", "value": 2020}], "text": 'say "hi"'}, "k": [1, [2]]}
# Llama 3.1's model card: JSON-based tool calling, with and without <|python_tag|>.
LLAMA_CALL = '{"name": "get_current_weather", "parameters": {"location": "San Francisco, CA", "unit": "fahrenheit"}}'
# Mistral's docs: tokenizer v3 array form, and the v11 `name[ARGS]{...}` form.
MISTRAL_ARGS = '{"location": "Paris, France", "format": "celsius"}'
MISTRAL_V3 = '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": ' + MISTRAL_ARGS + "}]"
MISTRAL_V11 = '[TOOL_CALLS]get_current_weather[ARGS]{"location": "Paris, France"}[TOOL_CALLS]search[ARGS]{"q": "x"}'


def _args(call: ToolCall) -> dict:
    return json.loads(call.arguments)


def test_hermes_two_calls_from_qwen_docs() -> None:
    content, calls = parse(tool_split("qwen25"), QWEN_TWO_CALLS, TOOLS)
    assert content == ""
    assert [c.name for c in calls] == ["get_current_temperature", "get_temperature_date"]
    assert _args(calls[1]) == {"location": "San Francisco, CA, USA", "date": "2024-10-01"}


def test_hermes_text_before_and_nested_arguments() -> None:
    text = f"Let me look that up.\n<tool_call>\n{json.dumps({'name': 'search', 'arguments': NESTED})}\n</tool_call>"
    content, calls = parse(tool_split("hermes"), text, TOOLS)
    assert content == "Let me look that up."
    assert len(calls) == 1 and _args(calls[0]) == NESTED


@pytest.mark.parametrize(
    "block",
    [
        '<tool_call>\n{"name": "search", "arguments": {"q": 1}\n</tool_call>',  # JSON cut short
        '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>',  # not an offered tool
        '<tool_call>\n{"arguments": {}}\n</tool_call>',  # no name
        '<tool_call>\n{"name": "search", "arguments": [1]}\n</tool_call>',  # arguments not an object
        '<tool_call>\n{"name": "search", "arguments": {}} trailing\n</tool_call>',
    ],
)
def test_hermes_malformed_calls_stay_content(block: str) -> None:
    good = '<tool_call>{"name": "search", "arguments": {"q": "a"}}</tool_call>'
    content, calls = parse(tool_split("hermes"), f"Before {block} {good}", TOOLS)
    assert content == f"Before {block}"  # the malformed block verbatim, the good call still parsed
    assert [c.name for c in calls] == ["search"] and _args(calls[0]) == {"q": "a"}


def test_hermes_unclosed_block_at_the_end() -> None:
    assert parse(tool_split("hermes"), '<tool_call>\n{"name": "search", "arguments": {}}', TOOLS)[1] == [
        ToolCall("search", "{}")
    ]
    assert parse(tool_split("hermes"), '<tool_call>\n{"name": "search"', TOOLS) == (
        '<tool_call>\n{"name": "search"',
        [],
    )


def test_llama3_json_calls() -> None:
    content, calls = parse(tool_split("llama3"), LLAMA_CALL, TOOLS)
    assert content == "" and calls[0].name == "get_current_weather"
    assert _args(calls[0]) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    two = f'Checking.<|python_tag|>{LLAMA_CALL}; {{"name": "search", "parameters": {json.dumps(NESTED)}}}'
    content, calls = parse(tool_split("llama3"), two, TOOLS)
    assert content == "Checking." and [c.name for c in calls] == ["get_current_weather", "search"]
    assert _args(calls[1]) == NESTED


@pytest.mark.parametrize(
    "text",
    ['{"answer": 42}', '{"name": "get_current_weather", "parameters": {"a": 1}', "The weather is nice.", "{ broken"],
)
def test_llama3_non_calls_stay_content(text: str) -> None:
    assert parse(tool_split("llama3"), text, TOOLS) == (text, [])


def test_mistral_both_forms() -> None:
    content, calls = parse(tool_split("mistral"), "Sure. " + MISTRAL_V3, TOOLS)
    assert content == "Sure." and calls == [ToolCall("get_current_weather", MISTRAL_ARGS)]
    content, calls = parse(tool_split("mistral"), MISTRAL_V11, TOOLS)
    assert content == "" and [c.name for c in calls] == ["get_current_weather", "search"]
    bad = '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": {"location": }]'
    assert parse(tool_split("mistral"), bad, TOOLS) == (bad, [])


def test_constrained_array_format() -> None:
    text = json.dumps([{"name": "search", "arguments": NESTED}, {"name": "search", "arguments": {}}])
    content, calls = parse(CONSTRAINED_SPLIT, text, TOOLS)
    assert content == "" and [_args(c) for c in calls] == [NESTED, {}]
    assert parse(CONSTRAINED_SPLIT, '[{"name": "search", "arguments": {', TOOLS)[1] == []  # cut by max_tokens


def test_detect_from_template() -> None:
    assert detect_tool_parser("{% if tools %}<tool_call>{% endif %}") == "hermes"
    assert detect_tool_parser("[TOOL_CALLS]") == "mistral"
    assert detect_tool_parser("{{ '<|python_tag|>' }}") == "llama3"
    assert detect_tool_parser("{{ messages }}") is None and detect_tool_parser(None) is None


def _cuts(text: str, data: st.DataObject) -> list[str]:
    points = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


STREAM_CASES = [
    ("hermes", "  Let me check.\n" + QWEN_TWO_CALLS + "\nDone.  "),
    ("hermes", 'x <tool_call>{"name": "nope", "arguments": {}}</tool_call> y <tool_c'),
    ("llama3", LLAMA_CALL),
    ("llama3", 'Hm <|python_tag|>{"name": "search", "parameters": {"q": 1}}'),
    ("mistral", "Sure. " + MISTRAL_V3),
    ("mistral", MISTRAL_V11),
]


@HYPO
@given(case=st.sampled_from(STREAM_CASES), data=st.data())
def test_stream_cut_anywhere_equals_whole_parse(case: tuple[str, str], data: st.DataObject) -> None:
    fmt, text = case
    stream = ToolCallStream(tool_split(fmt), TOOLS)
    deltas = [stream.feed(piece) for piece in _cuts(text, data)] + [stream.finish()]
    calls = [(k, c) for d in deltas for k, c in d.calls]
    content, whole = parse(tool_split(fmt), text, TOOLS)
    assert "".join(d.content for d in deltas) == content
    assert [c for _, c in calls] == whole and [k for k, _ in calls] == list(range(len(whole)))


def test_stream_holds_a_partial_marker_and_an_open_call() -> None:
    stream = ToolCallStream(tool_split("hermes"), TOOLS)
    assert stream.feed("Hello <tool_").content == "Hello"
    assert stream.feed('call>{"name": "search", "arguments": {').content == ""
    step = stream.feed('"q": 1}}</tool_call>')
    assert step.calls == [(0, ToolCall("search", '{"q": 1}'))] and step.content == ""


@pytest.mark.parametrize(
    "text, forced, expected",
    [
        ("<think>\nLet me think.\n</think>\n\nThe answer is 4.", False, ("Let me think.", "The answer is 4.")),
        ("The answer is 4.", False, ("", "The answer is 4.")),
        ("Let me think.\n</think>\n\nThe answer is 4.", True, ("Let me think.", "The answer is 4.")),
        ("<think>\nLet me think.\n</think>\n\nThe answer is 4.", True, ("Let me think.", "The answer is 4.")),
        ("<think>\ncut off by max_tokens", False, ("cut off by max_tokens", "")),
        ("cut off by max_tokens", True, ("cut off by max_tokens", "")),
        ("4 </think> no opening tag", False, ("", "4 </think> no opening tag")),
    ],
)
def test_reasoning_split(text: str, forced: bool, expected: tuple[str, str]) -> None:
    assert parse_reasoning(text, forced) == expected


@HYPO
@given(
    text=st.sampled_from(
        ["<think>\nA b.\n\n</think>\n\nC d.", "A <b>\n</think>x", "<thi", "plain  text ", "<think>ab</thi"]
    ),
    forced=st.booleans(),
    data=st.data(),
)
def test_reasoning_stream_cut_anywhere(text: str, forced: bool, data: st.DataObject) -> None:
    stream = ReasoningStream(forced)
    steps = [stream.feed(piece) for piece in _cuts(text, data)] + [stream.finish()]
    assert ("".join(r for r, _ in steps), "".join(c for _, c in steps)) == parse_reasoning(text, forced)


def test_reasoning_waits_for_the_opening_tag() -> None:
    assert split_reasoning("<thi", final=False, forced=False) == ("", "", False)
    stream = ReasoningStream(forced=False)
    assert stream.feed("<th") == ("", "")
    assert stream.feed("ink>\nStep one") == ("Step one", "")
    assert stream.feed(" done.</think>\n\nHi") == (" done.", "Hi")

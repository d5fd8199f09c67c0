"""The chat front's tool plan (`chat_tools`) and choice reader (`chat_output`), without a server."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixlm.entrypoints.http.chat_output import OutputPlan
from radixlm.entrypoints.http.chat_tools import plan_tools
from radixlm.entrypoints.http.errors import APIError
from radixlm.parsers.tool_call.registry import CONSTRAINED_SPLIT, tool_split

PARAMS = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "search", "parameters": PARAMS}},
    {"type": "function", "function": {"name": "now"}},
]


def _body(**kw: Any) -> SimpleNamespace:
    base = dict(tools=TOOLS, tool_choice=None, parallel_tool_calls=True, response_format=None, regex=None)
    return SimpleNamespace(**{**base, "json_schema": None, "ebnf": None, **kw})


def test_required_schema_accepts_exactly_valid_calls() -> None:
    schema = plan_tools(_body(tool_choice="required"), None).schema
    jsonschema.validate([{"name": "search", "arguments": {"q": "x"}}, {"name": "now", "arguments": {}}], schema)
    for bad in ([], [{"name": "search", "arguments": {}}], [{"name": "other", "arguments": {}}], {"name": "now"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_named_and_single_call_schemas() -> None:
    plan = plan_tools(
        _body(tool_choice={"type": "function", "function": {"name": "now"}}, parallel_tool_calls=False), None
    )
    jsonschema.validate([{"name": "now", "arguments": {}}], plan.schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "search", "arguments": {"q": "x"}}], plan.schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "now", "arguments": {}}] * 2, plan.schema)
    assert plan.split is CONSTRAINED_SPLIT and plan.template_tools == TOOLS


def test_choices_that_cannot_be_served() -> None:
    none = plan_tools(_body(tool_choice="none"), None)
    assert none.split is None and none.schema is None and none.template_tools == TOOLS
    assert plan_tools(_body(), "hermes").split is tool_split("hermes")
    for body, parser in [
        (_body(), None),  # auto without a format
        (_body(tools=None, tool_choice="auto"), "hermes"),
        (_body(tool_choice={"type": "function", "function": {"name": "nope"}}), None),
        (_body(tool_choice="required", regex="a+"), None),
        (_body(tools=[{"type": "function", "function": {"name": "bad name"}}]), "hermes"),
    ]:
        with pytest.raises(APIError):
            plan_tools(body, parser)


THINK_CALL = (
    '<think>\nI should search.\n</think>\n\nOne moment. <tool_call>{"name": "search", "arguments": {"q": "a"}}'
    '</tool_call>\n<tool_call>{"name": "now", "arguments": {}}</tool_call>'
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parallel=st.booleans(), data=st.data())
def test_stream_deltas_add_up_to_the_message(parallel: bool, data: st.DataObject) -> None:
    plan = OutputPlan(
        reasoning_forced=False, split=tool_split("hermes"), tool_names=frozenset({"search", "now"}), parallel=parallel
    )
    message = plan.message(THINK_CALL)
    assert message["reasoning_content"] == "I should search." and message["content"] == "One moment."
    assert [c["function"]["name"] for c in message["tool_calls"]] == (["search", "now"] if parallel else ["search"])
    cuts = sorted(data.draw(st.sets(st.integers(0, len(THINK_CALL)), max_size=10)))
    bounds = [0, *cuts, len(THINK_CALL)]
    reader = plan.stream()
    deltas = [d for a, b in zip(bounds, bounds[1:]) for d in reader.feed(THINK_CALL[a:b])] + reader.finish()
    assert "".join(d.get("reasoning_content", "") for d in deltas) == message["reasoning_content"]
    assert "".join(d.get("content", "") for d in deltas) == message["content"]
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert [c["index"] for c in calls] == list(range(len(message["tool_calls"])))
    assert [(c["function"], c["type"]) for c in calls] == [(c["function"], c["type"]) for c in message["tool_calls"]]
    assert json.loads(calls[0]["function"]["arguments"]) == {"q": "a"}


def test_plain_plan_passes_text_unchanged() -> None:
    plan = OutputPlan()
    assert plan.message("  raw <think> text ") == {"role": "assistant", "content": "  raw <think> text "}


def test_template_messages_carry_calls_as_objects() -> None:
    from radixlm.entrypoints.http.chat_tools import template_message

    call = {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}
    msg = SimpleNamespace(name=None, tool_call_id=None, tool_calls=[call])
    assert template_message("assistant", "", msg)["tool_calls"][0]["function"]["arguments"] == {"q": "x"}
    for bad in ({"id": "c", "function": "search"}, {"function": {"name": "s", "arguments": "{oops"}}):
        with pytest.raises(APIError):
            template_message("assistant", "", SimpleNamespace(name=None, tool_call_id=None, tool_calls=[bad]))
    answer = template_message("tool", "21", SimpleNamespace(name="search", tool_call_id="call_1", tool_calls=None))
    assert answer == {"role": "tool", "content": "21", "name": "search", "tool_call_id": "call_1"}


def test_kept_special_tokens_lose_the_stop_token_text(tiny_tokenizer: Any) -> None:
    """With a format whose markers are special tokens (llama3, mistral), the text keeps special
    tokens, so the stop token's own text ends it: the message must not carry it."""
    from radixlm.entrypoints.http.openai_chat import _text
    from radixlm.ipc.finish import FinishLength, FinishStop

    state = SimpleNamespace(engine=SimpleNamespace(tokenizer=tiny_tokenizer))
    plan = OutputPlan(split=tool_split("mistral"), cut_stop_token=True)
    stopped = SimpleNamespace(done=True, finish=FinishStop(1))  # id 1 is "</s>"
    text = '[TOOL_CALLS] [{"name": "search", "arguments": {"q": "x"}}]</s>'
    assert _text(state, plan, stopped, text) == text[: -len("</s>")]
    assert plan.message(_text(state, plan, stopped, text))["tool_calls"][0]["function"]["name"] == "search"
    assert _text(state, plan, SimpleNamespace(done=True, finish=FinishLength(5)), text) == text
    assert _text(state, OutputPlan(), stopped, text) == text  # text without kept special tokens is left alone

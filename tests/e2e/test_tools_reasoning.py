"""Tool calling and reasoning output through the official `openai` client.

The tiny random model writes arbitrary text, so what is checked where:
- `tool_choice` "required" / named: the grammar built from the tools' schemas forces valid
  calls, so the model's own sampled output is parsed (50 samples at temperature 1 validated
  with `jsonschema`).
- `tool_choice` "auto" and the reasoning split: the output is forced to a known text with a
  `regex` constraint, so the Hermes / think parsers read known text through the server.
- The per-format parsers on published example outputs are tests/unit/test_parsers.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

MODEL = "default"
# A Hermes/Qwen-style template: tools listed in a system turn (names and descriptions only: the
# tiny model's context is 512 tokens), calls as <tool_call> JSON,
# tool answers as <tool_response>; `enable_thinking=false` closes an empty think section.
TOOL_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if tools %}<|system|>You may call these functions:\n"
    "{%- for tool in tools %}\n{{ tool.function.name }}: {{ tool.function.description }}{% endfor %}\n"
    'Reply with <tool_call>{"name": ..., "arguments": ...}</tool_call>.{{ eos_token }}{% endif %}'
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|assistant|>{{ message.content or '' }}"
    "{%- for call in message.tool_calls %}<tool_call>"
    "{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}</tool_call>"
    "{%- endfor %}{{ eos_token }}"
    "{%- elif message.role == 'tool' %}<|tool|><tool_response>{{ message.content }}</tool_response>{{ eos_token }}"
    "{%- else %}<|{{ message.role }}|>{{ message.content }}{{ eos_token }}{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>"
    "{%- if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "options": {
            "type": "object",
            "properties": {
                "alerts": {"type": "boolean"},
                "hours": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
            },
            "required": ["alerts"],
            "additionalProperties": False,
        },
    },
    "required": ["city", "unit", "options"],
    "additionalProperties": False,
}
SEARCH_PARAMS = {
    "type": "object",
    "properties": {"query": {"type": "string", "maxLength": 10}, "top": {"type": "boolean"}},
    "required": ["query", "top"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER_PARAMS},
    },
    {"type": "function", "function": {"name": "search", "description": "Web search", "parameters": SEARCH_PARAMS}},
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "search": SEARCH_PARAMS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def template_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tool_template") / "hermes_style.jinja"
    path.write_text(TOOL_TEMPLATE)
    return str(path)


@pytest.fixture(scope="module")
def tool_url(server_factory: Any, tiny_llama_dir: str, template_file: str) -> str:
    """The tiny Llama with the tool template; Hermes calls, Qwen3-style reasoning."""
    url, _ = server_factory(
        tiny_llama_dir, "--chat-template", template_file, "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3"
    )
    return url


@pytest.fixture(scope="module")
def client(tool_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tool_url}/v1", api_key="x", max_retries=0, timeout=120)


def _validate(calls: Any) -> None:
    assert calls, "no tool calls"
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_and_named_choices_always_validate(client: openai.OpenAI) -> None:
    """50 samples at temperature 1: every one is one call whose arguments validate. (One call
    each: a random model seldom closes an open-ended array of calls before max_tokens.)"""
    named = {"type": "function", "function": {"name": "search"}}
    seen = set()
    for choice, n in (("required", 25), (named, 25)):
        out = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=TOOLS,
            tool_choice=choice,
            parallel_tool_calls=False,
            temperature=1.0,
            n=n,
            max_tokens=300,
            seed=7,
        )
        assert len(out.choices) == n
        for c in out.choices:
            assert c.finish_reason == "tool_calls", c.message
            assert c.message.content is None and len(c.message.tool_calls) == 1
            _validate(c.message.tool_calls)
            seen.update(call.function.name for call in c.message.tool_calls)
            if choice is named:
                assert c.message.tool_calls[0].function.name == "search"
    assert seen == {"get_weather", "search"}  # "required" is free to pick any tool, and sampling did


def test_parallel_calls_validate_or_run_out_of_tokens(client: openai.OpenAI) -> None:
    """With parallel calls the array is open-ended: a choice either closes it (every call
    valid, finish "tool_calls") or hits max_tokens (no calls, the raw text as content)."""
    out = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=1.0, n=10, max_tokens=300, seed=7
    )
    finished = [c for c in out.choices if c.finish_reason == "tool_calls"]
    assert finished, "no choice closed its array"
    for c in out.choices:
        if c.finish_reason == "tool_calls":
            _validate(c.message.tool_calls)
        else:
            assert c.finish_reason == "length" and c.message.tool_calls is None
            assert c.message.content.startswith('[{"name": ')


def _rendered_len(tiny_llama_dir: str, messages: list[dict], tools: Any = None, **kwargs: Any) -> int:
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    text = tok.apply_chat_template(
        messages, tools=tools, chat_template=TOOL_TEMPLATE, tokenize=False, add_generation_prompt=True, **kwargs
    )
    return len(tok.encode(text, add_special_tokens=False))


def test_round_trip_renders_calls_and_tool_answers(client: openai.OpenAI, tiny_llama_dir: str) -> None:
    """tools -> tool_calls -> tool message -> answer; the second prompt is the template's
    rendering of the assistant call and the tool answer (its exact token count)."""
    first = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=200,
    )
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *ASK,
        first.choices[0].message,  # the client's own object, as a user would pass it back
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=8)
    assert second.choices[0].message.role == "assistant"
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    as_dicts = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": json.loads(call.function.arguments)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    assert second.usage.prompt_tokens == _rendered_len(tiny_llama_dir, as_dicts, tools=TOOLS)
    assert first.usage.prompt_tokens == _rendered_len(tiny_llama_dir, ASK, tools=TOOLS)


def test_streamed_tool_calls_reassemble_like_the_whole_answer(client: openai.OpenAI) -> None:
    kwargs = dict(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=1.0,
        seed=11,
        max_tokens=200,
    )
    whole = client.chat.completions.create(**kwargs)
    with client.chat.completions.stream(**kwargs) as stream:
        streamed = stream.get_final_completion()
    calls = streamed.choices[0].message.tool_calls
    _validate(calls)
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        (c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls
    ]
    assert streamed.choices[0].finish_reason == "tool_calls"


FORCED_CALL = 'Checking.<tool_call>{"name": "search", "arguments": {"query": "paris", "top": true}}</tool_call>'


def test_auto_choice_parses_a_hermes_call(client: openai.OpenAI) -> None:
    """The output is forced to a known Hermes text (regex), so the auto parser's reading of it
    is checked, whole and streamed."""
    kwargs = dict(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        temperature=0,
        max_tokens=200,
        extra_body={"regex": re.escape(FORCED_CALL)},
    )
    out = client.chat.completions.create(**kwargs)
    message = out.choices[0].message
    assert message.content == "Checking." and out.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("search", {"query": "paris", "top": True})
    ]
    with client.chat.completions.stream(**kwargs) as stream:
        final = stream.get_final_completion().choices[0].message
    assert (
        final.content == "Checking."
        and final.tool_calls[0].function.arguments == message.tool_calls[0].function.arguments
    )


THOUGHT = "<think>\nThe user wants 2+2. That is 4.\n</think>\n\nThe answer is 4."


def test_reasoning_split_whole_and_streamed(client: openai.OpenAI, tool_url: str) -> None:
    kwargs = dict(model=MODEL, messages=ASK, temperature=0, max_tokens=200, extra_body={"regex": re.escape(THOUGHT)})
    message = client.chat.completions.create(**kwargs).choices[0].message
    assert message.reasoning_content == "The user wants 2+2. That is 4."
    assert message.content == "The answer is 4."
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
    assert (reasoning, content) == (message.reasoning_content, message.content)
    kept = client.chat.completions.create(
        **{**kwargs, "extra_body": {**kwargs["extra_body"], "separate_reasoning": False}}
    )
    assert kept.choices[0].message.content == THOUGHT
    assert getattr(kept.choices[0].message, "reasoning_content", None) is None


def test_chat_template_kwargs_reach_the_template(client: openai.OpenAI, tiny_llama_dir: str) -> None:
    out = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=1, extra_body={"chat_template_kwargs": {"enable_thinking": False}}
    )
    assert out.usage.prompt_tokens == _rendered_len(tiny_llama_dir, ASK, enable_thinking=False)
    assert out.usage.prompt_tokens > _rendered_len(tiny_llama_dir, ASK)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"tool_choice": "required"}, "tool_choice"),  # no tools
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name"),
        ({"tools": [{"type": "function", "function": {**TOOLS[1]["function"], "strict": True}}]}, "tools"),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
        ({"chat_template_kwargs": {"tools": []}}, "chat_template_kwargs"),
    ],
)
def test_bad_tool_requests(tool_url: str, body: dict, param: str) -> None:
    r = httpx.post(f"{tool_url}/v1/chat/completions", json={"model": MODEL, "messages": ASK, **body}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_auto_without_a_known_format_is_refused(http: httpx.Client) -> None:
    """The shared server's template writes no tool-call markers and has no --tool-call-parser."""
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "tools": TOOLS})
    assert r.status_code == 400 and "--tool-call-parser" in r.json()["error"]["message"]
    ok = http.post(
        "/v1/chat/completions",
        json={
            **{"model": MODEL, "messages": ASK, "tools": TOOLS},
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
    )
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["tool_calls"]


R1_TEMPLATE = TOOL_TEMPLATE.replace(
    "{%- if add_generation_prompt %}<|assistant|>", "{%- if add_generation_prompt %}<|assistant|><think>\n"
)


@pytest.fixture(scope="module")
def r1_client(server_factory: Any, tiny_llama_dir: str, tmp_path_factory: pytest.TempPathFactory) -> openai.OpenAI:
    """A DeepSeek-R1-style template (the prompt opens `<think>`) and `--reasoning-parser deepseek-r1`."""
    path = tmp_path_factory.mktemp("r1_template") / "r1.jinja"
    path.write_text(R1_TEMPLATE)
    url, _ = server_factory(tiny_llama_dir, "--chat-template", str(path), "--reasoning-parser", "deepseek-r1")
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)


def test_output_opened_in_reasoning_is_reasoning_until_it_closes(r1_client: openai.OpenAI) -> None:
    """The model's own sampled text (no `</think>` from a random model): all of it is reasoning,
    whole and streamed, and separate_reasoning=false gives it back as content."""
    kwargs = dict(model=MODEL, messages=ASK, temperature=1.0, seed=3, max_tokens=24, extra_body={"ignore_eos": True})
    raw = r1_client.chat.completions.create(
        **{**kwargs, "extra_body": {"ignore_eos": True, "separate_reasoning": False}}
    )
    text = raw.choices[0].message.content
    assert "</think>" not in text and text.strip()
    message = r1_client.chat.completions.create(**kwargs).choices[0].message
    assert (message.reasoning_content, message.content) == (text.strip(), "")
    streamed = ""
    for chunk in r1_client.chat.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            assert not choice.delta.content
            streamed += getattr(choice.delta, "reasoning_content", None) or ""
    assert streamed == message.reasoning_content

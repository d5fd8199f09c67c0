"""A constraint requested of a reasoning model holds after its reasoning section: the reasoning is
free text (the same as without the constraint), the content after `</think>` follows the schema.

The tiny model's tokenizer gets `<think>` and `</think>` as single (non-special) tokens, as
reasoning models' tokenizers have them; `logit_bias` puts the markers where a test needs them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}
ASK = [{"role": "user", "content": "Is the sky blue?"}]
TEMPLATE = (
    "{{ bos_token }}{%- for message in messages %}<|{{ message.role }}|>{{ message.content }}{{ eos_token }}"
    "{%- endfor %}{%- if add_generation_prompt %}<|assistant|>OPEN{% endif %}"
)


def _model_with_markers(root: Path) -> tuple[str, dict[str, int]]:
    import torch
    from helpers.tiny_models import make_tiny_tokenizer, tiny_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(make_tiny_tokenizer(root / "tok"))
    tokenizer.add_tokens(["<think>", "</think>"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=len(tokenizer)), dtype=torch.float32)
    out = root / "tiny_reasoner"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    ids = {m: tokenizer.convert_tokens_to_ids(m) for m in ("<think>", "</think>")}
    return str(out), ids


@pytest.fixture(scope="module")
def reasoner(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int]]:
    return _model_with_markers(tmp_path_factory.mktemp("reasoner"))


def _client(server_factory: Any, model: str, root: Path, parser: str, opens: bool) -> openai.OpenAI:
    template = root / f"{parser}.jinja"
    template.write_text(TEMPLATE.replace("OPEN", "<think>\n" if opens else ""))
    url, _ = server_factory(model, "--chat-template", str(template), "--reasoning-parser", parser)
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def r1(server_factory: Any, reasoner: tuple[str, dict[str, int]], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """DeepSeek-R1 style: the prompt opens `<think>`."""
    return _client(server_factory, reasoner[0], tmp_path_factory.mktemp("r1"), "deepseek-r1", opens=True)


@pytest.fixture(scope="module")
def qwen3(server_factory: Any, reasoner: tuple[str, dict[str, int]], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Qwen3 style: the model writes `<think>` itself, or answers at once."""
    return _client(server_factory, reasoner[0], tmp_path_factory.mktemp("q3"), "qwen3", opens=False)


def _ask(client: openai.OpenAI, **kwargs: Any) -> Any:
    extra = kwargs.pop("extra_body", {})
    return client.chat.completions.create(
        model="default",
        messages=ASK,
        temperature=0,
        max_tokens=kwargs.pop("max_tokens", 48),
        extra_body=extra,
        **kwargs,
    ).choices[0]


def test_reasoning_is_unconstrained(r1: openai.OpenAI) -> None:
    """No `</think>` within the budget: the whole output is reasoning, token for token what the
    model writes with no constraint at all (the schema has not started)."""
    free = _ask(r1, max_tokens=12, extra_body={"ignore_eos": True})
    held = _ask(r1, max_tokens=12, response_format=FORMAT, extra_body={"ignore_eos": True})
    assert held.message.reasoning_content == free.message.reasoning_content and held.message.reasoning_content
    assert not held.message.content and held.finish_reason == "length"


def test_content_after_the_reasoning_follows_the_schema(r1: openai.OpenAI, reasoner: Any) -> None:
    end = reasoner[1]["</think>"]
    choice = _ask(r1, response_format=FORMAT, logit_bias={str(end): 100})
    assert choice.finish_reason == "stop"
    assert choice.message.reasoning_content in (None, "")
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    streamed = ""
    for chunk in r1.chat.completions.create(
        model="default", messages=ASK, temperature=0, max_tokens=48, response_format=FORMAT,
        logit_bias={str(end): 100}, stream=True,
    ):  # fmt: skip
        for part in chunk.choices:
            streamed += part.delta.content or ""
    assert streamed == choice.message.content


def test_a_model_that_opens_reasoning_itself(qwen3: openai.OpenAI, reasoner: Any) -> None:
    start, end = reasoner[1]["<think>"], reasoner[1]["</think>"]
    # `</think>` cannot come first (the output has not opened a section), so `<think>` does, then `</think>`.
    thought = _ask(qwen3, response_format=FORMAT, logit_bias={str(start): 50, str(end): 100})
    assert thought.finish_reason == "stop" and thought.message.reasoning_content in (None, "")
    jsonschema.validate(json.loads(thought.message.content), SCHEMA)
    direct = _ask(qwen3, response_format=FORMAT)  # no section: the schema holds from the first token
    assert direct.message.reasoning_content in (None, "")
    if direct.finish_reason == "stop":
        jsonschema.validate(json.loads(direct.message.content), SCHEMA)
    else:
        assert direct.finish_reason == "length" and direct.message.content.startswith("{")

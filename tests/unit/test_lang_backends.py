"""API backends offline: the requests `Anthropic` and `OpenAI` build from a program (fake
clients injected through the constructor; no network)."""

from __future__ import annotations

from types import SimpleNamespace as NS
from typing import Any

import pytest

import radixlm as sgl

pytestmark = pytest.mark.timeout(60)
PNG = b"\x89PNG\r\n\x1a\n fake image"


class FakeAnthropic:
    """Records `messages.create` calls; answers with a fixed text (or a stream of events)."""

    def __init__(self, reply: str = "Paris.") -> None:
        self.calls: list[dict] = []
        self.reply = reply
        self.messages = NS(create=self._create)

    def _create(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if kwargs.get("stream"):
            return iter(self._events())
        return NS(
            content=[NS(type="text", text=self.reply)],
            stop_reason="end_turn",
            usage=NS(input_tokens=11, output_tokens=2),
        )

    def _events(self) -> list:
        deltas = [NS(type="content_block_delta", delta=NS(type="text_delta", text=ch)) for ch in self.reply]
        return [
            NS(type="message_start", message=NS(usage=NS(input_tokens=11))),
            *deltas,
            NS(type="message_delta", usage=NS(output_tokens=2), delta=NS(stop_reason="end_turn")),
        ]


@sgl.function
def image_chat(s, question):
    s += sgl.system("You are terse.")
    s += sgl.user(sgl.image(PNG) + question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=16, stop=["\n"], temperature=0))
    s += sgl.user("And https?")
    s += sgl.assistant(sgl.gen("again", max_tokens=8, top_k=5))


def test_anthropic_message_mapping() -> None:
    client = FakeAnthropic()
    s = image_chat.run("What is this?", backend=sgl.Anthropic("claude-test", client=client))
    assert s["answer"] == "Paris." and s.get_meta_info("answer")["prompt_tokens"] == 11
    first, second = client.calls
    assert first["model"] == "claude-test" and first["system"] == "You are terse."
    assert first["max_tokens"] == 16 and first["stop_sequences"] == ["\n"]
    assert first["extra_body"] == {"temperature": 0, "top_p": 1.0}
    image, text = first["messages"][0]["content"]
    assert image["source"]["type"] == "base64" and image["source"]["media_type"] == "image/png"
    assert text == {"type": "text", "text": "What is this?"}
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1:] == [
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And https?"},
    ]
    assert second["extra_body"]["top_k"] == 5


def test_anthropic_streaming_and_limits() -> None:
    backend = sgl.Anthropic("claude-test", client=FakeAnthropic("Hi!"))
    s = image_chat.run("What?", backend=backend, stream=True)
    assert "".join(s.text_iter("answer")) == "Hi!"
    assert s.get_meta_info("again")["completion_tokens"] == 2

    @sgl.function
    def needs_select(s):
        s += sgl.user("Pick") + sgl.assistant(sgl.select("x", ["a", "b"]))

    with pytest.raises(sgl.ProgramError, match="cannot score choices"):
        needs_select.run(backend=backend)


def test_anthropic_builds_the_official_client_offline() -> None:
    pytest.importorskip("anthropic")
    backend = sgl.Anthropic("claude-test", api_key="test-key")
    assert type(backend.client).__name__ == "Anthropic"


class FakeOpenAI:
    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.chat = NS(completions=NS(create=self._create))

    def _create(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        usage = NS(prompt_tokens=7, completion_tokens=1, prompt_tokens_details=NS(cached_tokens=3))
        return NS(choices=[NS(message=NS(content="ok"), finish_reason="stop")], usage=usage)


def test_openai_chat_request_mapping() -> None:
    client = FakeOpenAI()
    s = image_chat.run("What is this?", backend=sgl.OpenAI("gpt-test", client=client), min_p=0.1)
    assert s.get_meta_info("answer") == {
        "finish_reason": "stop",
        "prompt_tokens": 7,
        "completion_tokens": 1,
        "cached_tokens": 3,
    }
    first = client.calls[0]
    assert first["messages"][0] == {"role": "system", "content": "You are terse."}
    assert first["messages"][1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert first["stop"] == ["\n"] and first["max_tokens"] == 16
    assert first["extra_body"] == {"min_p": 0.1}
    assert client.calls[1]["extra_body"] == {"top_k": 5, "min_p": 0.1}
    assert sgl.OpenAI("gpt-3.5-turbo-instruct", client=client).is_chat_model is False


def test_anthropic_speculative_assistant_message_in_one_call() -> None:
    client = FakeAnthropic("Name: Bob\nAge: 7")

    @sgl.function(num_api_spec_tokens=64)
    def character(s):
        s += sgl.user("Describe a character.")
        s += sgl.assistant("Name:" + sgl.gen("name", stop="\n") + "\nAge:" + sgl.gen("age", dtype=None))

    s = character.run(backend=sgl.Anthropic("claude-test", client=client))
    assert (s["name"], s["age"]) == (" Bob", " 7") and len(client.calls) == 1
    assert client.calls[0]["max_tokens"] == 64
    assert s.messages()[-1] == {"role": "assistant", "content": "Name: Bob\nAge: 7"}
    client.reply = "Something else entirely"
    with pytest.raises(sgl.ProgramError, match="does not follow"):
        character.run(backend=sgl.Anthropic("claude-test", client=client))

"""`Anthropic`: Claude models through the official `anthropic` client (Messages API)."""

from __future__ import annotations

from typing import Any, Iterator, Optional

from radixlm.lang.backend.base import BaseBackend, Message, Prompt, chat_messages
from radixlm.lang.errors import BackendError, UnsupportedFeatureError
from radixlm.lang.ir import SamplingSpec


class Anthropic(BaseBackend):
    """Anthropic(model_name, client=None, **client_kwargs). System messages become the `system`
    parameter; images become base64 (or URL) image blocks. `client` injects a ready client
    (anything with `messages.create`), e.g. for tests without network."""

    is_chat_model = True
    supports_images = True
    supports_constraints = False
    speculative_execution = True

    def __init__(self, model_name: str, client: Any = None, **client_kwargs: Any) -> None:
        super().__init__()
        self.model_name = model_name
        if client is None:
            import anthropic

            client = anthropic.Anthropic(**client_kwargs)
        self.client = client

    def generate(self, prompt: Prompt, spec: SamplingSpec) -> tuple[str, dict]:
        args = self.request_args(prompt, spec)
        try:
            resp = self.client.messages.create(**args)
        except Exception as exc:
            raise BackendError(f"Anthropic API call failed: {type(exc).__name__}: {exc}") from exc
        text = "".join(b.text for b in resp.content if getattr(b, "type", None) == "text")
        usage = resp.usage
        return text, {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "finish_reason": resp.stop_reason,
        }

    def generate_stream(self, prompt: Prompt, spec: SamplingSpec) -> Iterator[tuple[str, dict]]:
        args = self.request_args(prompt, spec)
        meta: dict = {}
        try:
            for event in self.client.messages.create(**args, stream=True):
                kind = getattr(event, "type", None)
                if kind == "content_block_delta" and getattr(event.delta, "type", None) == "text_delta":
                    yield event.delta.text, dict(meta)
                elif kind == "message_start":
                    meta["prompt_tokens"] = event.message.usage.input_tokens
                elif kind == "message_delta":
                    meta.update(completion_tokens=event.usage.output_tokens, finish_reason=event.delta.stop_reason)
                    yield "", dict(meta)
        except Exception as exc:
            raise BackendError(f"Anthropic API stream failed: {type(exc).__name__}: {exc}") from exc

    def request_args(self, prompt: Prompt, spec: SamplingSpec) -> dict:
        """The keyword arguments of `messages.create` for a gen at `prompt`."""
        self.check_constraints(spec)
        system, messages = to_anthropic_messages(chat_messages(prompt, f"Anthropic model {self.model_name!r}"))
        args: dict = {"model": self.model_name, "messages": messages, "max_tokens": spec.max_new_tokens}
        if system:
            args["system"] = system
        if spec.stops:
            args["stop_sequences"] = spec.stops
        sampling = {
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "top_k": spec.top_k if spec.top_k is not None and spec.top_k > 0 else None,
        }
        sampling = {k: v for k, v in sampling.items() if v is not None}
        if sampling:
            args["extra_body"] = sampling  # accepted by every client version, unlike named arguments
        return args


def to_anthropic_messages(messages: list[Message]) -> tuple[Optional[str], list[dict]]:
    """(system text, user/assistant messages); consecutive messages of one role are merged."""
    system = "\n".join(m.content for m in messages if m.role == "system") or None
    out: list[dict] = []
    for m in messages:
        if m.role == "system":
            continue
        if m.role not in ("user", "assistant"):
            raise UnsupportedFeatureError(f"Anthropic has no {m.role!r} role")
        blocks = [_image_block(img) for img in m.images] + [{"type": "text", "text": m.content}]
        if out and out[-1]["role"] == m.role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": m.role, "content": blocks})
    for msg in out:  # plain strings where a message is text only, as the API's examples write it
        if len(msg["content"]) == 1 and msg["content"][0]["type"] == "text":
            msg["content"] = msg["content"][0]["text"]
    return system, out


def _image_block(img: Any) -> dict:
    if img.url is not None and not img.url.startswith("data:"):
        return {"type": "image", "source": {"type": "url", "url": img.url}}
    if img.url is not None:  # a data URL: split it into its media type and payload
        head, data = img.url.split(",", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": head[5:].split(";")[0], "data": data}}
    return {"type": "image", "source": {"type": "base64", "media_type": img.mime, "data": img.base64()}}

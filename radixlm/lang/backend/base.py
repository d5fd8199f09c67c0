"""The backend interface: everything the interpreter needs from a model, and nothing more."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

from radixlm.lang.chat_template import ChatTemplate, plain_chat_template
from radixlm.lang.errors import UnsupportedFeatureError
from radixlm.lang.ir import SamplingSpec


@dataclass
class Message:
    """One finished (or open) message: its role, text and images (bytes or URLs)."""

    role: str
    content: str
    images: list = field(default_factory=list)

    def to_openai(self) -> dict:
        """{"role", "content"}; content is a list of image and text parts when there are images."""
        if not self.images:
            return {"role": self.role, "content": self.content}
        parts: list[dict] = [{"type": "image_url", "image_url": {"url": img.data_url()}} for img in self.images]
        parts.append({"type": "text", "text": self.content})
        return {"role": self.role, "content": parts}


@dataclass
class Prompt:
    """What a backend sees of a state when asked to generate: the whole text (completion
    models) and the messages (chat models). `role`/`role_text` describe the open message."""

    text: str
    messages: list[Message]
    role: Optional[str] = None
    role_text: str = ""
    role_images: list = field(default_factory=list)

    def images(self) -> list:
        """Every image of the prompt in text order (finished messages', then the open one's)."""
        return [img for m in self.messages for img in m.images] + list(self.role_images)


@dataclass
class SelectResult:
    decision: str
    meta_info: dict


class BaseBackend:
    """A model the language can run on. Subclasses implement `generate`; the others have
    defaults that either do nothing (caching) or raise `UnsupportedFeatureError`.

    Thread-safety: one backend serves every state stream of every program at once."""

    is_chat_model = False  # chat models get messages, completion models get text
    supports_images = False
    image_token = ""  # native VLM backends: the text written where an image sits (Qwen2-VL: its vision span)
    supports_constraints = True  # regex / json_schema / dtype
    speculative_execution = False  # honours @function(num_api_spec_tokens=N) (pay-per-call APIs)

    def __init__(self) -> None:
        self._template: Optional[ChatTemplate] = None

    @property
    def chat_template(self) -> ChatTemplate:
        """Role markers for this backend's model, loaded once on first use."""
        if self._template is None:
            self._template = self.load_chat_template()
        return self._template

    def load_chat_template(self) -> ChatTemplate:
        return plain_chat_template()

    def generate(self, prompt: Prompt, spec: SamplingSpec) -> tuple[str, dict]:
        """The generated text and its meta_info."""
        raise NotImplementedError

    def generate_stream(self, prompt: Prompt, spec: SamplingSpec) -> Iterator[tuple[str, dict]]:
        """Incremental (text chunk, meta_info so far) pairs; the default yields one chunk."""
        yield self.generate(prompt, spec)

    def select(self, prompt: Prompt, choices: Sequence[str], temperature: float) -> SelectResult:
        raise UnsupportedFeatureError(f"{type(self).__name__} cannot score choices (select / gen(choices=...))")

    def cache_prefix(self, text: str) -> None:
        """Compute and keep the KV of `text` so later requests sharing it skip its prefill."""

    def flush_cache(self) -> None:
        """Drop cached prefixes (no-op where the backend keeps none)."""

    def get_server_info(self) -> dict:
        return {}

    def shutdown(self) -> None:
        """Release what the backend holds (connections, processes)."""

    def check_constraints(self, spec: SamplingSpec) -> None:
        """Raise `UnsupportedFeatureError` for a constraint this backend cannot honour."""
        if spec.constrained and not self.supports_constraints:
            raise UnsupportedFeatureError(
                f"{type(self).__name__} cannot honour regex / json_schema / dtype constraints"
            )


def chat_messages(prompt: Prompt, backend: str) -> list[Message]:
    """The messages a chat API answers: a gen must open the assistant message (a chat API writes
    whole messages; it cannot continue text the program already put in one)."""
    if prompt.role != "assistant" or prompt.role_text.strip():
        raise UnsupportedFeatureError(
            f"{backend} is a chat model: gen must come right after the assistant message opens, e.g. "
            "s += assistant(gen('answer')); for text and several gens in one assistant message use "
            "@function(num_api_spec_tokens=N)"
        )
    return prompt.messages


def pick_choice(scores: Sequence[float], temperature: float, rng: Optional[random.Random] = None) -> int:
    """Argmax of `scores` at temperature 0, else a draw from softmax(scores / temperature)."""
    if temperature <= 0 or not all(math.isfinite(s) for s in scores):
        return max(range(len(scores)), key=lambda i: scores[i])
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    return (rng or random.Random()).choices(range(len(scores)), weights=weights)[0]


def choice_token_logprobs(entries: list, prefix: str, token_text: Callable[[list], str]) -> list[float]:
    """Logprobs of the tokens that spell a choice, from prompt-logprob entries that start one
    token before the prefix's end ((logprob, token_id, ...) each).

    That first entry is the prefix's own last token unless the tokenizer merged it with the
    choice's first characters (e.g. a prefix ending in a space): it is dropped only when its
    text is still a suffix of the prefix. An entry without a logprob (position 0) is dropped."""
    if entries and entries[0][0] is None:
        rest = list(entries[1:])
    else:
        rest = list(entries)
        if rest and prefix.endswith(token_text(rest[0]) or "\0"):
            rest = rest[1:]
    return [float(e[0]) for e in rest]


def normalized(logprobs: list[float]) -> float:
    """Token-length-normalized logprob (mean); -inf for a choice that adds no token."""
    return sum(logprobs) / len(logprobs) if logprobs else -math.inf

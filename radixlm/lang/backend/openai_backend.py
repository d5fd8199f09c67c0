"""`OpenAI`: any OpenAI-compatible API (OpenAI itself, radixlm's `/v1`) via the official client."""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional, Sequence

from radixlm.lang.backend.base import BaseBackend, Prompt, SelectResult, chat_messages, normalized, pick_choice
from radixlm.lang.errors import BackendError, UnsupportedFeatureError
from radixlm.lang.ir import RUN_DEFAULTS, SamplingSpec

# Model names served by the legacy completions API; every other name is taken as a chat model.
COMPLETION_MODEL_PREFIXES = ("gpt-3.5-turbo-instruct", "davinci", "babbage")
# SGLang extras sent in `extra_body` when they differ from the defaults (radixlm's /v1 honours them).
_EXTRAS = ("top_k", "min_p", "ignore_eos", "min_new_tokens")


class OpenAI(BaseBackend):
    """OpenAI(model_name, base_url=None, api_key=None, is_chat_model=None, client=None, **client_kwargs).

    Chat models get the program's messages (a gen must open an assistant message unless the
    program uses `num_api_spec_tokens`); completion models get its text and support `select`
    (scored with `echo` + `logprobs` + `max_tokens=0`). `client` injects a ready client."""

    supports_images = True
    supports_constraints = False
    speculative_execution = True

    def __init__(
        self,
        model_name: str,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        is_chat_model: Optional[bool] = None,
        client: Any = None,
        **client_kwargs: Any,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        if is_chat_model is None:
            is_chat_model = not model_name.startswith(COMPLETION_MODEL_PREFIXES)
        self.is_chat_model = is_chat_model
        if client is None:
            import openai

            if api_key is None and base_url is not None and not os.environ.get("OPENAI_API_KEY"):
                api_key = "EMPTY"  # a local OpenAI-compatible server without --api-key
            client = openai.OpenAI(base_url=base_url, api_key=api_key, **client_kwargs)
        self.client = client

    def check_constraints(self, spec: SamplingSpec) -> None:
        if spec.regex is not None:
            raise UnsupportedFeatureError("the OpenAI backend cannot honour regex (or dtype) constraints")
        if spec.json_schema is not None and not self.is_chat_model:
            raise UnsupportedFeatureError("json_schema needs a chat model on the OpenAI backend")

    def generate(self, prompt: Prompt, spec: SamplingSpec) -> tuple[str, dict]:
        try:
            if self.is_chat_model:
                resp = self.client.chat.completions.create(**self._chat_args(prompt, spec))
                choice = resp.choices[0]
                return choice.message.content or "", _meta(resp.usage, choice.finish_reason)
            resp = self.client.completions.create(**self._completion_args(prompt, spec))
            return resp.choices[0].text, _meta(resp.usage, resp.choices[0].finish_reason)
        except UnsupportedFeatureError:
            raise
        except Exception as exc:
            raise BackendError(f"OpenAI API call failed: {type(exc).__name__}: {exc}") from exc

    def generate_stream(self, prompt: Prompt, spec: SamplingSpec) -> Iterator[tuple[str, dict]]:
        args = self._chat_args(prompt, spec) if self.is_chat_model else self._completion_args(prompt, spec)
        api = self.client.chat.completions if self.is_chat_model else self.client.completions
        try:
            for event in api.create(**args, stream=True, stream_options={"include_usage": True}):
                if not event.choices:
                    yield "", _meta(event.usage, None)
                    continue
                choice = event.choices[0]
                text = (choice.delta.content or "") if self.is_chat_model else choice.text
                yield text, {"finish_reason": choice.finish_reason}
        except Exception as exc:
            raise BackendError(f"OpenAI API stream failed: {type(exc).__name__}: {exc}") from exc

    def select(self, prompt: Prompt, choices: Sequence[str], temperature: float) -> SelectResult:
        if self.is_chat_model:
            raise UnsupportedFeatureError(
                "select / gen(choices=...) needs a completion model on the OpenAI "
                "backend (chat APIs return no prompt logprobs)"
            )
        try:
            resp = self.client.completions.create(
                model=self.model_name,
                prompt=[prompt.text + c for c in choices],
                max_tokens=0,
                echo=True,
                logprobs=0,
                temperature=0,
            )
        except Exception as exc:
            raise BackendError(f"OpenAI API call failed: {type(exc).__name__}: {exc}") from exc
        ordered = sorted(resp.choices, key=lambda c: c.index)
        token_lps = [_choice_logprobs(c.logprobs, len(prompt.text)) for c in ordered]
        scores = [normalized(lps) for lps in token_lps]
        best = pick_choice(scores, temperature)
        return SelectResult(choices[best], {"normalized_prompt_logprobs": scores, "choice_token_logprobs": token_lps})

    def _chat_args(self, prompt: Prompt, spec: SamplingSpec) -> dict:
        messages = [m.to_openai() for m in chat_messages(prompt, f"OpenAI model {self.model_name!r}")]
        args = {"model": self.model_name, "messages": messages, **_sampling(spec)}
        if spec.json_schema is not None:
            schema = spec.json_schema
            args["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
        return args

    def _completion_args(self, prompt: Prompt, spec: SamplingSpec) -> dict:
        return {"model": self.model_name, "prompt": prompt.text, **_sampling(spec)}


def _sampling(spec: SamplingSpec) -> dict:
    args: dict = {
        "max_tokens": spec.max_new_tokens,
        "temperature": spec.temperature,
        "top_p": spec.top_p,
        "frequency_penalty": spec.frequency_penalty,
        "presence_penalty": spec.presence_penalty,
    }
    args = {k: v for k, v in args.items() if v is not None}
    if spec.stops:
        args["stop"] = spec.stops
    extra = {
        k: getattr(spec, k)
        for k in _EXTRAS
        if getattr(spec, k) is not None and getattr(spec, k) != getattr(RUN_DEFAULTS, k)
    }
    if spec.stop_token_ids:
        extra["stop_token_ids"] = list(spec.stop_token_ids)
    if extra:
        args["extra_body"] = extra
    return args


def _meta(usage: Any, finish_reason: Optional[str]) -> dict:
    meta: dict = {"finish_reason": finish_reason}
    if usage is not None:
        meta.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
        details = getattr(usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None) if details is not None else None
        if cached is not None:
            meta["cached_tokens"] = cached
    return meta


def _choice_logprobs(logprobs: Any, prefix_len: int) -> list[float]:
    """Logprobs of the echoed tokens that overlap the choice (end past the prefix's end)."""
    if logprobs is None:
        raise BackendError("the API returned no logprobs for select (echo + logprobs unsupported?)")
    out = []
    for tok, lp, offset in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.text_offset):
        if lp is not None and offset + len(tok) > prefix_len:
            out.append(float(lp))
    return out

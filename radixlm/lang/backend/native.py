"""Shared logic of the backends that speak radixlm's native result shape
(`{"text", "output_ids", "meta_info"}`): the HTTP `RuntimeEndpoint` and the in-process Engine."""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence, Union

from radixlm.lang.backend.base import BaseBackend, Prompt, SelectResult, choice_token_logprobs, normalized, pick_choice
from radixlm.lang.ir import SamplingSpec

PREFILL_ONLY = {"max_new_tokens": 0}


class NativeBackend(BaseBackend):
    """Generation, prefix caching and choice scoring on a radixlm (or SGLang) runtime.

    `select` sends the prefix once (so the radix cache holds it), then every `prefix + choice`
    in one batch with `max_new_tokens=0` and prompt logprobs from one token before the
    prefix's end, and scores each choice by its mean token logprob."""

    def _generate_raw(
        self,
        text: Union[str, list[str]],
        sampling: Union[dict, list[dict]],
        return_logprob: bool = False,
        logprob_start_len: Optional[int] = None,
        top_logprobs_num: Optional[int] = None,
        image_data: Optional[list] = None,
    ) -> Any:
        """One result dict for one text, a list for a list of texts; `image_data` as the
        native API takes it (one list of image URLs per text for a list)."""
        raise NotImplementedError

    def _stream_raw(
        self,
        text: str,
        sampling: dict,
        return_logprob: bool = False,
        logprob_start_len: Optional[int] = None,
        top_logprobs_num: Optional[int] = None,
        image_data: Optional[list] = None,
    ) -> Iterator[tuple[str, dict]]:
        """Incremental (text chunk, meta_info) pairs."""
        raise NotImplementedError

    def _token_text(self, entry: Sequence) -> str:
        """The text of the token of a logprob entry (logprob, token_id, ...)."""
        raise NotImplementedError

    def generate(self, prompt: Prompt, spec: SamplingSpec) -> tuple[str, dict]:
        out = self._generate_raw(prompt.text, spec.to_native(), **_logprob_options(spec), **_images(prompt))
        return out["text"], out["meta_info"]

    def generate_stream(self, prompt: Prompt, spec: SamplingSpec) -> Iterator[tuple[str, dict]]:
        yield from self._stream_raw(prompt.text, spec.to_native(), **_logprob_options(spec), **_images(prompt))

    def cache_prefix(self, text: str) -> None:
        """Prefill `text` into the cache; a prefix holding image placeholders (whose images are
        not known here) is skipped."""
        if text and not (self.image_token and self.image_token in text):
            self._generate_raw(text, dict(PREFILL_ONLY))

    def select(self, prompt: Prompt, choices: Sequence[str], temperature: float) -> SelectResult:
        text = prompt.text
        images = _images(prompt)
        start = 0
        if text:
            head = self._generate_raw(text, dict(PREFILL_ONLY), **images)
            start = max(head["meta_info"]["prompt_tokens"] - 1, 0)
        many = {"image_data": [images["image_data"]] * len(choices)} if images else {}
        outs = self._generate_raw(
            [text + c for c in choices],
            [dict(PREFILL_ONLY) for _ in choices],
            return_logprob=True,
            logprob_start_len=start,
            **many,
        )
        token_lps = [
            choice_token_logprobs(o["meta_info"].get("input_token_logprobs", []), text, self._token_text) for o in outs
        ]
        scores = [normalized(lps) for lps in token_lps]
        best = pick_choice(scores, temperature)
        metas = [o["meta_info"] for o in outs]
        meta = {
            "normalized_prompt_logprobs": scores,
            "choice_token_logprobs": token_lps,
            "cached_tokens": [m.get("cached_tokens", 0) for m in metas],
            "meta_info": metas,
        }
        return SelectResult(choices[best], meta)


def _images(prompt: Prompt) -> dict:
    """`{"image_data": [...]}` (data URLs or the URLs given) when the prompt has images, else {}."""
    images = prompt.images()
    return {"image_data": [img.data_url() for img in images]} if images else {}


def _logprob_options(spec: SamplingSpec) -> dict:
    if not spec.return_logprob:
        return {}
    return {
        "return_logprob": True,
        "logprob_start_len": spec.logprob_start_len,
        "top_logprobs_num": spec.top_logprobs_num,
    }

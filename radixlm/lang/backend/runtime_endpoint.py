"""`RuntimeEndpoint`: a radixlm (or SGLang) server reached over its native HTTP API."""

from __future__ import annotations

import json
from typing import Any, Iterator, Optional, Sequence, Union

from radixlm.lang.backend.native import NativeBackend
from radixlm.lang.chat_template import ChatTemplate, derive_chat_template, plain_chat_template
from radixlm.lang.errors import BackendError

DEFAULT_TIMEOUT_S = 600.0


class RuntimeEndpoint(NativeBackend):
    """RuntimeEndpoint(base_url, api_key=None): `POST /generate` (plain, batched, streamed),
    `GET /get_model_info`, `POST /flush_cache`. Role markers come from the server's chat
    template (`POST /apply_chat_template`); servers without that route get plain markers.

    The model info is fetched at construction, so an unreachable server fails here, clearly.
    Every failure (connection, HTTP status >= 400, an error event in a stream) raises
    `BackendError` naming the route and the server's message."""

    def __init__(self, base_url: str, api_key: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        import httpx

        super().__init__()
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0))
        self.model_info = self._request("GET", "/get_model_info")
        if isinstance(self.model_info, dict) and self.model_info.get("image_token"):  # a vision model
            self.supports_images, self.image_token = True, self.model_info["image_token"]

    # -- HTTP ----------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Optional[dict] = None) -> Any:
        import httpx

        try:
            resp = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise BackendError(f"{method} {self.base_url}{path} failed: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 400:
            raise BackendError(f"{method} {path} returned HTTP {resp.status_code}: {_error_message(resp.text)}")
        try:
            return resp.json()
        except ValueError:
            return resp.text

    def _generate_raw(
        self,
        text: Union[str, list[str]],
        sampling: Union[dict, list[dict]],
        return_logprob: bool = False,
        logprob_start_len: Optional[int] = None,
        top_logprobs_num: Optional[int] = None,
        image_data: Optional[list] = None,
    ) -> Any:
        body = _payload(text, sampling, return_logprob, logprob_start_len, top_logprobs_num)
        return self._request("POST", "/generate", {**body, **({"image_data": image_data} if image_data else {})})

    def _stream_raw(
        self,
        text: str,
        sampling: dict,
        return_logprob: bool = False,
        logprob_start_len: Optional[int] = None,
        top_logprobs_num: Optional[int] = None,
        image_data: Optional[list] = None,
    ) -> Iterator[tuple[str, dict]]:
        """Turn the server's cumulative `text` events into incremental chunks."""
        import httpx

        body = {**_payload(text, sampling, return_logprob, logprob_start_len, top_logprobs_num), "stream": True}
        if image_data:
            body["image_data"] = image_data
        sent = ""
        try:
            with self._http.stream("POST", "/generate", json=body) as resp:
                if resp.status_code >= 400:
                    raise BackendError(
                        f"POST /generate returned HTTP {resp.status_code}: "
                        f"{_error_message(resp.read().decode(errors='replace'))}"
                    )
                for event in _sse_events(resp.iter_lines()):
                    if "error" in event:
                        raise BackendError(f"POST /generate stream failed: {_error_message(json.dumps(event))}")
                    delta, sent = event["text"][len(sent) :], event["text"]
                    yield delta, event.get("meta_info", {})
        except httpx.HTTPError as exc:
            raise BackendError(f"POST {self.base_url}/generate (stream) failed: {type(exc).__name__}: {exc}") from exc

    def _token_text(self, entry: Sequence) -> str:
        return entry[2] if len(entry) > 2 and entry[2] is not None else ""

    # -- control -------------------------------------------------------------------------
    def load_chat_template(self) -> ChatTemplate:
        def render(messages: list[dict]) -> str:
            return self._request(
                "POST", "/apply_chat_template", {"messages": messages, "add_generation_prompt": False}
            )["text"]

        try:
            render([{"role": "user", "content": "hi"}])
        except BackendError:  # no such route (an SGLang server) or no template: plain markers
            return plain_chat_template()
        return derive_chat_template(render)

    def flush_cache(self) -> None:
        self._request("POST", "/flush_cache")

    def get_server_info(self) -> dict:
        return self._request("GET", "/get_server_info")

    def shutdown(self) -> None:
        self._http.close()


def _payload(
    text: Union[str, list[str]],
    sampling: Union[dict, list[dict]],
    return_logprob: bool,
    logprob_start_len: Optional[int],
    top_logprobs_num: Optional[int],
) -> dict:
    body: dict = {"text": text, "sampling_params": sampling}
    if return_logprob:
        body.update(return_logprob=True, return_text_in_logprobs=True)
        if logprob_start_len is not None:
            body["logprob_start_len"] = logprob_start_len
        if top_logprobs_num is not None:
            body["top_logprobs_num"] = top_logprobs_num
    return body


def _sse_events(lines: Iterator[str]) -> Iterator[dict]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _error_message(body: str) -> str:
    """The `message` of an OpenAI-style error body, else the body itself (shortened)."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body[:500]
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and "message" in err:
        return str(err["message"])
    if isinstance(obj, dict) and "detail" in obj:
        return str(obj["detail"])
    return body[:500]

"""`EngineBackend`: programs run on an in-process `radixlm.Engine` (no HTTP in between).

The only module of the language that touches the runtime, and only through `Engine`'s
public methods."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, Union

from radixlm.lang.backend.native import NativeBackend
from radixlm.lang.chat_template import ChatTemplate, derive_chat_template, plain_chat_template

if TYPE_CHECKING:
    from radixlm.entrypoints.engine import Engine


class EngineBackend(NativeBackend):
    """Wraps an `Engine` the caller owns (and shuts down). `set_default_backend(engine)` and
    `run(backend=engine)` wrap an Engine automatically."""

    def __init__(self, engine: "Engine") -> None:
        super().__init__()
        self.engine = engine
        images = getattr(engine, "images", None)
        if images is not None and engine.tokenizer is not None:  # a vision model: image() works
            self.supports_images = True
            self.image_token = images.placeholder_text(engine.tokenizer)

    def _generate_raw(
        self,
        text: Union[str, list[str]],
        sampling: Union[dict, list[dict]],
        return_logprob: bool = False,
        logprob_start_len: Optional[int] = None,
        top_logprobs_num: Optional[int] = None,
        image_data: Optional[list] = None,
    ) -> Any:
        return self.engine.generate(
            text,
            sampling,
            return_logprob=return_logprob,
            logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num,
            image_data=image_data,
        )

    def _stream_raw(
        self,
        text: str,
        sampling: dict,
        return_logprob: bool = False,
        logprob_start_len: Optional[int] = None,
        top_logprobs_num: Optional[int] = None,
        image_data: Optional[list] = None,
    ) -> Iterator[tuple[str, dict]]:
        chunks = self.engine.generate(
            text,
            sampling,
            return_logprob=return_logprob,
            logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num,
            stream=True,
            image_data=image_data,
        )
        for chunk in chunks:
            yield chunk["text"], chunk["meta_info"]

    def _token_text(self, entry: Sequence) -> str:
        return self.engine.tokenizer.decode([entry[1]])

    def load_chat_template(self) -> ChatTemplate:
        tokenizer = self.engine.tokenizer
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            return plain_chat_template()
        return derive_chat_template(lambda msgs: self.engine.apply_chat_template(msgs, add_generation_prompt=False))

    def flush_cache(self) -> None:
        self.engine.flush_cache()

    def get_server_info(self) -> dict:
        return self.engine.get_server_info()

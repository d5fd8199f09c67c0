"""Request bodies of the native and OpenAI-compatible APIs (pydantic). The generation routes keep
undeclared keys so `field_policy` can refuse them by name; the other bodies ignore them."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="after")
    def _valid_unicode(self) -> "_Body":
        """JSON may carry lone surrogates (e.g. "\\ud800"), which no tokenizer can encode."""
        for name, value in self:
            if not _encodable(value):
                raise ValueError(f"{name} holds text that is not valid Unicode (a lone surrogate)")
        return self


def _encodable(value: Any) -> bool:
    """Iterative, so arbitrarily deep JSON cannot overflow the stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, BaseModel):
            stack.extend(v for _, v in item)
    return True


class GenerateRequest(_Body):
    """SGLang's native `POST /generate`."""

    model_config = ConfigDict(extra="allow")  # undeclared keys are refused by field_policy

    text: Optional[Union[str, list[str]]] = None
    input_ids: Optional[Union[list[int], list[list[int]]]] = None
    sampling_params: Optional[Union[dict[str, Any], list[dict[str, Any]]]] = None
    stream: bool = False
    return_logprob: Union[bool, list[bool]] = False
    logprob_start_len: Optional[Union[int, list[int]]] = None
    top_logprobs_num: Optional[Union[int, list[int]]] = None
    return_text_in_logprobs: bool = False
    rid: Optional[Union[str, list[str]]] = None
    image_data: Optional[Union[str, list[Any]]] = None  # per prompt: a source or a list (media policy applies)
    lora_path: Optional[Union[str, list[Optional[str]]]] = None  # a served adapter's name, or one per prompt


class StreamOptions(_Body):
    include_usage: bool = False


class _SamplingExtras(_Body):
    """OpenAI sampling fields plus SGLang's extra-body fields, shared by both endpoints."""

    model_config = ConfigDict(extra="allow")  # undeclared keys are refused by field_policy

    model: str = "default"
    n: int = Field(default=1, ge=1, le=128)  # OpenAI's cap; each sample is a request
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    stop: Optional[Union[str, list[str]]] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: Optional[int] = None
    logit_bias: Optional[dict[str, float]] = None
    user: Optional[str] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: Optional[list[int]] = None
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    regex: Optional[str] = None
    json_schema: Optional[Any] = None
    ebnf: Optional[str] = None
    json_schema_max_tokens_close: bool = False  # close the JSON validly as max_tokens nears
    rid: Optional[str] = None
    return_cached_tokens_details: bool = False  # SGLang's `sglext.cached_tokens_details` in the response
    lora_path: Optional[str] = None  # a served LoRA adapter's name (or name it in `model`: "base:adapter")


class CompletionRequest(_SamplingExtras):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = 16
    echo: bool = False
    logprobs: Optional[int] = Field(default=None, ge=0)
    suffix: Optional[str] = None
    best_of: Optional[int] = None


class ChatMessage(_Body):
    model_config = ConfigDict(extra="allow")  # undeclared keys are refused by field_policy

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Optional[Union[str, list[dict[str, Any]]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None  # an assistant turn's calls, rendered back
    tool_call_id: Optional[str] = None  # a tool message's answer to that call
    reasoning_content: Optional[str] = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[dict[str, Any]] = None


class ChatCompletionRequest(_SamplingExtras):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    response_format: Optional[ResponseFormat] = None
    continue_final_message: bool = False
    chat_template_kwargs: Optional[dict[str, Any]] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: bool = True
    separate_reasoning: bool = True
    store: Optional[bool] = None
    modalities: Optional[list[str]] = None


class TokenizeRequest(_Body):
    text: Optional[str] = None
    prompt: Optional[str] = None
    add_special_tokens: bool = True


class DetokenizeRequest(_Body):
    tokens: list[int]


class ApplyChatTemplateRequest(_Body):
    """`POST /apply_chat_template`: render messages with the served model's chat template
    (the frontend language derives its role markers from it)."""

    messages: list[dict[str, Any]]
    add_generation_prompt: bool = False


class AbortRequest(_Body):
    rid: str


class LoadLoraAdapterRequest(_Body):
    """SGLang's `POST /load_lora_adapter`: a PEFT adapter directory served as `lora_name`."""

    lora_name: str
    lora_path: str


class UnloadLoraAdapterRequest(_Body):
    lora_name: str


class EmbeddingRequest(_Body):
    """OpenAI's `POST /v1/embeddings`: `input` is a string, a list of strings, a list of token
    ids or a list of token-id lists."""

    model_config = ConfigDict(extra="allow")  # undeclared keys are refused by field_policy

    input: Union[str, list[str], list[int], list[list[int]]]
    model: str = "default"
    encoding_format: str = "float"
    dimensions: Optional[int] = None
    rid: Optional[Union[str, list[str]]] = None


class EncodeRequest(_Body):
    """SGLang's native `POST /encode`: `text` (one or a list) or `input_ids` (one list or a list of lists)."""

    model_config = ConfigDict(extra="allow")  # undeclared keys are refused by field_policy

    text: Optional[Union[str, list[str]]] = None
    input_ids: Optional[Union[list[int], list[list[int]]]] = None
    dimensions: Optional[int] = None
    rid: Optional[Union[str, list[str]]] = None

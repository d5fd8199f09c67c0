"""Named chat templates (`--chat-template vicuna_v1.1`, ...) render each format's exact text."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from radixlm.tokenizer.chat_templates import resolve_chat_template
from radixlm.tokenizer.named_templates import VICUNA_SYSTEM, template_names

BOS, EOS = "<s>", "</s>"


def render(tokenizer: Any, name: str, messages: list[dict], **kwargs: Any) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=resolve_chat_template(name), tokenize=False, bos_token=BOS, eos_token=EOS, **kwargs
    )


def fastchat_add_colon_two(system: str, turns: list[tuple[str, Optional[str]]]) -> str:
    """FastChat's ADD_COLON_TWO rule with vicuna_v1.1's separators (sep " ", sep2 "</s>"): the system
    text and sep, then per message `role: text` and the separator of its position, or `role:` for
    the empty final slot that asks the model to answer."""
    seps = [" ", "</s>"]
    out = system + seps[0]
    for i, (role, text) in enumerate(turns):
        out += f"{role}: {text}{seps[i % 2]}" if text else f"{role}:"
    return out


CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_vicuna_v1_1_is_fastchats_format(tiny_tokenizer: Any, messages: list[dict]) -> None:
    system = messages[0]["content"] if messages[0]["role"] == "system" else VICUNA_SYSTEM
    roles = {"user": "USER", "assistant": "ASSISTANT"}
    turns = [(roles[m["role"]], m["content"]) for m in messages if m["role"] != "system"]
    expected = BOS + fastchat_add_colon_two(system, [*turns, ("ASSISTANT", None)])
    assert render(tiny_tokenizer, "vicuna_v1.1", messages, add_generation_prompt=True) == expected


def test_vicuna_v1_1_literal(tiny_tokenizer: Any) -> None:
    """The format spelled out once, so a shared mistake in the reference above cannot hide."""
    text = render(tiny_tokenizer, "vicuna_v1.1", CONVERSATIONS[1], add_generation_prompt=True)
    assert text == (
        "<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. USER: What is 2+2? ASSISTANT: 4.</s>"
        "USER: And 3+3? ASSISTANT:"
    )


def test_llama_2(tiny_tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "S"}, *CONVERSATIONS[1]]
    assert render(tiny_tokenizer, "llama-2", messages) == (
        "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nWhat is 2+2? [/INST] 4. </s><s>[INST] And 3+3? [/INST]"
    )
    assert render(tiny_tokenizer, "llama-2-chat", CONVERSATIONS[0]) == "<s>[INST] Hello! [/INST]"


def test_mistral(tiny_tokenizer: Any) -> None:
    assert render(tiny_tokenizer, "mistral", CONVERSATIONS[1]) == (
        "<s>[INST] What is 2+2? [/INST]4.</s>[INST] And 3+3? [/INST]"
    )


def test_qwen_has_its_default_system(tiny_tokenizer: Any) -> None:
    assert render(tiny_tokenizer, "qwen", CONVERSATIONS[0], add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    )


def test_gemma(tiny_tokenizer: Any) -> None:
    assert render(tiny_tokenizer, "gemma", CONVERSATIONS[1], add_generation_prompt=True) == (
        "<s><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4.<end_of_turn>\n"
        "<start_of_turn>user\nAnd 3+3?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_continue_final_message_leaves_the_answer_open(tiny_tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]
    text = render(tiny_tokenizer, "vicuna_v1.1", messages, continue_final_message=True)
    assert text.endswith("USER: Hi ASSISTANT: Hel")


def test_unknown_role_and_unknown_name_are_errors(tiny_tokenizer: Any) -> None:
    with pytest.raises(Exception, match="no role tool"):
        render(tiny_tokenizer, "llama-2", [{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="vicuna_v1.1"):
        resolve_chat_template("no-such-template")


def test_every_name_resolves() -> None:
    for name in [*template_names(), "chatml", "llama-3"]:
        assert "{%" in resolve_chat_template(name)

"""SGLang's named chat templates (`--chat-template vicuna_v1.1`, `llama-2`, `mistral`, `qwen`, `gemma`),
as Jinja sources rendered by the tokenizer like any HF template.

Each template takes the variables HF passes (`messages`, `bos_token`, `eos_token`,
`add_generation_prompt`, `continue_final_message`); a leading system message replaces the
format's default system prompt, or is folded into the first user turn where the format has no
system slot. Invariant: the rendered text starts with `bos_token` where the format's prompt
starts with BOS, because the chat routes tokenize it with `add_special_tokens=False`.
"""

from __future__ import annotations

from typing import Optional

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
QWEN_SYSTEM = "You are a helpful assistant."

# `sys` and `turns`: the system text (or the format's default) and the remaining messages.
_SPLIT_SYSTEM = (
    "{% if messages and messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
    "{% set turns = messages[1:] %}{% else %}{% set sys = default_system %}{% set turns = messages %}{% endif %}"
)
_UNKNOWN_ROLE = "{{ raise_exception('this chat template has no role ' ~ m['role']) }}"
_KEEP_OPEN = "(loop.last and continue_final_message)"

# FastChat's `vicuna_v1.1` (sep style ADD_COLON_TWO, sep " ", sep2 "</s>"):
# "<system> USER: <u1> ASSISTANT: <a1></s>USER: <u2> ASSISTANT:".
VICUNA_V1_1 = (
    '{% set default_system = "' + VICUNA_SYSTEM + '" %}' + _SPLIT_SYSTEM + "{{ bos_token }}{{ sys }} "
    "{% for m in turns %}"
    "{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}ASSISTANT: {{ m['content'] }}{% if not " + _KEEP_OPEN + " %}</s>{% endif %}"
    "{% else %}" + _UNKNOWN_ROLE + "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Llama 2 chat: "<s>[INST] <<SYS>>\n<system>\n<</SYS>>\n\n<u1> [/INST] <a1> </s><s>[INST] <u2> [/INST]".
LLAMA_2 = (
    "{% set default_system = '' %}" + _SPLIT_SYSTEM + "{% for m in turns %}"
    "{% if m['role'] == 'user' %}{{ bos_token }}[INST] "
    "{% if loop.first and sys %}<<SYS>>\n{{ sys }}\n<</SYS>>\n\n{% endif %}{{ m['content'] | trim }} [/INST]"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] | trim }}"
    "{% if not " + _KEEP_OPEN + " %} {{ eos_token }}{% endif %}"
    "{% else %}" + _UNKNOWN_ROLE + "{% endif %}{% endfor %}"
)

# Mistral instruct: "<s>[INST] <u1> [/INST]<a1></s>[INST] <u2> [/INST]"; a system text opens the first turn.
MISTRAL = (
    "{% set default_system = '' %}" + _SPLIT_SYSTEM + "{{ bos_token }}{% for m in turns %}"
    "{% if m['role'] == 'user' %}[INST] {% if loop.first and sys %}{{ sys }}\n\n{% endif %}{{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{% if not " + _KEEP_OPEN + " %}{{ eos_token }}{% endif %}"
    "{% else %}" + _UNKNOWN_ROLE + "{% endif %}{% endfor %}"
)

# ChatML with Qwen's default system prompt.
QWEN = (
    "{% set default_system = '" + QWEN_SYSTEM + "' %}" + _SPLIT_SYSTEM + "<|im_start|>system\n{{ sys }}<|im_end|>\n"
    "{% for m in turns %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if not " + _KEEP_OPEN + " %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Gemma instruct: "<bos><start_of_turn>user\n<u1><end_of_turn>\n<start_of_turn>model\n"; no system role.
GEMMA = (
    "{% set default_system = '' %}" + _SPLIT_SYSTEM + "{{ bos_token }}{% for m in turns %}"
    "{% if m['role'] == 'user' %}<start_of_turn>user\n{% if loop.first and sys %}{{ sys }}\n\n{% endif %}"
    "{% elif m['role'] == 'assistant' %}<start_of_turn>model\n{% else %}" + _UNKNOWN_ROLE + "{% endif %}"
    "{{ m['content'] | trim }}{% if not " + _KEEP_OPEN + " %}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

NAMED_TEMPLATES = {"vicuna_v1.1": VICUNA_V1_1, "llama-2": LLAMA_2, "mistral": MISTRAL, "qwen": QWEN, "gemma": GEMMA}
# SGLang's other spellings of the same formats.
ALIASES = {"llama-2-chat": "llama-2", "gemma-it": "gemma", "qwen2": "qwen", "vicuna": "vicuna_v1.1"}


def named_template(name: str) -> Optional[str]:
    """The Jinja source registered under `name` (or an SGLang alias of it), else None."""
    return NAMED_TEMPLATES.get(ALIASES.get(name, name))


def template_names() -> list[str]:
    """Every name `named_template` answers, sorted."""
    return sorted([*NAMED_TEMPLATES, *ALIASES])

"""`--chat-template`: a Jinja file, or one of a few built-in templates by name."""

from __future__ import annotations

import os

BUILTIN_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
        "{% if not (loop.last and continue_final_message) %}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "llama-3": (
        "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>"
        "\n\n{{ message['content'] }}{% if not (loop.last and continue_final_message) %}<|eot_id|>{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    "plain": (
        "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    ),
}


def resolve_chat_template(spec: str) -> str:
    """The Jinja source for `spec`: a path to a file (.jinja or a JSON tokenizer_config with
    `chat_template`), or a built-in name. ValueError names both options otherwise."""
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            text = f.read()
        if spec.endswith(".json"):
            import json

            return json.loads(text)["chat_template"]
        return text
    if spec in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[spec]
    from radixlm.tokenizer.named_templates import named_template, template_names

    named = named_template(spec)
    if named is not None:
        return named
    names = sorted([*BUILTIN_TEMPLATES, *template_names()])
    raise ValueError(f"chat template {spec!r} is neither a file nor a built-in name ({names})")

"""Checks shared by the Engine and the HTTP-server tests of the frontend language: each runs a
README program on `backend` and compares what it can with direct calls to the same runtime
(`direct(text, sampling_params, **generate_kwargs) -> result dict`)."""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import pytest

import radixlm as sgl
from helpers.lang_utils import (
    CHARACTER_REGEX,
    IP_REGEX,
    character_gen,
    image_qa,
    multi_turn_question,
    regular_expression_gen,
    text_qa,
    tip_suggestion,
    tool_use,
)

Direct = Callable[..., Any]
GREEDY = {"temperature": 0}


def check_multi_turn(backend: Any, direct: Direct, tokenizer: Any) -> None:
    """Role markers equal the chat template's; greedy answers equal direct /generate calls."""
    s = multi_turn_question.run(question_1="hello world", question_2="the quick brown fox", backend=backend, **GREEDY)
    msgs = s.messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[2]["content"] == s["answer_1"] and msgs[4]["content"] == s["answer_2"]
    for upto, name in ((2, "answer_1"), (4, "answer_2")):
        prompt = tokenizer.apply_chat_template(msgs[:upto], tokenize=False, add_generation_prompt=True)
        assert s.text().startswith(prompt)
        expected = direct(prompt, {"max_new_tokens": 12, "temperature": 0})
        assert s[name] == expected["text"]
        assert s.get_meta_info(name)["completion_tokens"] == expected["meta_info"]["completion_tokens"]
    assert s.get_meta_info("answer_2")["cached_tokens"] > 0  # the first turn's KV is reused


def check_tool_use(backend: Any, direct: Direct, tokenizer: Any) -> None:
    """select picks the choice with the best mean token logprob, computed here independently
    (full prompt logprobs, choice tokens = those past the prefix's common token prefix)."""
    s = tool_use.run(question="What is 2 * 2?", backend=backend, **GREEDY)
    prefix = "To answer this question: What is 2 * 2?. I need to use a "
    choices = ["calculator", "search engine"]
    scores = [_reference_score(direct, tokenizer, prefix, c) for c in choices]
    meta = s.get_meta_info("tool")
    assert s["tool"] == choices[max(range(2), key=lambda i: scores[i])]
    assert meta["normalized_prompt_logprobs"] == pytest.approx(scores, abs=1e-4)
    assert all(c > 0 for c in meta["cached_tokens"])  # the prefix was cached before scoring
    assert all(m["completion_tokens"] == 0 for m in meta["meta_info"])
    assert ("expression" in s) == (s["tool"] == "calculator")
    assert s.text().startswith(prefix + s["tool"] + ". ")


def _reference_score(direct: Direct, tokenizer: Any, prefix: str, choice: str) -> float:
    full, head = tokenizer.encode(prefix + choice), tokenizer.encode(prefix)
    common = next((i for i, (a, b) in enumerate(zip(full, head)) if a != b), min(len(full), len(head)))
    out = direct(prefix + choice, {"max_new_tokens": 0}, return_logprob=True, logprob_start_len=0)
    lps = [e[0] for e in out["meta_info"]["input_token_logprobs"]][common:]
    return sum(lps) / len(lps)


def check_tip_suggestion(backend: Any, direct: Direct, tokenizer: Any) -> None:
    """Forks run and share the parent's prefix: each branch's prompt hit the radix cache for
    at least the parent's text (less one boundary token)."""
    s = tip_suggestion.run(backend=backend, **GREEDY)
    parent = "Here are two tips for staying healthy: 1. Balanced Diet. 2. Regular Exercise.\n\n"
    parent_tokens = len(tokenizer.encode(parent))
    for i, meta in enumerate(s["fork_meta"]):
        assert meta["cached_tokens"] >= parent_tokens - 1, meta
        branch = parent + f"Now, expand tip {i + 1} into a paragraph:\n"
        expected = direct(branch, {"max_new_tokens": 8, "stop": "\n\n", "temperature": 0})["text"]
        assert f"Tip {i + 1}:{expected}\n" in s.text()
    assert "summary" in s


def check_image_qa_rejected(backend: Any) -> None:
    with pytest.raises(sgl.ProgramError, match="text-only model") as info:
        image_qa.run(image_file=b"\x89PNG\r\n\x1a\n fake", question="What is in the image?", backend=backend)
    assert isinstance(info.value.__cause__, sgl.UnsupportedFeatureError)


def check_regex_ip(backend: Any) -> None:
    s = regular_expression_gen.run(backend=backend)
    assert re.fullmatch(IP_REGEX, s["answer"])


def check_character_json(backend: Any) -> None:
    s = character_gen.run(name="Harry Potter", backend=backend, **GREEDY)
    assert re.fullmatch(CHARACTER_REGEX, s["json_output"])


def check_json_schema(backend: Any) -> None:
    """`json_schema` passes through to the runtime's structured output."""
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "population": {"type": "integer", "minimum": 0, "maximum": 99},
        },
        "required": ["city", "population"],
        "additionalProperties": False,
    }

    @sgl.function
    def city_json(s):
        s += "Describe a city as JSON:\n" + sgl.gen("json", max_tokens=96, json_schema=schema)

    value = json.loads(city_json.run(backend=backend, **GREEDY)["json"])
    assert set(value) == {"city", "population"} and 0 <= value["population"] <= 99


def check_run_batch(backend: Any, direct: Direct) -> None:
    questions = [
        "What is the capital of the United Kingdom?",
        "What is the capital of France?",
        "What is the capital of Japan?",
    ]
    states = text_qa.run_batch([{"question": q} for q in questions], backend=backend, progress_bar=True, **GREEDY)
    for q, s in zip(questions, states):
        assert s.error() is None
        assert s["answer"] == direct(f"Q: {q}\nA:", {"max_new_tokens": 8, "stop": "\n", "temperature": 0})["text"]


def check_streaming(backend: Any) -> None:
    """Streamed chunks add up to the text of the same (greedy) program run without streaming."""
    plain = text_qa.run(question="What is the capital of France?", backend=backend, **GREEDY)
    s = text_qa.run(question="What is the capital of France?", backend=backend, stream=True, **GREEDY)
    chunks = list(s.text_iter())
    assert len(chunks) >= 2 and "".join(chunks) == plain.text()
    s = text_qa.run(question="What is the capital of France?", backend=backend, stream=True, **GREEDY)
    assert "".join(s.text_iter("answer")) == plain["answer"]

"""A Qwen2-VL server: the official `openai` client's `image_url` parts (data URLs) render as
the family's vision span and answer as `/generate` does on the same prompt and images; bad
images are 400s naming the problem and the server keeps serving."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import httpx
import openai
import pytest
from helpers.tiny_llava import huge_png_header, make_image
from helpers.tiny_qwen2vl import IMAGE, tokens_for
from helpers.vlm import data_url, serving

GREEDY = {"max_new_tokens": 8, "temperature": 0.0, "ignore_eos": True}


@pytest.fixture(scope="module")
def model_dir(tiny_vlm: Callable[[str], str]) -> str:
    return tiny_vlm("qwen2_vl")


@pytest.fixture(scope="module")
def base_url(model_dir: str) -> Iterator[str]:
    with serving(model_dir, "--max-images-per-request", "2") as url:
        yield url


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120.0) as client:
        yield client


def test_openai_image_url_answers_as_generate_does(base_url: str, http: httpx.Client, model_dir: str) -> None:
    from transformers import AutoTokenizer

    images = [make_image(31), make_image(32, size=(20, 50))]
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="none")
    content = [
        {"type": "text", "text": "compare "},
        {"type": "image_url", "image_url": {"url": data_url(images[0]), "detail": "high"}},
        {"type": "text", "text": " with "},
        {"type": "image_url", "image_url": {"url": data_url(images[1])}},
    ]
    reply = client.chat.completions.create(
        model="tiny_qwen2_vl", messages=[{"role": "user", "content": content}], max_tokens=8, temperature=0
    )
    assert reply.usage.completion_tokens == 8
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "user", "content": f"compare {IMAGE} with {IMAGE}"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    plain = len(tokenizer.encode(text, add_special_tokens=False))
    assert reply.usage.prompt_tokens == plain - 2 + tokens_for(images[0]) + tokens_for(images[1])
    body = {"text": text, "image_data": [data_url(b) for b in images], "sampling_params": GREEDY}
    native = http.post("/generate", json=body)
    assert native.status_code == 200, native.text
    assert reply.choices[0].message.content == native.json()["text"]
    assert native.json()["meta_info"]["cached_tokens"] == reply.usage.prompt_tokens - 1  # same ids: the tree hit


@pytest.mark.parametrize(
    "image_data, problem",
    [
        (data_url(b"plain text, no picture"), "image 0 is not an image"),
        (data_url(make_image(24)[:60]), "image 0 is truncated or corrupt"),
        (data_url(huge_png_header()), "image 0 has too many pixels"),
        ([data_url(make_image(i)) for i in range(3)], "3 images; this server takes at most 2"),
    ],
    ids=["not-an-image", "truncated-png", "50k-by-50k", "too-many"],
)
def test_bad_images_are_400s_and_the_server_keeps_serving(http: httpx.Client, image_data: Any, problem: str) -> None:
    count = len(image_data) if isinstance(image_data, list) else 1
    response = http.post("/generate", json={"text": IMAGE * count, "image_data": image_data})
    assert response.status_code == 400, response.text
    assert problem in response.json()["error"]["message"]
    ok = http.post("/generate", json={"text": f"{IMAGE} x", "image_data": data_url(make_image(33))})
    assert ok.status_code == 200, ok.text

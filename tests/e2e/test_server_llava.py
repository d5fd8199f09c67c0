"""A LLaVA-1.5 server: images through the native `/generate` (`image_data` as a data URL,
bare base64 or an allowed local path) and through the official `openai` client's
`image_url` parts; bad images are 400s naming the problem and the server keeps serving."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import openai
import pytest
from helpers.tiny_llava import IMAGE_TOKEN, TOKENS_PER_IMAGE, huge_png_header, make_image
from helpers.vlm import data_url, serving

GREEDY = {"max_new_tokens": 8, "temperature": 0.0, "ignore_eos": True}


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("llava_media")
    (path / "cat.png").write_bytes(make_image(21))
    return path


@pytest.fixture(scope="module")
def base_url(tiny_vlm: Callable[[str], str], media_dir: Path) -> Iterator[str]:
    flags = ("--allowed-local-media-path", str(media_dir), "--max-images-per-request", "2")
    with serving(tiny_vlm("llava"), *flags) as url:
        yield url


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120.0) as client:
        yield client


def generate(http: httpx.Client, image_data: Any, text: str = f"look {IMAGE_TOKEN} now") -> httpx.Response:
    return http.post("/generate", json={"text": text, "image_data": image_data, "sampling_params": GREEDY})


def test_native_image_sources_agree_and_hit_the_cache(http: httpx.Client, media_dir: Path) -> None:
    http.post("/flush_cache")
    image = (media_dir / "cat.png").read_bytes()
    outs = []
    for source in (data_url(image), base64.b64encode(image).decode(), str(media_dir / "cat.png")):
        response = generate(http, source)
        assert response.status_code == 200, response.text
        outs.append(response.json())
    assert outs[0]["output_ids"] == outs[1]["output_ids"] == outs[2]["output_ids"]
    prompt = outs[0]["meta_info"]["prompt_tokens"]
    assert outs[0]["meta_info"]["cached_tokens"] == 0
    assert outs[1]["meta_info"]["cached_tokens"] == prompt - 1  # the image span hit the tree


def test_openai_client_sends_image_url_parts(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="none")
    content = [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": data_url(make_image(22)), "detail": "low"}},
        {"type": "image_url", "image_url": {"url": data_url(make_image(23))}},
    ]
    reply = client.chat.completions.create(
        model="tiny_llava", messages=[{"role": "user", "content": content}], max_tokens=8, temperature=0
    )
    assert reply.choices[0].message.content is not None
    assert reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens > 2 * TOKENS_PER_IMAGE
    swapped = [content[0], content[2], content[1]]
    other = client.chat.completions.create(
        model="tiny_llava", messages=[{"role": "user", "content": swapped}], max_tokens=8, temperature=0
    )
    assert other.usage.prompt_tokens == reply.usage.prompt_tokens


@pytest.mark.parametrize(
    "image_data, problem",
    [
        (data_url(b"plain text, no picture"), "image 0 is not an image"),
        (data_url(make_image(24)[:60]), "image 0 is truncated or corrupt"),
        (data_url(huge_png_header()), "image 0 has too many pixels"),
        ([data_url(make_image(i)) for i in range(3)], "3 images; this server takes at most 2"),
        ("/etc/passwd", "outside --allowed-local-media-path"),
    ],
    ids=["not-an-image", "truncated-png", "50k-by-50k", "too-many", "outside-media-path"],
)
def test_bad_images_are_400s_and_the_server_keeps_serving(http: httpx.Client, image_data: Any, problem: str) -> None:
    text = IMAGE_TOKEN * (len(image_data) if isinstance(image_data, list) else 1)
    response = generate(http, image_data, text)
    assert response.status_code == 400, response.text
    assert problem in response.json()["error"]["message"]
    assert generate(http, data_url(make_image(25))).status_code == 200


def test_chat_detail_must_be_known(http: httpx.Client) -> None:
    part = {"type": "image_url", "image_url": {"url": data_url(make_image(26)), "detail": "ultra"}}
    body = {"model": "tiny_llava", "messages": [{"role": "user", "content": [part]}], "max_tokens": 4}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "detail" in response.text

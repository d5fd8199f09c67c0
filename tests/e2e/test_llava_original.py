"""The original LLaVA checkpoint layout (`LlavaLlamaForCausalLM`, `mm_projector`, the vision
tower from the local CLIP directory `mm_vision_tower` names, a llava-hf tokenizer): greedy
tokens equal HF `LlavaForConditionalGeneration` built from the same weights (float32, CPU),
and start-up errors name what is missing or unsupported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from helpers.tiny_llava import IMAGE_TOKEN, expand, make_image
from helpers.tiny_llava_original import OriginalLlava, hf_original_greedy, make_original_llava
from helpers.vlm import data_url, leak_checked_engine

from radixlm.model_loader.loader import load_model_config

NEW = 16
GREEDY = {"max_new_tokens": NEW, "temperature": 0.0, "ignore_eos": True}
TOKENS_PER_IMAGE = 16


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: str) -> OriginalLlava:
    return make_original_llava(tmp_path_factory.mktemp("llava_original"), tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def engine(original: OriginalLlava) -> Iterator[Any]:
    with leak_checked_engine(original.model_dir, tokenizer_path=original.tokenizer_dir) as eng:
        yield eng


def hf_ref(original: OriginalLlava, ids: list[int], images: list[bytes]) -> list[int]:
    return hf_original_greedy(original, expand(ids, original.vocab_size), images, NEW)


def test_config_reads_as_llava_with_the_image_token_past_the_vocabulary(original: OriginalLlava) -> None:
    config = load_model_config(original.model_dir)
    assert config.architectures == ["LlavaLlamaForCausalLM"]
    assert config.vocab_size == original.vocab_size == config.image_token_index
    assert config.mm_vision_tower_dir == original.clip_dir


def test_one_and_two_images_match_hf(engine: Any, original: OriginalLlava) -> None:
    ids = engine.tokenizer.encode(f"hello {IMAGE_TOKEN} what is this?")
    assert original.vocab_size in ids
    out = engine.generate(input_ids=ids, image_data=make_image(1), sampling_params=GREEDY)
    assert out["meta_info"]["prompt_tokens"] == len(ids) - 1 + TOKENS_PER_IMAGE
    assert out["output_ids"] == hf_ref(original, ids, [make_image(1)])
    two = engine.tokenizer.encode(f"first {IMAGE_TOKEN} second {IMAGE_TOKEN} compare")
    images = [make_image(4), make_image(5, size=(20, 50))]  # the second one is padded to a square
    out = engine.generate(input_ids=two, image_data=images, sampling_params=GREEDY)
    assert out["output_ids"] == hf_ref(original, two, images)


def test_batch_mixing_image_and_text_requests(engine: Any, original: OriginalLlava) -> None:
    prompts = [engine.tokenizer.encode(f"{IMAGE_TOKEN} one"), engine.tokenizer.encode("just text here")]
    images = [make_image(6), None]
    outs = engine.generate(input_ids=prompts, image_data=images, sampling_params=GREEDY)
    assert outs[0]["output_ids"] == hf_ref(original, prompts[0], [make_image(6)])
    assert outs[1]["output_ids"] == hf_ref(original, prompts[1], [])


def _with_config(original: OriginalLlava, tmp_path: Path, **fields: Any) -> str:
    raw = json.loads((Path(original.model_dir) / "config.json").read_text())
    raw.update(fields)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return str(tmp_path)


def test_missing_vision_tower_is_a_start_up_error_naming_it(original: OriginalLlava, tmp_path: Path) -> None:
    path = _with_config(original, tmp_path, mm_vision_tower="openai/clip-vit-large-patch14-336")
    with pytest.raises(ValueError, match="mm_vision_tower='openai/clip-vit-large-patch14-336'.*not available locally"):
        load_model_config(path)


def test_other_original_layouts_are_refused_by_name(original: OriginalLlava, tmp_path: Path) -> None:
    path = _with_config(original, tmp_path, architectures=["LlavaMistralForCausalLM"], model_type="llava_mistral")
    with pytest.raises(ValueError, match="LlavaMistralForCausalLM is not supported"):
        load_model_config(path)


@pytest.mark.parametrize(
    "field, value",
    [("mm_projector_type", "linear"), ("mm_use_im_start_end", True), ("image_aspect_ratio", "anyres")],
)
def test_unsupported_variants_are_start_up_errors_naming_the_field(
    original: OriginalLlava, tmp_path: Path, field: str, value: Any
) -> None:
    with pytest.raises(ValueError, match=f"{field}={value!r} is not supported"):
        load_model_config(_with_config(original, tmp_path, **{field: value}))


SEED_IDS = {  # the README's LLaVA-1.5 command line, and the vision tower its config names
    "model": "liuhaotian/llava-v1.5-7b",
    "tokenizer": "llava-hf/llava-1.5-7b-hf",
    "tower": "openai/clip-vit-large-patch14-336",
}


def test_readme_command_serves_an_image_chat_from_an_offline_hub_cache(
    original: OriginalLlava, engine: Any, tmp_path: Path
) -> None:
    """`--model-path liuhaotian/llava-v1.5-7b --tokenizer-path llava-hf/llava-1.5-7b-hf
    --chat-template vicuna_v1.1` with the three ids in the local Hub cache (offline): the
    config's `mm_vision_tower` Hub id resolves there; an OpenAI image chat answers as the
    Engine does on the rendered prompt."""
    import os
    import shutil
    import sys

    import openai
    from helpers.hub_cache import add_to_hub_cache
    from helpers.server_utils import free_port, start_command, stop

    staged = tmp_path / "staged"
    shutil.copytree(original.model_dir, staged)
    raw = json.loads((staged / "config.json").read_text())
    (staged / "config.json").write_text(json.dumps({**raw, "mm_vision_tower": SEED_IDS["tower"]}))
    cache = tmp_path / "hub"
    for key, source in (("model", staged), ("tokenizer", original.tokenizer_dir), ("tower", original.clip_dir)):
        add_to_hub_cache(cache, SEED_IDS[key], source)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    port = free_port()
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--model-path", SEED_IDS["model"]]
    cmd += ["--tokenizer-path", SEED_IDS["tokenizer"], "--chat-template", "vicuna_v1.1", "--port", str(port)]
    cmd += ["--dtype", "float32", "--max-total-tokens", "2048", "--num-threads", "1"]
    proc = start_command(cmd, f"http://127.0.0.1:{port}", env)
    try:
        picture = make_image(51, size=(30, 44))
        content = [
            {"type": "image_url", "image_url": {"url": data_url(picture)}},
            {"type": "text", "text": "what is this"},
        ]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY")
        reply = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": content}], temperature=0, max_tokens=8
        )
    finally:
        stop(proc)
    from transformers import AutoTokenizer

    from radixlm.tokenizer.chat_templates import resolve_chat_template

    tokenizer = AutoTokenizer.from_pretrained(original.tokenizer_dir)
    tokenizer.chat_template = resolve_chat_template("vicuna_v1.1")
    messages = [{"role": "user", "content": f"{IMAGE_TOKEN}\nwhat is this"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert reply.usage.prompt_tokens == len(ids) - 1 + TOKENS_PER_IMAGE
    direct = engine.generate(input_ids=ids, image_data=picture, sampling_params={"max_new_tokens": 8, "temperature": 0})
    assert reply.choices[0].message.content == direct["text"]

"""The original LLaVA checkpoint layout (`LlavaLlamaForCausalLM`, `mm_projector`, the vision
tower from the local CLIP directory `mm_vision_tower` names, a llava-hf tokenizer): greedy
tokens equal HF `LlavaForConditionalGeneration` built from the same weights (float32, CPU),
and start-up errors name what is missing or unsupported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.tiny_llava import IMAGE_TOKEN, expand, make_image
from helpers.tiny_llava_original import OriginalLlava, hf_original_greedy, make_original_llava
from helpers.tiny_models import make_tiny_tokenizer

import radixlm
from radixlm.model_loader.loader import load_model_config

NEW = 16
GREEDY = {"max_new_tokens": NEW, "temperature": 0.0, "ignore_eos": True}
ARGS = {"dtype": "float32", "max_total_tokens": 2048, "log_level": "warning"}
TOKENS_PER_IMAGE = 16


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> OriginalLlava:
    root = tmp_path_factory.mktemp("llava_original")
    return make_original_llava(root, make_tiny_tokenizer(root))


@pytest.fixture(scope="module")
def engine(original: OriginalLlava) -> Any:
    with radixlm.Engine(original.model_dir, tokenizer_path=original.tokenizer_dir, **ARGS) as eng:
        yield eng
        eng.check_no_leak()


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


@pytest.mark.parametrize(
    "field, value",
    [("mm_projector_type", "linear"), ("mm_use_im_start_end", True), ("image_aspect_ratio", "anyres")],
)
def test_unsupported_variants_are_start_up_errors_naming_the_field(
    original: OriginalLlava, tmp_path: Path, field: str, value: Any
) -> None:
    with pytest.raises(ValueError, match=f"{field}={value!r} is not supported"):
        load_model_config(_with_config(original, tmp_path, **{field: value}))

"""Vision-language throughput: radixlm's Engine vs HF transformers `generate`, dummy weights.

Every request is a short text, one image (672x672 by default) and a question, with a fixed
number of output tokens (64). Two workloads in one run:
  distinct: every request its own image (no cache hits past the shared text before the image);
  shared:   the same requests over 8 distinct images (the radix cache holds each image's span,
            so later requests neither re-encode it nor prefill it again).
radixlm runs all requests of a workload in one `Engine.generate` call (image preprocessing in
the front included); HF runs `generate` in batches of each `--hf-batches` size over the first
`--hf-requests` requests, and its best rate is compared, both with its preprocessing counted
(as radixlm's is) and generate alone. HF rates come from fewer requests than radixlm's and are
printed as output tokens per second.

    python benchmarks/vlm_bench.py                       # Qwen2.5-VL-7B shape, bf16, CUDA
    python benchmarks/vlm_bench.py --tiny                # tiny shape on CPU (a smoke run)
    python benchmarks/vlm_bench.py --profile             # where the time goes (vlm_profile.py), ~1 min
"""

from __future__ import annotations

import argparse
import inspect
import json
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

VISION_START, IMAGE_PAD, VISION_END = 151652, 151655, 151653

QWEN25_VL_7B = dict(
    text=dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    ),
    vision=dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
    ),
    processor=dict(patch_size=14, merge_size=2, temporal_patch_size=2),
)

TINY = dict(
    text=dict(
        vocab_size=152064,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
    ),
    vision=dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        out_hidden_size=64,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=16,
        fullatt_block_indexes=[1],
    ),
    processor=dict(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=256, max_pixels=4096),
)


@dataclass
class Workload:
    prompts: list[list[int]]  # each with one vision_start, image_pad, vision_end
    images: list[Any]  # one PIL image per prompt


def model_dir(shape: dict) -> str:
    """A directory with the config and image processor of `shape` (no weights: dummy load)."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLImageProcessor

    path = tempfile.mkdtemp(prefix="qwen2_5_vl-")
    config = Qwen2_5_VLConfig(
        text_config=dict(shape["text"], bos_token_id=151643, eos_token_id=151645),
        vision_config=shape["vision"],
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        image_token_id=IMAGE_PAD,
        video_token_id=151656,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    config.save_pretrained(path)
    Qwen2VLImageProcessor(**shape["processor"]).save_pretrained(path)
    return path


def random_image(seed: int, side: int) -> Any:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def workload(n: int, distinct_images: int, side: int, text_len: int, seed: int) -> Workload:
    """`n` prompts: a shared text, the image, a per-request question of `text_len` tokens;
    request i shows image i mod `distinct_images` (all built from `seed`)."""
    rng = np.random.default_rng(seed)
    shared = rng.integers(100, 150000, size=text_len).tolist()
    pool = [random_image(seed * 100_000 + k, side) for k in range(distinct_images)]
    prompts, images = [], []
    for i in range(n):
        question = rng.integers(100, 150000, size=text_len).tolist()
        prompts.append(shared + [VISION_START, IMAGE_PAD, VISION_END] + question)
        images.append(pool[i % distinct_images])
    return Workload(prompts, images)


def make_engine(path: str, device: str, dtype: str, **overrides: Any) -> Any:
    """The `radixlm.Engine` both benchmarks time: dummy weights of the model at `path`, token
    ids in (no tokenizer), a 4096-token context; `overrides` are further Engine arguments."""
    import radixlm

    args = dict(
        load_format="dummy",
        dtype=dtype,
        device=device,
        skip_tokenizer_init=True,
        context_length=4096,
        log_level="warning",
    )
    return radixlm.Engine(path, **{**args, **overrides})


def radixlm_run(path: str, works: dict[str, Workload], out_len: int, device: str, dtype: str) -> dict:
    """Per workload: output tok/s of one `Engine.generate` over all its requests (which submits
    each request once its image is prepared, so the front overlaps the model), cached tokens,
    and the seconds of its image preparation alone (run once more, untimed by the rate)."""
    results = {}
    greedy = {"max_new_tokens": out_len, "ignore_eos": True, "temperature": 0}
    with make_engine(path, device, dtype) as engine:
        warm = next(iter(works.values()))
        side = warm.images[0].width
        engine.generate(
            input_ids=warm.prompts[:2],
            image_data=[random_image(10**9, side), random_image(10**9 + 1, side)],
            sampling_params=dict(greedy, max_new_tokens=4),
        )
        for name, work in works.items():
            prep_start = time.perf_counter()  # the front's share: the same preparation generate does first
            engine.images.prepare_all(work.prompts, [[image] for image in work.images])
            prepare = time.perf_counter() - prep_start
            engine.flush_cache()
            start = time.perf_counter()
            outs = engine.generate(input_ids=work.prompts, image_data=work.images, sampling_params=greedy)
            elapsed = time.perf_counter() - start
            tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
            results[name] = {
                "requests": len(outs),
                "seconds": round(elapsed, 2),
                "front_prepare_seconds": round(prepare, 2),
                "output_tok_s": round(tokens / elapsed, 1),
                "prompt_tokens": sum(o["meta_info"]["prompt_tokens"] for o in outs),
                "cached_tokens": sum(o["meta_info"]["cached_tokens"] for o in outs),
            }
            print(f"radixlm {name}: {results[name]}", flush=True)
    return results


def hf_model(path: str, device: str, dtype: torch.dtype) -> Any:
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = None
    return model.eval()


def hf_batch_inputs(processor: Any, work: Workload, lo: int, hi: int, model: Any, device: str) -> dict:
    """One batch of HF `generate` inputs: image pads expanded to the processor's grid."""
    processed = processor(images=work.images[lo:hi], return_tensors="pt")
    grids = processed["image_grid_thw"]
    merge = processor.merge_size**2
    rows = []
    for prompt, grid in zip(work.prompts[lo:hi], grids):
        k = prompt.index(IMAGE_PAD)
        rows.append(prompt[:k] + [IMAGE_PAD] * (int(grid.prod()) // merge) + prompt[k + 1 :])
    ids = torch.tensor(rows, device=device)
    kwargs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=processed["pixel_values"].to(device, model.dtype),
        image_grid_thw=grids.to(device),
    )
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        kwargs["mm_token_type_ids"] = (ids == IMAGE_PAD).to(torch.int32)
    return kwargs


def hf_run(path: str, work: Workload, out_len: int, batches: list[int], device: str, dtype: torch.dtype) -> dict:
    """Per batch size, output tok/s of HF `generate` (greedy): `with_preprocessing` counts the
    image processor (all batches' inputs made first, then generated), `generate_only` not."""
    from transformers import AutoImageProcessor

    model = hf_model(path, device, dtype)
    processor = AutoImageProcessor.from_pretrained(path)
    gen = dict(max_new_tokens=out_len, min_new_tokens=out_len, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(**hf_batch_inputs(processor, work, 0, 1, model, device), **dict(gen, max_new_tokens=4))
    rates: dict = {"with_preprocessing": {}, "generate_only": {}}
    tokens = len(work.prompts) * out_len
    for batch in batches:
        sync(device)
        start = time.perf_counter()
        spans = [(lo, min(lo + batch, len(work.prompts))) for lo in range(0, len(work.prompts), batch)]
        inputs = [hf_batch_inputs(processor, work, lo, hi, model, device) for lo, hi in spans]
        sync(device)
        generate_start = time.perf_counter()
        with torch.no_grad():
            for kwargs in inputs:
                model.generate(**kwargs, **gen)
        sync(device)
        end = time.perf_counter()
        del inputs
        rates["with_preprocessing"][batch] = round(tokens / (end - start), 1)
        rates["generate_only"][batch] = round(tokens / (end - generate_start), 1)
        print(
            f"HF generate batch {batch} over {len(work.prompts)} requests: {rates['with_preprocessing'][batch]} "
            f"output tok/s with preprocessing, {rates['generate_only'][batch]} generate only",
            flush=True,
        )
    return rates


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def preprocess_ms(path: str, work: Workload, count: int = 32) -> float:
    """Milliseconds the HF image processor takes per image, one image per call on one thread
    (the front prepares a batch's prompts on up to 8 threads): the host-side share of a request."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(path)
    images = work.images[:count]
    start = time.perf_counter()
    for image in images:
        processor(images=[image], return_tensors="np")
    return round((time.perf_counter() - start) * 1e3 / len(images), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny Qwen2.5-VL shape on CPU, float32 (smoke run)")
    ap.add_argument("--requests", type=int, default=None, help="radixlm requests per workload (500; tiny 16)")
    ap.add_argument("--hf-requests", type=int, default=None, help="HF requests per batch size (128; tiny 8)")
    ap.add_argument("--hf-batches", type=int, nargs="+", default=None, help="HF batch sizes (16 32 64; tiny 4 8)")
    ap.add_argument("--image-size", type=int, default=None, help="square image side (672; tiny 56)")
    ap.add_argument("--output-len", type=int, default=None, help="output tokens per request (64; tiny 8)")
    ap.add_argument(
        "--shared-images", type=int, default=None, help="distinct images of the shared workload (8; tiny 2)"
    )
    ap.add_argument("--text-len", type=int, default=16, help="tokens before and after the image")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda; tiny cpu)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument(
        "--profile", action="store_true", help="only vlm_profile.py's short split (front, tower, prefill, decode)"
    )
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    tiny = a.tiny
    n = a.requests or (16 if tiny else 500)
    hf_n = a.hf_requests or (8 if tiny else 128)
    side = a.image_size or (56 if tiny else 672)
    out_len = a.output_len or (8 if tiny else 64)
    batches = a.hf_batches or ([4, 8] if tiny else [16, 32, 64])
    device = a.device or ("cpu" if tiny else "cuda")
    dtype = "float32" if device == "cpu" else "bfloat16"
    if a.profile:
        from vlm_profile import profile

        results = profile(tiny, a.requests or (4 if tiny else 32), side, out_len)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
        return
    path = model_dir(TINY if tiny else QWEN25_VL_7B)
    works = {
        "distinct": workload(n, n, side, a.text_len, seed=1),
        "shared": workload(n, a.shared_images or (2 if tiny else 8), side, a.text_len, seed=2),
    }
    results: dict = {"shape": "tiny" if tiny else "qwen2.5-vl-7b", "image_side": side, "output_len": out_len}
    print(f"{results['shape']}: {n} requests per workload, HF {hf_n} per batch size {batches}", flush=True)
    results["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    results["preprocess_ms_per_image"] = preprocess_ms(path, works["distinct"])
    results["radixlm"] = radixlm_run(path, works, out_len, device, dtype)
    if not a.skip_hf:
        hf_work = Workload(works["distinct"].prompts[:hf_n], works["distinct"].images[:hf_n])
        rates = hf_run(path, hf_work, out_len, batches, device, getattr(torch, dtype))
        results["hf_distinct_tok_s"] = rates
        results["hf_requests"] = hf_n
        for kind, by_batch in rates.items():
            best = max(by_batch.values())
            for name in works:
                ours = results["radixlm"][name]["output_tok_s"]
                results[f"ratio_{name}_vs_hf_best_{kind}"] = round(ours / best, 2)
    distinct, shared = results["radixlm"]["distinct"], results["radixlm"]["shared"]
    results["shared_vs_distinct"] = round(shared["output_tok_s"] / distinct["output_tok_s"], 2)
    print(json.dumps(results, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

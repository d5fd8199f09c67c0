"""The peer for `bench_offline_throughput --baseline hf`: HF transformers `generate` on the same requests.

The HF model is built from the very weights radixlm serves: a GGUF file is dequantized by our
reader and loaded into `AutoModelForCausalLM.from_config`; a HF directory goes through
`from_pretrained`; `--load-format dummy` gives a randomly initialised model of the same shape.
Requests run in static batches of `batch_size` in the given order, left-padded, greedy, with EOS
disabled; a batch generates its longest requested output, but only the requested tokens are
counted (the padding and overshoot are the cost of static batching).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from radixlm.bench.datasets import BenchRequest


@dataclass(frozen=True)
class BaselineResult:
    """HF `generate` over all requests: wall seconds and token counts."""

    batch_size: int
    duration: float
    input_tokens: int
    output_tokens: int

    @property
    def output_throughput(self) -> float:
        return self.output_tokens / self.duration


def build_hf_model(
    model_path: str, load_format: str, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False
) -> Any:
    """An eval-mode HF causal LM with radixlm's weights for `model_path` (see the module docstring)."""
    from transformers import AutoModelForCausalLM

    from radixlm.model_loader.loader import is_gguf, load_model_config

    if is_gguf(model_path):
        model = _from_gguf(model_path, load_model_config(model_path))
    elif load_format == "dummy":
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(
            load_model_config(model_path, trust_remote_code), trust_remote_code=trust_remote_code
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    model = model.to(device=device, dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    return model


def _from_gguf(path: str, config: Any) -> Any:
    """HF model on the GGUF's dequantized tensors; refuses a checkpoint whose names do not match."""
    from transformers import AutoModelForCausalLM

    from radixlm.model_loader.gguf_reader import GGUFCheckpoint

    model = AutoModelForCausalLM.from_config(config)
    result = model.load_state_dict(dict(GGUFCheckpoint(path).tensors()), strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"HF model does not match {path}: missing {missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}"
        )
    model.tie_weights()
    return model


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, max_len] ids and attention mask, padded on the left so every prompt ends at the last column."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def generate_batch(model: Any, batch: list[BenchRequest], pad_id: int) -> None:
    """Greedy `generate` of exactly the longest requested output of the batch."""
    ids, mask = left_pad([r.prompt_ids for r in batch], pad_id, model.device)
    new = max(r.output_len for r in batch)
    model.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new, min_new_tokens=new, pad_token_id=pad_id
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def run_hf_baseline(model: Any, requests: list[BenchRequest], batch_size: int, pad_id: int = 0) -> BaselineResult:
    """Time HF over every request (after a two-prompt warm-up) in static batches of `batch_size`."""
    warm = [BenchRequest("", r.prompt_ids[:8], 2) for r in requests[:2]]
    generate_batch(model, warm, pad_id)
    _sync(model.device)
    start = time.perf_counter()
    for i in range(0, len(requests), batch_size):
        generate_batch(model, requests[i : i + batch_size], pad_id)
    _sync(model.device)
    return BaselineResult(
        batch_size,
        time.perf_counter() - start,
        sum(r.prompt_len for r in requests),
        sum(r.output_len for r in requests),
    )

"""The HF transformers peer of offline_throughput.py: `LlamaForCausalLM` on the very tensors radixlm
loads from the GGUF, greedy `generate` at fixed output lengths, timed at each batch size."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
from throughput_measure import ModelShape, RunResult, load_average  # noqa: E402


def build_hf_peer(path: str) -> Any:
    """HF LlamaForCausalLM on the very tensors radixlm loads (float32, eval, eos disabled)."""
    import transformers

    from radixlm.model_loader.gguf_reader import GGUFCheckpoint

    checkpoint = GGUFCheckpoint(path)
    cfg = {k: v for k, v in checkpoint.config().items() if k not in ("architectures", "model_type", "torch_dtype")}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    result = model.load_state_dict(dict(checkpoint.tensors()), strict=False)
    unexpected = [k for k in result.missing_keys if k != "lm_head.weight"] + list(result.unexpected_keys)
    if unexpected:
        raise RuntimeError(f"HF peer does not match the checkpoint: {unexpected[:5]}")
    model.tie_weights()
    model = model.float().eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def hf_generate(model: Any, prompts: list[list[int]], output_len: int, batch_size: int) -> list[list[int]]:
    """Greedy, exactly `output_len` new tokens, prompts in chunks of `batch_size` (equal lengths: no padding)."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            ids = torch.tensor(prompts[start : start + batch_size])
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=output_len,
                min_new_tokens=output_len,
            )
            outputs += out[:, ids.shape[1] :].tolist()
    return outputs


def bench_hf(
    model: Any, prompts: list[list[int]], output_len: int, batch_size: int, shape: ModelShape
) -> tuple[RunResult, list[list[int]]]:
    """Time HF over all prompts at one batch size."""
    cpu0, start = time.process_time(), time.perf_counter()
    outputs = hf_generate(model, prompts, output_len, batch_size)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    n, prompt_tokens = len(prompts), sum(map(len, prompts))
    flops = shape.flops(prompt_tokens, n * (output_len - 1), n * output_len)
    return RunResult(
        f"HF generate bs={batch_size}",
        seconds,
        cpu,
        n * output_len,
        prompt_tokens,
        0,
        flops / 1e9,
        {"batch_size": batch_size},
    ), outputs


def bench_hf_sweep(
    path: str,
    prompts: list[list[int]],
    output_len: int,
    batch_sizes: list[int],
    shape: ModelShape,
    log: Callable[[str], None],
) -> tuple[list[RunResult], list[list[int]]]:
    """HF at every batch size (after a small warm-up); returns all runs and the best run's outputs."""
    model = build_hf_peer(path)
    hf_generate(model, [p[:16] for p in prompts[:2]], 4, 2)
    runs, best_outputs, best = [], [], float("inf")
    for bs in batch_sizes:
        run, outputs = bench_hf(model, prompts, output_len, bs, shape)
        log(f"  {run.name}: {run.seconds:.2f} s, {run.tok_per_s:.1f} out tok/s (load {load_average()})")
        runs.append(run)
        if run.seconds < best:
            best, best_outputs = run.seconds, outputs
    return runs, best_outputs

"""Golden tests of the native MoE models (Mixtral, Qwen2-MoE, Qwen3-MoE): greedy tokens equal HF
transformers' `generate` and prompt / output top-5 logprobs are within LOGPROB_TOL (float32,
CPU), alone and batched, through radix-cache hits and chunked prefill, and split over two gloo
ranks by tensor parallelism (a slice of every expert per rank) and by expert parallelism (whole
experts per rank), and from a GGUF file. The tiny models' routing is checked to really spread
tokens over experts.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from helpers.golden import (
    GREEDY,
    LOGPROB_TOL,
    NEW_TOKENS,
    assert_greedy_equal,
    check_batch_single_and_logprobs,
    random_prompts,
)
from helpers.moe_gguf import write_moe_gguf
from helpers.tiny_models import hf_greedy, hf_logprobs, load_hf_model
from helpers.tiny_moe import TINY_MOE_ARCHS

import radixlm
from radixlm.model_loader.loader import build_model, load_model_config

ENGINE_ARGS: dict[str, Any] = dict(max_total_tokens=4096, dtype="float32", log_level="warning")


@pytest.mark.parametrize("arch", TINY_MOE_ARCHS)
def test_routing_spreads_tokens_over_experts(tiny_model: Callable[[str], str], arch: str) -> None:
    """Every sparse layer sends a 40-token prompt's tokens to at least 6 of the 8 experts, each
    token to top_k >= 2 of them: the golden comparisons below exercise real routing."""
    hf = load_hf_model(tiny_model(arch))
    top_k = hf.config.num_experts_per_tok
    assert top_k >= 2
    with torch.no_grad():
        out = hf(torch.tensor(random_prompts(1, 40, 41, seed=1)), output_router_logits=True)
    assert len(out.router_logits) >= 2
    for logits in out.router_logits:
        ids = logits.topk(top_k, dim=-1).indices
        assert ids.unique().numel() >= 6, torch.bincount(ids.flatten(), minlength=8)


@pytest.mark.parametrize("arch", TINY_MOE_ARCHS)
def test_greedy_tokens_and_logprobs_match_hf(tiny_model: Callable[[str], str], arch: str) -> None:
    path = tiny_model(arch)
    hf = load_hf_model(path)
    prompts = random_prompts(6, 3, 48, seed=1)
    with radixlm.Engine(path, **ENGINE_ARGS) as engine:
        check_batch_single_and_logprobs(hf, engine, prompts)


@pytest.mark.parametrize("arch", TINY_MOE_ARCHS)
def test_radix_hits_and_chunked_prefill_keep_outputs(tiny_model: Callable[[str], str], arch: str) -> None:
    """Prompts are prefilled in chunks of 16; the second batch shares a 40-token prefix with the
    first and reads it from the radix tree; every token stays HF's."""
    path = tiny_model(arch)
    hf = load_hf_model(path)
    rng = random.Random(7)
    shared = [rng.randrange(3, 400) for _ in range(40)]
    first = [shared + [5, 6, 7]] + random_prompts(3, 20, 60, seed=2)
    second = [shared + [9, 10], shared + [11, 12, 13]]
    with radixlm.Engine(path, chunked_prefill_size=16, **ENGINE_ARGS) as engine:
        out1 = engine.generate(input_ids=first, sampling_params=GREEDY)
        out2 = engine.generate(input_ids=second, sampling_params=GREEDY)
        engine.check_no_leak()
    assert all(o["meta_info"]["cached_tokens"] >= 40 for o in out2)
    for prompt, out in zip(first + second, out1 + out2):
        assert_greedy_equal(hf, prompt, out["output_ids"], hf_greedy(hf, prompt, NEW_TOKENS))


@pytest.mark.parametrize("arch", TINY_MOE_ARCHS)
def test_tensor_and_expert_parallel_match_hf(tiny_model: Callable[[str], str], arch: str) -> None:
    """Two gloo ranks: each holds half of every expert's intermediate dimension (tp2) or four
    whole experts (tp2-ep2), plus its attention heads; greedy tokens equal HF's and prompt
    logprobs are within LOGPROB_TOL of HF's. The two splits round the experts' sums differently,
    so their logprobs are not bit-identical: expert parallelism really reached the ranks."""
    path = tiny_model(arch)
    hf = load_hf_model(path)
    prompts = random_prompts(4, 3, 40, seed=4)
    logprobs = []
    for split in ({"tp": 2}, {"tp": 2, "ep_size": 2}):
        with radixlm.Engine(path, **split, **ENGINE_ARGS) as engine:
            outs = engine.generate(input_ids=prompts, sampling_params=GREEDY, return_logprob=True, logprob_start_len=0)
            engine.check_no_leak()
        for prompt, out in zip(prompts, outs):
            assert_greedy_equal(hf, prompt, out["output_ids"], hf_greedy(hf, prompt, NEW_TOKENS))
        logprobs.append(torch.tensor([lp for o in outs for lp, _ in o["meta_info"]["input_token_logprobs"][1:]]))
    for prompt, row in zip(prompts, logprobs[1].split([len(p) - 1 for p in prompts])):
        ref = hf_logprobs(hf, prompt)
        expected = ref[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
        assert (row - expected).abs().max() < LOGPROB_TOL
    assert 0 < (logprobs[0] - logprobs[1]).abs().max() < LOGPROB_TOL


@pytest.mark.parametrize("arch", TINY_MOE_ARCHS)
def test_transformers_backend_refusal_names_the_native_class(tiny_model: Callable[[str], str], arch: str) -> None:
    """model_impl='transformers' cannot load per-expert tensors (transformers merges them on
    load); the refusal says which native class serves the model and how to select it."""
    path = tiny_model(arch)
    config = load_model_config(path)
    native = config.architectures[0]
    with pytest.raises(ValueError, match=f"weight conversion.*native implementation.*{native}.*--model-impl radixlm"):
        build_model(config, None, path, "auto", torch.float32, torch.device("cpu"), model_impl="transformers")


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_gguf_checkpoint_generates_hf_tokens(tiny_model: Callable[[str], str], arch: str, tmp_path: Path) -> None:
    """The same weights as a GGUF file (experts stacked as llama.cpp stores them) serve HF's tokens."""
    path = tiny_model(arch)
    hf = load_hf_model(path)
    gguf_path = write_moe_gguf(path, tmp_path / f"{arch}.gguf")
    prompts = random_prompts(3, 3, 40, seed=6)
    with radixlm.Engine(gguf_path, tokenizer_path=path, **ENGINE_ARGS) as engine:
        outs = engine.generate(input_ids=prompts, sampling_params=GREEDY)
        engine.check_no_leak()
    for prompt, out in zip(prompts, outs):
        assert_greedy_equal(hf, prompt, out["output_ids"], hf_greedy(hf, prompt, NEW_TOKENS))

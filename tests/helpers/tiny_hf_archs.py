"""Tiny random configs of architectures radixlm has no native implementation for.

Served through the Transformers backend (model_impl="transformers"). Same shape as
helpers.tiny_models.tiny_config: 2 layers, hidden 64, 4 query heads (2 KV heads where the
architecture has GQA), a large `initializer_range` so greedy choices are clear-cut.
Features radixlm's attention does not implement are switched off and said so per arch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from helpers.tiny_models import make_tiny_tokenizer

_COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=512,
    initializer_range=0.15,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,
)
_GQA = dict(num_key_value_heads=2)


def _gemma2(vocab: int) -> Any:
    from transformers import Gemma2Config

    # Attention soft-capping is off (our backends do not implement it; the check refuses it);
    # the window exceeds max_position_embeddings so alternating sliding layers attend fully.
    # Final-logit soft-capping stays on: the backend applies it in compute_logits.
    return Gemma2Config(
        vocab_size=vocab,
        **_COMMON,
        **_GQA,
        head_dim=16,
        attn_logit_softcapping=None,
        final_logit_softcapping=30.0,
        sliding_window=1024,
        query_pre_attn_scalar=24,
    )


def _gemma3(vocab: int) -> Any:
    from transformers import Gemma3TextConfig

    # Window larger than max_position_embeddings, as for Gemma 2; per-layer-type rope stays.
    return Gemma3TextConfig(
        vocab_size=vocab, **_COMMON, **_GQA, head_dim=16, sliding_window=1024, query_pre_attn_scalar=16
    )


def _phi3(vocab: int) -> Any:
    from transformers import Phi3Config

    return Phi3Config(vocab_size=vocab, **_COMMON, **_GQA, sliding_window=None, tie_word_embeddings=False)


def _olmo2(vocab: int) -> Any:
    from transformers import Olmo2Config

    return Olmo2Config(vocab_size=vocab, **_COMMON, **_GQA, tie_word_embeddings=False)


def _gpt_neox(vocab: int) -> Any:
    from transformers import GPTNeoXConfig

    # Multi-head (no KV-head count in the config), partial rotary, parallel residual.
    return GPTNeoXConfig(vocab_size=vocab, **_COMMON, rotary_pct=0.5, use_parallel_residual=True)


def _granite(vocab: int) -> Any:
    from transformers import GraniteConfig

    # Embedding / residual / attention multipliers and a logits divisor.
    return GraniteConfig(
        vocab_size=vocab,
        **_COMMON,
        **_GQA,
        embedding_multiplier=2.0,
        residual_multiplier=0.5,
        attention_multiplier=0.3,
        logits_scaling=0.5,
    )


def _cohere(vocab: int) -> Any:
    from transformers import CohereConfig

    # Parallel attention + MLP, LayerNorm, interleaved rotary, `logit_scale` multiplier.
    return CohereConfig(vocab_size=vocab, **_COMMON, **_GQA, logit_scale=2.0, use_qk_norm=False)


def _phi(vocab: int) -> Any:
    from transformers import PhiConfig

    # Partial rotary, q/k layer norm, biased LM head.
    return PhiConfig(vocab_size=vocab, **_COMMON, **_GQA, partial_rotary_factor=0.5, qk_layernorm=True)


def _smollm3(vocab: int) -> Any:
    from transformers import SmolLM3Config

    # The second layer skips rotary (NoPE), as every fourth layer does in the real model.
    return SmolLM3Config(vocab_size=vocab, **_COMMON, **_GQA, no_rope_layers=[1, 0], use_sliding_window=False)


def _glm(vocab: int) -> Any:
    from transformers import GlmConfig

    return GlmConfig(vocab_size=vocab, **_COMMON, **_GQA, head_dim=16, partial_rotary_factor=0.5)


TINY_HF_CONFIGS = {
    "gemma2": _gemma2,
    "gemma3_text": _gemma3,
    "phi3": _phi3,
    "olmo2": _olmo2,
    "gpt_neox": _gpt_neox,
    "granite": _granite,
    "cohere": _cohere,
    "phi": _phi,
    "smollm3": _smollm3,
    "glm": _glm,
}
TINY_HF_ARCHS = tuple(TINY_HF_CONFIGS)


def tiny_hf_config(arch: str, vocab_size: int) -> Any:
    """A tiny config of `arch` (one of TINY_HF_ARCHS)."""
    return TINY_HF_CONFIGS[arch](vocab_size)


def make_tiny_hf_model(tmp_dir: str | os.PathLike, arch: str, seed: int = 0, config: Any = None) -> str:
    """Save a random tiny model of `arch` (or of `config`) with the tiny tokenizer; return its path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(tmp_dir) / f"tiny_{arch}"
    tokenizer = AutoTokenizer.from_pretrained(make_tiny_tokenizer(Path(tmp_dir) / f"tok_{arch}"))
    config = config if config is not None else tiny_hf_config(arch, vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return str(out)

"""Tiny random MoE configs (Mixtral, Qwen2-MoE, Qwen3-MoE) for the golden tests: hidden 64,
GQA (4 query heads, 2 KV heads), 8 experts with top-k >= 2 so that routing spreads tokens over
several experts, a large `initializer_range` so greedy choices are clear-cut. Built by
helpers.tiny_models.make_tiny_model like the dense architectures."""

from __future__ import annotations

from typing import Any

TINY_MOE_ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe")

_COMMON = dict(
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.15,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,
    tie_word_embeddings=False,
)


def tiny_moe_config(arch: str, vocab_size: int) -> Any:
    """Mixtral: top-2 of 8, renormalised. Qwen2-MoE: 3 layers, the middle one dense
    (`mlp_only_layers`), top-3 of 8 without renormalisation, a gated shared expert, q/k/v biases.
    Qwen3-MoE: top-4 of 8 renormalised (`norm_topk_prob`), q/k norm, head_dim 16."""
    from transformers import MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

    if arch == "mixtral":
        return MixtralConfig(
            vocab_size=vocab_size, **_COMMON, intermediate_size=64, num_hidden_layers=2,
            num_local_experts=8, num_experts_per_tok=2, sliding_window=None,
        )  # fmt: skip
    if arch == "qwen2_moe":
        return Qwen2MoeConfig(
            vocab_size=vocab_size, **_COMMON, intermediate_size=128, moe_intermediate_size=32,
            shared_expert_intermediate_size=48, num_hidden_layers=3, mlp_only_layers=[1],
            num_experts=8, num_experts_per_tok=3, norm_topk_prob=False, qkv_bias=True,
        )  # fmt: skip
    if arch == "qwen3_moe":
        return Qwen3MoeConfig(
            vocab_size=vocab_size, **_COMMON, intermediate_size=128, moe_intermediate_size=32,
            num_hidden_layers=2, num_experts=8, num_experts_per_tok=4, norm_topk_prob=True, head_dim=16,
        )  # fmt: skip
    raise ValueError(arch)

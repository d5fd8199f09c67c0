"""How an embedding model turns hidden states into one vector: read from the model directory's
sentence-transformers files (`modules.json`, `1_Pooling/config.json`), with defaults otherwise.

Pure Python (no torch): the front reads it to validate `dimensions`, the scheduler to pool."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

POOLING_METHODS = ("last", "mean", "cls")
# sentence-transformers' pooling-mode keys that radixlm implements, by our method name
_MODE_KEYS = {"pooling_mode_lasttoken": "last", "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
_MODULE_TYPES = ("Transformer", "Pooling", "Normalize")
# Native decoder architectures that may serve embeddings (bidirectional encoders cannot: our
# attention is causal).
EMBEDDING_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


@dataclass(frozen=True)
class PoolingConfig:
    """`method`: `last` (the last token's hidden state), `mean` (over every prompt token) or `cls`
    (the first token's); `normalize`: L2-normalise the result (after any `dimensions` truncation);
    `matryoshka_dims`: None when `dimensions` is refused, else the allowed sizes (empty: any size
    up to the hidden size). `source` says where the settings came from (logged and reported)."""

    method: str = "last"
    normalize: bool = True
    matryoshka_dims: Optional[tuple[int, ...]] = None
    source: str = "defaults (last-token pooling, normalized)"

    @property
    def needs_every_token(self) -> bool:
        """Mean and CLS pooling read hidden states of tokens a cached prefix would skip."""
        return self.method != "last"


def read_pooling_config(model_path: str, hf_config: Any = None) -> PoolingConfig:
    """The pooling of the model at `model_path`; ValueError naming any sentence-transformers module
    or pooling mode radixlm does not implement (a Dense layer, max pooling, ...)."""
    dims = _matryoshka_dims(hf_config)
    modules_file = os.path.join(model_path, "modules.json") if os.path.isdir(model_path) else ""
    if not modules_file or not os.path.exists(modules_file):
        return PoolingConfig(matryoshka_dims=dims)
    with open(modules_file) as f:
        modules = json.load(f)
    method, normalize = "last", False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _MODULE_TYPES:
            raise ValueError(
                f"{modules_file}: sentence-transformers module {module.get('type')!r} is not supported "
                f"(supported: {', '.join(_MODULE_TYPES)})"
            )
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            method = _pooling_method(os.path.join(model_path, module.get("path", ""), "config.json"))
    return PoolingConfig(method, normalize, dims, f"{modules_file} ({method} pooling, normalize={normalize})")


def _pooling_method(path: str) -> str:
    with open(path) as f:
        cfg = json.load(f)
    on = [key for key, value in cfg.items() if key.startswith("pooling_mode") and value]
    if len(on) != 1 or on[0] not in _MODE_KEYS:
        raise ValueError(
            f"{path}: pooling modes {on} are not supported; exactly one of {', '.join(_MODE_KEYS)} must be set"
        )
    return _MODE_KEYS[on[0]]


def _matryoshka_dims(hf_config: Any) -> Optional[tuple[int, ...]]:
    """`dimensions` is honoured only for a model whose config says it was trained for truncation
    (`matryoshka_dimensions`, or `is_matryoshka: true` for any size)."""
    dims = getattr(hf_config, "matryoshka_dimensions", None)
    if dims:
        return tuple(int(d) for d in dims)
    return () if getattr(hf_config, "is_matryoshka", False) else None


def check_embedding_architecture(hf_config: Any, model_impl: str) -> None:
    """ValueError unless the model is a native causal decoder (Llama / Mistral / Qwen2 / Qwen3)."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    if model_impl == "transformers" or not any(a in EMBEDDING_ARCHITECTURES for a in archs):
        raise ValueError(
            f"--is-embedding serves native decoder models ({', '.join(EMBEDDING_ARCHITECTURES)}) with "
            f"model_impl auto or radixlm; {archs or 'this model'} is not one (bidirectional encoders such as "
            "BERT are not supported: radixlm's attention is causal)"
        )


def check_dimensions(pooling: PoolingConfig, dimensions: Optional[int], hidden_size: int) -> None:
    """ValueError naming `dimensions` when the model does not allow that truncation."""
    if dimensions is None:
        return
    if pooling.matryoshka_dims is None:
        raise ValueError(
            "dimensions: this model does not support Matryoshka truncation (its config sets neither "
            "matryoshka_dimensions nor is_matryoshka)"
        )
    allowed = pooling.matryoshka_dims
    if dimensions < 1 or dimensions > hidden_size or (allowed and dimensions not in allowed):
        raise ValueError(
            f"dimensions: {dimensions} is not one of this model's sizes "
            f"({list(allowed) if allowed else f'1..{hidden_size}'})"
        )

"""radixlm.model_loader.pooling_config: sentence-transformers files -> pooling, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from radixlm.model_loader.pooling_config import (
    PoolingConfig,
    check_dimensions,
    check_embedding_architecture,
    read_pooling_config,
)


def _write(path: Path, method_key: str, modules: list[str]) -> str:
    entries = [
        {"idx": i, "path": "1_Pooling" if m == "Pooling" else "", "type": f"sentence_transformers.models.{m}"}
        for i, m in enumerate(modules)
    ]
    (path / "modules.json").write_text(json.dumps(entries))
    (path / "1_Pooling").mkdir(exist_ok=True)
    keys = ("pooling_mode_lasttoken", "pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_max_tokens")
    (path / "1_Pooling" / "config.json").write_text(json.dumps({k: k == method_key for k in keys}))
    return str(path)


MODES = [("pooling_mode_lasttoken", "last"), ("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls")]


@pytest.mark.parametrize("key,method", MODES)
def test_reads_pooling_and_normalize(tmp_path: Path, key: str, method: str) -> None:
    with_norm = read_pooling_config(_write(tmp_path, key, ["Transformer", "Pooling", "Normalize"]))
    assert (with_norm.method, with_norm.normalize) == (method, True)
    assert with_norm.needs_every_token == (method != "last")
    without = read_pooling_config(_write(tmp_path, key, ["Transformer", "Pooling"]))
    assert (without.method, without.normalize) == (method, False)


def test_defaults_without_sentence_transformers_files(tmp_path: Path) -> None:
    assert read_pooling_config(str(tmp_path)) == PoolingConfig()
    assert (PoolingConfig().method, PoolingConfig().normalize) == ("last", True)


def test_refuses_unimplemented_modules_and_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pooling_mode_max_tokens"):
        read_pooling_config(_write(tmp_path, "pooling_mode_max_tokens", ["Transformer", "Pooling"]))
    with pytest.raises(ValueError, match="Dense"):
        read_pooling_config(_write(tmp_path, "pooling_mode_lasttoken", ["Transformer", "Pooling", "Dense"]))


def test_dimensions_only_for_matryoshka_models() -> None:
    plain = read_pooling_config("/nonexistent", SimpleNamespace())
    with pytest.raises(ValueError, match="^dimensions: .*Matryoshka"):
        check_dimensions(plain, 8, 64)
    check_dimensions(plain, None, 64)
    any_size = read_pooling_config("/nonexistent", SimpleNamespace(is_matryoshka=True))
    check_dimensions(any_size, 8, 64)
    with pytest.raises(ValueError, match="dimensions: 65"):
        check_dimensions(any_size, 65, 64)
    listed = read_pooling_config("/nonexistent", SimpleNamespace(matryoshka_dimensions=[16, 32]))
    check_dimensions(listed, 16, 64)
    with pytest.raises(ValueError, match="dimensions: 8"):
        check_dimensions(listed, 8, 64)


def test_only_native_decoders_embed() -> None:
    check_embedding_architecture(SimpleNamespace(architectures=["Qwen3ForCausalLM"]), "auto")
    with pytest.raises(ValueError, match="BERT"):
        check_embedding_architecture(SimpleNamespace(architectures=["BertModel"]), "auto")
    with pytest.raises(ValueError, match="model_impl"):
        check_embedding_architecture(SimpleNamespace(architectures=["LlamaForCausalLM"]), "transformers")

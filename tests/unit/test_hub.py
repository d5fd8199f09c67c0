"""Hub model ids resolved through huggingface_hub's cache (model_loader/hub.py) and .bin weights."""

from __future__ import annotations

import os

import pytest
import torch
from helpers.hub_cache import add_to_hub_cache, bin_checkpoint_copy

from radixlm.config.server_args import ServerArgs
from radixlm.model_loader.hub import ModelNotFoundError, looks_like_repo_id, resolve_model_path, resolve_server_args
from radixlm.model_loader.loader import iter_weights


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may reach the network: huggingface_hub's offline switch, read at import time."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_repo_id_shapes() -> None:
    assert looks_like_repo_id("meta-llama/Llama-2-7b-chat-hf")
    assert looks_like_repo_id("gpt2")
    for not_id in ("/abs/path", "a/b/c", "../x", "model.gguf", "org/../x", ""):
        assert not looks_like_repo_id(not_id), not_id


def test_local_path_is_kept(tiny_llama_dir: str, offline: None) -> None:
    assert resolve_model_path(tiny_llama_dir) == tiny_llama_dir


def test_cached_repo_resolves_to_its_snapshot(tmp_path, tiny_llama_dir: str, offline: None) -> None:
    snapshot = add_to_hub_cache(tmp_path, "org/tiny", tiny_llama_dir)
    tagged = add_to_hub_cache(tmp_path, "org/tiny", tiny_llama_dir, revision="v1", commit="c" * 40)
    assert resolve_model_path("org/tiny", cache_dir=str(tmp_path)) == snapshot
    assert resolve_model_path("org/tiny", revision="v1", cache_dir=str(tmp_path)) == tagged
    assert os.path.isfile(os.path.join(snapshot, "config.json"))


def test_missing_repo_is_a_clear_error(tmp_path, offline: None) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_path("no-such-org/no-such-model", cache_dir=str(tmp_path))
    message = str(err.value)
    assert "no-such-org/no-such-model" in message and "HF_HUB_OFFLINE" in message
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_path("/no/such/dir")


def test_unknown_revision_of_a_cached_repo_is_an_error(tmp_path, tiny_llama_dir: str, offline: None) -> None:
    add_to_hub_cache(tmp_path, "org/tiny", tiny_llama_dir)
    with pytest.raises(ModelNotFoundError, match="v9"):
        resolve_model_path("org/tiny", revision="v9", cache_dir=str(tmp_path))


def test_cache_without_weights_is_not_enough_offline(tmp_path, tiny_llama_dir: str, offline: None) -> None:
    add_to_hub_cache(tmp_path, "org/cfg-only", tiny_llama_dir, keep=lambda n: n.endswith(".json"))
    with pytest.raises(ModelNotFoundError, match="org/cfg-only"):
        resolve_model_path("org/cfg-only", cache_dir=str(tmp_path))
    # ...but it is a tokenizer: a tokenizer path needs no weights.
    assert resolve_model_path("org/cfg-only", weights=False, cache_dir=str(tmp_path)).endswith(
        os.path.join("snapshots", os.listdir(tmp_path / "models--org--cfg-only" / "snapshots")[0])
    )


def test_server_args_keep_the_hub_name(tiny_llama_dir: str, offline: None) -> None:
    args = ServerArgs(model_path=tiny_llama_dir)
    assert resolve_server_args(args) is args  # local paths: nothing to do


def test_bin_checkpoint_has_the_same_tensors(tmp_path, tiny_llama_dir: str) -> None:
    bin_dir = bin_checkpoint_copy(tiny_llama_dir, tmp_path / "bin")
    assert not any(n.endswith(".safetensors") for n in os.listdir(bin_dir))
    reference = dict(iter_weights(tiny_llama_dir, "auto"))
    loaded = dict(iter_weights(bin_dir, "auto"))
    assert loaded.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(loaded[name], tensor), name


def test_bin_checkpoint_refuses_pickled_code(tmp_path) -> None:
    """weights_only=True: a checkpoint holding an arbitrary object fails to load instead of running it."""
    torch.save({"w": torch.zeros(2), "evil": _Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        list(iter_weights(str(tmp_path), "auto"))


def test_no_weights_names_both_formats(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="pytorch_model"):
        list(iter_weights(str(tmp_path), "auto"))


class _Evil:
    pass

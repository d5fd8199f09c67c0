"""`--model-path org/name` served from a Hugging Face cache with HF_HUB_OFFLINE=1, a .bin checkpoint,
and the error for an id that is neither local nor cached."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from helpers.hub_cache import add_to_hub_cache, bin_checkpoint_copy
from helpers.server_utils import launch_server, stop
from helpers.tiny_models import hf_greedy, load_hf_model

REPO = "tiny-org/tiny-llama-bin"


def test_hub_id_from_offline_cache_with_bin_weights(tmp_path, tiny_llama_dir: str, monkeypatch) -> None:
    """The cached repo holds only pytorch_model.bin: the server loads it by id, offline, and its
    greedy tokens are HF's on the original safetensors checkpoint."""
    cache = tmp_path / "hub"
    bin_dir = bin_checkpoint_copy(tiny_llama_dir, tmp_path / "bin")
    add_to_hub_cache(cache, REPO, bin_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    url, proc = launch_server(REPO, "--revision", "main")
    try:
        models = httpx.get(f"{url}/v1/models", timeout=30).json()
        assert models["data"][0]["id"] == REPO
        ids = [5, 17, 42, 99, 7]
        out = httpx.post(
            f"{url}/generate",
            json={"input_ids": ids, "sampling_params": {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}},
            timeout=60,
        ).json()
    finally:
        stop(proc)
    assert out["output_ids"] == hf_greedy(load_hf_model(tiny_llama_dir), ids, 6)


@pytest.mark.parametrize("model_path", ["no-such-org/no-such-model", "/no/such/model/dir"])
def test_unresolvable_model_path_exits_with_a_clear_error(tmp_path, model_path: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--model-path", model_path]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("radixlm: model path") and model_path in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr

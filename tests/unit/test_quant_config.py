"""Which quantization runs: `--quantization` and the checkpoint's `quantization_config`, and the
start-up refusals, each naming the field (or flag) at fault and what would work."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from radixlm.config.server_args import ServerArgs
from radixlm.layers.quantization.config import resolve_quantization

CPU = torch.device("cpu")


def cfg(qc: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(quantization_config=qc)


def test_an_unquantized_checkpoint_without_the_flag_runs_unquantized() -> None:
    assert resolve_quantization(cfg(), None, False, CPU) is None


@pytest.mark.parametrize(
    "qc,method,info",
    [
        ({"quant_method": "fp8"}, "fp8", {"weight_block_size": None, "online": False}),
        ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "fp8", {"weight_block_size": [128, 128]}),
        ({"quant_method": "awq", "bits": 4, "group_size": 128}, "awq", {"group_size": 128, "bits": 4}),
        ({"quant_method": "gptq", "bits": 4, "group_size": 64, "desc_act": False}, "gptq", {"group_size": 64}),
    ],
)
def test_the_checkpoint_config_picks_the_method(qc: dict, method: str, info: dict) -> None:
    plan = resolve_quantization(cfg(qc), None, False, CPU)
    assert plan.name == method and plan.info["quant_method"] == method
    assert info.items() <= plan.info.items()


@pytest.mark.parametrize(
    "qc,flag,match",
    [
        ({"quant_method": "bitsandbytes"}, None, "quant_method 'bitsandbytes' is not supported"),
        ({"quant_method": "gptq", "bits": 8}, None, "quantization_config.bits 8"),
        ({"quant_method": "awq", "bits": 3}, None, "quantization_config.bits 3"),
        ({"quant_method": "gptq", "bits": 4, "desc_act": True}, None, "desc_act true"),
        ({"quant_method": "awq", "bits": 4, "version": "gemv"}, None, "version 'gemv'"),
        ({"quant_method": "fp8", "fmt": "e5m2"}, None, "fmt 'e5m2'"),
        ({"quant_method": "fp8", "weight_block_size": [128]}, None, "weight_block_size"),
        ({"quant_method": "gptq", "bits": 4}, "awq", "contradicts the checkpoint"),
        (None, "awq", "needs a checkpoint quantized with awq"),
        (None, "gguf", "needs a .gguf model file"),
    ],
)
def test_refusals_name_the_field(qc: dict | None, flag: str | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_quantization(cfg(qc), flag, False, CPU)


def test_online_fp8_is_chosen_by_the_flag() -> None:
    plan = resolve_quantization(cfg(), "fp8", False, CPU)
    assert plan.info == {"quant_method": "fp8", "online": True, "weight_block_size": None}


def test_a_gpu_without_fp8_tensor_cores_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(ValueError, match=r"fp8 needs a GPU of compute capability 8.9 or newer.*this one is 8.0"):
        resolve_quantization(cfg(), "fp8", False, torch.device("cuda"))
    assert resolve_quantization(cfg({"quant_method": "awq", "bits": 4}), None, False, torch.device("cuda"))


def test_server_args_check_the_flag() -> None:
    assert ServerArgs(quantization="fp8", model_path="x").quantization == "fp8"
    with pytest.raises(ValueError, match="quantization must be one of"):
        ServerArgs(quantization="int8", model_path="x")


def test_torch_compile_with_quantization_is_refused_at_start_up(tiny_llama_dir: str) -> None:
    from radixlm.executor.model_runner import ModelRunner

    args = ServerArgs(
        model_path=tiny_llama_dir,
        device="cpu",
        quantization="fp8",
        enable_torch_compile=True,
        max_total_tokens=64,
        max_running_requests=2,
    )
    with pytest.raises(ValueError, match="--enable-torch-compile with quantization 'fp8' is not supported"):
        ModelRunner(args)

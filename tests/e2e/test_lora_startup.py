"""Start-up refusals of LoRA settings, each a clear error naming the adapter and the problem:
in-process through the model runner (malformed config, rank above max_lora_rank, a target module
the model lacks, bad flags), and once through `Engine()` to see the message reach the caller."""

from __future__ import annotations

from typing import Any, Callable

import pytest

pytest.importorskip("peft")

from helpers.tiny_lora import make_adapter  # noqa: E402

from radixlm.config.server_args import ServerArgs  # noqa: E402
from radixlm.executor.model_runner import ModelRunner  # noqa: E402

ARGS = dict(dtype="float32", device="cpu", max_total_tokens=256, max_running_requests=4, log_level="warning")


@pytest.fixture(scope="module")
def adapters(tiny_model: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tiny_model("llama")
    out = tmp_path_factory.mktemp("lora_bad")
    bad_json = out / "bad_json"
    bad_json.mkdir()
    (bad_json / "adapter_config.json").write_text('{"r": 4,')
    return {
        "base": base,
        "r8": make_adapter(base, out / "r8", 8, ["q_proj"], 1),
        "head": make_adapter(base, out / "head", 2, ["lm_head"], 2),
        "bad_json": str(bad_json),
        "missing": str(out / "does_not_exist"),
    }


@pytest.mark.parametrize(
    "key, extra, words",
    [
        ("r8", {"max_lora_rank": 4}, "'x': rank 8 exceeds max_lora_rank 4"),
        ("head", {}, "'x': target module(s) 'lm_head' not in the model"),
        ("bad_json", {}, "'x': " + "{}/adapter_config.json is not valid JSON"),
        ("missing", {}, "'x': no adapter_config.json in"),
    ],
)
def test_bad_adapter_is_a_startup_error(adapters: dict[str, Any], key: str, extra: dict, words: str) -> None:
    args = ServerArgs(model_path=adapters["base"], lora_paths=[f"x={adapters[key]}"], **ARGS, **extra)
    with pytest.raises(ValueError) as err:
        ModelRunner(args)
    assert words.format(adapters[key]) in str(err.value)


def test_bad_lora_flags(adapters: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="given twice"):
        ServerArgs(model_path=adapters["base"], lora_paths=["a=/x", "a=/y"])
    with pytest.raises(ValueError, match="max_loras_per_batch must be a positive integer"):
        ServerArgs(model_path=adapters["base"], max_loras_per_batch=0)
    with pytest.raises(ValueError, match="enable_lora without lora_paths needs max_lora_rank"):
        ModelRunner(ServerArgs(model_path=adapters["base"], enable_lora=True, **ARGS))
    with pytest.raises(ValueError, match="LoRA adapters with --enable-torch-compile are not supported"):
        ModelRunner(ServerArgs(model_path=adapters["base"], enable_lora=True, enable_torch_compile=True, **ARGS))


@pytest.mark.slow
def test_engine_start_reports_the_adapter_error(adapters: dict[str, Any]) -> None:
    import radixlm

    with pytest.raises(RuntimeError, match="rank 8 exceeds max_lora_rank 2"):
        radixlm.Engine(adapters["base"], lora_paths=[f"x={adapters['r8']}"], max_lora_rank=2, **ARGS)

"""Quantized checkpoints served end to end (CPU, float32 activations) against their decoded weights.

Checkpoints are written in-test from the published formats (`helpers.quant_checkpoints`): fp8
per tensor and block-wise (128 x 128), AWQ (group 128), GPTQ symmetric and asymmetric, and online
`--quantization fp8` of the float checkpoint (whose reference is the per-channel decoding of the
same weights). The reference is HF transformers on the decoded float32 weights: on the CPU our
quantized layers multiply those same values, so greedy tokens must be equal for 32 tokens and
prompt logprobs within 1e-4 (the golden tests' CPU tolerance).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import quant_checkpoints as qc
from helpers.tiny_models import hf_greedy, hf_logprobs, load_hf_model

import radixlm

NEW_TOKENS = 32
GREEDY = {"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}
PROMPTS = [[5, 17, 99, 250, 3], [42] * 7 + [300, 12], list(range(10, 40))]

FORMATS = {
    "fp8_tensor": (qc.fp8_tensor, qc.fp8_config()),
    "fp8_block": (qc.fp8_block(128, 128), qc.fp8_config((128, 128))),
    "awq": (qc.awq(128), qc.awq_config(128)),
    "gptq_sym": (qc.gptq(128, True), qc.gptq_config(128, True)),
    "gptq_asym": (qc.gptq(128, False), qc.gptq_config(128, False)),
}
CASES = [
    ("llama", "fp8_tensor"),
    ("llama", "fp8_block"),
    ("llama", "awq"),
    ("llama", "gptq_asym"),
    ("qwen2", "gptq_sym"),
    ("qwen2", "fp8_block"),
    ("qwen3", "awq"),
]


@pytest.fixture(scope="module")
def base_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("quant_base")
    return {arch: qc.make_base_model(tmp, arch) for arch in ("llama", "qwen2", "qwen3")}


def run(path: str, **kwargs) -> tuple[list[dict], list[dict]]:
    with radixlm.Engine(path, log_level="warning", max_total_tokens=2048, dtype="float32", **kwargs) as engine:
        outs = engine.generate(input_ids=PROMPTS, sampling_params=GREEDY)
        scored = engine.generate(input_ids=PROMPTS, sampling_params=GREEDY, return_logprob=True, logprob_start_len=0)
        info = engine.get_server_info()
        engine.check_no_leak()
    return outs, scored, info


def check_against_reference(ref_dir: str, outs: list[dict], scored: list[dict]) -> None:
    hf = load_hf_model(ref_dir)
    for prompt, out, sc in zip(PROMPTS, outs, scored):
        assert out["output_ids"] == hf_greedy(hf, prompt, NEW_TOKENS)
        ids = prompt + sc["output_ids"]
        rows = hf_logprobs(hf, ids)
        ours = [entry[0] for entry in sc["meta_info"]["input_token_logprobs"][1:]]
        ours += [entry[0] for entry in sc["meta_info"]["output_token_logprobs"]]
        want = [rows[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
        assert len(ours) == len(want)
        assert max(abs(a - b) for a, b in zip(ours, want)) < 1e-4


@pytest.mark.parametrize("arch,fmt", CASES)
def test_quantized_checkpoint_matches_its_decoded_weights(
    base_models: dict[str, str], tmp_path: Path, arch: str, fmt: str
) -> None:
    quantize, config = FORMATS[fmt]
    quant_dir, ref_dir = qc.write_pair(base_models[arch], tmp_path, fmt, quantize, config)
    outs, scored, info = run(quant_dir)
    assert info["quantization"]["quant_method"] == config["quant_method"]
    check_against_reference(ref_dir, outs, scored)


def test_online_fp8_matches_per_channel_decoding(base_models: dict[str, str], tmp_path: Path) -> None:
    _, ref_dir = qc.write_pair(base_models["llama"], tmp_path, "channel", qc.fp8_channel, qc.fp8_config())
    outs, scored, info = run(base_models["llama"], quantization="fp8")
    assert info["quantization"] == {"quant_method": "fp8", "online": True, "weight_block_size": None}
    check_against_reference(ref_dir, outs, scored)

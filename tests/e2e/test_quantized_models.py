"""Quantized checkpoints served end to end (CPU, float32 activations) against their decoded weights.

Checkpoints are written in-test from the published formats (`helpers.quant_checkpoints`): fp8
per tensor and block-wise (128 x 128), AWQ (group 128), GPTQ symmetric and asymmetric, and online
`--quantization fp8` of the float checkpoint (whose reference is the per-channel decoding of the
same weights). The reference is HF transformers on the decoded float32 weights: on the CPU our
quantized layers multiply those same values, so greedy tokens must be equal for 32 tokens and
prompt logprobs within 1e-4 (the golden tests' CPU tolerance). These run on the CPU even where
a GPU is present; the GPU test serves each format in bf16 through the kernels (fp8 with e4m3
activations) and bounds the logprob drift instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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


def run(path: str, **kwargs) -> tuple[list[dict], list[dict], dict]:
    """Greedy outputs, the same scored with logprobs, and get_server_info; CPU float32 unless overridden."""
    kwargs = {"device": "cpu", "dtype": "float32", **kwargs}
    with radixlm.Engine(path, log_level="warning", max_total_tokens=2048, **kwargs) as engine:
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


def test_hf_transformers_on_the_same_fp8_checkpoint(base_models: dict[str, str], tmp_path: Path) -> None:
    """Where transformers loads the block-wise fp8 checkpoint itself (it needs `accelerate`, and
    its fp8 kernels a GPU), our prompt logprobs stay within 0.05 on average (max 0.25) of its
    own: both quantize activations per token group on a GPU, with different kernels."""
    from transformers import AutoModelForCausalLM

    pytest.importorskip("accelerate")
    quant_dir, _ = qc.write_pair(base_models["llama"], tmp_path, "fp8_block", *FORMATS["fp8_block"])
    try:
        hf = AutoModelForCausalLM.from_pretrained(quant_dir, dtype=torch.bfloat16, device_map="auto").eval()
    except (ImportError, RuntimeError, ValueError) as exc:
        pytest.skip(f"transformers cannot run this fp8 checkpoint here: {exc}")
    _, scored, _ = run(quant_dir, device="auto", dtype="bfloat16")
    diffs = []
    for prompt, sc in zip(PROMPTS, scored):
        ids = prompt + sc["output_ids"]
        with torch.no_grad():
            logits = hf(torch.tensor([ids], device=hf.device)).logits[0].float()
        rows = torch.log_softmax(logits, -1).cpu()
        ours = [e[0] for e in sc["meta_info"]["input_token_logprobs"][1:] + sc["meta_info"]["output_token_logprobs"]]
        diffs += [abs(a - rows[i, ids[i + 1]].item()) for i, a in enumerate(ours)]
    assert sum(diffs) / len(diffs) < 0.05 and max(diffs) < 0.25


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch,fmt", CASES)
def test_quantized_checkpoint_on_gpu_tracks_its_decoded_weights(
    base_models: dict[str, str], tmp_path: Path, arch: str, fmt: str
) -> None:
    """bf16 on CUDA (GEMV / _scaled_mm / Triton GEMMs, CUDA graphs): teacher-forced logprobs
    within 0.05 on average of HF float32 on the decoded weights, and every greedy token HF's best
    or within 0.1 of it (e4m3 activations and bf16 rounding move near-ties)."""
    quantize, config = FORMATS[fmt]
    quant_dir, ref_dir = qc.write_pair(base_models[arch], tmp_path, fmt, quantize, config)
    outs, scored, _ = run(quant_dir, device="cuda", dtype="bfloat16")
    hf = load_hf_model(ref_dir)
    for prompt, out, sc in zip(PROMPTS, outs, scored):
        ids = prompt + sc["output_ids"]
        rows = hf_logprobs(hf, ids)
        ours = [e[0] for e in sc["meta_info"]["input_token_logprobs"][1:] + sc["meta_info"]["output_token_logprobs"]]
        diffs = [abs(a - rows[i, ids[i + 1]].item()) for i, a in enumerate(ours)]
        assert sum(diffs) / len(diffs) < 0.05, (fmt, sum(diffs) / len(diffs))
        greedy = prompt + out["output_ids"]
        rows = hf_logprobs(hf, greedy)
        for i in range(len(prompt), len(greedy)):
            assert rows[i - 1].max().item() - rows[i - 1, greedy[i]].item() < 0.1, (fmt, i)

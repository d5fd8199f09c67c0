"""The residual stream's dtype: float32 on the CPU under 16-bit weights (the embedding, the final
norm and the LM head in float32, the decoder layers' weights in the model dtype), the model dtype
elsewhere; RMSNorm adds in the wider dtype and hands its projections the weight's dtype."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from radixlm.config.server_args import ServerArgs
from radixlm.executor.memory_profile import warmup_batch
from radixlm.executor.model_runner import ModelRunner
from radixlm.layers.basic import RMSNorm
from radixlm.model_loader.loader import residual_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_residual_dtype_is_float32_on_the_cpu_under_16_bit_weights_only() -> None:
    assert residual_dtype(torch.bfloat16, CPU) == torch.float32
    assert residual_dtype(torch.float16, CPU) == torch.float32
    assert residual_dtype(torch.float32, CPU) == torch.float32
    assert residual_dtype(torch.bfloat16, CUDA) == torch.bfloat16
    assert residual_dtype(torch.float16, CUDA) == torch.float16


def test_rmsnorm_sums_in_the_wider_dtype_and_outputs_the_weights() -> None:
    gen = torch.Generator().manual_seed(0)
    norm = RMSNorm(64, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64, generator=gen) + 0.5)
    norm = norm.to(torch.bfloat16)
    x = torch.randn(5, 64, generator=gen).bfloat16()
    residual = torch.randn(5, 64, generator=gen)
    out, summed = norm(x, residual)
    assert out.dtype == torch.bfloat16 and summed.dtype == torch.float32
    assert torch.equal(summed, x.float() + residual)
    ref = summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight.float()
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    assert norm(residual).dtype == torch.bfloat16  # a float32 input alone: still the weight's dtype


def _runner(path: str, dtype: str) -> ModelRunner:
    args = ServerArgs(model_path=path, device="cpu", dtype=dtype, max_total_tokens=128, max_running_requests=2)
    return ModelRunner(args)


def _prefill(runner: ModelRunner) -> Any:
    batch = warmup_batch(runner.req_to_token_pool.table, 2, 9, runner.device)
    gen = torch.Generator().manual_seed(1)
    batch.input_ids = torch.randint(0, runner.vocab_size, batch.input_ids.shape, generator=gen)
    return batch


@pytest.mark.parametrize("arch", ["llama", "llama_tied"])
def test_cpu_bf16_model_carries_a_float32_stream(tiny_model: Callable[[str], str], arch: str) -> None:
    runner = _runner(tiny_model(arch), "bfloat16")
    model = runner.model
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert model.model.norm.weight.dtype == torch.float32
    if not model.tied:
        assert model.lm_head.weight.dtype == torch.float32
    layer = model.model.layers[0]
    assert layer.self_attn.qkv_proj.weight.dtype == torch.bfloat16
    assert layer.input_layernorm.weight.dtype == torch.bfloat16
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    for each in model.model.layers:
        each.register_forward_hook(lambda _m, _i, out: seen.append((out[0].dtype, out[1].dtype)))
    batch = _prefill(runner)
    with torch.inference_mode():
        runner.backend.init_forward_metadata(batch)
        hidden = model(batch.input_ids, batch.positions, batch)
        logits = model.compute_logits(hidden[:3])
        narrow = hidden[:3].bfloat16()  # a drafter's hidden in the layers' dtype
        assert torch.equal(model.compute_logits(narrow), model.compute_logits(narrow.float()))
    assert seen and all(s == (torch.bfloat16, torch.float32) for s in seen)  # (mlp output, residual stream)
    assert hidden.dtype == torch.float32 and logits.dtype == torch.float32


@pytest.mark.parametrize("arch", ["llama", "llama_tied"])
def test_cpu_bf16_logits_follow_float32(tiny_model: Callable[[str], str], arch: str) -> None:
    path = tiny_model(arch)
    want = _runner(path, "float32")
    got = _runner(path, "bfloat16")
    ref = want.forward(_prefill(want))
    out = got.forward(_prefill(got))
    assert out.dtype == torch.float32 and out.shape == ref.shape
    err = (out - ref).abs().max().item()
    assert err < 0.02 * ref.abs().max().item(), err

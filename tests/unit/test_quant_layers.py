"""Quantized linear layers against the unquantized layer holding the decoded weights.

For each method (fp8 per tensor / per channel / block-wise / online, AWQ, GPTQ sym and asym) and
each layer kind (fused q/k/v with GQA, fused gate/up, row-parallel down) at tp 1 and on both
ranks of tp 2 (and tp 4 for q/k/v, where KV heads are replicated), the quantized layer is loaded
from checkpoint tensors written by `helpers.quant_checkpoints` and compared with the plain layer
of the same shard loaded with the decoded float32 weights. On the CPU both run float32 matmuls of
the same values, so the tolerance is float32 rounding: relative error 1e-5.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from helpers import quant_checkpoints as qc
from torch import nn

from radixlm.distributed.group import TPGroup
from radixlm.layers.linear import AttentionHeads, ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from radixlm.layers.quantization.fp8 import Fp8Method
from radixlm.layers.quantization.int4 import int4_method
from radixlm.layers.quantization.layer import QuantizedLinear, finish_loading, quantize_linears

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM = 256, 512, 8, 2, 32

METHODS: dict[str, tuple[Callable, Callable]] = {
    "fp8_tensor": (lambda: Fp8Method(), qc.fp8_tensor),
    "fp8_channel": (lambda: Fp8Method(), qc.fp8_channel),
    "fp8_block": (lambda: Fp8Method(block=(128, 128)), qc.fp8_block(128, 128)),
    "awq": (lambda: int4_method("awq", qc.awq_config(128)), qc.awq(128)),
    "gptq_sym": (lambda: int4_method("gptq", qc.gptq_config(128, True)), qc.gptq(128, True)),
    "gptq_asym": (lambda: int4_method("gptq", qc.gptq_config(64, False)), qc.gptq(64, False)),
}


class Holder(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.proj = layer


def make_layer(kind: str, tp: TPGroup, bias: bool) -> nn.Module:
    if kind == "qkv":
        heads = AttentionHeads.split(HEADS, KV_HEADS, tp)
        return QKVParallelLinear(HIDDEN, HEAD_DIM, heads, bias, tp)
    if kind == "gate_up":
        return ColumnParallelLinear(HIDDEN, [INTER, INTER], bias, tp)
    if tp.size == 1:
        return ColumnParallelLinear(INTER, [HIDDEN], bias, tp)
    return RowParallelLinear(INTER, HIDDEN, bias, tp)


def full_weights(kind: str, gen: torch.Generator) -> list[torch.Tensor]:
    """The checkpoint's float weights of each part."""
    if kind == "qkv":
        shapes = [(HEADS * HEAD_DIM, HIDDEN), (KV_HEADS * HEAD_DIM, HIDDEN), (KV_HEADS * HEAD_DIM, HIDDEN)]
    elif kind == "gate_up":
        shapes = [(INTER, HIDDEN), (INTER, HIDDEN)]
    else:
        shapes = [(HIDDEN, INTER)]
    return [torch.randn(s, generator=gen) * 0.05 for s in shapes]


def build_pair(kind: str, tp: TPGroup, method_name: str, bias: bool) -> tuple[nn.Module, nn.Module]:
    """(quantized layer, plain layer with the decoded weights), both loaded from the same tensors."""
    make_method, quantize = METHODS[method_name]
    gen = torch.Generator().manual_seed(7)
    weights = full_weights(kind, gen)
    biases = [torch.randn(w.shape[0], generator=gen) for w in weights]
    with torch.device("meta"):
        holder = Holder(make_layer(kind, tp, bias))
        plain = make_layer(kind, tp, bias)
    method = make_method()
    assert quantize_linears(holder, lambda name: method, torch.float32) == 1
    holder, plain = holder.to_empty(device="cpu"), plain.to_empty(device="cpu")
    layer = holder.proj
    for part, (w, b) in enumerate(zip(weights, biases)):
        tensors, decoded = quantize("x", w)
        shard = part if len(weights) > 1 else None
        for name, tensor in tensors.items():
            layer.load_shard(name.split(".", 1)[1], tensor, shard)
        plain.load_shard("weight", decoded, shard)
        if bias and (kind != "down" or part == 0):
            layer.load_shard("bias", b, shard)
            plain.load_shard("bias", b, shard)
    finish_loading(holder, torch.device("cpu"))
    return layer, plain


def local_product(layer: nn.Module, plain: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both layers' outputs before any all-reduce (a tp > 1 row layer has no process group here)."""
    if isinstance(plain, RowParallelLinear):
        return layer._matmul(x, None), torch.nn.functional.linear(x, plain.weight)
    return layer(x), plain(x)


CASES = [
    ("qkv", 1, 0),
    ("qkv", 2, 1),
    ("qkv", 4, 3),
    ("gate_up", 1, 0),
    ("gate_up", 2, 1),
    ("down", 1, 0),
    ("down", 2, 1),
]


@pytest.mark.parametrize("method_name", sorted(METHODS))
@pytest.mark.parametrize("kind,size,rank", CASES)
def test_quantized_shard_equals_decoded_weights(method_name: str, kind: str, size: int, rank: int) -> None:
    layer, plain = build_pair(kind, TPGroup(rank, size), method_name, bias=kind != "down")
    assert isinstance(layer, QuantizedLinear) and layer.method.name in method_name
    x = torch.randn(5, layer.geo.in_features, generator=torch.Generator().manual_seed(1))
    got, want = local_product(layer, plain, x)
    assert got.shape == want.shape
    assert ((got - want).norm() / want.norm()).item() < 1e-5


def test_block_scales_misaligned_with_an_input_shard_are_refused() -> None:
    """Output rows may split anywhere (scales are expanded per row); input columns must split
    on the 128-column scale blocks: 512 / 8 ranks = 64 columns do not."""
    with pytest.raises(ValueError, match="block of 128"):
        build_pair("down", TPGroup(1, 8), "fp8_block", bias=False)


def test_online_fp8_quantizes_each_row_to_e4m3() -> None:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(64, HIDDEN, generator=gen)
    with torch.device("meta"):
        holder = Holder(ColumnParallelLinear(HIDDEN, [64], False, TPGroup.single()))
    quantize_linears(holder, lambda name: Fp8Method(online=True), torch.float32)
    holder = holder.to_empty(device="cpu")
    holder.proj.load_shard("weight", w, None)
    finish_loading(holder, torch.device("cpu"))
    layer = holder.proj
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.shape == (64, 1)
    # each row's largest magnitude maps to e4m3's largest finite value
    assert torch.equal(layer.weight.float().abs().amax(1), torch.full((64,), 448.0))
    decoded = layer.weight.float() * layer.weight_scale
    assert ((decoded - w).norm() / w.norm()).item() < 0.05  # 3 mantissa bits: ~2-4 % rms error
    x = torch.randn(3, HIDDEN, generator=gen)
    assert torch.allclose(layer(x), x @ decoded.t(), rtol=1e-5, atol=1e-5)

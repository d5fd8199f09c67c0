"""GGUF weights kept in their blocks: the torch decoders against the `gguf` package's own decoder,
and quantized layers (fused parts of different block types, tensor-parallel shards) against the
plain layer holding the decoded weights (CPU: same float32 values, relative error 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from torch import nn

from radixlm.distributed.group import TPGroup
from radixlm.layers.linear import AttentionHeads, ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from radixlm.layers.quantization import gguf_blocks
from radixlm.layers.quantization.gguf import GGUFMethod
from radixlm.layers.quantization.layer import finish_loading, quantize_linears
from radixlm.model_loader.gguf_reader import GGUFBlocks

# byte offsets of each format's float16 scales (random bytes there could be inf / NaN)
F16_AT = {
    gguf_blocks.Q8_0: (0,),
    gguf_blocks.Q4_0: (0,),
    gguf_blocks.Q4_1: (0, 2),
    gguf_blocks.Q4_K: (0, 2),
    gguf_blocks.Q5_K: (0, 2),
    gguf_blocks.Q6_K: (208,),
}


def random_blocks(qtype: int, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 rows [n, row_bytes] of random codes with float16 scales in [-0.05, 0.05]."""
    elements, size = gguf_blocks.BLOCKS[qtype]
    raw = rng.integers(0, 256, (n, k // elements, size), dtype=np.uint8)
    for at in F16_AT[qtype]:
        raw[:, :, at : at + 2] = rng.uniform(-0.05, 0.05, (n, k // elements, 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(n, -1)


@pytest.mark.parametrize("qtype", sorted(gguf_blocks.BLOCKS))
def test_torch_decoders_equal_the_gguf_package(qtype: int) -> None:
    raw = random_blocks(qtype, 6, 512, np.random.default_rng(qtype))
    want = gguf_dequantize(raw, GGMLQuantizationType(qtype))
    got = gguf_blocks.dequantize(torch.from_numpy(raw), qtype, 512)
    assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(want, dtype=np.float32)))


@pytest.mark.parametrize("qtype", [gguf_blocks.Q8_0, gguf_blocks.Q4_0, gguf_blocks.Q4_1])
def test_torch_decoders_read_what_the_gguf_package_writes(qtype: int) -> None:
    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    blocks = gguf_quantize(x, GGMLQuantizationType(qtype))
    decoded = gguf_blocks.dequantize(torch.from_numpy(blocks), qtype, 256).numpy()
    assert np.array_equal(decoded, gguf_dequantize(blocks, GGMLQuantizationType(qtype)))
    assert np.abs(decoded - x).max() < (0.03 if qtype == gguf_blocks.Q8_0 else 0.5)


class Holder(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.proj = layer


def layer_of(kind: str, tp: TPGroup) -> nn.Module:
    if kind == "qkv":
        return QKVParallelLinear(256, 32, AttentionHeads.split(8, 2, tp), False, tp)
    if kind == "gate_up":
        return ColumnParallelLinear(256, [512, 512], False, tp)
    return RowParallelLinear(1024, 256, False, tp) if tp.size > 1 else ColumnParallelLinear(1024, [256], False, tp)


PARTS = {
    "qkv": [(256, gguf_blocks.Q4_K), (64, gguf_blocks.Q4_K), (64, gguf_blocks.Q6_K)],
    "gate_up": [(512, gguf_blocks.Q4_1), (512, gguf_blocks.Q8_0)],
    "down": [(256, gguf_blocks.Q5_K)],
}


@pytest.mark.parametrize("kind", sorted(PARTS))
@pytest.mark.parametrize("size,rank", [(1, 0), (2, 1)])
def test_gguf_layer_equals_the_decoded_weights(kind: str, size: int, rank: int) -> None:
    tp, rng = TPGroup(rank, size), np.random.default_rng(1)
    k = 1024 if kind == "down" else 256
    with torch.device("meta"):
        holder, plain = Holder(layer_of(kind, tp)), layer_of(kind, tp)
    method = GGUFMethod(tuple(t for _, t in PARTS[kind]))
    assert quantize_linears(holder, lambda name: method, torch.float32) == 1
    holder, plain = holder.to_empty(device="cpu"), plain.to_empty(device="cpu")
    for part, (n, qtype) in enumerate(PARTS[kind]):
        rows = torch.from_numpy(random_blocks(qtype, n, k, rng))
        shard = part if len(PARTS[kind]) > 1 else None
        holder.proj.load_shard("weight", GGUFBlocks(rows, qtype, (n, k)), shard)
        plain.load_shard("weight", gguf_blocks.dequantize(rows, qtype, k), shard)
    finish_loading(holder, torch.device("cpu"))
    layer = holder.proj
    distinct = len({t for _, t in PARTS[kind]})
    assert len(method.groups(layer, layer.geo)) == distinct  # consecutive parts of one type multiply together
    x = torch.randn(3, layer.geo.in_features, generator=torch.Generator().manual_seed(0))
    got = layer._matmul(x, None)
    want = torch.nn.functional.linear(x, plain.weight)
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    assert layer.weight.dtype == torch.uint8 and layer.weight.numel() < plain.weight.numel()


def test_a_block_split_by_a_shard_is_refused() -> None:
    """A row-parallel shard must hold whole blocks: 768 / 2 = 384 columns split a 256-element
    Q4_K block, refused when the layer is built (before any weight is read)."""
    tp = TPGroup(1, 2)
    with torch.device("meta"):
        holder = Holder(RowParallelLinear(768, 256, False, tp))
        with pytest.raises(ValueError, match="a row of 384 is not a whole number of 256-element blocks"):
            quantize_linears(holder, lambda name: GGUFMethod((gguf_blocks.Q4_K,)), torch.float32)


@pytest.mark.parametrize("quant", ["gguf", "fp8", "gptq", None])
def test_dummy_weights_of_every_method_give_finite_logits(tmp_path, quant: str | None) -> None:
    """`--load-format dummy` with each method (what benchmarks/quant_bench.py runs at real
    shapes): the model builds, fills its quantized weights and runs a prefill to finite logits."""
    from transformers import LlamaConfig

    from radixlm.config.server_args import ServerArgs
    from radixlm.executor.memory_profile import warmup_batch
    from radixlm.executor.model_runner import ModelRunner

    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        max_position_embeddings=64,
    )
    if quant == "gptq":
        config.quantization_config = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}
    config.save_pretrained(tmp_path)
    args = ServerArgs(
        model_path=str(tmp_path),
        load_format="dummy",
        device="cpu",
        dtype="float32",
        max_total_tokens=64,
        max_running_requests=2,
        quantization=None if quant == "gptq" else quant,
    )
    runner = ModelRunner(args)
    want = {"gguf": torch.uint8, "fp8": torch.float8_e4m3fn, "gptq": torch.int32, None: torch.float32}[quant]
    assert (
        runner.model.model.layers[0].mlp.down_proj.get_parameter("qweight" if quant == "gptq" else "weight").dtype
        == want
    )
    assert (runner.quantization or {}).get("quant_method") == quant
    logits = runner.forward(warmup_batch(runner.req_to_token_pool.table, 1, 8, runner.device))
    assert logits.shape == (1, 300) and torch.isfinite(logits).all()

"""GGUF weights kept in llama.cpp's blocks (`--quantization gguf` with a .gguf model).

The linear layers' tensors of a supported block type (`gguf_blocks.BLOCKS`: Q8_0, Q4_0, Q4_1,
Q4_K, Q5_K, Q6_K) are loaded as uint8 rows instead of being dequantized; the embedding and the
norms stay float. On the CPU the LM head (the tied embedding's blocks, read again from the file)
is multiplied in its blocks when the C kernel has their type (`keep_head_in_blocks`); elsewhere
it stays float. On the CPU a one-request decode step of a plain Llama model whose projections are
all Q4_0 / Q4_1 / Q8_0 runs as one C call (`gguf_cpu_decode`). A fused layer's parts may have
different types (Q4_K_M files keep v and some down projections in Q6_K): the layer's one `weight`
parameter is a flat byte buffer with each part's rows in turn, and consecutive parts of one type
are multiplied together.

Matmul: on the CPU, Q4_0 / Q4_1 / Q8_0 parts multiply in their blocks (`kernels.cpu_q4`, a C kernel
built at load) where a C compiler is present; other types, or without one, decode the blocks in
torch (`gguf_blocks.dequantize`) and multiply in x's dtype (the reference). CUDA multiplies one
row with the dequantize-in-the-loop GEMV (`kernels.gguf_gemv.gemv`), more rows by decoding to
x's dtype and one GEMM, except Q4_K, repacked at load for the int4 kernels (`gguf_cuda`).
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache, partial
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from radixlm.layers.quantization import gguf_blocks
from radixlm.layers.quantization.base import LinearGeometry, LinearMethod, MatmulFn, copy_into, register, take
from radixlm.layers.quantization.config import MethodFor, QuantPlan, check_device

logger = logging.getLogger(__name__)

_LINEAR = re.compile(r".*\.(q|k|v|o|gate|up|down)_proj\.weight")
Group = tuple[torch.Tensor, int]  # (uint8 rows [n, row_bytes], block type)


class GGUFMethod(LinearMethod):
    """One layer's GGUF block types, one per logical part (see the module docstring)."""

    name = "gguf"

    def __init__(self, part_types: tuple[int, ...]) -> None:
        self.part_types = part_types

    def _part_bytes(self, geo: LinearGeometry, part: int) -> tuple[int, int]:
        """(byte offset, row bytes) of part `part` in the layer's buffer."""
        rows = [gguf_blocks.row_bytes(t, geo.in_features) for t in self.part_types]
        return sum(n * r for n, r in zip(geo.out_sizes[:part], rows)), rows[part]

    def create_weights(self, layer: nn.Module, geo: LinearGeometry, dtype: torch.dtype) -> None:
        if len(self.part_types) != len(geo.out_sizes):
            raise ValueError(f"gguf: {len(self.part_types)} part types for a layer of {len(geo.out_sizes)} parts")
        end, _ = self._part_bytes(geo, len(geo.out_sizes) - 1)
        last = gguf_blocks.row_bytes(self.part_types[-1], geo.in_features) * geo.out_sizes[-1]
        register(layer, "weight", (end + last,), torch.uint8)

    def load(self, layer: nn.Module, geo: LinearGeometry, attr: str, tensor: Any, part: int) -> None:
        if attr != "weight" or not hasattr(tensor, "qtype"):
            raise ValueError(f"gguf: expected quantized blocks for the weight, got {attr!r}")
        if tensor.qtype != self.part_types[part]:
            raise ValueError(f"gguf: part {part} has block type {tensor.qtype}, expected {self.part_types[part]}")
        rows = take(tensor.data, 0, geo.out_segments[part], 1, "gguf weight")
        if geo.in_segment is not None:
            elements, size = gguf_blocks.BLOCKS[tensor.qtype]
            start, length = geo.in_segment
            if start % elements or length % elements:
                raise ValueError(f"gguf: an input shard of {length} at {start} splits {elements}-element blocks")
            rows = take(rows, 1, ((start // elements * size, length // elements * size),), 1, "gguf weight")
        offset, row_bytes = self._part_bytes(geo, part)
        dest = layer.weight.narrow(0, offset, geo.out_sizes[part] * row_bytes).view(-1, row_bytes)
        copy_into(dest, rows, f"gguf weight part {part}")

    def groups(self, layer: nn.Module, geo: LinearGeometry) -> list[Group]:
        """Views of the buffer: consecutive parts of one block type as one [rows, row_bytes] tensor."""
        out: list[Group] = []
        part = 0
        while part < len(self.part_types):
            end = part
            while end + 1 < len(self.part_types) and self.part_types[end + 1] == self.part_types[part]:
                end += 1
            offset, row_bytes = self._part_bytes(geo, part)
            rows = sum(geo.out_sizes[part : end + 1])
            out.append((layer.weight.narrow(0, offset, rows * row_bytes).view(rows, row_bytes), self.part_types[part]))
            part = end + 1
        return out

    def finish_loading(self, layer: nn.Module, geo: LinearGeometry, device: torch.device) -> MatmulFn:
        groups = self.groups(layer, geo)
        if device.type != "cuda":
            return partial(_cpu_matmul, [_cpu_group(rows, qtype, geo.in_features) for rows, qtype in groups])
        from radixlm.layers.quantization import gguf_cuda

        return gguf_cuda.cuda_matmul(layer, groups, geo.in_features)

    def fill_dummy(self, layer: nn.Module, gen: torch.Generator) -> None:
        """Random codes with every block's float16 scales set to small values (a random float16
        could be inf or NaN)."""
        with torch.no_grad():
            layer.weight.copy_(torch.randint(0, 256, layer.weight.shape, generator=gen, device=layer.weight.device))
            for rows, qtype in self.groups(layer, layer.geo):
                _dummy_scales(rows, qtype)

    def describe(self) -> dict[str, Any]:
        return {"quant_method": "gguf"}


def _dummy_scales(rows: torch.Tensor, qtype: int) -> None:
    elements, size = gguf_blocks.BLOCKS[qtype]
    blocks = rows.view(-1, size)
    at = (
        (208,)
        if qtype == gguf_blocks.Q6_K
        else (0, 2)
        if qtype in (gguf_blocks.Q4_1, gguf_blocks.Q4_K, gguf_blocks.Q5_K)
        else (0,)
    )
    scale = torch.full((blocks.shape[0], 1), 0.02 / 16, dtype=torch.float16, device=rows.device)
    for offset in at:
        blocks[:, offset : offset + 2] = scale.view(torch.uint8)


def _cpu_group(rows: torch.Tensor, qtype: int, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> x W^T for one group: the C kernel for its block types when it builds, else the reference."""
    from radixlm.kernels import cpu_q4

    if qtype in cpu_q4.FORMATS:
        reason = cpu_q4.unavailable_reason()
        if reason is None:
            return partial(_q4_kernel, cpu_q4, rows, qtype, k)
        _warn_reference_once(reason)
    return partial(_dequantized, rows, qtype, k)


@lru_cache(maxsize=1)
def _warn_reference_once(reason: str) -> None:
    logger.warning("gguf on CPU: Q4_0 / Q4_1 / Q8_0 blocks decoded per call in torch (slow): %s", reason)


def _q4_kernel(kernel: Any, rows: torch.Tensor, qtype: int, k: int, x: torch.Tensor) -> torch.Tensor:
    return kernel.matmul(x, rows, qtype, k)


def _dequantized(rows: torch.Tensor, qtype: int, k: int, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, gguf_blocks.dequantize(rows, qtype, k).to(x.dtype))


def _cpu_matmul(
    groups: list[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    outs = [group(x) for group in groups]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
    return out if bias is None else out + bias


def gguf_plan(model_path: str, device: torch.device, activations: str = "float32") -> QuantPlan:
    """The plan for a .gguf file: its linear weights of a supported block type stay in blocks, and
    on the CPU the LM head too (`keep_head_in_blocks`); `activations` (CPU only): "float32", or
    "int8" for llama.cpp-style int8 dots in one-row products (`--gguf-cpu-activations`)."""
    from radixlm.model_loader.gguf_reader import GGUFCheckpoint

    check_device("gguf", device)
    checkpoint = GGUFCheckpoint(model_path)
    types = checkpoint.quant_types()
    raw = {name: t for name, t in types.items() if _LINEAR.fullmatch(name) and t in gguf_blocks.BLOCKS}
    kinds = sorted({gguf_blocks.NAMES[t] for t in raw.values()})
    finish = None
    if device.type == "cpu":
        name = _HEAD if _HEAD in types else _EMBEDDING  # a file without output.weight ties the head
        finish = partial(_finish_on_cpu, name, checkpoint.blocks(name), activations)
    return QuantPlan(
        "gguf", partial(_methods, raw, types), {"quant_method": "gguf", "block_types": kinds}, frozenset(raw), finish
    )


_HEAD, _EMBEDDING = "lm_head.weight", "model.embed_tokens.weight"


def cpu_blocks_reason(model_path: str) -> Optional[str]:
    """Why the .gguf file `model_path` would not run fast with its blocks kept on this CPU, or None:
    every linear projection must be in a block type the C kernel multiplies (`cpu_q4.FORMATS`:
    Q4_0, Q4_1, Q8_0; others would be decoded in torch per call) and the kernel must build here."""
    from radixlm.kernels import cpu_q4
    from radixlm.model_loader.gguf_header import tensor_types

    types = {name: t for name, t in tensor_types(model_path).items() if _LINEAR.fullmatch(name)}
    if not types:
        return "no linear projections found"
    others = sorted({_type_name(t) for t in types.values() if t not in cpu_q4.FORMATS})
    if others:
        return f"projections in {', '.join(others)}, which the CPU kernels do not multiply in blocks"
    return cpu_q4.unavailable_reason()


def _type_name(qtype: int) -> str:
    from gguf import GGMLQuantizationType

    try:
        return GGMLQuantizationType(qtype).name
    except ValueError:
        return f"GGML type {qtype}"


def _finish_on_cpu(name: str, head: Any, activations: str, model: nn.Module, device: torch.device) -> None:
    """The LM head kept in its blocks (`keep_head_in_blocks`), then one-request decode steps fused
    into one C call where the model allows (`gguf_cpu_decode.use_fused_decode`), both with
    `activations` ("float32", or the opt-in "int8": `--gguf-cpu-activations`)."""
    from radixlm.layers.quantization.gguf_cpu_decode import use_fused_decode

    keep_head_in_blocks(name, head, model, device, activations)
    use_fused_decode(model, device, activations)


def keep_head_in_blocks(
    name: str, head: Any, model: nn.Module, device: torch.device, activations: str = "float32"
) -> bool:
    """On the CPU, multiply the LM head in its blocks `head` (`GGUFBlocks` of checkpoint tensor
    `name`: the embedding when tied) when the C kernel has their type (`cpu_q4.FORMATS`); the float
    weight stays, for the embedding lookup and the logits of `cpu_q4.GEMM_ROWS` rows or more.
    Returns whether it did: not on CUDA, for a model without `use_head_matmul` or whose head is
    another tensor, at tp > 1, or without a C compiler."""
    from radixlm.kernels import cpu_q4

    if device.type != "cpu" or not hasattr(model, "use_head_matmul") or model.tp.size != 1:
        return False
    if model.head_weight_name() != name or head.qtype not in cpu_q4.FORMATS or cpu_q4.unavailable_reason():
        return False
    vocab, k = head.shape
    if vocab != model.config.vocab_size:
        raise ValueError(f"gguf: LM head of {vocab} rows for vocab_size {model.config.vocab_size}")
    matmul = cpu_q4.matmul_int8 if activations == "int8" else cpu_q4.matmul  # chosen once, at load
    model.use_head_matmul(partial(_head_logits, cpu_q4.GEMM_ROWS, matmul, head.data.view(vocab, -1), head.qtype, k))
    logger.info("gguf on CPU: LM head multiplied in its %s blocks", gguf_blocks.NAMES[head.qtype])
    return True


def _head_logits(
    gemm_rows: int,
    matmul: Callable[..., torch.Tensor],
    rows: torch.Tensor,
    qtype: int,
    k: int,
    hidden: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """Logits [N, vocab] of hidden [N, k]: below `GEMM_ROWS` rows float32 from the blocks (reading
    a quarter of the float bytes), from there on the float `weight` (the same values dequantized
    at load) by one GEMM instead of decoding the blocks again every call."""
    if hidden.shape[0] >= gemm_rows:
        return torch.matmul(hidden, weight.t())
    return matmul(hidden.float(), rows, qtype, k)


def dummy_plan(device: torch.device, qtype: int = gguf_blocks.Q4_K) -> QuantPlan:
    """`--load-format dummy --quantization gguf`: every linear in random `qtype` blocks (no file;
    for benchmarks of the kernels at real model shapes)."""
    check_device("gguf", device)
    fused = {"qkv_proj": 3, "gate_up_proj": 2}

    def method_for(layer: str) -> LinearMethod:
        return GGUFMethod((qtype,) * fused.get(layer.rpartition(".")[2], 1))

    name = gguf_blocks.NAMES[qtype]
    return QuantPlan("gguf", lambda model: method_for, {"quant_method": "gguf", "block_types": [name]})


def _methods(raw: dict[str, int], types: dict[str, int], model: nn.Module) -> MethodFor:
    """Each linear layer's parts' block types, found by mapping HF names to the model's layers."""
    parts: dict[str, dict[int, Optional[int]]] = {}
    for name in types:
        if not _LINEAR.fullmatch(name):
            continue
        target, shard = model._target(name)
        parts.setdefault(target.rsplit(".", 1)[0], {})[shard or 0] = raw.get(name)

    def method_for(layer: str) -> Optional[LinearMethod]:
        found = parts.get(layer)
        if not found or all(t is None for t in found.values()):
            return None
        ordered = tuple(found[i] for i in sorted(found))
        if None in ordered:
            raise ValueError(
                f"gguf: layer {layer} mixes float and quantized parts; "
                "load it dequantized (without --quantization gguf)"
            )
        return GGUFMethod(ordered)

    return method_for

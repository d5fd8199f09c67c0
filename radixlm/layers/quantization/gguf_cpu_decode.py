"""gguf on the CPU: a one-request decode step of a Llama model run as one C call (`kernels/cpu_decode.c`).

Eager, a batch-1 decode step of SmolLM2-135M is ~30 layers x ~25 torch ops and 4 ctypes calls each:
about half of the step was host overhead around the block dots (docs/perf-log). `use_fused_decode`
checks once, after loading, that the model is one this step computes exactly (plain Llama layers,
no biases or q/k norms, every projection one group of Q4_0 / Q4_1 / Q8_0 blocks, float32 weights,
tp 1) and then installs a `FusedDecode` as the model's forward. Per call that step runs one DECODE
batch of one request (its scheduler-built `decode_inputs`, no LoRA, a float32 [slots, Hkv, D] pool)
in C and hands every other batch to the eager decoder stack, so results equal the eager model's up
to float32 summation order. Forward hooks on the layers do not run on the fused step.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any, Optional

import torch
from torch import nn

from radixlm.forward.batch import ForwardBatch, ForwardMode

logger = logging.getLogger(__name__)


class _Layer(ctypes.Structure):
    """`RlmLayer` of cpu_decode.c (same field order)."""

    _fields_ = [
        ("input_norm", ctypes.c_void_p),
        ("post_norm", ctypes.c_void_p),
        ("qkv", ctypes.c_void_p),
        ("o", ctypes.c_void_p),
        ("gate_up", ctypes.c_void_p),
        ("down", ctypes.c_void_p),
        ("qkv_kind", ctypes.c_int32),
        ("o_kind", ctypes.c_int32),
        ("gate_up_kind", ctypes.c_int32),
        ("down_kind", ctypes.c_int32),
        ("k_cache", ctypes.c_void_p),
        ("v_cache", ctypes.c_void_p),
    ]


class _Model(ctypes.Structure):
    """`RlmModel` of cpu_decode.c (same field order)."""

    _fields_ = [
        *((name, ctypes.c_int64) for name in ("hidden", "heads", "kv_heads", "head_dim", "intermediate")),
        *((name, ctypes.c_int64) for name in ("layers", "vocab", "positions", "slots")),
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("int8_activations", ctypes.c_int32),
        ("embed", ctypes.c_void_p),
        ("cos", ctypes.c_void_p),
        ("sin", ctypes.c_void_p),
        ("final_norm", ctypes.c_void_p),
        ("layer", ctypes.POINTER(_Layer)),
    ]


_ERRORS = {1: "token id outside the vocabulary", 2: "position outside the rotary tables", 3: "KV slot outside the pool"}


def use_fused_decode(model: nn.Module, device: torch.device, activations: str = "float32") -> bool:
    """Install `FusedDecode` as `model`'s forward where it computes this model exactly (see the
    module docstring); returns whether it did, logging why not at debug level. `activations`
    "int8" (`--gguf-cpu-activations`) runs its projections through `cpu_q4.c`'s int8 dots instead
    (llama.cpp's numerics: not exact, top-1 agreement only)."""
    from radixlm.kernels import cpu_q4

    reason = _unsupported(model, device) or cpu_q4.unavailable_reason()
    if reason:
        logger.debug("gguf on CPU: no fused decode step: %s", reason)
        return False
    model.use_decode_step(FusedDecode(cpu_q4.load(), model, activations == "int8"))
    logger.info(
        "gguf on CPU: one-request decode steps run fused in C (kernels/cpu_decode.c), %s activations", activations
    )
    return True


def _unsupported(model: nn.Module, device: torch.device) -> Optional[str]:
    """Why the fused step cannot run `model` on `device`, or None."""
    from radixlm.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaMLP

    if device.type != "cpu" or not hasattr(model, "use_decode_step") or model.tp.size != 1:
        return "not a tp-1 Llama model on the CPU"
    if getattr(model.config, "sliding_window", None):
        return "sliding-window attention"
    for layer in model.model.layers:
        if type(layer) is not LlamaDecoderLayer or type(layer.self_attn) is not LlamaAttention:
            return f"layer type {type(layer).__name__}"
        if type(layer.mlp) is not LlamaMLP or layer.self_attn.qk_norm:
            return "not a plain Llama layer"
        for linear in _linears(layer):
            why = _blocks_reason(linear)
            if why:
                return why
    floats = [model.model.embed_tokens.weight, model.model.norm.weight]
    floats += [
        p for layer in model.model.layers for p in (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
    ]
    if any(p.dtype != torch.float32 or not p.is_contiguous() for p in floats):
        return "float weights not float32"
    return None


def _linears(layer: nn.Module) -> tuple[nn.Module, ...]:
    return layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj


def _blocks_reason(linear: nn.Module) -> Optional[str]:
    """Why `linear` is not one group of C-kernel blocks without a bias, or None."""
    from radixlm.kernels import cpu_q4

    if getattr(getattr(linear, "method", None), "name", None) != "gguf" or linear.bias is not None:
        return "a projection not in GGUF blocks, or with a bias"
    groups = linear.method.groups(linear, linear.geo)
    if len(groups) != 1 or groups[0][1] not in cpu_q4.FORMATS:
        return "a projection with block types the C kernel lacks"
    return None


def _group(linear: nn.Module) -> tuple[int, int]:
    """(data pointer, cpu_q4 KIND) of a linear that passed `_blocks_reason`."""
    from radixlm.kernels import cpu_q4

    rows, qtype = linear.method.groups(linear, linear.geo)[0]
    return rows.data_ptr(), cpu_q4.KIND[qtype]


class FusedDecode:
    """The model's forward with one-request decode steps in C. The C structures are bound to the
    KV pool and rotary tables of the first fused call and bound again whenever either object
    changes (they are allocated after loading); the tensors they point into are kept referenced."""

    def __init__(self, lib: ctypes.CDLL, model: nn.Module, int8: bool = False) -> None:
        self.lib, self.model, self.int8 = lib, model, int8
        self._pool: Any = None
        self._cos: Optional[torch.Tensor] = None
        self._bound: Optional[tuple[_Model, Any, list[torch.Tensor]]] = None

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        inputs = batch.decode_inputs
        if batch.mode is not ForwardMode.DECODE or inputs is None or inputs.shape[1] != 1 or batch.lora_ids:
            return self.model.model(input_ids, positions, batch)
        layers = self.model.model.layers
        pool, cos = layers[0].self_attn.backend.pool, layers[0].self_attn.rotary.cos
        if pool is not self._pool or cos is not self._cos:
            self._bound = _bind(self.model, pool, self.int8)
            self._pool, self._cos = pool, cos
        if self._bound is None or inputs.dtype != torch.int64 or batch.req_to_token.dtype != torch.int64:
            return self.model.model(input_ids, positions, batch)
        out = torch.empty(1, self._bound[0].hidden)
        table = batch.req_to_token
        done = self.lib.rlm_decode_step(
            ctypes.byref(self._bound[0]),
            inputs.data_ptr(),
            inputs.stride(0),
            table.data_ptr(),
            table.stride(0),
            out.data_ptr(),
            torch.get_num_threads(),
        )
        if done:
            raise RuntimeError(f"fused decode step: {_ERRORS.get(done, f'error {done}')}")
        return out


def _bind(model: nn.Module, pool: Any, int8: bool) -> Optional[tuple[_Model, Any, list[torch.Tensor]]]:
    """The C structures for `model` over `pool`, and the tensors they point into; None when the
    pool is not float32 [slots, Hkv, D] contiguous buffers."""
    stack, config = model.model, model.config
    attn = stack.layers[0].self_attn
    shape = (attn.num_kv_heads, attn.head_dim)
    buffers = list(pool.k_buffers) + list(pool.v_buffers)
    if any(b.dtype != torch.float32 or tuple(b.shape[1:]) != shape or not b.is_contiguous() for b in buffers):
        return None
    cos, sin = attn.rotary.cos, attn.rotary.sin
    tables = (attn.head_dim // 2,)
    if any(t.dtype != torch.float32 or tuple(t.shape[1:]) != tables or not t.is_contiguous() for t in (cos, sin)):
        return None
    keep = [cos, sin, *buffers]
    layers = (_Layer * len(stack.layers))()
    for i, layer in enumerate(stack.layers):
        (qkv, qk), (o, ok), (gu, gk), (down, dk) = map(_group, _linears(layer))
        k, v = pool.k_buffers[i], pool.v_buffers[i]
        norms = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        layers[i] = _Layer(
            norms[0].data_ptr(), norms[1].data_ptr(), qkv, o, gu, down, qk, ok, gk, dk, k.data_ptr(), v.data_ptr()
        )
    bound = _Model(
        config.hidden_size,
        attn.num_heads,
        attn.num_kv_heads,
        attn.head_dim,
        stack.layers[0].mlp.down_proj.geo.in_features,
        len(stack.layers),
        stack.embed_tokens.weight.shape[0],
        cos.shape[0],
        pool.k_buffers[0].shape[0],
        stack.norm.eps,
        attn.scale,
        int(int8),
        stack.embed_tokens.weight.data_ptr(),
        cos.data_ptr(),
        sin.data_ptr(),
        stack.norm.weight.data_ptr(),
        layers,
    )
    return bound, layers, keep

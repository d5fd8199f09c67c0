"""Read GGUF checkpoints (llama.cpp format) as Hugging Face-style config + float32 tensors.

Supported architectures: `llama` (which llama.cpp also uses for Mistral, and for Mixtral: a
`llama` file with `llama.expert_count`), `qwen2`, `qwen3`, `qwen2moe`.

Invariants of what this module produces:
  * every tensor is float32, contiguous, writable, in the PyTorch/HF shape ([out, in] for
    linear weights), named as in the HF `*ForCausalLM` state dict (`model.layers.N....`);
  * for `llama`, Q/K projections (weights and biases) are un-permuted back to the HF rotary
    layout, so a GGUF made from an unquantized HF checkpoint reproduces it exactly;
  * `rope_freqs.weight` (llama.cpp's precomputed llama3 rope factors) is never yielded: it
    is not an HF parameter; `read_gguf_config` turns it back into a llama3 `rope_scaling`.
  * MoE experts stay stacked as llama.cpp stores them, under names the native MoE models
    load (`mlp.experts.gate_proj` / `up_proj` [E, I, H], `mlp.experts.down_proj` [E, H, I]);
    the router is `mlp.gate`, Qwen2-MoE's shared expert `mlp.shared_expert.*` and its gate
    `mlp.shared_expert_gate` ([1, H]).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Optional

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

# GGUF architecture -> (HF architectures entry, HF model_type). Read-only on purpose.
SUPPORTED_ARCHITECTURES: MappingProxyType[str, tuple[str, str]] = MappingProxyType(
    {
        "llama": ("LlamaForCausalLM", "llama"),
        "qwen2": ("Qwen2ForCausalLM", "qwen2"),
        "qwen3": ("Qwen3ForCausalLM", "qwen3"),
        "qwen2moe": ("Qwen2MoeForCausalLM", "qwen2_moe"),
    }
)

_GGUF_MAGIC = b"GGUF"
_ROPE_FREQS = "rope_freqs.weight"

_TOP_LEVEL_NAMES: MappingProxyType[str, str] = MappingProxyType(
    {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
)

# GGUF per-block tensor stem -> HF module path under `model.layers.N.`.
_BLOCK_NAMES: MappingProxyType[str, str] = MappingProxyType(
    {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "ffn_gate_inp": "mlp.gate",
        "ffn_gate_exps": "mlp.experts.gate_proj",
        "ffn_up_exps": "mlp.experts.up_proj",
        "ffn_down_exps": "mlp.experts.down_proj",
        "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
        "ffn_up_shexp": "mlp.shared_expert.up_proj",
        "ffn_down_shexp": "mlp.shared_expert.down_proj",
        "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    }
)

_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


@dataclass(frozen=True)
class GGUFBlocks:
    """A quantized tensor kept in llama.cpp's blocks (`tensors(raw_names)`): `data` uint8 rows
    [N, row_bytes] (Q/K rows already un-permuted like the float tensors), `qtype` its
    `GGMLQuantizationType` value, `shape` the logical (N, K)."""

    data: torch.Tensor
    qtype: int
    shape: tuple[int, int]


class GGUFCheckpoint:
    """One opened GGUF file of a supported architecture.

    Opening parses the metadata once (the tokenizer arrays make this ~1-2 s for a small
    model), so callers needing config, count and tensors should share one instance.
    Tensor data stays memory-mapped until `tensors()` dequantizes it one tensor at a time.
    """

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._reader = _open_reader(self.path)
        arch = _field(self._reader, "general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"{self.path}: unsupported GGUF architecture {arch!r}; "
                f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        self.architecture: str = arch

    def config(self) -> dict[str, Any]:
        """HF `config.json`-style dict; see `read_gguf_config`."""
        return _build_config(self._reader, self.architecture, self.path)

    def __len__(self) -> int:
        """Number of tensors `tensors()` yields (all of them except `rope_freqs.weight`)."""
        return sum(1 for t in self._reader.tensors if t.name != _ROPE_FREQS)

    def tensors(self, raw_names: frozenset[str] = frozenset()) -> Iterator[tuple[str, Any]]:
        """Yield (HF name, float32 tensor) in file order; see the module docstring. Tensors
        named in `raw_names` (HF names) come as `GGUFBlocks` instead, not dequantized."""
        heads = _int_field(self._reader, f"{self.architecture}.attention.head_count")
        kv_heads = _int_field(self._reader, f"{self.architecture}.attention.head_count_kv", heads)
        for tensor in self._reader.tensors:
            if tensor.name == _ROPE_FREQS:
                continue
            name = _hf_tensor_name(tensor.name, self.path)
            yield name, self._value(tensor, name in raw_names, heads, kv_heads)

    def blocks(self, name: str) -> Optional[GGUFBlocks]:
        """The tensor of HF name `name` as `GGUFBlocks` (not dequantized); None when the file has none."""
        heads = _int_field(self._reader, f"{self.architecture}.attention.head_count")
        kv_heads = _int_field(self._reader, f"{self.architecture}.attention.head_count_kv", heads)
        for tensor in self._reader.tensors:
            if tensor.name != _ROPE_FREQS and _hf_tensor_name(tensor.name, self.path) == name:
                return self._value(tensor, True, heads, kv_heads)
        return None

    def _value(self, tensor: Any, raw: bool, heads: int, kv_heads: int) -> Any:
        """One tensor in PyTorch layout: float32, or with `raw` its blocks as `GGUFBlocks`."""
        value = torch.from_numpy(np.array(tensor.data, order="C")) if raw else _dequantize_tensor(tensor)
        if self.architecture == "llama":
            value = _unpermute_if_qk(tensor.name, value, heads, kv_heads)
        if tensor.name.endswith(".ffn_gate_inp_shexp.weight") and value.dim() == 1:
            value = value.unsqueeze(0)  # llama.cpp keeps the shared expert's gate as a vector
        if raw:
            shape = tuple(int(d) for d in reversed(tensor.shape))
            value = GGUFBlocks(value, int(tensor.tensor_type), (shape[0], shape[1]))
        return value

    def quant_types(self) -> dict[str, int]:
        """HF name -> `GGMLQuantizationType` value of every tensor (rope_freqs excluded)."""
        return {
            _hf_tensor_name(t.name, self.path): int(t.tensor_type)
            for t in self._reader.tensors
            if t.name != _ROPE_FREQS
        }


def read_gguf_config(path: str) -> dict[str, Any]:
    """HF `config.json`-style dict built from the GGUF metadata of `path`.

    Raises ValueError naming `path` if the file is not GGUF or its architecture is not one
    of `SUPPORTED_ARCHITECTURES`.
    """
    return GGUFCheckpoint(path).config()


def iter_gguf_tensors(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield every weight of `path` as (HF name, float32 tensor in HF shape).

    Yields exactly `count_gguf_tensors(path)` items (for a progress bar's `total`).
    """
    return GGUFCheckpoint(path).tensors()


def count_gguf_tensors(path: str) -> int:
    """How many tensors `iter_gguf_tensors(path)` yields."""
    return len(GGUFCheckpoint(path))


# ----------------------------------------------------------------------------- file access


def _open_reader(path: str) -> GGUFReader:
    """Open `path` with gguf's reader, turning format problems into ValueErrors naming it."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != _GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (magic {magic!r}, expected {_GGUF_MAGIC!r})")
    try:
        return GGUFReader(path)
    except ValueError as e:  # e.g. unsupported GGUF version, corrupt metadata
        raise ValueError(f"{path}: cannot read GGUF file: {e}") from e


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """Decoded value of metadata `key`, or `default` when absent."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _int_field(reader: GGUFReader, key: str, default: int | None = None) -> int:
    value = _field(reader, key, default)
    if value is None:
        raise ValueError(f"GGUF metadata key {key!r} is missing")
    return int(value)


def _float_field(reader: GGUFReader, key: str, default: float) -> float:
    """GGUF stores floats as float32; return the shortest decimal that round-trips
    (so 1e-5 comes back as 1e-05, not 9.99999974e-06, matching the HF config)."""
    value = _field(reader, key)
    return default if value is None else float(str(np.float32(value)))


# ----------------------------------------------------------------------------- config


def _build_config(reader: GGUFReader, arch: str, path: str) -> dict[str, Any]:
    """Assemble the HF config dict; `arch` is already validated as supported."""
    hidden = _int_field(reader, f"{arch}.embedding_length")
    heads = _int_field(reader, f"{arch}.attention.head_count")
    head_dim = _head_dim(reader, arch, hidden, heads)
    names = {t.name for t in reader.tensors}
    hf_arch, model_type = SUPPORTED_ARCHITECTURES[arch]
    config: dict[str, Any] = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": _int_field(reader, f"{arch}.feed_forward_length"),
        "num_hidden_layers": _int_field(reader, f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": _int_field(reader, f"{arch}.attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": _float_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": _float_field(reader, f"{arch}.rope.freq_base", 10000.0),
        "max_position_embeddings": _int_field(reader, f"{arch}.context_length"),
        "vocab_size": _vocab_size(reader, arch),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    }
    config.update(_moe_fields(reader, arch, names, config))
    scaling = _rope_scaling(reader, arch, head_dim, config["rope_theta"], path)
    if scaling is not None:
        config["rope_scaling"] = scaling
    return config


def _moe_fields(reader: GGUFReader, arch: str, names: set[str], config: dict[str, Any]) -> dict[str, Any]:
    """The MoE part of the config: none without `{arch}.expert_count`; a `llama` file with
    experts is Mixtral (renormalised top-k); `qwen2moe` has per-expert and shared-expert sizes,
    `expert_weights_norm` as `norm_topk_prob`, and the layers without a router are dense
    (`mlp_only_layers`). Qwen2-MoE biases only q/k/v (`qkv_bias`), not the output projection."""
    experts = _field(reader, f"{arch}.expert_count")
    if not experts:
        return {}
    top_k = _int_field(reader, f"{arch}.expert_used_count")
    if arch == "llama":
        return {
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "num_local_experts": int(experts),
            "num_experts_per_tok": top_k,
        }
    layers = config["num_hidden_layers"]
    return {
        "num_experts": int(experts),
        "num_experts_per_tok": top_k,
        "moe_intermediate_size": _int_field(reader, f"{arch}.expert_feed_forward_length"),
        "shared_expert_intermediate_size": _int_field(reader, f"{arch}.expert_shared_feed_forward_length", 0),
        "norm_topk_prob": bool(_field(reader, f"{arch}.expert_weights_norm", False)),
        "mlp_only_layers": [i for i in range(layers) if f"blk.{i}.ffn_gate_inp.weight" not in names],
        "qkv_bias": config.pop("attention_bias"),
    }


def _head_dim(reader: GGUFReader, arch: str, hidden: int, heads: int) -> int:
    """Explicit key length (qwen3), else the rope dimension, else hidden / heads."""
    for key in (f"{arch}.attention.key_length", f"{arch}.rope.dimension_count"):
        value = _field(reader, key)
        if value is not None:
            return int(value)
    return hidden // heads


def _vocab_size(reader: GGUFReader, arch: str) -> int:
    value = _field(reader, f"{arch}.vocab_size")
    if value is not None:
        return int(value)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ValueError("GGUF has neither a vocab_size nor a tokenizer token list")
    return len(tokens.data)  # one data index per token; avoids decoding every string


def _rope_scaling(reader: GGUFReader, arch: str, head_dim: int, theta: float, path: str) -> dict[str, Any] | None:
    """HF `rope_scaling` from `{arch}.rope.scaling.*` metadata, else from llama.cpp's
    `rope_freqs.weight` (how its converter stores llama3 scaling), else None."""
    kind = _field(reader, f"{arch}.rope.scaling.type")
    if kind is not None and kind != "none":
        return _scaling_from_metadata(reader, arch, kind)
    for tensor in reader.tensors:
        if tensor.name == _ROPE_FREQS:
            factors = dequantize(tensor.data, tensor.tensor_type).astype(np.float64).ravel()
            return _infer_llama3_scaling(factors, head_dim, theta, path)
    return None


def _scaling_from_metadata(reader: GGUFReader, arch: str, kind: str) -> dict[str, Any]:
    prefix = f"{arch}.rope.scaling."
    scaling: dict[str, Any] = {"rope_type": kind}
    scaling["factor"] = _float_field(reader, prefix + "factor", 1.0)
    orig = _field(reader, prefix + "original_context_length")
    if orig is not None:
        scaling["original_max_position_embeddings"] = int(orig)
    for gguf_key, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
        if prefix + gguf_key in reader.fields:
            scaling[hf_key] = _float_field(reader, prefix + gguf_key, 0.0)
    return scaling


def _infer_llama3_scaling(factors: np.ndarray, head_dim: int, theta: float, path: str) -> dict[str, Any] | None:
    """Recover llama3 `rope_scaling` from llama.cpp's per-frequency divisors.

    llama.cpp stores f_i = 1 (short wavelengths), `factor` (long ones) and, in between,
    1 / ((1 - s_i) / factor + s_i) with s_i = (orig / wavelen_i - low) / (high - low).
    s_i is affine in 1/wavelen_i, so a line fit gives orig/(high-low) and low/(high-low).
    Only the ratios orig/low and orig/high matter to HF, so low_freq_factor is fixed at 1
    (its value in every Llama 3.x release), which then yields the released orig and high.
    """
    factor = float(factors.max())
    if math.isclose(factor, 1.0, rel_tol=1e-6):
        return None
    if factors.size != head_dim // 2:
        raise ValueError(f"{path}: rope_freqs has {factors.size} entries, head_dim {head_dim}")
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    inv_wavelen = inv_freq / (2 * math.pi)
    mid = (factors > 1.0 + 1e-6) & (factors < factor * (1 - 1e-6))
    if mid.sum() < 2:
        raise ValueError(f"{path}: cannot infer llama3 rope scaling from rope_freqs.weight")
    smooth = (1 / factors[mid] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(inv_wavelen[mid], smooth, 1)  # s = slope*x - low/(h-l)
    span = 1.0 / -intercept  # high - low, with low = 1
    return {
        "rope_type": "llama3",
        "factor": float(str(np.float32(factor))),
        "low_freq_factor": 1.0,
        "high_freq_factor": round(1.0 + span, 4),
        "original_max_position_embeddings": int(round(slope * span)),
    }


# ----------------------------------------------------------------------------- tensors


def _hf_tensor_name(gguf_name: str, path: str) -> str:
    """HF state-dict name for a GGUF tensor name; unknown names are an error, not skipped,
    because a silently dropped weight would leave the model half-initialised."""
    if gguf_name in _TOP_LEVEL_NAMES:
        return _TOP_LEVEL_NAMES[gguf_name]
    match = _BLOCK_RE.fullmatch(gguf_name)
    if match is not None and match.group(2) in _BLOCK_NAMES:
        layer, stem, kind = match.groups()
        return f"model.layers.{layer}.{_BLOCK_NAMES[stem]}.{kind}"
    raise ValueError(f"{path}: GGUF tensor {gguf_name!r} has no Hugging Face equivalent")


def _dequantize_tensor(tensor: Any) -> torch.Tensor:
    """Float32 torch tensor in PyTorch shape for a gguf `ReaderTensor`.

    GGUF lists dimensions fastest-first (ne[0] = row length), so the PyTorch shape is the
    reverse; dequantize() already returns row-major data, only the shape needs fixing.
    """
    array = dequantize(tensor.data, tensor.tensor_type)
    shape = tuple(int(d) for d in reversed(tensor.shape))
    array = np.asarray(array, dtype=np.float32).reshape(shape)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, dtype=np.float32, order="C")  # F32 data is a read-only mmap view
    return torch.from_numpy(array)


def _unpermute_if_qk(gguf_name: str, value: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
    """Undo llama.cpp's llama-converter permutation of Q (heads) and K (kv_heads) rows."""
    if ".attn_q." in gguf_name:
        return unpermute_rope_rows(value, heads)
    if ".attn_k." in gguf_name:
        return unpermute_rope_rows(value, kv_heads)
    return value


def unpermute_rope_rows(value: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama.cpp's `permute` on the output rows of a Q/K weight or bias.

    HF's rotary layout pairs row j with row j + d/2 inside each head of d rows ("rotate
    half"); llama.cpp interleaves each pair as rows (2j, 2j+1) for its GGML rope. So GGUF
    row 2j + r of a head is HF row r*d/2 + j; we view rows as [head, j, r] and swap j, r.
    """
    rows = value.shape[0]
    if rows % (2 * n_head) != 0:
        raise ValueError(f"cannot un-permute {rows} rows into {n_head} heads of even size")
    half = rows // n_head // 2
    rest = tuple(value.shape[1:])
    return value.reshape(n_head, half, 2, *rest).transpose(1, 2).reshape(value.shape).contiguous()

"""Quantized checkpoints written in-test from the published formats (no quantization library).

Each writer takes a float HF directory and writes two directories: the quantized checkpoint
(tensors + `quantization_config` in config.json, tokenizer copied) and its dequantized reference
(the same model with every quantized weight replaced by the float32 values the format decodes
to). The packing code here follows the format descriptions and is written independently of
radixlm's loaders, so a layout mistake on either side shows as a mismatch.

  * fp8 (HF `quant_method: fp8`): `weight` e4m3 [N, K]; `weight_scale` float32 per tensor (shape
    []) or per channel [N, 1]; block-wise `weight_scale_inv` [ceil(N/bn), ceil(K/bk)];
    w = weight * scale.
  * AWQ (GEMM): `qweight` int32 [K, N/8], word column c nibble i = output 8c + [0,2,4,6,1,3,5,7][i];
    `qzeros` int32 [K/g, N/8] same order; `scales` fp16 [K/g, N]; w = (q - z) * s.
  * GPTQ: `qweight` int32 [K/8, N], nibble i of row r = input 8r + i; `qzeros` int32 [K/g, N/8],
    nibble i = output 8c + i, storing z - 1; `scales` fp16 [K/g, N]; `g_idx` int32 [K] = k // g.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
E4M3_MAX = 448.0


def make_base_model(tmp_dir: Path, arch: str = "llama", seed: int = 0) -> str:
    """A tiny random float32 model whose linear inputs are multiples of 128 (hidden 128, MLP 256,
    4 heads of 32, 2 KV heads), so AWQ/GPTQ groups of 128 and fp8 blocks of 128 fit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.tiny_models import make_tiny_tokenizer, tiny_config

    out = Path(tmp_dir) / f"base_{arch}"
    tokenizer = AutoTokenizer.from_pretrained(make_tiny_tokenizer(Path(tmp_dir) / f"tok_{arch}"))
    config = tiny_config(arch, vocab_size=len(tokenizer))
    config.hidden_size, config.intermediate_size, config.head_dim = 128, 256, 32
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return str(out)


def _is_linear(name: str) -> bool:
    return name.endswith(".weight") and any(f".{p}." in name for p in LINEARS)


def _write(src: str, dest: Path, tensors: dict[str, torch.Tensor], quant_config: dict | None) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    for f in Path(src).iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, dest / f.name)
    config = json.loads((Path(src) / "config.json").read_text())
    if quant_config is not None:
        config["quantization_config"] = quant_config
    (dest / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest / "model.safetensors"))
    return str(dest)


def _split(src: str, quantize) -> tuple[dict, dict]:
    """(quantized tensors, dequantized tensors): `quantize(name, w)` gives the per-name tensors
    of one linear weight and its float32 decoding."""
    quant, deq = {}, {}
    for name, w in load_file(str(Path(src) / "model.safetensors")).items():
        if _is_linear(name):
            parts, decoded = quantize(name[: -len(".weight")], w.float())
            quant.update(parts)
            deq[name] = decoded
        else:
            quant[name] = deq[name] = w
    return quant, deq


def write_pair(src: str, tmp: Path, label: str, quantize, quant_config: dict) -> tuple[str, str]:
    """Write (quantized dir, dequantized reference dir) under `tmp`."""
    quant, deq = _split(src, quantize)
    return _write(src, tmp / label, quant, quant_config), _write(src, tmp / f"{label}_ref", deq, None)


# --------------------------------------------------------------------------------------- fp8


def fp8_tensor(prefix: str, w: torch.Tensor) -> tuple[dict, torch.Tensor]:
    scale = w.abs().max() / E4M3_MAX
    q = (w / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return {f"{prefix}.weight": q, f"{prefix}.weight_scale": scale.reshape(())}, q.float() * scale


def fp8_channel(prefix: str, w: torch.Tensor) -> tuple[dict, torch.Tensor]:
    scale = w.abs().amax(dim=1, keepdim=True) / E4M3_MAX
    q = (w / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return {f"{prefix}.weight": q, f"{prefix}.weight_scale": scale}, q.float() * scale


def fp8_block(bn: int, bk: int):
    def quantize(prefix: str, w: torch.Tensor) -> tuple[dict, torch.Tensor]:
        n, k = w.shape
        rows, cols = -(-n // bn), -(-k // bk)
        scale = torch.empty(rows, cols)
        q = torch.empty(n, k, dtype=torch.float8_e4m3fn)
        deq = torch.empty(n, k)
        for i in range(rows):
            for j in range(cols):
                tile = w[i * bn : (i + 1) * bn, j * bk : (j + 1) * bk]
                s = tile.abs().max() / E4M3_MAX
                scale[i, j] = s
                qt = (tile / s).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
                q[i * bn : (i + 1) * bn, j * bk : (j + 1) * bk] = qt
                deq[i * bn : (i + 1) * bn, j * bk : (j + 1) * bk] = qt.float() * s
        return {f"{prefix}.weight": q, f"{prefix}.weight_scale_inv": scale}, deq

    return quantize


def fp8_config(block: tuple[int, int] | None = None) -> dict:
    cfg = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3"}
    if block is not None:
        cfg["weight_block_size"] = list(block)
    return cfg


# --------------------------------------------------------------------------------------- int4


def int4_groups(w: torch.Tensor, group: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q [K, N] in 0..15, zeros [K/g, N] in 0..15, fp16 scales [K/g, N]) of W^T, per group of K."""
    wt = w.t()  # [K, N]
    k, n = wt.shape
    g = wt.reshape(k // group, group, n)
    if sym:
        scale = (2 * g.abs().amax(dim=1) / 15).clamp(min=1e-8)
        zero = torch.full_like(scale, 8.0)
    else:
        lo, hi = g.amin(dim=1).clamp(max=0), g.amax(dim=1).clamp(min=0)
        scale = ((hi - lo) / 15).clamp(min=1e-8)
        zero = (-lo / scale).round().clamp(0, 15)
    scale = scale.half()
    q = (g / scale.float()[:, None] + zero[:, None]).round().clamp(0, 15)
    return q.reshape(k, n).to(torch.int32), zero.to(torch.int32), scale


def int4_decode(q: torch.Tensor, zero: torch.Tensor, scale: torch.Tensor, group: int) -> torch.Tensor:
    """float32 W [N, K] decoded from q [K, N], zeros and scales [K/g, N]."""
    z = zero.repeat_interleave(group, 0).float()
    s = scale.repeat_interleave(group, 0).float()
    return ((q.float() - z) * s).t().contiguous()


def _words(nibbles: torch.Tensor) -> torch.Tensor:
    """[..., 8] nibbles -> int32 words, nibble i in bits 4i..4i+3."""
    word = torch.zeros(nibbles.shape[:-1], dtype=torch.int64)
    for i in range(8):
        word |= (nibbles[..., i].to(torch.int64) & 0xF) << (4 * i)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def awq_pack_cols(values: torch.Tensor) -> torch.Tensor:
    """[R, N] nibbles -> [R, N/8] AWQ words (column 8c + ORDER[i] in nibble i)."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    r, n = values.shape
    grouped = values.reshape(r, n // 8, 8)
    return _words(grouped[..., order])


def gptq_pack_cols(values: torch.Tensor) -> torch.Tensor:
    r, n = values.shape
    return _words(values.reshape(r, n // 8, 8))


def gptq_pack_rows(values: torch.Tensor) -> torch.Tensor:
    k, n = values.shape
    return _words(values.reshape(k // 8, 8, n).permute(0, 2, 1))


def awq(group: int):
    def quantize(prefix: str, w: torch.Tensor) -> tuple[dict, torch.Tensor]:
        q, zero, scale = int4_groups(w, group, sym=False)
        tensors = {
            f"{prefix}.qweight": awq_pack_cols(q),
            f"{prefix}.qzeros": awq_pack_cols(zero),
            f"{prefix}.scales": scale,
        }
        return tensors, int4_decode(q, zero, scale, group)

    return quantize


def gptq(group: int, sym: bool):
    def quantize(prefix: str, w: torch.Tensor) -> tuple[dict, torch.Tensor]:
        q, zero, scale = int4_groups(w, group, sym=sym)
        k = q.shape[0]
        tensors = {
            f"{prefix}.qweight": gptq_pack_rows(q),
            f"{prefix}.qzeros": gptq_pack_cols(zero - 1),
            f"{prefix}.scales": scale,
            f"{prefix}.g_idx": torch.arange(k, dtype=torch.int32) // group,
        }
        return tensors, int4_decode(q, zero, scale, group)

    return quantize


def awq_config(group: int) -> dict:
    return {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"}


def gptq_config(group: int, sym: bool) -> dict:
    return {"quant_method": "gptq", "bits": 4, "group_size": group, "sym": sym, "desc_act": False}

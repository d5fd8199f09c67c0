"""The FLOP + bandwidth bound of an offline run of a Llama-family model: the least time its
prefills and decode steps could take on a device of a given matmul peak and copy bandwidth."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from throughput_measure import model_shape


@dataclass(frozen=True)
class Roofline:
    """The bound of one offline run, in seconds, and its parts (`seconds = prefill_s + decode_s`)."""

    seconds: float
    prefill_s: float
    decode_s: float
    prefill_flops: float
    decode_steps: int
    flop_bound_steps: int  # decode steps where FLOPs / peak exceeded bytes / bandwidth


@dataclass(frozen=True)
class _Costs:
    """Per-token and per-step costs of one shape, in FLOPs and bytes."""

    linear_flops: float  # per token through the decoder layers (2 * non-embedding params)
    head_flops: float  # per token whose logits are computed (2 * hidden * vocab)
    pair_flops: float  # per (query, key) pair over all layers (QK^T and PV)
    weight_bytes: float  # read once per decode step: layers, final norm, LM head
    row_bytes: float  # per token: its embedding row
    kv_bytes: float  # per cached token read: K and V over all layers


def _costs(config: dict, dtype_bytes: int) -> _Costs:
    shape = model_shape(config)
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or shape.hidden // heads
    norms = (2 * layers + 1) * shape.hidden
    return _Costs(
        linear_flops=2.0 * shape.non_embedding_params,
        head_flops=2.0 * shape.hidden * shape.vocab,
        pair_flops=4.0 * heads * head_dim * layers,
        weight_bytes=float(shape.non_embedding_params + norms + shape.hidden * shape.vocab) * dtype_bytes,
        row_bytes=float(shape.hidden * dtype_bytes),
        kv_bytes=2.0 * layers * config["num_key_value_heads"] * head_dim * dtype_bytes,
    )


def offline_bound(
    config: dict,
    prompt_lens: Sequence[int],
    out_len: int,
    max_running: int,
    dtype_bytes: int,
    peak_flops: float,
    bandwidth: float,
) -> Roofline:
    """The bound of generating `out_len` tokens after each prompt of `prompt_lens` with a HF
    Llama-style `config` (hidden, intermediate, layers, heads, KV heads, optional head_dim,
    vocab; a tied head costs what an untied one does), `dtype_bytes` per weight and KV element,
    at `peak_flops` FLOP/s and `bandwidth` bytes/s (the run's copy bandwidth as measured).

    prefill = total prefill FLOPs / peak, where a prompt of L tokens costs 2 * non-embedding
    params * L, the LM head at its last position only (2 * hidden * vocab) and causal attention
    over its L (L + 1) / 2 (query, key) pairs at 4 * heads * head_dim per pair per layer.

    decode = the sum over decode steps of max(bytes / bandwidth, FLOPs / peak). Modelled as the
    engine runs the workload: requests in the given order, in waves of at most `max_running`
    that all finish together (one output length), every prompt of a wave prefilled before it
    decodes; the prefill samples the first output token, so each wave runs `out_len - 1` decode
    steps, step j of a request of prompt L attending to L + j keys. A step of n rows reads the
    weights once (layers, norms, LM head), n embedding rows and the K/V of every attended key,
    and computes n rows through the layers and the LM head plus the attention pairs. Activations,
    logits and the sampler's traffic are not counted, nor the KV writes apart from their reads.
    """
    if max_running < 1 or out_len < 1:
        raise ValueError(f"max_running and out_len must be positive, got {max_running}, {out_len}")
    c = _costs(config, dtype_bytes)
    prefill_flops = sum(c.linear_flops * n + c.head_flops + c.pair_flops * n * (n + 1) / 2 for n in prompt_lens)
    decode_s, steps, flop_bound = 0.0, 0, 0
    for start in range(0, len(prompt_lens), max_running):
        wave = prompt_lens[start : start + max_running]
        rows, prompt_keys = len(wave), sum(wave)
        for j in range(1, out_len):
            keys = prompt_keys + rows * j
            flops = rows * (c.linear_flops + c.head_flops) + c.pair_flops * keys
            read = c.weight_bytes + rows * c.row_bytes + c.kv_bytes * keys
            compute_s, memory_s = flops / peak_flops, read / bandwidth
            decode_s += max(compute_s, memory_s)
            steps += 1
            flop_bound += compute_s > memory_s
    prefill_s = prefill_flops / peak_flops
    return Roofline(prefill_s + decode_s, prefill_s, decode_s, prefill_flops, steps, flop_bound)

"""Sizing the KV pool on a GPU from measured memory: after the weights are loaded, one warm-up
forward at the largest prefill the scheduler will run shows the activation peak; the pool gets
what is left of `--mem-fraction-static` of the device. The arithmetic is pure (tested on CPU);
`measure_after_warmup` is the only part that touches CUDA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from radixlm.forward.batch import ForwardBatch, ForwardMode


@dataclass(frozen=True)
class MemoryProfile:
    """Device memory after the warm-up: `total` and `free` bytes (the warm-up's scratch KV pool
    already released) and `activation_peak`, the most the warm-up forward allocated above what
    was allocated before it."""

    total: int
    free: int
    activation_peak: int


def kv_pool_tokens(total: int, free: int, fraction: float, reserved: int, per_token: int, page_size: int) -> int:
    """Tokens of KV that fit in `fraction` of a device's `total` bytes once what is already in
    use (`total - free`) and `reserved` bytes still to come (activations, graph buffers) are taken
    out; never fewer than two pages (the pool's own minimum, checked by the caller)."""
    budget = total * fraction - (total - free) - reserved
    return max(int(budget // per_token), page_size * 2)


def pool_tokens_from_profile(
    profile: MemoryProfile, fraction: float, graph_bytes: int, per_token: int, page_size: int
) -> int:
    """`kv_pool_tokens` with the warm-up's activation peak and the CUDA graphs' logits buffers
    held back: `total * fraction - in_use - activation_peak - graph_bytes`, in tokens."""
    reserved = profile.activation_peak + graph_bytes
    return kv_pool_tokens(profile.total, profile.free, fraction, reserved, per_token, page_size)


def warmup_shape(
    max_prefill_tokens: int, chunk_size: Optional[int], context_len: int, max_running: int
) -> tuple[int, int]:
    """(requests, tokens each) of the largest prefill batch the scheduler builds: up to
    `max_prefill_tokens` tokens in all, none of its requests longer than a chunk or than the
    context allows (a prompt has at most `context_len - 1` tokens), at most `max_running` requests."""
    length = max(1, min(max_prefill_tokens, chunk_size or max_prefill_tokens, context_len - 1))
    return min(-(-max_prefill_tokens // length), max_running), length


def warmup_batch(table: torch.Tensor, requests: int, length: int, device: torch.device) -> ForwardBatch:
    """A prefill of `requests` requests of `length` tokens (token id 0) from position 0, request i
    in table row i, its slots 1 + i * length ... (slot 0 is the pool's padding slot). Writes those
    rows of `table`."""
    dev = dict(device=device, dtype=torch.int64)
    slots = torch.arange(1, requests * length + 1, **dev).view(requests, length)
    table[:requests, :length] = slots
    return ForwardBatch(
        ForwardMode.EXTEND,
        torch.zeros(requests * length, **dev),
        torch.arange(length, **dev).repeat(requests),
        slots.reshape(-1),
        torch.arange(requests, **dev),
        torch.full((requests,), length, **dev),
        [length] * requests,
        [0] * requests,
        [length] * requests,
        torch.arange(1, requests + 1, **dev) * length - 1,
        table,
    )


def measure_after_warmup(
    device: torch.device, warmup: Callable[[], None], release: Callable[[], None]
) -> MemoryProfile:
    """Run `warmup` (one forward) and read its activation peak, then `release` the scratch memory
    it used and read the device's free memory. CUDA only."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    warmup()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    release()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    return MemoryProfile(total, free, max(peak, 0))

"""Tensor-parallel layers: column- and row-parallel linears, vocab-parallel embedding and LM head.

Each layer holds only its rank's shard and loads it from the full checkpoint tensor (or a lazy
safetensors slice: `narrow` reads just the shard) through `load_shard(attr, tensor, part)`.
At tp 1 the factories return layers without any collective, so the single-GPU path runs the
same kernels as a plain `nn.Linear` / `nn.Embedding`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from radixlm.distributed.group import TPGroup
from radixlm.kernels import gemv
from radixlm.layers.quantization.base import LinearGeometry, Segment


def whole(tensor: Any) -> torch.Tensor:
    """A checkpoint tensor in full (reads a lazy slice)."""
    return tensor if isinstance(tensor, torch.Tensor) else tensor.full()


def copy_checked(dest: torch.Tensor, src: torch.Tensor, what: str) -> None:
    if dest.shape != src.shape:
        raise ValueError(f"shape mismatch for {what}: parameter {tuple(dest.shape)} vs checkpoint {tuple(src.shape)}")
    with torch.no_grad():
        dest.copy_(src)


def split_evenly(total: int, tp: TPGroup, what: str) -> int:
    if total % tp.size:
        raise ValueError(f"tp_size {tp.size} must divide {what} ({total})")
    return total // tp.size


@dataclass(frozen=True)
class AttentionHeads:
    """This rank's attention heads: query heads `q_start .. q_start + num_heads - 1` and, for
    every `group` consecutive local query heads, one KV head in `kv_ids` (the checkpoint's
    head ids; a KV head may appear on several ranks or twice on one rank, i.e. replicated).

    KV heads are split when their count divides by tp, one per rank when tp is a multiple of
    it, and otherwise each rank keeps the KV heads its query heads read, duplicated where the
    grouping would not be uniform."""

    q_start: int
    num_heads: int
    kv_ids: tuple[int, ...]

    @property
    def num_kv_heads(self) -> int:
        return len(self.kv_ids)

    @classmethod
    def split(cls, num_heads: int, num_kv_heads: int, tp: TPGroup) -> "AttentionHeads":
        local = split_evenly(num_heads, tp, "num_attention_heads")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}")
        group = num_heads // num_kv_heads
        start = tp.rank * local
        kv_of_q = [(start + j) // group for j in range(local)]
        local_group = next(
            g
            for g in range(local, 0, -1)
            if local % g == 0 and all(kv_of_q[j] == kv_of_q[j - j % g] for j in range(local))
        )
        return cls(start, local, tuple(kv_of_q[::local_group]))


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W's output rows split across ranks (no communication).

    `output_sizes` lists the logical outputs fused in this matmul (e.g. gate and up); each is
    split on its own, so the local output is `[part0 shard | part1 shard | ...]`."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool, tp: TPGroup) -> None:
        super().__init__()
        self.tp = tp
        self.local_sizes = [split_evenly(n, tp, "a projection's output size") for n in output_sizes]
        self.weight = nn.Parameter(torch.empty(sum(self.local_sizes), in_features))
        self.bias = nn.Parameter(torch.empty(sum(self.local_sizes))) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gemv.linear(x, self.weight, self.bias)

    def load_shard(self, attr: str, tensor: Any, part: Optional[int]) -> None:
        """Copy this rank's rows of logical output `part` (0 when unfused) from the full tensor."""
        part = part or 0
        start = sum(self.local_sizes[:part])
        dest = getattr(self, attr).narrow(0, start, self.local_sizes[part])
        copy_checked(dest, self._rows(tensor, part), f"{attr} part {part}")

    def _rows(self, tensor: Any, part: int) -> torch.Tensor:
        n = self.local_sizes[part]
        return tensor.narrow(0, self.tp.rank * n, n)

    def out_segments(self, part: int) -> tuple[Segment, ...]:
        """The rows of part `part`'s full checkpoint tensor this rank holds (what `_rows` reads)."""
        n = self.local_sizes[part]
        return ((self.tp.rank * n, n),)

    def geometry(self) -> LinearGeometry:
        """This rank's shard, for a quantization method (`radixlm.layers.quantization`)."""
        k = self.weight.shape[1]
        parts = range(len(self.local_sizes))
        return LinearGeometry(k, k, tuple(self.local_sizes), tuple(self.out_segments(p) for p in parts))


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q/k/v projection: this rank's query heads and the KV heads they read (`AttentionHeads`)."""

    def __init__(self, in_features: int, head_dim: int, heads: AttentionHeads, bias: bool, tp: TPGroup) -> None:
        kv = heads.num_kv_heads * head_dim
        super().__init__(in_features, [heads.num_heads * head_dim * tp.size, kv * tp.size, kv * tp.size], bias, tp)
        self.heads, self.head_dim = heads, head_dim

    def _rows(self, tensor: Any, part: int) -> torch.Tensor:
        d, ids = self.head_dim, self.heads.kv_ids
        if part == 0:
            return tensor.narrow(0, self.heads.q_start * d, self.heads.num_heads * d)
        lo, hi = min(ids), max(ids)
        span = tensor.narrow(0, lo * d, (hi - lo + 1) * d)
        if ids == tuple(range(lo, hi + 1)):
            return span
        span = span.reshape(hi - lo + 1, d, *span.shape[1:])
        return span[torch.tensor([h - lo for h in ids])].reshape(len(ids) * d, *span.shape[2:])

    def out_segments(self, part: int) -> tuple[Segment, ...]:
        d, ids = self.head_dim, self.heads.kv_ids
        if part == 0:
            return ((self.heads.q_start * d, self.heads.num_heads * d),)
        if ids == tuple(range(min(ids), max(ids) + 1)):
            return ((min(ids) * d, len(ids) * d),)
        return tuple((h * d, d) for h in ids)


class RowParallelLinear(nn.Module):
    """y = sum over ranks of x_r W_r^T, then + b: W's input columns are split across ranks and
    the partial products are all-reduced. Only built for tp > 1 (see `row_parallel_linear`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TPGroup) -> None:
        super().__init__()
        self.tp = tp
        self.local_in = split_evenly(in_features, tp, "a row-parallel projection's input size")
        self.weight = nn.Parameter(torch.empty(out_features, self.local_in))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tp.all_reduce(gemv.linear(x, self.weight))
        return out if self.bias is None else out + self.bias

    def load_shard(self, attr: str, tensor: Any, part: Optional[int]) -> None:
        if attr == "bias":
            copy_checked(self.bias, whole(tensor), "bias")
        else:
            copy_checked(self.weight, tensor.narrow(1, self.tp.rank * self.local_in, self.local_in), attr)

    def geometry(self) -> LinearGeometry:
        """This rank's shard (input columns), for a quantization method."""
        n = self.weight.shape[0]
        in_segment = (self.tp.rank * self.local_in, self.local_in)
        return LinearGeometry(self.local_in, self.local_in * self.tp.size, (n,), (((0, n),),), in_segment)


def row_parallel_linear(in_features: int, out_features: int, bias: bool, tp: TPGroup) -> nn.Module:
    """A RowParallelLinear, or at tp 1 a plain linear (same parameters, no all-reduce)."""
    if tp.size == 1:
        return ColumnParallelLinear(in_features, [out_features], bias, tp)
    return RowParallelLinear(in_features, out_features, bias, tp)


class VocabParallelEmbedding(nn.Module):
    """Embedding whose vocabulary rows are split in contiguous blocks of `ceil(vocab / tp)`
    (the last block zero-padded); each rank looks up the ids it holds, zeros the others, and
    the all-reduce assembles the rows. Only built for tp > 1 (see `vocab_parallel_embedding`)."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TPGroup) -> None:
        super().__init__()
        self.tp, self.vocab_size = tp, vocab_size
        self.per_rank = -(-vocab_size // tp.size)
        self.start = tp.rank * self.per_rank
        self.num_real = max(0, min(self.per_rank, vocab_size - self.start))
        self.weight = nn.Parameter(torch.empty(self.per_rank, hidden_size))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.per_rank)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.tp.all_reduce(out.masked_fill_(outside.unsqueeze(-1), 0))

    def load_shard(self, attr: str, tensor: Any, part: Optional[int]) -> None:
        if tensor.shape[0] != self.vocab_size:
            raise ValueError(f"vocabulary mismatch: checkpoint {tuple(tensor.shape)} vs vocab_size {self.vocab_size}")
        with torch.no_grad():
            self.weight[self.num_real :].zero_()
        copy_checked(self.weight[: self.num_real], tensor.narrow(0, self.start, self.num_real), attr)


def vocab_parallel_embedding(vocab_size: int, hidden_size: int, tp: TPGroup) -> nn.Module:
    """A VocabParallelEmbedding, or at tp 1 a plain `nn.Embedding`."""
    if tp.size == 1:
        return nn.Embedding(vocab_size, hidden_size)
    return VocabParallelEmbedding(vocab_size, hidden_size, tp)


class ParallelLMHead(VocabParallelEmbedding):
    """The LM head's weight, split like the embedding; logits come from `logits_fn`."""


def lm_head(vocab_size: int, hidden_size: int, tp: TPGroup) -> nn.Module:
    if tp.size == 1:
        return nn.Linear(hidden_size, vocab_size, bias=False)
    return ParallelLMHead(vocab_size, hidden_size, tp)


def logits_fn(vocab_size: int, tp: TPGroup, device: Optional[torch.device] = None) -> Callable[..., torch.Tensor]:
    """(hidden [N, H], this rank's head weight [V_local, H], out=None) -> float32 logits
    [N, vocab_size], every rank's block gathered at tp > 1, written into `out` when given (a
    buffer the caller keeps, e.g. one shared by all CUDA graphs). At tp 1 on CUDA the GEMM writes
    float32 itself (one launch, no cast kernel; logits are not rounded to bf16/fp16 on the way)."""
    if tp.size == 1:
        return _local_logits_fp32_out if device is not None and device.type == "cuda" else _local_logits

    def gathered(hidden: torch.Tensor, weight: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        return float_into(tp.all_gather_last(torch.matmul(hidden, weight.t()))[..., :vocab_size], out)

    return gathered


def float_into(logits: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    """`logits` as float32: a new tensor, or written into `out` (copy_ converts, no float32
    temporary). Every `compute_logits(hidden, out)` ends here."""
    return logits.float() if out is None else out.copy_(logits)


def _local_logits(hidden: torch.Tensor, weight: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    return float_into(torch.matmul(hidden, weight.t()), out)


def _local_logits_fp32_out(
    hidden: torch.Tensor, weight: torch.Tensor, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """CUDA only (`mm` with `out_dtype` has no CPU kernel); hidden is 2-D."""
    return gemv.linear_fp32(hidden, weight, out)

"""The input embedding (`vocab_parallel_embedding`): at tp 1 one gather and nothing else (no
masking, no dtype conversion, no host sync); at tp > 1 each rank's masked block lookup sums,
over the ranks, to the full table's rows, the last rank's zero-padded block included."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from radixlm.distributed.group import TPGroup
from radixlm.layers.linear import VocabParallelEmbedding, vocab_parallel_embedding


class _OpLog(TorchDispatchMode):
    """Records every aten op dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


class _SumOfRanks(TPGroup):
    """A rank of a `size`-rank group whose all-reduce is left to the test (identity here)."""

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_tp1_lookup_is_one_gather() -> None:
    embed = vocab_parallel_embedding(1000, 16, TPGroup.single())
    ids = torch.tensor([0, 999, 5, 5, 731])
    with torch.inference_mode(), _OpLog() as log:
        out = embed(ids)
    assert log.ops in (["embedding"], ["index_select"]), log.ops
    assert torch.equal(out, embed.weight.detach()[ids])


def test_tp_ranks_sum_to_the_full_lookup() -> None:
    vocab, hidden = 1001, 8  # not a multiple of 2 or 3: the last rank's block is padded
    full = torch.randn(vocab, hidden)
    ids = torch.tensor([0, 1, 333, 334, 500, 501, 667, 668, 999, 1000])
    for size in (2, 3):
        total = torch.zeros(ids.numel(), hidden)
        for rank in range(size):
            layer = VocabParallelEmbedding(vocab, hidden, _SumOfRanks(rank, size))
            layer.load_shard("embed_tokens.weight", full, None)
            with torch.inference_mode():
                total += layer(ids)
        torch.testing.assert_close(total, full[ids], rtol=0, atol=0)

"""How many kernels the LoRA term adds to a projection, counted on the CPU: the Triton kernels
are replaced by recorders (nothing is compiled or run) and the torch ops of the forward are
counted by a dispatch mode. At decode, the budget inside a CUDA graph is two launches per fused
projection (q/k/v together) with adapters, a shrink and an expand that adds in place (so eight
per Llama layer), and none at all for a base-only batch."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")

from radixlm.lora import triton_ops  # noqa: E402
from radixlm.lora.batch_info import LoraBatchInfo  # noqa: E402
from radixlm.lora.layer import LoraKernels, LoraLinear, PartLayout  # noqa: E402

# ops that launch nothing: views, metadata, and the output buffer's allocation
IN = 300  # input features: more than one K tile, so a batch-1 shrink splits K
_FREE = {"view", "_unsafe_view", "reshape", "t", "alias", "detach", "as_strided", "expand", "empty", "slice"}


class _Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](...)` records the launch, runs nothing."""

    def __init__(self, name: str, launches: list[tuple[str, Any]]) -> None:
        self.name, self.launches = name, launches

    def __getitem__(self, grid: Any) -> Any:
        return lambda *args, **kwargs: self.launches.append((self.name, grid))


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        if name not in _FREE:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def _qkv_layer(info: LoraBatchInfo) -> LoraLinear:
    identity = lambda t: t  # noqa: E731
    parts = [
        PartLayout(n, off, size, identity, identity) for n, off, size in (("q", 0, 64), ("k", 64, 32), ("v", 96, 32))
    ]
    base = nn.Linear(IN, 128, bias=False)
    scales = (torch.ones(4), [1.0] * 4)
    return LoraLinear(
        base,
        parts,
        IN,
        128,
        (4, 8, torch.float32, torch.device("cpu")),
        info,
        LoraKernels(torch.device("cpu"), triton=True),
        scales,
    )


def _count(monkeypatch: pytest.MonkeyPatch, row_slots: list[int], rows_per_req: list[int]) -> tuple[list, Counter]:
    launches: list[tuple[str, Any]] = []
    for name in ("_shrink_kernel", "_expand_kernel"):
        monkeypatch.setattr(triton_ops, name, _Recorder(name, launches))
    info = LoraBatchInfo(max_tokens=64, device=torch.device("cpu"), num_slots=4)
    layer = _qkv_layer(info)
    info.set_rows(row_slots, rows_per_req)
    x = torch.randn(sum(rows_per_req), IN)
    with torch.no_grad(), _OpCounter() as counter:
        layer(x)
    return launches, counter.ops


def _base_ops() -> Counter:
    linear, x = nn.Linear(48, 128, bias=False), torch.randn(3, 48)
    with torch.no_grad(), _OpCounter() as counter:
        linear(x)
    return counter.ops


def test_decode_with_adapters_is_a_shrink_and_an_expand_per_fused_projection(monkeypatch: pytest.MonkeyPatch) -> None:
    for row_slots in ([0], [2, -1, 0, 2, 1, -1, 3, 0], [1] * 20):
        launches, ops = _count(monkeypatch, row_slots, [1] * len(row_slots))
        assert [name for name, _ in launches] == ["_shrink_kernel", "_expand_kernel"], launches
        assert ops == _base_ops(), ops - _base_ops()  # no copy, add or index kernel beside the base matmul
    launches, _ = _count(monkeypatch, [0], [1])
    (_, shrink_grid), (_, expand_grid) = launches
    assert shrink_grid[:2] == (1, 1) and expand_grid[:2] == (1, 1)  # batch 1: one row block, not one per slot
    assert shrink_grid[2] == -(-IN // triton_ops.SPLIT_TILES[0])  # K split, one tile per program


def test_base_only_batch_launches_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for rows in ([1], [1, 1, 1], [5, 2]):
        launches, ops = _count(monkeypatch, [-1] * len(rows), rows)
        assert launches == [] and ops == _base_ops()


def test_prefill_is_the_same_pair_unsplit(monkeypatch: pytest.MonkeyPatch) -> None:
    launches, ops = _count(monkeypatch, [0, -1, 1], [5, 3, 2])
    assert [name for name, _ in launches] == ["_shrink_kernel", "_expand_kernel"]
    assert ops == _base_ops(), ops - _base_ops()
    launches, _ = _count(monkeypatch, [0, 1], [40, 30])
    assert launches[0][1][2] == 1  # segments longer than a row block: K not split (one column block)


def test_graph_replay_picks_the_variant_without_lora_launches_for_base_only_batches() -> None:
    """The CUDA-graph runner keys its graphs by (bs, plan, with LoRA) and replays the LoRA
    variant exactly when the prepared batch has a row on an adapter (`info.active`)."""
    from types import SimpleNamespace

    from radixlm.executor.cuda_graph_runner import CudaGraphRunner

    replayed: list[tuple[int, bool, bool]] = []
    runner = object.__new__(CudaGraphRunner)
    runner.buckets, runner.plan_buckets = [1, 2, 4], [2, 4]
    runner.load_inputs = lambda batch, padded: None  # type: ignore[method-assign]
    keys = [(bs, False, lora) for bs in (1, 2, 4) for lora in (False, True)]
    runner.graphs = {k: SimpleNamespace(replay=lambda k=k: replayed.append(k)) for k in keys}  # type: ignore[misc]
    runner.outputs = {k: torch.zeros(4, 3) for k in keys}
    info = LoraBatchInfo(max_tokens=8, device=torch.device("cpu"), num_slots=2)
    runner.lora = SimpleNamespace(info=info)
    for row_slots, want in (
        ([-1, -1, -1], (4, False, False)),
        ([-1, 1, -1], (4, False, True)),
        ([0], (1, False, True)),
    ):
        info.set_rows(row_slots, [1] * len(row_slots))
        runner.replay(SimpleNamespace(batch_size=len(row_slots), prefix_plan=None))
        assert replayed[-1] == want

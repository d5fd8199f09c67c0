"""LoRA adapter settings and weights: `--lora-paths` parsing, adapter_config.json validation,
adapter_model.safetensors checks against the model's shapes, and the device-slot LRU."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from radixlm.lora.adapter import ModelShapes, load_adapter
from radixlm.lora.batch_info import LoraBatchInfo, _runs, block_bound
from radixlm.lora.config import config_from_dict, parse_lora_paths, read_adapter_config
from radixlm.lora.pool import SlotPool

CONFIG = SimpleNamespace(
    hidden_size=8, intermediate_size=12, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2
)
SHAPES = ModelShapes.of(CONFIG)  # q 8, kv 4, inter 12


def test_parse_lora_paths() -> None:
    assert parse_lora_paths(["a=/x", "/y/z"]) == {"a": "/x", "/y/z": "/y/z"}
    assert parse_lora_paths(None) == {}
    for bad in (["=/x"], ["a="], ["a=/x", "a=/y"], [""]):
        with pytest.raises(ValueError):
            parse_lora_paths(bad)


def test_config_scaling_and_targets() -> None:
    cfg = config_from_dict("a", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "model.layers.0.mlp.up_proj"]})
    assert (cfg.rank, cfg.scaling, cfg.targets) == (4, 2.0, frozenset({"q_proj", "up_proj"}))
    rs = config_from_dict("a", {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "use_rslora": True})
    assert math.isclose(rs.scaling, 4.0) and len(rs.targets) == 7


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"r": 0, "target_modules": ["q_proj"]}, "r must be a positive integer"),
        ({"r": 64, "target_modules": ["q_proj"]}, "exceeds max_lora_rank 16"),
        ({"r": 4, "target_modules": ["fc1"]}, "'fc1' not in the model"),
        ({"r": 4, "target_modules": ".*proj"}, "regular expression is not supported"),
        ({"r": 4, "target_modules": ["q_proj"], "use_dora": True}, "use_dora=True is not supported"),
        ({"r": 4, "target_modules": ["q_proj"], "bias": "all"}, "bias='all' is not supported"),
        ({"r": 4, "target_modules": ["q_proj"], "peft_type": "IA3"}, "not LORA"),
        ({"r": 4, "target_modules": ["q_proj"], "lora_alpha": "x"}, "lora_alpha must be a number"),
    ],
)
def test_config_refusals_name_the_adapter(raw: dict, words: str) -> None:
    with pytest.raises(ValueError, match="'ad'") as err:
        config_from_dict("ad", raw, max_rank=16)
    assert words in str(err.value)


def test_malformed_config_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no adapter_config.json"):
        read_adapter_config("x", str(tmp_path))
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_adapter_config("x", str(tmp_path))


def _write_adapter(path: Path, rank: int, tensors: dict[str, torch.Tensor], targets: list[str]) -> str:
    path.mkdir(exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": rank, "target_modules": targets}))
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return str(path)


def _tensors(rank: int, layers: int = 2, v_out: int = 4) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        pre = f"base_model.model.model.layers.{i}.self_attn.v_proj"
        out[f"{pre}.lora_A.weight"] = torch.randn(rank, 8)
        out[f"{pre}.lora_B.weight"] = torch.randn(v_out, rank)
    return out


def test_load_adapter_weights(tmp_path: Path) -> None:
    tensors = _tensors(2)
    adapter = load_adapter("a", _write_adapter(tmp_path / "a", 2, tensors, ["v_proj"]), SHAPES)
    assert set(adapter.weights) == {(0, "v_proj"), (1, "v_proj")}
    a, b = adapter.weights[1, "v_proj"]
    assert torch.equal(a, tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"])
    assert b.shape == (4, 2)


def test_load_adapter_refusals(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"layer 0 v_proj has A \(2, 8\) / B \(5, 2\)"):
        load_adapter("a", _write_adapter(tmp_path / "a", 2, _tensors(2, v_out=5), ["v_proj"]), SHAPES)
    with pytest.raises(ValueError, match="layer 1 v_proj lacks"):
        load_adapter("b", _write_adapter(tmp_path / "b", 2, _tensors(2, layers=1), ["v_proj"]), SHAPES)
    with pytest.raises(ValueError, match="layer 2 v_proj, which the model does not have"):
        load_adapter("c", _write_adapter(tmp_path / "c", 2, _tensors(2, layers=3), ["v_proj"]), SHAPES)
    with pytest.raises(ValueError, match="unexpected tensor"):
        load_adapter("d", _write_adapter(tmp_path / "d", 2, _tensors(2), ["q_proj"]), SHAPES)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "adapter_config.json").write_text(json.dumps({"r": 2, "target_modules": ["v_proj"]}))
    with pytest.raises(ValueError, match="no adapter_model.safetensors"):
        load_adapter("e", str(tmp_path / "e"), SHAPES)


def test_slot_pool_evicts_least_recently_used_unused() -> None:
    loads: list[tuple[int, int]] = []
    pool = SlotPool(2, lambda slot, uid: loads.append((slot, uid)))
    assert pool.acquire([7, 7, 9]) == {7: 0, 9: 1}
    assert pool.acquire([9]) == {9: 1} and len(loads) == 2  # resident: no copy
    assert pool.acquire([9, 11]) == {9: 1, 11: 0}  # 7 was least recently used
    assert pool.acquire([7, 11]) == {7: 1, 11: 0}  # 9 evicted, never 11 (in the batch)
    assert loads == [(0, 7), (1, 9), (0, 11), (1, 7)]
    with pytest.raises(ValueError, match="max_loras_per_batch is 2"):
        pool.acquire([1, 2, 3])
    pool.drop(11)
    assert pool.acquire([5]) == {5: 0}


def test_segments_merge_runs_of_one_slot() -> None:
    assert _runs([0, 0, -1, 1, 1], [2, 3, 1, 0, 4]) == [(0, 5, 0), (5, 6, -1), (6, 10, 1)]


def test_decode_rows_are_grouped_by_slot_in_static_buffers() -> None:
    """One row per request (decode): blocks of at most BLOCK_ROWS rows of one slot over the rows
    of that slot (base rows in none), written into the same static buffers every time (what a
    CUDA graph reads); the block count is a bound fixed by the row count, unused blocks on -1."""
    info = LoraBatchInfo(max_tokens=40, device=torch.device("cpu"), num_slots=3)
    buffers = (info.token_rows.data_ptr(), info.block_starts.data_ptr(), info.block_slots.data_ptr())
    info.set_rows([1, -1, 0, 1, 2, 1], [1] * 6)
    seg = info.segments(8)  # a CUDA-graph bucket of 8 rows: rows 6 and 7 are padding
    assert info.per_token and info.active and (seg.count, seg.max_len) == (block_bound(8, 3), 8) == (3, 8)
    assert seg.rows is not None and seg.rows.data_ptr() == buffers[0]
    blocks = [(int(s), int(n), int(slot)) for s, n, slot in zip(seg.starts, seg.lens, seg.slots)][: seg.count]
    got = {slot: seg.rows[start : start + n].tolist() for start, n, slot in blocks}
    assert got == {0: [2], 1: [0, 3, 5], 2: [4]}
    assert info.segments(1).count == 1  # batch 1: one block, not one per slot
    info.set_rows([2] * 20 + [0], [1] * 21)  # 20 rows of slot 2: two blocks (16 + 4)
    seg = info.segments(24)
    blocks = [(int(s), int(n), int(slot)) for s, n, slot in zip(seg.starts, seg.lens, seg.slots)][: seg.count]
    assert blocks[:3] == [(0, 1, 0), (1, 16, 2), (17, 4, 2)] and all(b[2] == -1 for b in blocks[3:])
    info.set_rows([-1, -1], [1, 1])
    assert not info.active  # the layers launch nothing
    info.set_rows([0, 2], [3, 1])  # a prefill: direct runs, no permutation
    assert info.active and not info.per_token and info.segments(4).rows is None
    info.reset(active=True)
    assert info.per_token and info.active and set(info.block_slots.tolist()) == {-1}
    assert (info.token_rows.data_ptr(), info.block_starts.data_ptr(), info.block_slots.data_ptr()) == buffers


def test_block_bound_covers_every_grouping() -> None:
    """No assignment of rows to slots needs more blocks than `block_bound` (what the grid has)."""
    import itertools

    from radixlm.lora.batch_info import BLOCK_ROWS, _grouped_plan

    for rows, slots in itertools.product((1, 2, 5, 16, 17, 33), (1, 3, 8)):
        for split in range(slots):  # rows spread over the first split + 1 slots, unevenly
            row_slots = [i % (split + 1) for i in range(rows)]
            row_slots[-1] = split
            plan = _grouped_plan(row_slots, rows, slots)
            bound = block_bound(rows, slots)
            assert len(plan) == 3 * bound + rows  # max_tokens = rows; the permutation is not padded
            lens, block_slots = plan[bound : bound * 2], plan[2 * bound : 3 * bound]
            assert sum(lens) == rows and max(lens) <= BLOCK_ROWS
            assert all((n > 0) == (s >= 0) for n, s in zip(lens, block_slots))

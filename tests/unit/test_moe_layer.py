"""The MoE experts layer: tensor-parallel shards (a slice of every expert) and expert-parallel
shards (whole experts, other ranks' ids dropped) summed over ranks equal the unsharded reference;
per-expert and stacked checkpoint tensors load to the same weights; bad splits are refused."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from radixlm.config.server_args import ServerArgs
from radixlm.distributed.group import TPGroup
from radixlm.layers.moe.block import MoEConfig, moe_block
from radixlm.layers.moe.layer import ExpertShard, ExpertTensor, MoEExperts
from radixlm.layers.moe.reference import experts_reference
from radixlm.layers.moe.routing import select_experts

E, H, INTER, TOP_K, T = 8, 32, 24, 3, 40


def full_weights(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """HF-layout per-expert weights: gate [E, I, H], up [E, I, H], down [E, H, I], and a router [E, H]."""
    g = torch.Generator().manual_seed(seed)
    shapes = ((E, INTER, H), (E, INTER, H), (E, H, INTER), (E, H))
    return tuple(torch.randn(*shape, generator=g) * 0.2 for shape in shapes)


def load_per_expert(layer: MoEExperts, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> None:
    for e in range(E):
        layer.load_shard("w13_weight", gate[e], ExpertTensor(e, 0))
        layer.load_shard("w13_weight", up[e], ExpertTensor(e, 1))
        layer.load_shard("w2_weight", down[e], ExpertTensor(e))


def routed_input(router: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(1))
    weights, ids = select_experts(x @ router.t(), TOP_K, renormalize=False)
    assert ids.unique().numel() == E  # every expert has tokens
    return x, weights, ids


@pytest.mark.parametrize("tp,ep", [(1, 1), (2, 1), (4, 1), (2, 2), (4, 4)])
def test_shards_summed_over_ranks_equal_the_unsharded_reference(tp: int, ep: int) -> None:
    gate, up, down, router = full_weights()
    x, weights, ids = routed_input(router)
    expected = experts_reference(x, torch.cat([gate, up], dim=1), down, weights, ids)
    total = torch.zeros_like(x)
    for rank in range(tp):
        layer = MoEExperts(E, H, INTER, TPGroup(rank, tp), ep)
        load_per_expert(layer, gate, up, down)
        assert layer.w13_weight.shape == (E // ep, 2 * INTER // (tp // ep), H)
        partial = layer(x, weights, ids)
        if tp > 1:
            assert not torch.allclose(partial, expected, atol=1e-3)  # really only a part
        total += partial
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tp,ep", [(1, 1), (2, 1), (2, 2), (4, 4)])
def test_routed_from_logits_equals_forward_on_select_experts(tp: int, ep: int) -> None:
    """`routed(x, logits, k, renormalize)` routes with `select_experts`' contract and runs the
    same experts; summed over ranks, the unsharded reference. `routed_hidden(x, router, ...)`
    (what the block calls) equals it on the router's logits (the CPU path: torch's matmul)."""
    gate, up, down, router = full_weights()
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(2))
    logits = x @ router.t()
    for renormalize in (False, True):
        weights, ids = select_experts(logits, TOP_K, renormalize)
        expected = experts_reference(x, torch.cat([gate, up], dim=1), down, weights, ids)
        total = torch.zeros_like(x)
        for rank in range(tp):
            layer = MoEExperts(E, H, INTER, TPGroup(rank, tp), ep)
            load_per_expert(layer, gate, up, down)
            partial = layer.routed(x, logits, TOP_K, renormalize)
            assert torch.equal(partial, layer(x, weights, ids))
            assert torch.equal(layer.routed_hidden(x, router, TOP_K, renormalize), partial)  # the block's call
            total += partial
        torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)


def test_expert_parallel_rank_maps_other_ranks_experts_to_minus_one() -> None:
    layer = MoEExperts(E, H, INTER, TPGroup(1, 2), ep_size=2)
    ids = torch.tensor([[0, 4], [7, 3], [5, 6]], dtype=torch.int32)
    assert layer._local_ids(ids).tolist() == [[-1, 0], [3, -1], [1, 2]]


@pytest.mark.parametrize("tp,ep", [(1, 1), (2, 1), (2, 2)])
def test_stacked_and_per_expert_tensors_load_the_same_weights(tp: int, ep: int) -> None:
    gate, up, down, _ = full_weights(seed=3)
    for rank in range(tp):
        per_expert, stacked = (MoEExperts(E, H, INTER, TPGroup(rank, tp), ep) for _ in range(2))
        load_per_expert(per_expert, gate, up, down)
        stacked.load_shard("w13_weight", torch.cat([gate, up], dim=1), ExpertTensor(None))
        stacked.load_shard("w2_weight", down, ExpertTensor(None))
        assert torch.equal(per_expert.w13_weight, stacked.w13_weight)
        assert torch.equal(per_expert.w2_weight, stacked.w2_weight)


def test_block_with_shared_expert_at_tp2_matches_tp1() -> None:
    """Qwen2-MoE's block: routed experts plus sigmoid-gated shared expert, each rank a partial
    sum (the all-reduce is replaced by summing the ranks' `_partial` here)."""
    moe = MoEConfig(E, TOP_K, INTER, renormalize=False, shared_intermediate=16)
    gate, up, down, router = full_weights()
    g = torch.Generator().manual_seed(5)
    shared = {n: torch.randn(*s, generator=g) * 0.2 for n, s in (("g", (16, H)), ("u", (16, H)), ("d", (H, 16)))}
    gate_w = torch.randn(1, H, generator=g)
    x = torch.randn(T, H, generator=g)

    def build(rank: int, tp: int) -> torch.nn.Module:
        block = moe_block(H, moe, TPGroup(rank, tp))
        with torch.no_grad():
            block.gate.weight.copy_(router)
            block.shared_expert_gate.weight.copy_(gate_w)
        load_per_expert(block.experts, gate, up, down)
        block.shared_expert.gate_up_proj.load_shard("weight", shared["g"], 0)
        block.shared_expert.gate_up_proj.load_shard("weight", shared["u"], 1)
        block.shared_expert.down_proj.load_shard("weight", shared["d"], None)
        return block

    with torch.no_grad():
        whole = build(0, 1)(x)
        split = build(0, 2)._partial(x) + build(1, 2)._partial(x)
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
    assert (whole - build(0, 1).experts(x, *select_experts(x @ router.t(), TOP_K, False))).abs().max() > 1e-3


@pytest.mark.parametrize(
    "experts,inter,tp,ep,match",
    [(8, 24, 2, 4, "ep_size .* must be 1 or equal tp_size"), (6, 24, 4, 4, "must divide the number of experts"),
     (8, 30, 4, 1, "must divide moe_intermediate_size")],
)  # fmt: skip
def test_bad_splits_are_refused(experts: int, inter: int, tp: int, ep: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ExpertShard.plan(experts, inter, TPGroup(0, tp), ep)


def test_server_args_check_ep_size() -> None:
    assert ServerArgs(tp_size=2, ep_size=2).ep_size == 2
    assert ServerArgs.from_kwargs(tp=4, ep=4).ep_size == 4
    with pytest.raises(ValueError, match="ep_size must be 1 or equal tp_size"):
        ServerArgs(tp_size=4, ep_size=2)
    with pytest.raises(ValueError, match="ep_size must be 1 or equal tp_size"):
        ServerArgs(ep_size=2)


def test_parallel_checks_before_any_process_starts() -> None:
    """The front's check: expert parallelism on a dense model, or experts that do not divide."""
    from transformers import LlamaConfig, MixtralConfig

    from radixlm.config.cli_args import parse_args
    from radixlm.model_loader.loader import check_tensor_parallel

    dims = dict(hidden_size=64, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    llama = LlamaConfig(**dims, architectures=["LlamaForCausalLM"])
    with pytest.raises(ValueError, match="expert parallelism applies to MoE models only"):
        check_tensor_parallel(llama, "auto", 2, 2)
    mixtral = MixtralConfig(**dims, num_local_experts=6, architectures=["MixtralForCausalLM"])
    check_tensor_parallel(mixtral, "auto", 2, 2)
    with pytest.raises(ValueError, match="must divide the number of experts"):
        check_tensor_parallel(mixtral, "auto", 4, 4)
    assert parse_args(["--tp", "2", "--ep-size", "2"]).ep_size == 2


@pytest.mark.parametrize("ep", [1, 2])
def test_rank_shards_of_a_checkpoint_reassemble_the_full_experts(tiny_model: Callable[[str], str], ep: int) -> None:
    """Each of two ranks loads its shard of the tiny Qwen2-MoE: with ep 1 half of every expert's
    intermediate rows (gate and up halves, down columns), with ep 2 four whole experts."""
    from radixlm.model_loader.loader import build_model, load_model_config

    path = tiny_model("qwen2_moe")
    config = load_model_config(path)

    def experts(tp: TPGroup, ep_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        model = build_model(config, None, path, "auto", torch.float32, torch.device("cpu"), tp=tp, ep_size=ep_size)
        layer = model.model.layers[2].mlp.experts
        return layer.w13_weight, layer.w2_weight

    w13, w2 = experts(TPGroup.single(), 1)
    ranks = [experts(TPGroup(r, 2), ep) for r in range(2)]
    if ep == 2:
        assert torch.equal(torch.cat([r[0] for r in ranks]), w13)
        assert torch.equal(torch.cat([r[1] for r in ranks]), w2)
        return
    inter = w2.shape[-1]
    halves = [r[0].split(inter // 2, dim=1) for r in ranks]  # each rank: [gate half, up half]
    assert torch.equal(torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=1), w13)
    assert torch.equal(torch.cat([r[1] for r in ranks], dim=2), w2)

"""Tensor parallelism on CPU (gloo, two ranks): greedy tokens equal HF's (and so tp 1's), KV heads
split or replicated, weights sharded exactly, a killed rank fails the engine within seconds.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from helpers.tiny_models import hf_greedy, load_hf_model, make_tiny_tokenizer

import radixlm
from radixlm.config.server_args import ServerArgs
from radixlm.distributed.group import TPGroup
from radixlm.distributed.setup import free_port, plan_local_ranks
from radixlm.layers.linear import AttentionHeads
from radixlm.model_loader.loader import build_model, load_model_config

NEW_TOKENS = 16
GREEDY = {"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}
KILL_DEADLINE_S = 10.0


def random_prompts(count: int, lo: int, hi: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 400) for _ in range(rng.randrange(lo, hi))] for _ in range(count)]


def make_qwen2_kv3(tmp: Path) -> str:
    """Qwen2 with 6 query heads and 3 KV heads: 3 does not divide by tp 2 (KV heads replicated)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(make_tiny_tokenizer(tmp / "tok"))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=96,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=3,
        max_position_embeddings=512,
        initializer_range=0.15,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    out = str(tmp / "tiny_qwen2_kv3")
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize(
    "heads,kv,tp",
    [(32, 8, 2), (32, 8, 4), (4, 2, 2), (4, 1, 2), (6, 3, 2), (12, 3, 4), (8, 8, 2), (6, 2, 3), (8, 2, 8)],
)
def test_attention_heads_cover_every_query_head_with_its_kv_head(heads: int, kv: int, tp: int) -> None:
    group = heads // kv
    starts = []
    for rank in range(tp):
        layout = AttentionHeads.split(heads, kv, TPGroup(rank, tp))
        local_group = layout.num_heads // layout.num_kv_heads
        assert layout.num_heads * tp == heads and layout.num_heads % layout.num_kv_heads == 0
        for j in range(layout.num_heads):
            assert layout.kv_ids[j // local_group] == (layout.q_start + j) // group
        starts.append(layout.q_start)
        if kv % tp == 0:
            assert layout.num_kv_heads == kv // tp  # split, nothing duplicated
        elif tp % kv == 0:
            assert layout.num_kv_heads == 1  # replicated: one KV head per rank
    assert starts == [r * heads // tp for r in range(tp)]
    assert AttentionHeads.split(6, 3, TPGroup(0, 2)).kv_ids == (0, 0, 1)


def test_attention_heads_refuse_an_uneven_split() -> None:
    with pytest.raises(ValueError, match="tp_size 4 must divide num_attention_heads"):
        AttentionHeads.split(6, 3, TPGroup(0, 4))


class _NoBackend:
    """Model construction only stores the backend; loading never calls it."""


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_rank_shards_reassemble_the_full_weights(tiny_model: Callable[[str], str], arch: str) -> None:
    """Each rank reads only its shard (lazy safetensors slices); put back together they are tp 1's weights."""
    path = tiny_model(arch)
    config = load_model_config(path)

    def build(tp: TPGroup) -> dict[str, torch.Tensor]:
        model = build_model(config, _NoBackend(), path, "auto", torch.float32, torch.device("cpu"), tp=tp)
        return dict(model.named_parameters())

    full, ranks = build(TPGroup.single()), [build(TPGroup(r, 2)) for r in range(2)]
    d, q, kv, inter = 16, 4 * 16, 2 * 16, 128
    layer = "model.layers.1."
    qkv = [r[layer + "self_attn.qkv_proj.weight"] for r in ranks]
    assert torch.equal(torch.cat([w[: q // 2] for w in qkv]), full[layer + "self_attn.qkv_proj.weight"][:q])
    assert torch.equal(
        torch.cat([w[q // 2 : q // 2 + d] for w in qkv]), full[layer + "self_attn.qkv_proj.weight"][q : q + kv]
    )
    gate_up = [r[layer + "mlp.gate_up_proj.weight"] for r in ranks]
    assert torch.equal(torch.cat([w[: inter // 2] for w in gate_up]), full[layer + "mlp.gate_up_proj.weight"][:inter])
    for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        assert torch.equal(torch.cat([r[layer + name] for r in ranks], dim=1), full[layer + name])
    vocab = config.vocab_size
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(torch.cat([r[name] for r in ranks])[:vocab], full[name])
    assert torch.equal(ranks[1][layer + "input_layernorm.weight"], full[layer + "input_layernorm.weight"])


def test_unsplittable_models_are_refused_before_any_process_starts(tiny_model: Callable[[str], str]) -> None:
    path = tiny_model("llama")  # 4 query heads, 2 KV heads
    start = time.monotonic()
    with pytest.raises(ValueError, match="tp_size=1 only"):
        radixlm.Engine(path, tp=2, model_impl="transformers", log_level="warning")
    with pytest.raises(ValueError, match="tp_size 3 must divide num_attention_heads"):
        radixlm.Engine(path, tp=3, log_level="warning")
    assert time.monotonic() - start < 5  # no rank was started and waited for
    with pytest.raises(ValueError, match="tp_size=1 only"):  # the same check where the model is built
        build_model(
            load_model_config(path),
            _NoBackend(),
            path,
            "auto",
            torch.float32,
            torch.device("cpu"),
            model_impl="transformers",
            tp=TPGroup(0, 2),
        )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tp_size": 0}, "tp_size"),
        ({"tp_size": 3, "nnodes": 2, "dist_init_addr": "h:1"}, "multiple of nnodes"),
        ({"tp_size": 2, "nnodes": 2}, "dist_init_addr"),
        ({"tp_size": 2, "dist_init_addr": "nohost"}, "host:port"),
        ({"tp_size": 2, "node_rank": 1}, "node_rank"),
        ({"tp_size": 2, "dist_timeout": 0}, "dist_timeout"),
    ],
)
def test_server_args_check_tensor_parallel_fields(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ServerArgs(**kwargs)
    assert ServerArgs.from_kwargs(tp=2, nnodes=2, node_rank=1, dist_init_addr="10.0.0.1:5000").tp_size == 2


def test_two_node_tp2_llama_matches_hf_through_cache_hits_and_chunks(tiny_model: Callable[[str], str]) -> None:
    """--nnodes 2 on one machine: rank 1 runs in `python -m radixlm.distributed.launch --node-rank 1`.
    4 KV heads / 2 ranks: split. A shared prefix (served from the radix tree, rows rewritten by
    rank 0), chunked prefill and batches whose inputs need a second broadcast must not change
    any token. A clean shutdown stops both nodes with exit code 0."""
    path = tiny_model("llama")
    hf = load_hf_model(path)
    shared = random_prompts(1, 200, 201, seed=3)[0]
    first = random_prompts(9, 150, 220, seed=1)  # 10 decoding rows x ~230 slots: a second broadcast
    second = [shared + [7, 8, 9], shared + [11]] + random_prompts(2, 3, 20, seed=2)
    group = {
        "tp_size": 2,
        "nnodes": 2,
        "dist_init_addr": f"127.0.0.1:{free_port()}",
        "max_total_tokens": 4096,
        "dtype": "float32",
        "log_level": "warning",
    }
    flags = [arg for key, value in group.items() for arg in (f"--{key.replace('_', '-')}", str(value))]
    node1 = subprocess.Popen(
        [sys.executable, "-m", "radixlm.distributed.launch", "--model-path", path, *flags, "--node-rank", "1"]
    )
    try:
        with radixlm.Engine(path, node_rank=0, chunked_prefill_size=128, **group) as engine:
            out1 = engine.generate(input_ids=first + [shared], sampling_params=GREEDY)
            out2 = engine.generate(input_ids=second, sampling_params=GREEDY)
            engine.check_no_leak()
        assert [p.exitcode for p in engine.client.processes] == [0]
        assert node1.wait(30) == 0
    finally:
        node1.kill()
    assert out2[0]["meta_info"]["cached_tokens"] >= 200
    for prompt, out in zip(first + [shared] + second, out1 + out2):
        assert out["output_ids"] == hf_greedy(hf, prompt, NEW_TOKENS)


def test_tp2_replicated_kv_heads_match_hf_and_a_killed_rank_fails_fast(tmp_path: Path) -> None:
    """3 KV heads / 2 ranks: each rank keeps the KV heads its query heads read. Then rank 1 is
    killed: the next request fails (no hang) within KILL_DEADLINE_S and rank 0 exits too."""
    path = make_qwen2_kv3(tmp_path)
    hf = load_hf_model(path)
    prompts = random_prompts(6, 3, 40, seed=4)
    with radixlm.Engine(path, tp=2, max_total_tokens=2048, dtype="float32", log_level="warning") as engine:
        outs = engine.generate(input_ids=prompts, sampling_params=GREEDY)
        engine.check_no_leak()
        for prompt, out in zip(prompts, outs):
            assert out["output_ids"] == hf_greedy(hf, prompt, NEW_TOKENS)
        leader, follower = engine.client.processes
        follower.kill()
        start = time.monotonic()
        with pytest.raises(Exception, match="exited|crashed|closed"):
            engine.generate(input_ids=prompts[0], sampling_params={**GREEDY, "max_new_tokens": 200})
        assert time.monotonic() - start < KILL_DEADLINE_S
        leader.join(KILL_DEADLINE_S)
        assert not leader.is_alive()


def test_rank_plan_per_node_and_replica() -> None:
    """Node 1 of 2 holds ranks 2 and 3 of tp 4; data-parallel replica d rendezvous on port + d."""
    args = ServerArgs(
        tp_size=4, nnodes=2, node_rank=1, dist_init_addr="10.0.0.1:5000", dp_size=2, dp_rank=1, dist_timeout=30
    )
    plan = plan_local_ranks(args)
    assert [(r.rank, r.local_rank, r.world_size) for r in plan] == [(2, 0, 4), (3, 1, 4)]
    assert {(r.host, r.port, r.timeout_s) for r in plan} == {("10.0.0.1", 5001, 30.0)}
    assert plan_local_ranks(ServerArgs()) == []
    one_node = plan_local_ranks(ServerArgs(tp_size=2))
    assert [r.rank for r in one_node] == [0, 1] and one_node[0].host == "127.0.0.1"

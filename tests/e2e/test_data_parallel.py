"""Data parallelism: the router alone (pure Python), the DataParallelClient over fake replicas,
and `dp_size=2` end to end on a tiny random Llama (100 concurrent requests, greedy outputs equal
to one replica's, both replicas used, no KV leak on either)."""

from __future__ import annotations

import random
import subprocess
import sys
from typing import Any, Callable, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import radixlm
from radixlm.config.server_args import ServerArgs
from radixlm.entrypoints.launch import warm_up
from radixlm.ipc.dp_client import DataParallelClient, ReplicaProcesses, replica_args
from radixlm.ipc.dp_router import ApproxPrefixTree, CacheAwarePolicy, CacheAwareRouter, RoundRobinRouter
from radixlm.ipc.messages import ReqOutput, TokenizedGenerateReq
from radixlm.ipc.runtime_client import SchedulerDied
from radixlm.sampling.sampling_params import SamplingParams

pytestmark = pytest.mark.timeout(180)


# -- router ----------------------------------------------------------------------------------


def test_round_robin_cycles_and_skips_dead_replicas() -> None:
    router = RoundRobinRouter(3)
    loads = {0: 0, 1: 0, 2: 0}
    assert [router.select([1], loads) for _ in range(4)] == [0, 1, 2, 0]
    assert [router.select([1], {0: 0, 2: 0}) for _ in range(3)] == [2, 0, 2]
    assert router.routed == [3, 1, 3]


def test_cache_aware_keeps_a_prefix_on_its_replica_and_spreads_new_ones() -> None:
    router = CacheAwareRouter([1000, 1000])
    system_a, system_b = list(range(100, 140)), list(range(200, 240))
    first_a = router.select(system_a + [1, 2], {0: 0, 1: 0})
    first_b = router.select(system_b + [3], {0: 0, 1: 0})
    assert first_a != first_b  # equal loads: the new prefix goes to the replica with the smaller tree
    for q in range(5):
        assert router.select(system_a + [q], {0: 3, 1: 3}) == first_a
        assert router.select(system_b + [q], {0: 3, 1: 3}) == first_b
    assert router.decisions["cache"] == 10


def test_cache_aware_short_match_goes_to_least_loaded() -> None:
    router = CacheAwareRouter([1000, 1000], CacheAwarePolicy(cache_threshold=0.5))
    router.select(list(range(10)), {0: 0, 1: 5})  # replica 0 now holds 0..9
    # Matches 3 of 10 tokens on replica 0 (< 50%): the less loaded replica 1 wins.
    assert router.select([0, 1, 2] + list(range(50, 57)), {0: 4, 1: 1}) == 1
    assert router.decisions["least_loaded"] == 2


def test_cache_aware_balances_when_loads_diverge() -> None:
    router = CacheAwareRouter([1000, 1000], CacheAwarePolicy(balance_abs_threshold=4, balance_rel_threshold=1.5))
    prompt = list(range(20))
    assert router.select(prompt, {0: 0, 1: 0}) == 0
    assert router.select(prompt, {0: 4, 1: 0}) == 0  # diff 4 is not above the threshold: cache wins
    assert router.select(prompt, {0: 5, 1: 0}) == 1  # diverged: least loaded, despite the match
    assert router.decisions["balance"] == 1


def test_cache_aware_reset_forgets_a_replica() -> None:
    router = CacheAwareRouter([1000, 1000])
    prompt = list(range(30))
    chosen = router.select(prompt, {0: 0, 1: 0})
    router.reset(chosen)
    assert router.trees[chosen].size() == 0
    assert router.select(prompt, {0: 0, 1: 0}) == chosen  # matched nowhere: least loaded, smallest tree
    assert router.decisions["cache"] == 0


def test_approx_tree_stays_within_capacity_and_keeps_recent_prompts() -> None:
    tree = ApproxPrefixTree(capacity=200)
    rng = random.Random(0)
    prompts = [[rng.randrange(1000) for _ in range(30)] for _ in range(40)]
    for p in prompts:
        tree.insert(p)
        assert tree.size() <= 200
    assert tree.match(prompts[-1]) == 30
    assert tree.match(prompts[0]) < 30  # the oldest prompt was evicted


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=12), min_size=1, max_size=25), st.data())
def test_approx_tree_match_is_the_longest_common_prefix(prompts: list[list[int]], data: Any) -> None:
    """Without eviction, match() equals a naive longest common prefix with any inserted prompt."""
    tree = ApproxPrefixTree(capacity=10_000)
    for p in prompts:
        tree.insert(p)
    query = data.draw(st.lists(st.integers(0, 5), max_size=12))
    naive = max(_common_prefix(query, p) for p in prompts)
    assert tree.match(query) == naive


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, 3), min_size=1, max_size=20),
            st.dictionaries(st.integers(0, 2), st.integers(0, 50), min_size=1),
        ),
        max_size=30,
    )
)
def test_cache_aware_always_picks_a_live_replica(steps: list[tuple[list[int], dict[int, int]]]) -> None:
    router = CacheAwareRouter([50, 50, 50])
    for prompt, loads in steps:
        assert router.select(prompt, loads) in loads
        assert all(t.size() <= 50 for t in router.trees)
    assert sum(router.routed) == len(steps)


def test_router_imports_no_torch() -> None:
    code = "import sys, radixlm.ipc.dp_router; assert 'torch' not in sys.modules, 'router pulled in torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# -- configuration -----------------------------------------------------------------------------


def test_server_args_data_parallel_fields() -> None:
    args = ServerArgs.from_kwargs(dp=2, load_balance_method="round_robin", load_format="dummy")
    assert args.dp_size == 2 and args.dp_rank == 0
    with pytest.raises(ValueError, match="load_balance_method"):
        ServerArgs(load_balance_method="random")
    with pytest.raises(ValueError, match="dp_size"):
        ServerArgs(dp_size=0)
    with pytest.raises(ValueError, match="dp_rank"):
        ServerArgs(dp_rank=-1)


def test_replica_args_share_the_cores() -> None:
    args = ServerArgs(dp_size=2)
    first, second = replica_args(args, 0, cores=2), replica_args(args, 1, cores=8)
    assert (first.dp_size, first.dp_rank, first.num_threads) == (1, 0, 1)
    assert (second.dp_rank, second.num_threads) == (1, 4)
    assert replica_args(ServerArgs(dp_size=2, num_threads=3), 1, cores=2).num_threads == 3
    assert replica_args(ServerArgs(dp_size=2, tp_size=2), 0, cores=8).num_threads == 2  # per tp rank


# -- DataParallelClient over fake replicas ------------------------------------------------------


class FakeProcess:
    def __init__(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive

    def kill(self) -> None:
        self.alive = False


class FakeReplica:
    """Records what the DP client asks of one replica; outputs are pushed by the test."""

    def __init__(self, args: ServerArgs, tokenizer: Any, eos_ids: set[int], model_config: Any) -> None:
        self.args = args
        self.info = {
            "max_total_num_tokens": 100 * (args.dp_rank + 1),
            "context_length": 512,
            "vocab_size": 64,
            "available_kv_tokens": 90,
            "num_running_reqs": args.dp_rank,
        }
        self.process = FakeProcess()
        self.callbacks: dict[str, Callable[[ReqOutput], None]] = {}
        self.aborted: list[str] = []
        self.dead: Optional[str] = None
        self.leak: Optional[str] = None
        self.stopped = False

    def submit(self, req: TokenizedGenerateReq, callback: Callable[[ReqOutput], None]) -> None:
        self.callbacks[req.rid] = callback

    def finish(self, rid: str) -> None:
        self.callbacks.pop(rid)(ReqOutput(rid, [5], "x", {"type": "length"}))

    def abort(self, rid: str) -> None:
        self.aborted.append(rid)

    def rpc(self, method: str, timeout: float = 60.0) -> Any:
        if method == "check_leak" and self.leak:
            raise RuntimeError(self.leak)
        return dict(self.info) if method == "get_info" else True

    def shutdown(self, timeout: float = 10.0) -> None:
        self.stopped = True


def _req(rid: str, ids: list[int], group: Optional[str] = None) -> TokenizedGenerateReq:
    return TokenizedGenerateReq(rid, ids, SamplingParams(), prefix_group=group)


def _fake_client(method: str = "round_robin", dp: int = 2) -> DataParallelClient:
    args = ServerArgs(dp_size=dp, load_balance_method=method)
    return DataParallelClient(args, None, {1}, None, factory=FakeReplica)


def test_dp_client_tracks_ownership_and_load() -> None:
    client = _fake_client()
    r0, r1 = client.replicas
    assert [r.args.dp_rank for r in client.replicas] == [0, 1]
    assert client.info["max_total_num_tokens"] == 100  # the smallest replica binds one request
    got: list[ReqOutput] = []
    client.submit(_req("a", [1, 2]), got.append)
    client.submit(_req("b", [3, 4]), got.append)
    assert set(r0.callbacks) == {"a"} and set(r1.callbacks) == {"b"}
    assert client.loads == [1, 1] and client.has_request("a")
    with pytest.raises(ValueError, match="already in use"):
        client.submit(_req("a", [9]), got.append)
    client.abort("b")
    assert r1.aborted == ["b"] and r0.aborted == []
    r0.finish("a")
    assert not client.has_request("a") and client.loads == [0, 1] and got[0].rid == "a"
    client.abort("a")  # finished: nothing is sent
    assert r0.aborted == []


def test_dp_client_keeps_siblings_together() -> None:
    client = _fake_client("round_robin")
    for j in range(3):
        client.submit(_req(f"g-{j}", [1, 2, 3], group="g"), lambda out: None)
    assert len(client.replicas[0].callbacks) == 3 and client.loads == [3, 0]
    for j in range(3):
        client.replicas[0].finish(f"g-{j}")
    client.submit(_req("g2-0", [1, 2, 3], group="g2"), lambda out: None)
    assert client.loads == [0, 1]  # round robin resumes once the group is done


def test_dp_client_routes_around_a_dead_replica() -> None:
    client = _fake_client("round_robin")
    client.replicas[0].dead = "scheduler crashed"
    assert client.dead == "replica 0: scheduler crashed"
    for i in range(3):
        client.submit(_req(f"r{i}", [i]), lambda out: None)
    assert client.loads == [0, 3]
    client.replicas[1].dead = "gone"
    with pytest.raises(SchedulerDied):
        client.submit(_req("x", [1]), lambda out: None)
    assert not client.has_request("x")


def test_dp_client_rpc_fan_out() -> None:
    client = _fake_client("cache_aware")
    client.submit(_req("a", list(range(10))), lambda out: None)
    info = client.rpc("get_info")
    assert info["dp_size"] == 2 and info["max_total_num_tokens"] == 300 and info["num_running_reqs"] == 1
    assert info["context_length"] == 512 and len(info["replicas"]) == 2
    assert info["router"]["routed"] == [1, 0] and info["router"]["in_flight"] == [1, 0]
    assert client.router.trees[0].size() == 10
    assert client.rpc("flush_cache") is True
    assert client.router.trees[0].size() == 0  # flushed replicas are forgotten by the router
    client.replicas[1].leak = "3 slots leaked"
    with pytest.raises(RuntimeError, match="replica 1: 3 slots leaked"):
        client.rpc("check_leak")


def test_dp_client_process_view_and_shutdown() -> None:
    client = _fake_client(dp=3)
    assert isinstance(client.process, ReplicaProcesses) and len(client.processes) == 3
    client.processes[0].alive = False
    assert client.process.is_alive()  # survivors still count: a kill must reach them
    client.process.kill()
    assert not client.process.is_alive()
    client.shutdown()
    assert all(r.stopped for r in client.replicas)


def test_dp_client_start_failure_stops_started_replicas() -> None:
    started: list[FakeReplica] = []

    def factory(args: ServerArgs, *rest: Any) -> FakeReplica:
        if args.dp_rank == 1:
            raise RuntimeError("out of memory")
        started.append(FakeReplica(args, *rest))
        return started[-1]

    with pytest.raises(RuntimeError, match="replica 1 failed to start: out of memory"):
        DataParallelClient(ServerArgs(dp_size=3), None, {1}, None, factory=factory)
    assert len(started) == 2 and all(r.stopped for r in started)


# -- end to end: dp 2 vs dp 1 on a tiny model -----------------------------------------------------


def _prompts(vocab: int, count: int) -> list[list[int]]:
    """`count` prompts in 10 groups sharing a 24-token prefix, each with its own suffix."""
    rng = random.Random(7)
    systems = [[rng.randrange(3, vocab) for _ in range(24)] for _ in range(10)]
    return [systems[i % 10] + [rng.randrange(3, vocab) for _ in range(rng.randint(2, 12))] for i in range(count)]


def test_dp2_serves_100_concurrent_requests_like_dp1(tiny_llama_dir: str, llama_engine: radixlm.Engine) -> None:
    params = {"temperature": 0.0, "max_new_tokens": 6, "ignore_eos": True}
    common = dict(max_total_tokens=4096, log_level="warning", num_threads=1, dtype="float32")
    prompts = _prompts(llama_engine.vocab_size, 100)
    expected = [r["output_ids"] for r in llama_engine.generate(input_ids=prompts, sampling_params=params)]
    with radixlm.Engine(tiny_llama_dir, dp_size=2, **common) as engine:
        warm_up(engine, 2)  # what `radixlm serve` does first: one request on each replica
        assert engine.get_server_info()["router"]["routed"] == [1, 1]
        results = engine.generate(input_ids=prompts, sampling_params=params)  # all 100 submitted at once
        assert [r["output_ids"] for r in results] == expected
        info = engine.get_server_info()
        assert info["dp_size"] == 2 and sum(info["router"]["routed"]) == 102
        assert min(info["router"]["routed"]) > 0, info["router"]  # both replicas served requests
        assert all(r["num_forward_steps"] > 0 for r in info["replicas"])
        assert info["router"]["in_flight"] == [0, 0]
        assert sum(r["meta_info"]["cached_tokens"] for r in results) > 0
        engine.check_no_leak()
        for replica in engine.client.replicas:  # and each replica on its own
            assert replica.rpc("check_leak") is True
        processes = engine.client.processes
    assert not any(p.is_alive() for p in processes)

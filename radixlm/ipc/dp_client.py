"""`DataParallelClient`: `dp_size` engine replicas behind the RuntimeClient interface.

Each replica is a full RuntimeClient (its own scheduler process, model, KV pool and radix
cache) started with `dp_rank = i`. The front routes every new request to one replica (see
`radixlm.ipc.dp_router`) and keeps it there: its outputs, its abort and its KV live on that replica.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence

from radixlm.config.server_args import ServerArgs
from radixlm.ipc.dp_router import Router, make_router
from radixlm.ipc.messages import ReqOutput, TokenizedGenerateReq
from radixlm.ipc.runtime_client import RuntimeClient, SchedulerDied
from radixlm.speculative.stats import SPEC_COUNTERS, spec_ratios

logger = logging.getLogger(__name__)

# get_info counters that add up over replicas; every other key is taken from replica 0.
SUMMED_INFO = (
    "max_total_num_tokens",
    "available_kv_tokens",
    "cached_tokens",
    "num_running_reqs",
    "num_waiting_reqs",
    "num_retracted_reqs",
    "num_forward_steps",
    "num_grammar_pending_reqs",
    *SPEC_COUNTERS,
)
# Start-up info limits that bind a single request: the smallest replica's value applies.
PER_REQUEST_LIMITS = ("max_total_num_tokens", "context_length")

ClientFactory = Callable[..., Any]  # (args, tokenizer, eos_ids, model_config) -> a RuntimeClient-like object


def replica_args(args: ServerArgs, rank: int, cores: Optional[int] = None) -> ServerArgs:
    """The config of replica `rank`: dp_size 1, its dp_rank, and, unless num_threads is set,
    an equal share of the CPU cores for each of its tp_size ranks, so that the dp_size * tp_size
    processes do not oversubscribe the cores (only CPU runs read num_threads)."""
    cores = cores or _available_cores()
    threads = args.num_threads or max(1, cores // (args.dp_size * args.tp_size))
    return dataclasses.replace(args, dp_size=1, dp_rank=rank, num_threads=threads)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ReplicaProcesses:
    """Every process of every replica (schedulers and tensor-parallel followers) seen as one
    `process`: alive while any is alive, so a kill reaches every survivor; health is judged
    by `DataParallelClient.dead`."""

    def __init__(self, replicas: Sequence[Any]) -> None:
        self._replicas = list(replicas)

    @property
    def processes(self) -> list[Any]:
        """Read afresh each time: a replica may add processes to its own list after start-up."""
        return [p for r in self._replicas for p in getattr(r, "processes", [r.process])]

    def is_alive(self) -> bool:
        return any(p.is_alive() for p in self.processes)

    def kill(self) -> None:
        for p in self.processes:
            if p.is_alive():
                p.kill()

    def join(self, timeout: Optional[float] = None) -> None:
        for p in self.processes:
            p.join(timeout)


def start_replicas(
    args: ServerArgs, tokenizer: Any, eos_ids: set[int], model_config: Any, factory: ClientFactory = RuntimeClient
) -> list[Any]:
    """Start `args.dp_size` replicas in parallel; if any fails, stop the others and raise."""
    n = args.dp_size
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="radixlm-dp-start") as pool:
        futures = [pool.submit(factory, replica_args(args, i), tokenizer, eos_ids, model_config) for i in range(n)]
    started, errors = [], []
    for i, fut in enumerate(futures):
        exc = fut.exception()
        if exc is None:
            started.append(fut.result())
        else:
            errors.append((i, exc))
    if errors:
        for client in started:
            client.shutdown()
        rank, exc = errors[0]
        raise RuntimeError(f"data-parallel replica {rank} failed to start: {exc}") from exc
    return started


class DataParallelClient:
    """RuntimeClient's interface (`submit`, `has_request`, `abort`, `rpc`, `shutdown`, `info`,
    `dead`, `process`) over `dp_size` replicas. Thread-safe.

    Invariants: a request id is owned by at most one replica from submit until its final output
    (finish_reason set) is delivered, and `loads[i]` counts the requests replica i owns. `info`
    holds start-up facts binding one request (the smallest replica's KV pool and context);
    `rpc("get_info")` sums counters over replicas and adds `dp_size`, `replicas` and `router`.
    New requests go to live replicas only; `dead` is set as soon as any replica has died.
    """

    def __init__(
        self,
        args: ServerArgs,
        tokenizer: Any,
        eos_ids: set[int],
        model_config: Any = None,
        factory: ClientFactory = RuntimeClient,
        router: Optional[Router] = None,
    ) -> None:
        self.replicas = start_replicas(args, tokenizer, eos_ids, model_config, factory)
        infos = [r.info for r in self.replicas]
        self.info = {**infos[0], **{k: min(i[k] for i in infos) for k in PER_REQUEST_LIMITS if k in infos[0]}}
        self.router = router or make_router(args.load_balance_method, [i["max_total_num_tokens"] for i in infos])
        self.process = ReplicaProcesses(self.replicas)
        self.loads = [0] * len(self.replicas)
        self._lock = threading.Lock()
        self._owner: dict[str, int] = {}
        self._groups: dict[str, list[int]] = {}  # prefix_group -> [replica, requests in flight]

    @property
    def processes(self) -> list[Any]:
        return self.process.processes

    @property
    def dead(self) -> Optional[str]:
        reasons = [f"replica {i}: {r.dead}" for i, r in enumerate(self.replicas) if r.dead]
        return "; ".join(reasons) or None

    # -- requests -------------------------------------------------------------------
    def submit(self, req: TokenizedGenerateReq, callback: Callable[[ReqOutput], None]) -> None:
        """Route `req` to a replica. Raises ValueError if `req.rid` is in flight on any replica,
        SchedulerDied if no replica is alive. Siblings of one n>1 call (same `prefix_group`)
        share a replica so their prompt is prefilled once."""
        with self._lock:
            if req.rid in self._owner:
                raise ValueError(f"request id {req.rid!r} is already in use by a running request")
            replica = self._route(req)
            self._claim(req, replica)
        try:
            # Outside our lock: a blocked pipe send must not stall callbacks, which take it.
            self.replicas[replica].submit(req, self._tracked(req, replica, callback))
        except BaseException:
            self._release(req, replica)
            raise

    def _route(self, req: TokenizedGenerateReq) -> int:
        live = {i: self.loads[i] for i, r in enumerate(self.replicas) if not r.dead}
        if not live:
            raise SchedulerDied(self.dead or "no replica is alive")
        group = self._groups.get(req.prefix_group) if req.prefix_group is not None else None
        if group is not None and group[0] in live:
            return group[0]
        return self.router.select(req.input_ids, live)

    def _claim(self, req: TokenizedGenerateReq, replica: int) -> None:
        self._owner[req.rid] = replica
        self.loads[replica] += 1
        if req.prefix_group is not None:
            entry = self._groups.get(req.prefix_group)
            if entry is None or entry[0] != replica:  # a new group, or its replica died
                entry = self._groups[req.prefix_group] = [replica, 0]
            entry[1] += 1

    def _release(self, req: TokenizedGenerateReq, replica: int) -> None:
        with self._lock:
            if self._owner.get(req.rid) != replica:
                return
            del self._owner[req.rid]
            self.loads[replica] -= 1
            entry = self._groups.get(req.prefix_group) if req.prefix_group is not None else None
            if entry is not None and entry[0] == replica:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._groups[req.prefix_group]

    def _tracked(
        self, req: TokenizedGenerateReq, replica: int, callback: Callable[[ReqOutput], None]
    ) -> Callable[[ReqOutput], None]:
        """The callback given to the replica: releases the request before the caller sees its
        final output, so the caller may reuse the rid at once."""

        def deliver(out: ReqOutput) -> None:
            if out.finish_reason is not None:
                self._release(req, replica)
            callback(out)

        return deliver

    def has_request(self, rid: str) -> bool:
        with self._lock:
            return rid in self._owner

    def abort(self, rid: str) -> None:
        with self._lock:
            replica = self._owner.get(rid)
        if replica is not None:
            self.replicas[replica].abort(rid)

    # -- control ----------------------------------------------------------------------
    def rpc(self, method: str, timeout: float = 60.0, **kwargs: Any) -> Any:
        """Call `method` (with `kwargs`) on every replica. flush_cache: True if every replica flushed (the
        router forgets the flushed ones); check_leak: True or the first replica's error;
        get_info: aggregated; anything else: the list of answers."""
        results = self._fan_out(method, timeout, kwargs)
        if method == "flush_cache":
            with self._lock:
                for i, ok in enumerate(results):
                    if ok:
                        self.router.reset(i)
            return all(results)
        if method == "check_leak":
            return all(results)
        if method == "get_info":
            with self._lock:
                routing = {**self.router.stats(), "in_flight": list(self.loads)}
            return aggregate_info(results, routing)
        return results

    def _fan_out(self, method: str, timeout: float, kwargs: Optional[dict] = None) -> list[Any]:
        """Ask every replica; all are asked even if one fails, then the first failure is raised
        (same exception type, message prefixed with the replica)."""
        results, errors = [], []
        for i, replica in enumerate(self.replicas):
            try:
                results.append(replica.rpc(method, timeout=timeout, **(kwargs or {})))
            except (RuntimeError, TimeoutError, OSError) as exc:
                errors.append((i, exc))
        if errors:
            rank, exc = errors[0]
            raise type(exc)(f"replica {rank}: {exc}") from exc
        return results

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every replica's process; never leaves one running."""
        with ThreadPoolExecutor(max_workers=len(self.replicas), thread_name_prefix="radixlm-dp-stop") as pool:
            list(pool.map(lambda r: r.shutdown(timeout), self.replicas))


def aggregate_info(infos: Sequence[dict], routing: dict) -> dict:
    """One get_info answer for the whole group: counters summed, the rest from replica 0,
    plus `dp_size`, each replica's own answer and the router's counters."""
    out = dict(infos[0])
    for key in SUMMED_INFO:
        if key in out:
            out[key] = sum(info.get(key, 0) for info in infos)
    if "spec_verify_steps" in out:
        out.update(spec_ratios(out))
    out.update(dp_size=len(infos), replicas=list(infos), router=routing)
    return out

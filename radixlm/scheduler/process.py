"""Entry point of the scheduler process: build the runtime, then loop until told to stop."""

from __future__ import annotations

import gc
import logging
import traceback
from multiprocessing.connection import Connection
from typing import Any, Optional

from radixlm.config.server_args import ServerArgs
from radixlm.constrained.router import GrammarRouter
from radixlm.constrained.structured import build_structured_output
from radixlm.distributed.setup import DistInit, check_p2p, init_tp_group, rank_device, ranks_per_node
from radixlm.executor.cpu_process import keep_triton_out
from radixlm.executor.model_runner import LeaderRunner, ModelRunner
from radixlm.ipc.messages import SchedulerCrashed, SchedulerFailed, SchedulerReady, SchedulerStartup
from radixlm.mem_cache.cache_manager import KVCacheManager
from radixlm.mem_cache.kv_pool import SlotAllocator
from radixlm.mem_cache.radix_cache import RadixCache
from radixlm.model_loader.pooling_config import read_pooling_config
from radixlm.scheduler.grammar_queue import GrammarManager
from radixlm.scheduler.loop import run_loop
from radixlm.scheduler.output import OutputBuilder
from radixlm.scheduler.pooler import EmbeddingPooler
from radixlm.scheduler.scheduler import Scheduler
from radixlm.scheduler.text_tracker import TextTracker
from radixlm.scheduler.token_sampler import TokenSampler
from radixlm.scheduler.watchdog import Watchdog
from radixlm.speculative.setup import build_speculative


def build_scheduler(
    args: ServerArgs, tokenizer: Any, eos_ids: set[int], model_config: Any = None, dist_init: Optional[DistInit] = None
) -> Scheduler:
    """Assemble runner, KV cache manager, sampler, text tracker and output builder from the config. With `dist_init`
    (tensor parallelism) this is rank 0: its runner mirrors every batch to the follower ranks."""
    device = rank_device(args, 0)
    tp = init_tp_group(dist_init, device)
    if args.enable_p2p_check and device is not None:
        check_p2p(0, ranks_per_node(args), device)
    runner_cls = LeaderRunner if tp.size > 1 else ModelRunner
    runner = runner_cls(args, model_config, tp, device)
    max_running = runner.max_running
    allocator = SlotAllocator(runner.pool.size, args.page_size)
    req_pool = runner.req_to_token_pool
    tree = RadixCache(page_size=args.page_size, disable=args.disable_radix_cache)
    cache = KVCacheManager(allocator, req_pool, tree)
    structured = build_structured_output(
        tokenizer, runner.vocab_size, eos_ids, not args.disable_jump_forward, runner.device
    )
    text = TextTracker(tokenizer, eos_ids, runner.context_len)
    sampler = _sampler(args, text, structured, runner)
    spec, sampler = build_speculative(args, runner, cache, sampler)
    grammars = GrammarManager(
        GrammarRouter(args.grammar_backend, tokenizer, runner.vocab_size, eos_ids), runner.vocab_size
    )
    return Scheduler(
        runner,
        cache,
        text,
        sampler,
        OutputBuilder(text),
        max_running,
        args.max_prefill_tokens,
        args.chunked_prefill_size,
        args.schedule_policy,
        grammars,
        overlap=not args.disable_overlap_schedule and spec is None,
        full_prefill=isinstance(sampler, EmbeddingPooler) and sampler.pooling.needs_every_token,
        spec=spec,
    )


def _sampler(args: ServerArgs, text: TextTracker, structured: Any, runner: ModelRunner) -> Any:
    """The token sampler, or with --is-embedding the pooler of the model's pooling config."""
    if args.is_embedding:
        return EmbeddingPooler(read_pooling_config(args.model_path, runner.config), structured)
    return TokenSampler(text, structured, runner.vocab_size, text.eos_ids, runner.device)


def freeze_startup_objects() -> None:
    """Move everything built so far (model, tokenizer, imported modules) out of the garbage
    collector's reach: full collections would otherwise rescan those millions of objects during
    serving, on the scheduler's critical path (`benchmarks/scheduler_host_time.py` measures the
    host time per step)."""
    gc.collect()
    gc.freeze()


def run_scheduler_process(
    args: ServerArgs,
    recv_conn: Connection,
    send_conn: Connection,
    dist_init: Optional[DistInit] = None,
) -> None:
    """The scheduler process's target. It first reads a SchedulerStartup on `recv_conn` (returns
    if the front is gone). Its first message on `send_conn` is SchedulerReady or
    SchedulerFailed (then it returns); after SchedulerReady it streams BatchOutput / RpcOutput
    until told to shut down, and sends SchedulerCrashed before re-raising if the loop fails."""
    logging.basicConfig(level=args.log_level.upper(), format="[radixlm scheduler] %(message)s")
    keep_triton_out(args.device)
    try:
        startup: SchedulerStartup = recv_conn.recv()
    except (EOFError, OSError):
        return
    try:
        scheduler = build_scheduler(args, startup.tokenizer, startup.eos_ids, startup.model_config, dist_init)
    except BaseException:  # report any start-up failure to the parent instead of dying silently
        send_conn.send(SchedulerFailed(traceback.format_exc()))
        return
    freeze_startup_objects()
    send_conn.send(SchedulerReady(scheduler.info()))
    try:
        _loop(scheduler, recv_conn, send_conn, Watchdog(args.watchdog_timeout))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    except BaseException:
        send_conn.send(SchedulerCrashed(traceback.format_exc()))
        raise
    scheduler.runner.close()  # tensor parallelism: stop the follower ranks (not after a crash: a peer may be gone)


def _loop(scheduler: Scheduler, recv_conn: Connection, send_conn: Connection, watchdog: Watchdog) -> None:
    """Serve until the shutdown RPC (see `scheduler.loop`)."""
    run_loop(scheduler, recv_conn, send_conn, watchdog)

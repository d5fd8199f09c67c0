"""The front's handle on the scheduler process: start it, send requests, route results back."""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import threading
import time
from multiprocessing.connection import wait as wait_for_any
from typing import Any, Callable, Optional

from radixlm.config.server_args import ServerArgs
from radixlm.distributed.launch import start_followers
from radixlm.distributed.setup import plan_local_ranks
from radixlm.ipc.finish import SERVER_ERROR, FinishAbort
from radixlm.ipc.messages import (
    AbortReq,
    BatchOutput,
    ReqOutput,
    RpcOutput,
    RpcReq,
    SchedulerCrashed,
    SchedulerFailed,
    SchedulerReady,
    SchedulerStartup,
    TokenizedGenerateReq,
)
from radixlm.ipc.startup import UNGUARDED_MAIN_HINT, take_bootstrap_error
from radixlm.model_loader.loader import check_tensor_parallel
from radixlm.scheduler.process import run_scheduler_process
from radixlm.scheduler.watchdog import describe_exit

START_TIMEOUT_S = 600.0
DEAD_GRACE_S = 1.0  # how long shutdown waits for survivors of a dead engine before killing them
MONITOR_POLL_S = 1.0  # how often the monitor re-reads `processes` (others may join the list later)
logger = logging.getLogger(__name__)


class SchedulerDied(RuntimeError):
    """The scheduler process exited; pending requests are failed with this."""


class RuntimeClient:
    """Thread-safe. Each submitted request gets its outputs through its own callback, called
    from one receiver thread, in order; the final output has `finish_reason` set.

    Liveness: a monitor thread watches every process in `self.processes` (the scheduler, and
    any helper process appended later). When one exits outside `shutdown()`, `dead` is set,
    every pending request and RPC is failed at once and later submits raise SchedulerDied."""

    def __init__(self, args: ServerArgs, tokenizer: Any, eos_ids: set[int], model_config: Any = None) -> None:
        ctx = mp.get_context("spawn")
        if args.node_rank != 0:
            raise ValueError("node_rank > 0 runs no scheduler: start it with python -m radixlm.distributed.launch")
        if model_config is not None:
            check_tensor_parallel(model_config, args.model_impl, args.tp_size, args.ep_size)
        ranks = plan_local_ranks(args)  # tensor parallelism: rank 0 here, the followers beside it
        sched_recv, self._to_sched = ctx.Pipe(duplex=False)
        out_recv, self._from_sched_send = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=run_scheduler_process,
            daemon=True,
            name="radixlm-scheduler",
            args=(args, sched_recv, self._from_sched_send, ranks[0] if ranks else None),
        )
        self.process.start()
        # Drop the parent's copies of the child's pipe ends: with them open, a killed child would
        # never produce EOF on `out_recv` and the receiver would wait forever.
        sched_recv.close()
        self._from_sched_send.close()
        try:
            self._to_sched.send(SchedulerStartup(tokenizer, eos_ids, model_config))
        except OSError:
            pass  # the scheduler died before reading it: the ready wait below reports why
        self.processes = [self.process] + start_followers(ctx, args, model_config, ranks[1:])
        self._closing = False
        self._recv = out_recv
        self.info = self._wait_ready()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._callbacks: dict[str, Callable[[ReqOutput], None]] = {}
        self._rpcs: dict[int, tuple[threading.Event, list]] = {}
        self._ids = itertools.count(1)
        self.dead: Optional[str] = None
        self._thread = threading.Thread(target=self._receive_loop, daemon=True, name="radixlm-receiver")
        self._thread.start()
        self._monitor = threading.Thread(target=self._monitor_loop, daemon=True, name="radixlm-monitor")
        self._monitor.start()

    def _wait_ready(self) -> dict:
        try:
            return self._read_ready()
        except BaseException:
            for proc in self.processes:  # follower ranks may be waiting on a collective forever
                proc.kill()
            raise

    def _read_ready(self) -> dict:
        """The scheduler's start-up info, or RuntimeError within about a second of the scheduler
        (or a follower rank) exiting without reporting SchedulerReady: the exit is watched
        directly, since a child that dies while bootstrapping never received its pipe end."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._recv.poll(0):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("scheduler process did not start in time")
            ready = wait_for_any([self._recv] + [p.sentinel for p in self.processes], timeout=left)
            gone = [p for p in self.processes if p.sentinel in ready]
            if gone and not self._recv.poll(0):  # a last message is read before the exit is reported
                raise RuntimeError(self._startup_exit_message(gone[0]))
        try:
            msg = self._recv.recv()
        except EOFError:
            raise RuntimeError(self._startup_exit_message(self.process)) from None
        if isinstance(msg, SchedulerFailed):
            self.process.join(5)
            raise RuntimeError(f"scheduler process failed to start:\n{msg.traceback}")
        if not isinstance(msg, SchedulerReady):
            raise RuntimeError(f"scheduler process sent {type(msg).__name__} before SchedulerReady")
        return msg.info

    def _startup_exit_message(self, proc: mp.Process) -> str:
        """Why start-up failed when `proc` exited without a report: its exit status and, for the
        scheduler, the error it left while bootstrapping (see `radixlm.ipc.startup`)."""
        status = describe_exit(settled_exit_code(proc, 5.0))
        if proc is not self.process:
            return f"{proc.name} exited during start-up ({status}); its error is in the log above"
        child_error = take_bootstrap_error(proc.pid)
        if child_error is not None:
            return f"scheduler process exited during start-up ({status}): {child_error}"
        return (
            f"scheduler process exited during start-up ({status}) before reporting; its error is in "
            f"the log above. If it mentions the bootstrapping phase: {UNGUARDED_MAIN_HINT}"
        )

    def submit(self, req: TokenizedGenerateReq, callback: Callable[[ReqOutput], None]) -> None:
        """Raises ValueError if `req.rid` is in flight (its outputs would go to the wrong caller)."""
        with self._lock:
            if self.dead:
                raise SchedulerDied(self.dead)
            if req.rid in self._callbacks:
                raise ValueError(f"request id {req.rid!r} is already in use by a running request")
            self._callbacks[req.rid] = callback
        try:
            self._send(req)
        except OSError:
            with self._lock:
                self._callbacks.pop(req.rid, None)
            raise SchedulerDied(self.dead or "the scheduler process is gone") from None

    def _send(self, msg: Any) -> None:
        """One writer at a time on the pipe, outside `_lock`: a large message may block until the
        scheduler reads it, and the scheduler may itself wait for the receiver, which needs `_lock`."""
        with self._send_lock:
            self._to_sched.send(msg)

    def has_request(self, rid: str) -> bool:
        """True while `rid` is submitted and not finished."""
        with self._lock:
            return rid in self._callbacks

    def abort(self, rid: str) -> None:
        with self._lock:
            running = rid in self._callbacks and not self.dead
        if running:
            try:
                self._send(AbortReq(rid))
            except OSError:
                pass  # the scheduler is gone: the monitor fails the request

    def rpc(self, method: str, timeout: float = 60.0, **kwargs: Any) -> Any:
        """Call a control method (with keyword arguments `kwargs`) in the scheduler and wait for
        its answer; RuntimeError carries the scheduler's refusal."""
        event, box = threading.Event(), []
        with self._lock:
            if self.dead:
                raise SchedulerDied(self.dead)
            call_id = next(self._ids)
            self._rpcs[call_id] = (event, box)
        try:
            self._send(RpcReq(method, call_id, kwargs))
        except OSError:
            with self._lock:
                self._rpcs.pop(call_id, None)
            raise SchedulerDied(self.dead or "the scheduler process is gone") from None
        if not event.wait(timeout):
            raise TimeoutError(f"scheduler did not answer {method!r} within {timeout} s")
        out: RpcOutput = box[0]
        if out.error:
            raise RuntimeError(out.error)
        return out.result

    def _receive_loop(self) -> None:
        try:
            while True:
                msg = self._recv.recv()
                if isinstance(msg, BatchOutput):
                    self._dispatch(msg.outputs)
                elif isinstance(msg, RpcOutput):
                    self._answer(msg)
                elif isinstance(msg, SchedulerCrashed):
                    self._fail(f"scheduler crashed:\n{msg.traceback}")
                    return
        except (EOFError, OSError):
            code = settled_exit_code(self.process, 5.0)  # so the reason can name it
            self._fail(f"scheduler process exited ({describe_exit(code)})")

    def _monitor_loop(self) -> None:
        """Fail everything as soon as any watched process exits (its sentinel becomes ready)."""
        while not self.dead:
            procs = list(self.processes)
            ready = set(wait_for_any([p.sentinel for p in procs], timeout=MONITOR_POLL_S))
            gone = [p for p in procs if p.sentinel in ready]
            if gone and self._closing:
                return
            if gone:
                if self.process in gone:  # let the receiver report the crash's traceback first
                    self._thread.join(2.0)
                p = gone[0]
                self._fail(f"{p.name} (pid {p.pid}) exited ({describe_exit(settled_exit_code(p, 5.0))})")

    def _dispatch(self, outputs: list[ReqOutput]) -> None:
        for out in outputs:
            with self._lock:
                cb = self._callbacks.get(out.rid)
                if out.finish_reason is not None:
                    self._callbacks.pop(out.rid, None)
            if cb is not None:
                try:
                    cb(out)
                except Exception:  # one caller's broken callback must not stop delivery to everyone else
                    logger.exception("output callback for request %s failed", out.rid)

    def _answer(self, out: RpcOutput) -> None:
        with self._lock:
            entry = self._rpcs.pop(out.call_id, None)
        if entry is not None:
            entry[1].append(out)
            entry[0].set()

    def _fail(self, reason: str) -> None:
        """Idempotent: the first reason is kept."""
        with self._lock:
            if self.dead:
                return
            self.dead = reason
            callbacks, self._callbacks = self._callbacks, {}
            rpcs, self._rpcs = self._rpcs, {}
        for rid, cb in callbacks.items():
            cb(ReqOutput(rid, [], "", FinishAbort(reason, SERVER_ERROR), {"error": reason}))
        for call_id, (event, box) in rpcs.items():
            box.append(RpcOutput(call_id, error=reason))
            event.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the scheduler process (and every other watched process); never leaves one running.
        When the engine is already dead (a process crashed), the survivors may be stuck in a
        collective with the dead one: they get DEAD_GRACE_S to exit instead of `timeout`."""
        self._closing = True
        grace = DEAD_GRACE_S if self.dead else timeout
        if self.process.is_alive() and not self.dead:
            try:
                self.rpc("shutdown", timeout=timeout)
            except (RuntimeError, TimeoutError, OSError):
                pass
        for proc in list(self.processes):
            if settled_exit_code(proc, grace) is None:
                proc.kill()
                settled_exit_code(proc, timeout)


def settled_exit_code(proc: mp.Process, timeout: float) -> Optional[int]:
    """`proc`'s exit code, waiting up to `timeout` seconds for it to exit (None if it has not).

    Several threads here wait on the same process (receiver, monitor, shutdown); the one whose
    `os.waitpid` loses the race gets ECHILD and multiprocessing reports no exit code for that
    call, so poll until the winner has recorded it rather than trusting one `join`."""
    deadline = time.monotonic() + timeout
    while True:
        proc.join(min(0.1, max(0.0, deadline - time.monotonic())))
        if proc.exitcode is not None or time.monotonic() >= deadline:
            return proc.exitcode

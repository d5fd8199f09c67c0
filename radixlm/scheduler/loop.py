"""The scheduler process's event loops: receive messages -> pick the next batch -> run it ->
process results -> send outputs. Two loops, chosen once at start-up by
`--disable-overlap-schedule`: the plain one processes each batch's results before picking the
next; the overlapped one launches batch N+1 before processing batch N's results, so that host
work runs while the device computes."""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Any, Callable, Optional

from radixlm.ipc.messages import BatchOutput, ReqOutput, RpcOutput, RpcReq
from radixlm.scheduler.inbox import PipeInbox
from radixlm.scheduler.scheduler import Scheduler
from radixlm.scheduler.watchdog import Watchdog


class FrontChannel:
    """The scheduler's ends of the pipes to the front: messages in, outputs and answers out."""

    def __init__(self, recv_conn: Connection, send_conn: Connection) -> None:
        self.recv_conn, self.send_conn = recv_conn, send_conn
        self.inbox = PipeInbox(recv_conn)  # its thread reads the pipe while steps run

    def receive(self, scheduler: Scheduler) -> bool:
        """Apply every message that has arrived for `scheduler` (all those sent while the last
        step ran), answering RPCs; returns False on the shutdown RPC (answered). Blocks only
        while the scheduler has no work, so running requests are never held up by an empty
        inbox; meanwhile an idle tensor-parallel leader sends its followers heartbeats
        (`heartbeat_s` None at tp 1: wait for input)."""
        msg = None
        if not scheduler.has_work():
            msg = self.inbox.wait(scheduler.runner.heartbeat_s, scheduler.runner.heartbeat)
        while msg is not None or (msg := self.inbox.take_ready()) is not None:
            if isinstance(msg, RpcReq) and msg.method == "shutdown":
                self.send_conn.send(RpcOutput(msg.call_id, result=True))
                return False
            answer = _safe_handle(scheduler, msg)
            if answer is not None:
                self.send_conn.send(answer)
            msg = None
        return True

    def send(self, outputs: list[ReqOutput]) -> None:
        """One BatchOutput for a step's outputs; nothing for a step that has none."""
        if outputs:
            self.send_conn.send(BatchOutput(outputs))


def plain_step(scheduler: Scheduler) -> list[ReqOutput]:
    """Pick the next batch, run it, process its results; returns the outputs to send."""
    scheduler.begin_step()
    batch = scheduler.next_batch()
    launched = scheduler.run_batch(batch)
    scheduler.process_results(launched)
    return scheduler.end_step(batch)


def overlap_step(scheduler: Scheduler) -> list[ReqOutput]:
    """Pick and launch batch N+1, then process the results of batch N (in flight since the last
    step) while the device computes N+1. When batch N+1 cannot be built without batch N's tokens
    on the host (penalties, jump-forward, a retraction: `overlap_need` is None), batch N's results
    are processed first. A request's newest token may be a placeholder: its id is on the device,
    where the next decode reads it. When a constrained request's grammar lags, only the forward
    of N+1 is launched; its sampling is queued once batch N is processed (`complete_launch`), so
    the grammars accept N's tokens and fill N+1's masks while the device runs N+1's forward."""
    scheduler.begin_step()
    need = scheduler.overlap_need()
    if need is None:
        scheduler.process_results(scheduler.swap_inflight(None))
    batch = scheduler.next_batch(need)
    launched = scheduler.run_batch(batch)
    scheduler.process_results(scheduler.swap_inflight(launched))  # on a GPU this overlaps `launched`
    scheduler.complete_launch(launched)
    return scheduler.end_step(batch)


def run_plain_loop(scheduler: Scheduler, channel: FrontChannel, watchdog: Watchdog) -> None:
    """Serve until the shutdown RPC, one batch at a time."""
    while channel.receive(scheduler):
        with watchdog.watch():  # a step stuck past --watchdog-timeout crashes the process loudly
            outputs = plain_step(scheduler)
        channel.send(outputs)


def run_overlap_loop(scheduler: Scheduler, channel: FrontChannel, watchdog: Watchdog) -> None:
    """Serve until the shutdown RPC, each batch launched before the previous one's results are
    processed."""
    while channel.receive(scheduler):
        with watchdog.watch():
            outputs = overlap_step(scheduler)
        channel.send(outputs)


def step_function(scheduler: Scheduler) -> Callable[[], list[ReqOutput]]:
    """One step of the loop `scheduler` was configured for (benchmarks drive steps directly)."""
    step = overlap_step if scheduler.overlap else plain_step
    return lambda: step(scheduler)


def run_loop(scheduler: Scheduler, recv_conn: Connection, send_conn: Connection, watchdog: Watchdog) -> None:
    """Serve with the loop chosen by the scheduler's configuration."""
    loop = run_overlap_loop if scheduler.overlap else run_plain_loop
    loop(scheduler, FrontChannel(recv_conn, send_conn), watchdog)


def _safe_handle(scheduler: Scheduler, msg: Any) -> Optional[Any]:
    try:
        return scheduler.handle(msg)
    except Exception as exc:  # a bad control call must not kill the loop serving everyone else
        if isinstance(msg, RpcReq):
            return RpcOutput(msg.call_id, error=f"{type(exc).__name__}: {exc}")
        raise

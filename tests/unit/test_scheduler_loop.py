"""The scheduler process's loops (`radixlm.scheduler.loop`): the front channel answers the
shutdown RPC and stops, turns a failing control call into an RPC error, sends outputs as one
BatchOutput and blocks only while the scheduler is idle; each loop runs its own step."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import threading
from typing import Any, Optional

import pytest

from radixlm.ipc.finish import FinishLength
from radixlm.ipc.messages import BatchOutput, ReqOutput, RpcOutput, RpcReq
from radixlm.scheduler import loop
from radixlm.scheduler.watchdog import Watchdog


class FakeRunner:
    heartbeat_s: Optional[float] = 0.01

    def __init__(self) -> None:
        self.heartbeats = 0

    def heartbeat(self) -> None:
        self.heartbeats += 1


class FakeScheduler:
    """Records the messages it handles; `work` steps left before it is idle."""

    def __init__(self, overlap: bool, work: int = 0) -> None:
        self.overlap, self.work = overlap, work
        self.runner = FakeRunner()
        self.handled: list[Any] = []

    def has_work(self) -> bool:
        return self.work > 0

    def handle(self, msg: Any) -> Optional[RpcOutput]:
        self.handled.append(msg)
        if isinstance(msg, RpcReq) and msg.method == "boom":
            raise RuntimeError("bad call")
        return RpcOutput(msg.call_id, result="ok") if isinstance(msg, RpcReq) else None


@pytest.fixture()
def pipes() -> Any:
    front_recv, sched_send = mp.Pipe(duplex=False)
    sched_recv, front_send = mp.Pipe(duplex=False)
    yield front_send, front_recv, loop.FrontChannel(sched_recv, sched_send)
    for conn in (front_recv, sched_send, sched_recv, front_send):
        conn.close()


def test_receive_answers_rpcs_and_stops_on_shutdown(pipes: Any) -> None:
    front_send, front_recv, channel = pipes
    sched = FakeScheduler(overlap=True)
    front_send.send(RpcReq("get_info", 1))
    front_send.send(RpcReq("boom", 2))
    assert channel.receive(sched)
    assert front_recv.recv() == RpcOutput(1, result="ok")
    assert front_recv.recv() == RpcOutput(2, error="RuntimeError: bad call")
    front_send.send(RpcReq("shutdown", 3))
    assert not channel.receive(sched)
    assert front_recv.recv() == RpcOutput(3, result=True)
    assert [m.call_id for m in sched.handled] == [1, 2]


def test_messages_larger_than_the_pipe_arrive_while_a_step_runs(pipes: Any) -> None:
    """A front sending several multi-megabyte messages (requests with images) is not held at
    the first until the scheduler's next receive, and that receive applies all of them."""
    front_send, front_recv, channel = pipes
    sched = FakeScheduler(overlap=True, work=1)  # busy: receive never waits for input
    assert channel.receive(sched) and sched.handled == []
    blob = b"x" * (4 << 20)
    sender = threading.Thread(target=lambda: [front_send.send(RpcReq("get_info", i, {"blob": blob})) for i in range(3)])
    sender.start()
    sender.join(timeout=30)  # no receive runs meanwhile (the scheduler is "in a step")
    assert not sender.is_alive()
    assert channel.receive(sched)
    assert [m.call_id for m in sched.handled] == [0, 1, 2]
    assert [front_recv.recv().call_id for _ in range(3)] == [0, 1, 2]


def test_a_message_that_cannot_be_read_raises_in_receive(pipes: Any) -> None:
    """The reader thread hands its error to the loop (which reports the crash), never hangs it."""
    front_send, _, channel = pipes
    front_send.send_bytes(b"not a pickle")
    with pytest.raises(pickle.UnpicklingError):
        channel.receive(FakeScheduler(overlap=True))


def test_idle_receive_heartbeats_until_a_message(pipes: Any) -> None:
    front_send, _, channel = pipes
    sched = FakeScheduler(overlap=False)
    timer = threading.Timer(0.1, lambda: front_send.send(RpcReq("get_info", 1)))
    timer.start()
    assert channel.receive(sched)
    timer.join()
    assert sched.runner.heartbeats > 0 and len(sched.handled) == 1


def test_send_batches_outputs_and_skips_empty_steps(pipes: Any) -> None:
    _, front_recv, channel = pipes
    channel.send([])
    out = ReqOutput("r", [1], "a", FinishLength(1))
    channel.send([out])
    assert front_recv.poll(1.0)
    assert front_recv.recv() == BatchOutput([out])
    assert not front_recv.poll(0)


@pytest.mark.parametrize("overlap", [True, False])
def test_each_loop_runs_its_step_until_shutdown(pipes: Any, monkeypatch: Any, overlap: bool) -> None:
    front_send, front_recv, channel = pipes
    sched = FakeScheduler(overlap=overlap, work=3)
    ran: list[str] = []

    def fake_step(name: str) -> Any:
        def step(s: FakeScheduler) -> list[ReqOutput]:
            ran.append(name)
            s.work -= 1
            if s.work == 0:
                front_send.send(RpcReq("shutdown", 9))
            return [ReqOutput(str(s.work), [], "", None)]

        return step

    monkeypatch.setattr(loop, "plain_step", fake_step("plain"))
    monkeypatch.setattr(loop, "overlap_step", fake_step("overlap"))
    loop.run_loop(sched, channel.recv_conn, channel.send_conn, Watchdog(60.0))
    assert ran == ["overlap" if overlap else "plain"] * 3
    got = [front_recv.recv() for _ in range(4)]
    assert [b.outputs[0].rid for b in got[:3]] == ["2", "1", "0"] and got[3] == RpcOutput(9, result=True)

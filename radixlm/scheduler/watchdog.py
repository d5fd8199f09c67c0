"""`--watchdog-timeout`: a stuck scheduler step becomes a loud crash instead of a silent hang.

The scheduler loop wraps each step in `Watchdog.watch()`; a daemon thread checks how long the
current step has been running. Past the timeout it prints every thread's stack to stderr and
ends the process with `WATCHDOG_EXIT_CODE`, which the front (see `RuntimeClient`) turns into a
failure of every pending request and, in the server, a non-zero exit.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time
from typing import Callable, Iterator, Optional

WATCHDOG_EXIT_CODE = 70  # EX_SOFTWARE; chosen so the front can name the cause


def describe_exit(code: Optional[int]) -> str:
    """A process exit code in words (negative codes are signals)."""
    if code is None:
        return "exit code unknown"
    if code == WATCHDOG_EXIT_CODE:
        return f"exit code {code}: killed by its watchdog, a step exceeded --watchdog-timeout"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"


def crash_loudly(message: str) -> None:
    """Print `message` and all threads' stacks to stderr, then end the process at once
    (`os._exit`: the stuck thread cannot block it)."""
    sys.stderr.write(f"\n[radixlm watchdog] {message}; stacks of all threads follow\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(WATCHDOG_EXIT_CODE)


class Watchdog:
    """Calls `on_timeout(message)` once when a step inside `watch()` runs over `timeout_s`.

    Invariant: only the step running now is timed; time between steps (idle waits) never counts."""

    def __init__(
        self, timeout_s: float, on_timeout: Callable[[str], None] = crash_loudly, poll_s: Optional[float] = None
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"watchdog timeout must be positive, got {timeout_s!r}")
        self.timeout_s, self.on_timeout = timeout_s, on_timeout
        self.poll_s = poll_s if poll_s is not None else min(1.0, timeout_s / 4)
        self._started: Optional[float] = None
        self._fired = False
        threading.Thread(target=self._run, daemon=True, name="radixlm-watchdog").start()

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Time one step."""
        self._started = time.monotonic()
        try:
            yield
        finally:
            self._started = None

    def _run(self) -> None:
        while not self._fired:
            time.sleep(self.poll_s)
            started = self._started
            if started is not None and time.monotonic() - started > self.timeout_s:
                self._fired = True
                self.on_timeout(f"a scheduler step has run for more than {self.timeout_s:g} s (--watchdog-timeout)")

"""Host-side timing of the scheduler's steps, by phase: the CPU time a step costs around the
model's forward, which is what overlap scheduling would hide.

Phases: `schedule` (choose and build the batch), `launch` (call the model and queue sampling;
on a GPU this only enqueues kernels, on the CPU the forward runs here),
`device_wait` (wait for the sampled ids of the batch being finished: with overlap the device
is then busy with the next batch), `process` (append the ids, detokenize, stop checks, free
finished requests, build outputs). CPU time per step = schedule + launch + process. Sums are kept
per kind of the batch a step launched (`extend`, `decode`, `idle`), with its rows.
"""

from __future__ import annotations

import time

PHASES = ("schedule", "launch", "device_wait", "process")


class StepTimer:
    """Accumulates phase durations; `mark(phase)` closes the phase that ran since the last mark."""

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, float]] = {}
        self._last = time.perf_counter()
        self._current: dict[str, float] = {}

    def start(self) -> None:
        self._last, self._current = time.perf_counter(), {}

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self._current[phase] = self._current.get(phase, 0.0) + now - self._last
        self._last = now

    def finish(self, kind: str, rows: int) -> None:
        total = self.totals.setdefault(kind, {"steps": 0, "rows": 0, **{p: 0.0 for p in PHASES}})
        total["steps"] += 1
        total["rows"] += rows
        for phase, seconds in self._current.items():
            total[phase] += seconds

    def summary(self) -> dict[str, dict[str, float]]:
        return {kind: dict(values) for kind, values in self.totals.items()}

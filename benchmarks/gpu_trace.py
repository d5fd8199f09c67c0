"""Sample the GPU's SM clock, power and utilization while a block of code runs (`nvidia-smi`).

Used by `gpu_bench.py` to compare serial and overlapped scheduling: if a mode's decode steps
take longer on the device, a lower clock (power or thermal limit) under it would say why.

    with GpuTrace() as trace:
        ...work...
    trace.summary()  # busy samples only: {"busy_samples": n, "sm_mhz_mean": ..., "sm_mhz_min": ..., ...}
"""

from __future__ import annotations

import shutil
import subprocess
from types import TracebackType
from typing import Optional

FIELDS = ("clocks.sm", "clocks.mem", "power.draw", "temperature.gpu", "utilization.gpu")
NAMES = ("sm_mhz", "mem_mhz", "power_w", "temp_c", "util_pct")


class GpuTrace:
    """Samples every `period_ms` on GPU `index` between enter and exit; without `nvidia-smi`
    it records nothing and `summary()` is empty."""

    def __init__(self, period_ms: int = 100, index: int = 0) -> None:
        self.period_ms, self.index = period_ms, index
        self._proc: Optional[subprocess.Popen] = None
        self.rows: list[tuple[float, ...]] = []

    def __enter__(self) -> "GpuTrace":
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    f"--id={self.index}",
                    f"--query-gpu={','.join(FIELDS)}",
                    "--format=csv,noheader,nounits",
                    f"-lms={self.period_ms}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        return self

    def __exit__(self, kind: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        for line in out.splitlines():
            try:
                self.rows.append(tuple(float(v) for v in line.split(",")))
            except ValueError:  # "[N/A]" or a line cut off by the terminate
                continue

    def summary(self, busy_util: float = 90.0) -> dict[str, float]:
        """Mean and min of each field over the samples taken while the GPU was busy
        (utilization >= `busy_util`: start-up and idle moments left out), and how many there were."""
        rows = [r for r in self.rows if len(r) == len(FIELDS) and r[NAMES.index("util_pct")] >= busy_util]
        if not rows:
            return {}
        out: dict[str, float] = {"busy_samples": float(len(rows))}
        for i, name in enumerate(NAMES):
            values = [r[i] for r in rows]
            out[f"{name}_mean"] = sum(values) / len(values)
            out[f"{name}_min"] = min(values)
        return out

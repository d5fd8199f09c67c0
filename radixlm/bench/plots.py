"""PNG plots of one `bench_serving` run (matplotlib, Agg backend: no display needed).

- `<prefix>_latency_cdf.png`: empirical CDFs of TTFT, TPOT, ITL and E2E latency (ms).
- `<prefix>_timeline.png`: output tokens/s and requests in flight over the run.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from radixlm.bench.metrics import RequestResult, in_flight_curve, timeline

DPI = 90


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(ax: Any, seconds: list[float], title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("ms")
    ax.grid(alpha=0.3)
    if not seconds:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    ms = np.sort(np.asarray(seconds) * 1000.0)
    ax.step(ms, np.arange(1, len(ms) + 1) / len(ms), where="post")
    ax.set_ylim(0, 1.02)


def plot_latency_cdfs(results: list[RequestResult], path: str, label: str) -> str:
    """Four CDF panels; returns `path`."""
    ok = [r for r in results if r.success]
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
    _cdf(axes[0, 0], [r.ttft for r in ok], "Time to first token")
    _cdf(axes[0, 1], [t for r in ok if (t := r.tpot) is not None], "Time per output token (excl. 1st)")
    _cdf(axes[1, 0], [g for r in ok for g in r.itl], "Inter-token latency")
    _cdf(axes[1, 1], [r.latency for r in ok], "End-to-end latency")
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of requests / gaps")
    fig.suptitle(label, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_timeline(results: list[RequestResult], duration: float, path: str, label: str) -> str:
    """Output tok/s per bin (about 40 bins over the run) and requests in flight; returns `path`."""
    ok = [r for r in results if r.success]
    bin_s = max(duration / 40.0, 0.05)
    starts, rates = timeline(ok, duration, bin_s)
    times, running = in_flight_curve(ok)
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.bar(starts, rates, width=bin_s, align="edge", alpha=0.8)
    top.set_ylabel("output tok/s")
    top.set_title(f"output throughput ({bin_s:.2f} s bins)", fontsize=10)
    top.grid(alpha=0.3)
    bottom.step(times, running, where="post")
    bottom.set_ylabel("requests in flight")
    bottom.set_xlabel("seconds since the first request")
    bottom.grid(alpha=0.3)
    fig.suptitle(label, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write_plots(results: list[RequestResult], duration: float, out_dir: str, prefix: str, label: str) -> list[str]:
    """Both PNGs into `out_dir` (created if missing); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, prefix)
    return [
        plot_latency_cdfs(results, f"{base}_latency_cdf.png", label),
        plot_timeline(results, duration, f"{base}_timeline.png", label),
    ]

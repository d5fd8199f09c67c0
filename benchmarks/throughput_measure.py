"""What offline_throughput.py measures with: the model-FLOPs formula's inputs (`ModelShape`, read
from a Llama-style config), one timed run (`RunResult`), the float32 GEMM ceiling the figures
are read against, the load average and a process's CPU seconds."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass(frozen=True)
class ModelShape:
    """What the FLOPs formula needs from the model config."""

    non_embedding_params: int
    hidden: int
    vocab: int

    def flops(self, computed_prompt_tokens: int, fed_output_tokens: int, sampled_tokens: int) -> float:
        """Model FLOPs (see the module docstring)."""
        return (
            2.0 * self.non_embedding_params * (computed_prompt_tokens + fed_output_tokens)
            + 2.0 * self.hidden * self.vocab * sampled_tokens
        )


@dataclass
class RunResult:
    """One measured generation: wall time, CPU time of the computing process(es), tokens, FLOPs."""

    name: str
    seconds: float
    cpu_seconds: Optional[float]
    output_tokens: int
    prompt_tokens: int
    cached_tokens: int
    gflops: float
    extra: dict = field(default_factory=dict)

    @property
    def tok_per_s(self) -> float:
        return self.output_tokens / self.seconds

    @property
    def gflop_per_s(self) -> float:
        return self.gflops / self.seconds


def model_shape(config: dict) -> ModelShape:
    """Non-embedding linear parameter count of a Llama-style config."""
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * inter
    return ModelShape(layers * per_layer, h, config["vocab_size"])


def gemm_ceiling(size: int, repeats: int = 5) -> float:
    """Best GFLOP/s of a float32 [size, size] @ [size, size] matmul (after one warm-up)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def load_average() -> str:
    """The 1-minute load average: other processes on the machine skew every figure here."""
    return f"{os.getloadavg()[0]:.2f}"


def proc_cpu_seconds(pid: int) -> Optional[float]:
    """utime + stime of a process from /proc (Linux only; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None

"""GGUF Q4_0 / Q4_1 / Q8_0 weights multiplied on the CPU in their blocks (`cpu_q4.c`), never widened in memory.

The C sources next to this module (`cpu_q4.c`, and `cpu_decode.c`: the fused batch-1 decode step
that `kernels.cpu_decode` drives) are compiled together once per machine with the system C compiler
(`$CC`, else `cc`; `-O3 -march=native -fopenmp`) into a cache directory keyed by the source's
hash, the compiler and the CPU's flags (`$RADIXLM_CACHE_DIR`, else `~/.cache/radixlm`) and called through ctypes;
`load` raises `KernelUnavailable` naming the reason when that fails, so callers decide at load time.

Weights are uint8 rows [N, row_bytes] exactly as the GGUF file stores them; `matmul` equals
x W^T with W decoded by `gguf_blocks.dequantize` up to float32 summation order.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_suffix(".c")
SOURCES = (SOURCE, SOURCE.with_name("cpu_decode.c"))
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
# From this many rows of x on, decoding the weight once and calling torch's GEMM wins: the row-by-row
# dots were ahead below 4-8 rows (2-core AVX2 EPYC, projection shapes of SmolLM2-135M).
GEMM_ROWS = 8


class KernelUnavailable(RuntimeError):
    """The C kernel could not be built or loaded here (no compiler, a failed build)."""


KIND = {2: 0, 3: 1, 8: 2}  # GGUF type id (Q4_0, Q4_1, Q8_0) -> the C kernel's KIND_* value
FORMATS = frozenset(KIND)


@functools.lru_cache(maxsize=1)
def load() -> ctypes.CDLL:
    """The library built with `FLAGS` (compiled on first use, then reused from the cache)."""
    return library(FLAGS)


def library(flags: tuple[str, ...]) -> ctypes.CDLL:
    """The library compiled with `flags` (cached on disk by source, compiler and flags)."""
    source = b"".join(path.read_bytes() for path in SOURCES)
    compiler = os.environ.get("CC", "cc")
    # -march=native code is only valid on this CPU: its feature flags are part of the key too.
    key = hashlib.sha256(source + " ".join((compiler, *flags, _cpu_flags())).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("RADIXLM_CACHE_DIR", Path.home() / ".cache" / "radixlm"))
    target = cache / f"cpu_q4-{key}.so"
    if not target.exists():
        _build(compiler, flags, cache, target)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        raise KernelUnavailable(f"cannot load {target}: {exc}") from exc
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.rlm_q4_matmul.argtypes = [ptr, i64, i64, ptr, c_int, i64, ptr, c_int]
    lib.rlm_q4_dequantize.argtypes = [ptr, c_int, i64, i64, ptr, c_int]
    lib.rlm_q4_matvec_int8.argtypes = [ptr, i64, ptr, c_int, i64, ptr, c_int]
    lib.rlm_q4_matvec_int8.restype = c_int
    lib.rlm_decode_step.argtypes = [ptr, ptr, i64, ptr, i64, ptr, c_int]
    lib.rlm_decode_step.restype = c_int
    return lib


def _cpu_flags() -> str:
    """The CPU's feature flags as /proc/cpuinfo lists them ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when the kernel is usable here, else why not (asked once per process)."""
    try:
        load()
    except KernelUnavailable as exc:
        return str(exc)
    return None


def _build(compiler: str, flags: tuple[str, ...], cache: Path, target: Path) -> None:
    """Compile into a temporary file, then rename (concurrent builders never see half a file)."""
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", tmp, "-lm"], capture_output=True, text=True)
    except OSError as exc:
        os.unlink(tmp)
        raise KernelUnavailable(f"no C compiler {compiler!r} ($CC): {exc}") from exc
    if done.returncode != 0:
        os.unlink(tmp)
        raise KernelUnavailable(
            f"{compiler} failed on {', '.join(p.name for p in SOURCES)}: {done.stderr.strip()[-500:]}"
        )
    os.replace(tmp, target)


def matmul(x: torch.Tensor, rows: torch.Tensor, qtype: int, k: int, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """x [M, k] (any float dtype) times W^T for W the uint8 rows [N, row_bytes] of a Q4_0 / Q4_1 /
    Q8_0 weight (contiguous) -> [M, N] in x's dtype. From `GEMM_ROWS` rows of x on, W is decoded
    once and multiplied by torch's GEMM. `lib`: another build of the kernel (tests), else `load()`."""
    lib = lib or load()
    n, kind, threads = rows.shape[0], KIND[qtype], torch.get_num_threads()
    if x.shape[0] >= GEMM_ROWS:
        dense = torch.empty(n, k)
        lib.rlm_q4_dequantize(rows.data_ptr(), kind, n, k, dense.data_ptr(), threads)
        return torch.nn.functional.linear(x, dense.to(x.dtype))
    xf = x.to(torch.float32).contiguous()
    y = torch.empty(xf.shape[0], n)
    lib.rlm_q4_matmul(xf.data_ptr(), xf.shape[0], k, rows.data_ptr(), kind, n, y.data_ptr(), threads)
    return y.to(x.dtype)


def matmul_int8(
    x: torch.Tensor, rows: torch.Tensor, qtype: int, k: int, lib: ctypes.CDLL | None = None
) -> torch.Tensor:
    """`matmul` with each row of x first quantized to int8 per 32-element block (llama.cpp's Q8_0
    activations) and the block dots in integer arithmetic: opt-in (`--gguf-cpu-activations int8`),
    not equal to the float32 product (x keeps ~8 bits per block). From `GEMM_ROWS` rows on, as
    `matmul` (float32)."""
    lib = lib or load()
    if x.shape[0] >= GEMM_ROWS:
        return matmul(x, rows, qtype, k, lib)
    xf = x.to(torch.float32).contiguous()
    y = torch.empty(xf.shape[0], rows.shape[0])
    kind, threads = KIND[qtype], torch.get_num_threads()
    for i in range(xf.shape[0]):
        if lib.rlm_q4_matvec_int8(xf[i].data_ptr(), k, rows.data_ptr(), kind, rows.shape[0], y[i].data_ptr(), threads):
            raise MemoryError("rlm_q4_matvec_int8: no memory for the int8 codes")
    return y.to(x.dtype)


def dequantize(rows: torch.Tensor, qtype: int, k: int, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """W as float32 [N, k] from its uint8 rows (contiguous)."""
    out = torch.empty(rows.shape[0], k)
    (lib or load()).rlm_q4_dequantize(rows.data_ptr(), KIND[qtype], rows.shape[0], k, out.data_ptr(), 1)
    return out

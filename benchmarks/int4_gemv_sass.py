"""The int4 GEMVs' main loops as sm_90 machine code, compiled here without a GPU (Triton + ptxas).

For each launch config, compiles `kernels.int4_packed._int4_gemv_kernel` (or with --kmajor the
GPTQ and Q4_K kernels of `kernels.int4_kmajor`, portable and inline-PTX paths) for an H100 and
reports: registers per thread, instructions in the K loop per weight element per thread (the
issue budget at copy bandwidth is ~5: 132 SMs x 128 lanes x ~1.9 GHz / ~6e12 weights/s),
barriers and shared-memory stores in the loop (a layout conversion per tile: should be 0) and
16-byte loads. A pre-filter for `int4_gemv_sweep.py`'s candidates; only device timings decide.

    python benchmarks/int4_gemv_sass.py                   # the default configs of both groups
    python benchmarks/int4_gemv_sass.py --all             # the sweep's candidates too
    python benchmarks/int4_gemv_sass.py --kmajor          # int4_kmajor's default configs
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from radixlm.kernels import int4_kmajor as KM
from radixlm.kernels import int4_packed as K

_INSTR = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


@dataclass(frozen=True)
class LoopReport:
    registers: int
    per_element: float
    barriers: int
    shared_stores: int
    wide_loads: int


def compile_gemv(plane: int, subs: int, cfg: K.GemvConfig, scale: str, bias: str) -> bytes:
    """The cubin of the GEMV for sm_90 (int arguments assumed multiples of 16, as at real shapes)."""
    names = ["x_ptr", "w_ptr", "s_ptr", "b_ptr", "y_ptr", "sums_ptr", "counts_ptr", "N", "row_words", "n_groups"]
    names += ["stride_xm", "stride_counts", "groups_per_split", "split_k"]
    types = ["*bf16", "*i32", f"*{scale}", f"*{bias}", "*bf16", "*fp32", "*i32"] + ["i32"] * 7
    signature = dict(zip(names, types))
    consts = {
        "GW": plane // 8,
        "SUBS": subs,
        "BLOCK_N": cfg.block_n,
        "BLOCK_G": cfg.block_k // plane,
        "SPLIT": cfg.split_k > 1,
    }
    signature.update({name: "constexpr" for name in consts})
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(len(names))}
    src = ASTSource(fn=K._int4_gemv_kernel, signature=signature, constexprs=consts, attrs=attrs)
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["cubin"]


def compile_kmajor(kind: str, cfg: KM.KMajorConfig, asm: bool, act: str = "bf16") -> bytes:
    """The cubin of `int4_kmajor`'s GEMV for sm_90: `kind` gptq (group 128) or q4k."""
    ints = ["N", "stride_xm", "stride_counts", "k_per_split", "split_k"]
    if kind == "q4k":
        names = ["x_ptr", "qw_ptr", "sm_ptr", "dd_ptr", "y_ptr", "sums_ptr", "counts_ptr"] + ints
        types = [f"*{act}", "*i32", "*i32", "*i32", f"*{act}", "*fp32", "*i32"] + ["i32"] * 5
        consts = {"BLOCK_N": cfg.block_n, "SPLIT": cfg.split_k > 1, "ASM": asm}
        fn = KM._q4k_gemv_kernel
    else:
        names = ["x_ptr", "qw_ptr", "qz_ptr", "s_ptr", "y_ptr", "sums_ptr", "counts_ptr"] + ints
        types = [f"*{act}", "*i32", "*i32", f"*{act}", f"*{act}", "*fp32", "*i32"] + ["i32"] * 5
        consts = {"GROUP": 128, "BLOCK_N": cfg.block_n, "BLOCK_W": cfg.block_w, "SPLIT": cfg.split_k > 1, "ASM": asm}
        fn = KM._gptq_gemv_kernel
    signature = dict(zip(names, types))
    signature.update({name: "constexpr" for name in consts})
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(len(names))}
    src = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
    options = {"num_warps": cfg.num_warps, "num_stages": 1}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["cubin"]


def report_kmajor(kind: str, cfg: KM.KMajorConfig, asm: bool) -> LoopReport:
    rows = 4 if kind == "q4k" else cfg.block_w  # word rows per tile
    return inspect(compile_kmajor(kind, cfg, asm), cfg.block_n * rows * 8 / (32 * cfg.num_warps))


def inspect(cubin: bytes, elements_per_thread: float) -> LoopReport:
    """Registers and the K loop's (the backward branch's body) instruction mix."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    code = [(int(m.group(1), 16), m.group(2), line) for line in sass.splitlines() if (m := _INSTR.match(line))]
    start = end = 0
    for addr, op, line in code:
        target = re.search(r"BRA (0x[0-9a-f]+)", line)
        if op == "BRA" and target and int(target.group(1), 16) < addr:
            start, end = int(target.group(1), 16), addr
    body = [(op, line) for addr, op, line in code if start <= addr <= end]
    return LoopReport(
        registers=int(re.search(r"REG:(\d+)", usage).group(1)),
        per_element=len(body) / elements_per_thread,
        barriers=sum(op.startswith("BAR") for op, _ in body),
        shared_stores=sum(op.startswith("STS") for op, _ in body),
        wide_loads=sum("LDG.E.128" in line for _, line in body),
    )


def report(group: int, cfg: K.GemvConfig) -> LoopReport:
    plane = 32 if group % 32 == 0 else 16
    scale, bias = ("fp16", "fp16") if group == 32 else ("bf16", "fp32")  # Q4_K; GPTQ / AWQ
    elements = cfg.block_n * cfg.block_k / (32 * cfg.num_warps)
    return inspect(compile_gemv(plane, group // plane, cfg, scale, bias), elements)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="also the sweep's candidate configs")
    parser.add_argument("--kmajor", action="store_true", help="int4_kmajor's kernels instead")
    a = parser.parse_args()
    if a.kmajor:
        main_kmajor()
        return
    configs = [K.gemv_config(1, 4096, 4096, 32)]
    if a.all:
        from int4_gemv_sweep import CANDIDATES

        configs += [K.GemvConfig(bn, bk, 2, w, s) for bn, bk, w, s in CANDIDATES]
    for group in (32, 128):
        for cfg in configs:
            try:
                r = report(group, cfg)
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"group {group:3d} {cfg}: failed: {type(exc).__name__}: {str(exc)[:160]}")
                continue
            print(
                f"group {group:3d} rows {cfg.block_n:3d} k {cfg.block_k:4d} warps {cfg.num_warps} "
                f"stages {cfg.num_stages}: {r.registers:3d} regs, {r.per_element:4.2f} instr/weight, "
                f"loop barriers {r.barriers}, shared stores {r.shared_stores}, 16-byte loads {r.wide_loads}",
                flush=True,
            )


def main_kmajor() -> None:
    """`int4_kmajor`'s default batch-1 launches at Llama-3-8B's qkv shape, both paths."""
    for kind, cfg in (("gptq", KM.gptq_config(1, 6144, 4096, 128)), ("q4k", KM.q4k_config(1, 6144, 4096))):
        for asm in (False, True):
            r = report_kmajor(kind, cfg, asm)
            print(
                f"{kind:4s} {'ptx' if asm else 'portable':8s} {cfg}: {r.registers:3d} regs, "
                f"{r.per_element:4.2f} instr/weight, loop barriers {r.barriers}, shared stores "
                f"{r.shared_stores}, 16-byte loads {r.wide_loads}",
                flush=True,
            )


if __name__ == "__main__":
    main()

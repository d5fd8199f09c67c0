"""The programmatic-dependent-launch contract of `radixlm/pdl.py`, checked on the source of
every Triton kernel that takes a `PDL` constexpr (the GPU is not needed; a kernel that broke
the contract would read stale data only on Hopper, and only sometimes):

- its body reaches `if PDL: pdl_wait()` (or `pdl_enter()`) at the top level;
- before that it stores nothing, calls no helper (which could load or store) other than
  `pdl_release`, and loads only from the pointers allowed below, which no kernel writes;
- every launch of it passes `**pdl_launch(...)`, so its PDL constexpr and Triton's
  `launch_pdl` are set together.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "radixlm"
# kernel -> pointer arguments it may load before the wait: memory no PDL kernel writes (weights;
# also host-written metadata, since a non-PDL kernel completes before any PDL kernel after it launches)
ALLOWED_BEFORE_WAIT = {"_gemv_kernel": {"w_ptr"}}
WAITS = {"pdl_wait", "pdl_enter"}
PURE_TL = {"program_id", "arange", "zeros", "full", "cdiv", "minimum", "maximum", "where", "num_programs"}


def _kernels() -> list[tuple[pathlib.Path, ast.Module, ast.FunctionDef]]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        source = path.read_text()
        if "PDL: tl.constexpr" not in source:
            continue
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any(a.arg == "PDL" for a in node.args.args):
                found.append((path, tree, node))
    return found


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _is_tl(call: ast.Call) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "tl"


def _waits(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Name) and stmt.test.id == "PDL"
            and any(isinstance(c, ast.Call) and _name(c) in WAITS for s in stmt.body for c in ast.walk(s)))


KERNELS = _kernels()


def test_the_kernels_are_found() -> None:
    names = {k.name for _, _, k in KERNELS}
    assert {"_gemv_kernel", "_rmsnorm_kernel", "_silu_mul_kernel", "_rope_store_kernel",
            "_decode_split_kernel", "_decode_reduce_kernel"} <= names, names


@pytest.mark.parametrize("kernel", [k for _, _, k in KERNELS], ids=[k.name for _, _, k in KERNELS])
def test_nothing_touches_written_memory_before_the_wait(kernel: ast.FunctionDef) -> None:
    allowed = ALLOWED_BEFORE_WAIT.get(kernel.name, set())
    body = [s for s in kernel.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    waits_at = next((i for i, s in enumerate(body) if _waits(s)), None)
    assert waits_at is not None, f"{kernel.name} never reaches `if PDL: pdl_wait()` at its top level"
    for stmt in body[:waits_at]:
        for call in (n for n in ast.walk(stmt) if isinstance(n, ast.Call)):
            name = _name(call)
            if name in ("pdl_release", "to") or (_is_tl(call) and name in PURE_TL):
                continue
            assert _is_tl(call) and name == "load", f"{kernel.name}: {name}() before the PDL wait"
            pointers = {n.id for n in ast.walk(call.args[0]) if isinstance(n, ast.Name) and n.id.endswith("_ptr")}
            assert pointers <= allowed, f"{kernel.name} loads {pointers - allowed} before the PDL wait"


@pytest.mark.parametrize("path,tree,kernel", KERNELS, ids=[k.name for _, _, k in KERNELS])
def test_every_launch_passes_pdl_launch(path: pathlib.Path, tree: ast.Module, kernel: ast.FunctionDef) -> None:
    launches = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Subscript)
                and isinstance(n.func.value, ast.Name) and n.func.value.id == kernel.name]
    assert launches, f"{kernel.name} is never launched in {path.name}"
    for call in launches:
        assert any(k.arg is None and isinstance(k.value, ast.Call) and _name(k.value) == "pdl_launch"
                   for k in call.keywords), f"{path.name}:{call.lineno} launches {kernel.name} without **pdl_launch"

"""The programmatic-dependent-launch contract of `radixlm/kernels/pdl.py`, checked on the source of
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

ROOT = pathlib.Path(__file__).resolve().parents[2] / "radixlm"
# kernel -> pointer arguments it may load before the wait: memory no PDL kernel writes (weights;
# also host-written metadata, since a non-PDL kernel completes before any PDL kernel after it launches)
ALLOWED_BEFORE_WAIT = {
    "_gemv_kernel": {"w_ptr"},
    "_router_route_kernel": {"router_ptr"},  # the MoE router's weight
    "_gated_add_kernel": {"gate_ptr"},  # Qwen2-MoE's shared expert gate
    "_decode_split_kernel": {
        "seq_lens_ptr",
        "req_idx_ptr",
        "starts_ptr",
        "req_to_token_ptr",
        "loc_ptr",
        "cos_ptr",
        "sin_ptr",
    },
    "_verify_split_kernel": {"req_idx_ptr", "seq_lens_ptr"},
    "_rope_store_kernel": {"loc_ptr", "pos_ptr", "cos_ptr", "sin_ptr"},
    "_shrink_kernel": {"slots_ptr", "lens_ptr", "a_ptr"},  # LoRA A, B: written by host copies only
    "_expand_kernel": {"slots_ptr", "lens_ptr", "b_ptr"},
}
WAITS = {"pdl_wait", "pdl_enter"}
PURE_TL = {"program_id", "arange", "zeros", "full", "cdiv", "minimum", "maximum", "where", "num_programs"}


TREES = {path: ast.parse(path.read_text()) for path in sorted(ROOT.rglob("*.py"))}


def _kernels() -> list[ast.FunctionDef]:
    """Every function (a Triton kernel) with a parameter named PDL, in any module."""
    return [
        node
        for tree in TREES.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and any(a.arg == "PDL" for a in node.args.args)
    ]


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _is_tl(call: ast.Call) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "tl"


def _waits(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.If)
        and isinstance(stmt.test, ast.Name)
        and stmt.test.id == "PDL"
        and any(isinstance(c, ast.Call) and _name(c) in WAITS for s in stmt.body for c in ast.walk(s))
    )


def _roots(expr: ast.AST, derived: dict[str, set[str]]) -> set[str]:
    """The `*_ptr` arguments an expression's names come from, through earlier assignments."""
    roots: set[str] = set()
    for node in ast.walk(expr):
        if isinstance(node, ast.Name):
            if node.id in derived:  # a local, even one named *_ptr, stands for what it was made from
                roots |= derived[node.id]
            elif node.id.endswith("_ptr"):
                roots.add(node.id)
    return roots


def _derived_pointers(pieces: list[ast.AST]) -> dict[str, set[str]]:
    """Each local name -> every `*_ptr` argument any assignment to it (plain, augmented,
    annotated or `:=`, anywhere before the wait) draws on, to a fixed point: order-blind, so a
    value carried around a loop or reassigned later is never missed."""
    derived: dict[str, set[str]] = {}
    changed = True
    while changed:
        changed = False
        for node in (n for piece in pieces for n in ast.walk(piece)):
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
                targets, value = [node.target], node.value
            else:
                continue
            roots = _roots(value, derived)
            if isinstance(node, ast.AugAssign):
                roots |= _roots(node.target, derived)
            for name in (n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)):
                if not roots <= derived.get(name, set()):
                    derived[name] = derived.get(name, set()) | roots
                    changed = True
    return derived


def _flatten(stmt: ast.stmt) -> list[ast.AST]:
    """A statement as the simple pieces it runs, in source order: an `if`'s or loop's own test
    (or iterator), then the statements of its branches, flattened in turn."""
    if isinstance(stmt, ast.If):
        return [stmt.test] + [p for s in stmt.body + stmt.orelse for p in _flatten(s)]
    if isinstance(stmt, (ast.For, ast.While)):
        head = stmt.iter if isinstance(stmt, ast.For) else stmt.test
        return [head] + [p for s in stmt.body + stmt.orelse for p in _flatten(s)]
    return [stmt]


KERNELS = _kernels()


def test_the_kernels_are_found() -> None:
    names = {k.name for k in KERNELS}
    assert {
        "_gemv_kernel",
        "_rmsnorm_kernel",
        "_silu_mul_kernel",
        "_rope_store_kernel",
        "_decode_split_kernel",
        "_decode_reduce_kernel",
        "_verify_split_kernel",
        "_shrink_kernel",
        "_expand_kernel",
    } <= names, names


@pytest.mark.parametrize("kernel", KERNELS, ids=[k.name for k in KERNELS])
def test_nothing_touches_written_memory_before_the_wait(kernel: ast.FunctionDef) -> None:
    allowed = ALLOWED_BEFORE_WAIT.get(kernel.name, set())
    body = [s for s in kernel.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    waits_at = next((i for i, s in enumerate(body) if _waits(s)), None)
    assert waits_at is not None, f"{kernel.name} never reaches `if PDL: pdl_wait()` at its top level"
    pieces = [s for top in body[:waits_at] for s in _flatten(top)]
    derived = _derived_pointers(pieces)
    for stmt in pieces:
        for call in (n for n in ast.walk(stmt) if isinstance(n, ast.Call)):
            name = _name(call)
            if name in ("pdl_release", "to") or (_is_tl(call) and name in PURE_TL):
                continue
            assert _is_tl(call) and name == "load", f"{kernel.name}: {name}() before the PDL wait"
            pointers = _roots(call.args[0], derived)
            assert pointers, f"{kernel.name}: a load before the PDL wait from no known pointer argument"
            assert pointers <= allowed, f"{kernel.name} loads {pointers - allowed} before the PDL wait"
    first = body[waits_at].body[0]
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Call) and _name(first.value) in WAITS, (
        f"{kernel.name}: something runs in `if PDL:` before the wait"
    )


@pytest.mark.parametrize("kernel", KERNELS, ids=[k.name for k in KERNELS])
def test_every_launch_passes_pdl_launch(kernel: ast.FunctionDef) -> None:
    launches = [
        (path, n)
        for path, tree in TREES.items()
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Subscript)
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == kernel.name
    ]
    assert launches, f"{kernel.name} is never launched"
    for path, call in launches:
        assert any(
            k.arg is None and isinstance(k.value, ast.Call) and _name(k.value) == "pdl_launch" for k in call.keywords
        ), f"{path.name}:{call.lineno} launches {kernel.name} without **pdl_launch"


def test_launch_pdl_only_through_pdl_launch() -> None:
    """No launch sets `launch_pdl` by hand (it would run a kernel under PDL without its wait)."""
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                assert all(k.arg != "launch_pdl" for k in node.keywords), f"{path.name}:{node.lineno} sets launch_pdl"

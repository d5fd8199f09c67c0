"""The package's import graph (every `import` statement, lazy ones included) has no cycles, and
the top level holds only packages plus the few modules docs/architecture.md names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "radixlm"
# SGLang's `python -m` names, kept as aliases of the tools in entrypoints/ and bench/.
TOP_LEVEL_MODULES = {
    "__init__.py",
    "launch_server.py",
    "bench_serving.py",
    "bench_one_batch.py",
    "bench_latency.py",
    "bench_offline_throughput.py",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the radixlm modules it imports (a `from pkg import name` counts as pkg.name when
    that is a module, else as pkg)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets.update(
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                )
        graph[name] = {_owner(t, modules) for t in targets if _owner(t, modules)} - {name}
    return graph


def _owner(target: str, modules: dict[str, Path]) -> str:
    """The longest radixlm module that `target` names or lies in ("" outside radixlm)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path [a, b, ..., a], or [] when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return []


def test_the_import_graph_has_no_cycles() -> None:
    assert find_cycle(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_top_level_holds_packages_and_the_command_aliases() -> None:
    modules = {p.name for p in ROOT.glob("*.py")}
    assert modules == TOP_LEVEL_MODULES
    for alias in TOP_LEVEL_MODULES - {"__init__.py"}:
        assert len((ROOT / alias).read_text().splitlines()) <= 10, alias

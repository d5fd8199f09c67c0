"""`$ref`s resolved against the base URI in effect, rewritten as JSON pointers from the root.

A reference inside a subschema with its own `$id` is relative to that `$id`; a reference may name
a `$defs` entry by the full URI of an embedded resource, an `$anchor` (a plain-name fragment) of
any resource of the document, or use `$dynamicRef`. `resolve_ids` resolves every reference with
`referencing` (the `jsonschema` project's resolver: a registry holding only this document, so
nothing is ever fetched) and writes each as the `#/...` pointer of its target, which the rest of
the lowering handles (`schema_walk.hoist_refs`, `schema_lower`).

A `$dynamicRef` becomes a static `$ref` only where its dynamic resolution cannot differ from a
static one: its initial target carries no `$dynamicAnchor` of the fragment's name (then it acts
as `$ref`); or the root resource declares that `$dynamicAnchor` (the root is the outermost
dynamic scope of every evaluation, so it wins); or no resource other than the initial target's
declares it.

Invariant: the result validates exactly the instances the original validates; when any
reference cannot be resolved within the document (another document, a `$dynamicRef` whose
target depends on the dynamic scope), the original is returned unchanged (its refusal names
that reference). Recursive references stay references (no target is copied).
"""

from __future__ import annotations

from typing import Any, Iterator
from urllib.parse import urldefrag, urljoin, urlsplit

import referencing
import referencing.exceptions
import referencing.jsonschema

ROOT_BASE = "https://radixlm.invalid/root.json"  # the base of a root without `$id`: nothing else lives there
BOOL_DEFS = {True: "radixlm_true", False: "radixlm_false"}


class Unresolved(Exception):
    """A reference that does not resolve to a schema of this document (statically)."""


def resolve_ids(root: Any) -> Any:
    """`root` with every `$ref`/`$dynamicRef` written as a `$ref` to a `#/...` pointer from the
    root and every `$id` dropped; the original object when nothing needs it or any reference
    does not resolve in-document (see the module docstring), or the document is malformed
    (a `$schema` or `$id` that is not a string, an invalid URI)."""
    if not isinstance(root, dict) or not _needs_pass(root):
        return root
    try:
        return _Pass(root).run()
    except (Unresolved, referencing.exceptions.Unresolvable, referencing.exceptions.Unretrievable):
        return root
    except (AttributeError, TypeError, ValueError):  # a malformed `$schema`, `$id` or URI
        return root


def _needs_pass(root: dict) -> bool:
    """Some reference is not a plain pointer from the root, or some nested schema has an `$id`."""
    for path, node in _dicts(root, "#"):
        ref = node.get("$ref")
        if "$dynamicRef" in node or isinstance(ref, str) and not (ref == "#" or ref.startswith("#/")):
            return True
        if path != "#" and isinstance(node.get("$id"), str):
            return True
    return False


def _dicts(node: Any, path: str) -> Iterator[tuple[str, dict]]:
    """Every dict inside `node` (any position) with its JSON pointer, parents first."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _dicts(value, f"{path}/{_escape(key)}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _dicts(value, f"{path}/{i}")


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


class _Pass:
    """One document: its registry, where each dict sits, and the rewrites found."""

    def __init__(self, root: dict) -> None:
        self.root = root
        spec = referencing.jsonschema.specification_with(
            root.get("$schema", ""), default=referencing.jsonschema.DRAFT202012
        )
        self.resource = spec.create_resource(root)
        self.base = _base(urljoin(ROOT_BASE, self.resource.id() or ""))
        self.registry = referencing.Registry().with_resource(self.base, self.resource).crawl()
        self.pointers: dict[int, str] = {}
        for path, node in _dicts(root, "#"):
            self.pointers.setdefault(id(node), path)
        self.rewrites: dict[int, Any] = {}
        self.dynamic: list[tuple[str, dict]] = []  # (resource base, node) per `$dynamicAnchor`
        self.bools_used: set[bool] = set()

    def run(self) -> dict:
        visits = list(self._visit(self.resource, self.base))
        for base, node in visits:
            if isinstance(node.get("$dynamicAnchor"), str):
                self.dynamic.append((base, node))
        for base, node in visits:
            self.rewrites[id(node)] = self._rewritten(base, node)
        out = self._copy(self.root)
        if self.bools_used:
            out["$defs"] = {**out.get("$defs", {}), **{BOOL_DEFS[b]: b for b in self.bools_used}}
        return out

    def _visit(self, resource: Any, base: str) -> Iterator[tuple[str, dict]]:
        """(base URI in effect, node) for every object subschema, by the draft's own keywords."""
        if not isinstance(resource.contents, dict):
            return
        if resource.id() is not None:
            base = _base(urljoin(base, resource.id()))
        yield base, resource.contents
        for sub in resource.subresources():
            yield from self._visit(sub, base)

    def _rewritten(self, base: str, node: dict) -> Any:
        """`node` with its references as root pointers and no `$id`; a lone reference to a
        boolean schema is that boolean."""
        resolver = self.registry.resolver(base_uri=base)
        ref, dynamic = node.get("$ref"), node.get("$dynamicRef")
        if dynamic is not None and not isinstance(dynamic, str):
            raise Unresolved(repr(dynamic))
        static = resolver.lookup(ref).contents if isinstance(ref, str) else None
        moving = self._dynamic_target(resolver, base, dynamic) if dynamic is not None else None
        out = {k: v for k, v in node.items() if k not in ("$id", "$ref", "$dynamicRef")}
        targets = [t for key, t in (("$ref", static), ("$dynamicRef", moving)) if isinstance(node.get(key), str)]
        if not out and len(targets) == 1 and isinstance(targets[0], bool) and node is not self.root:
            return targets[0]
        pointers = [{"$ref": self._pointer(t)} for t in targets]
        if len(pointers) == 2:
            out["allOf"] = [*out.get("allOf", []), pointers[1]]
        return {**out, **pointers[0]} if pointers else out

    def _dynamic_target(self, resolver: Any, base: str, ref: str) -> Any:
        resolved = resolver.lookup(ref)
        name = urlsplit(ref).fragment
        target = resolved.contents
        if not name or name.startswith("/") or not isinstance(target, dict) or target.get("$dynamicAnchor") != name:
            return target  # behaves as $ref
        declaring = [(b, n) for b, n in self.dynamic if n.get("$dynamicAnchor") == name]
        in_root = [n for b, n in declaring if b == self.base]
        if in_root:
            return in_root[0]
        own = _base(urljoin(base, ref))
        if all(b == own for b, _ in declaring):
            return target
        raise Unresolved(ref)

    def _pointer(self, target: Any) -> str:
        if isinstance(target, bool):
            self.bools_used.add(target)
            return f"#/$defs/{BOOL_DEFS[target]}"
        found = self.pointers.get(id(target))
        if found is None:
            raise Unresolved("a target outside the document")
        return found

    def _copy(self, node: Any) -> Any:
        if isinstance(node, dict):
            source = self.rewrites.get(id(node), node)
            if isinstance(source, bool):
                return source
            return {k: self._copy(v) for k, v in source.items()}
        if isinstance(node, list):
            return [self._copy(v) for v in node]
        return node


def _base(uri: str) -> str:
    return urldefrag(uri)[0]

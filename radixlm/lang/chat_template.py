"""Role markers (the text around a system / user / assistant message) for a backend's model.

`derive_chat_template(render)` recovers them from any chat-template renderer (a function of a
message list, e.g. the model's Jinja template) by rendering sentinel messages and cutting the
rendered text around them, so `s += user(q)` produces exactly what the template would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from radixlm.lang.ir import ROLES

Render = Callable[[list[dict]], str]
_SENTINEL = "@@radixlm-content-{}@@"


@dataclass(frozen=True)
class RoleMarkers:
    """`first_prefix` opens the role when the state is still empty (it may carry a BOS token or
    a default system prompt); `prefix` opens it after earlier messages; `suffix` closes it."""

    first_prefix: str
    prefix: str
    suffix: str


@dataclass(frozen=True)
class ChatTemplate:
    """Role markers by role name."""

    roles: dict[str, RoleMarkers]
    name: str = "derived"

    def begin(self, role: str, at_start: bool) -> str:
        markers = self._markers(role)
        return markers.first_prefix if at_start else markers.prefix

    def end(self, role: str) -> str:
        return self._markers(role).suffix

    def _markers(self, role: str) -> RoleMarkers:
        if role not in self.roles:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        return self.roles[role]


def plain_chat_template() -> ChatTemplate:
    """For models without a template and for chat APIs (whose text is only for display)."""
    roles = {r: RoleMarkers(f"{r.upper()}: ", f"{r.upper()}: ", "\n") for r in ROLES}
    roles["assistant"] = RoleMarkers("ASSISTANT:", "ASSISTANT:", "\n")
    return ChatTemplate(roles, name="plain")


def derive_chat_template(render: Render) -> ChatTemplate:
    """Markers for every role from `render(messages) -> text` (no generation prompt).

    A role the renderer refuses (e.g. a template that requires alternating user/assistant)
    falls back to the plain markers for that role."""
    plain = plain_chat_template()
    roles = {}
    for role in ROLES:
        roles[role] = _role_markers(render, role) or plain.roles[role]
    return ChatTemplate(roles)


def _role_markers(render: Render, role: str) -> Optional[RoleMarkers]:
    first = _cut(render, [], role)
    context = {
        "assistant": [("user", 1)],
        "user": [("user", 1), ("assistant", 2)],
        "system": [("user", 1), ("assistant", 2)],
    }[role]
    later = _cut(render, [{"role": r, "content": _SENTINEL.format(i)} for r, i in context], role)
    if first is None and later is None:
        return None
    first = first or later
    later = later or first
    return RoleMarkers(first_prefix=first[0], prefix=later[0], suffix=later[1])


def _cut(render: Render, history: list[dict], role: str) -> Optional[tuple[str, str]]:
    """(prefix, suffix) of a `role` message rendered after `history`, or None when the renderer
    fails or does not render `history` as a prefix of `history + [message]`."""
    content = _SENTINEL.format(0)
    try:
        before = render(history) if history else ""
        text = render(history + [{"role": role, "content": content}])
    except Exception:  # a template may refuse some role orders; that role falls back
        return None
    at = text.find(content)
    if at < 0 or not text.startswith(before) or at < len(before):
        return None
    return text[len(before) : at], text[at + len(content) :]

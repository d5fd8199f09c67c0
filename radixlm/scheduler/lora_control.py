"""The scheduler's side of LoRA: a request's adapter name to its uid, and loading / unloading
adapters at run time (refused while a request that uses the adapter is still queued or running)."""

from __future__ import annotations

from typing import Callable, Iterable

from radixlm.lora.manager import BASE, LoraManager
from radixlm.scheduler.request import Req


class LoraControl:
    """Invariant: an adapter is unloaded only when no request in `live()` uses it, so every
    request in a batch names a loaded adapter."""

    def __init__(self, manager: LoraManager, live: Callable[[], Iterable[Req]], tp_size: int = 1) -> None:
        self.manager, self.live, self.tp_size = manager, live, tp_size

    def _check_runtime_change(self, what: str) -> None:
        """Followers load their start-up adapters themselves and hear of no later change: under
        tensor parallelism the served adapters are fixed at start-up."""
        if self.tp_size > 1:
            raise ValueError(f"{what} LoRA adapters at run time is not supported with tp_size > 1 (use --lora-paths)")

    def uid_for(self, name: str | None) -> int:
        """The uid of adapter `name` (BASE for None); ValueError naming an unknown one."""
        return BASE if name is None else self.manager.uid_of(name)

    def load(self, lora_name: str, lora_path: str) -> dict[str, str]:
        """Load an adapter; returns {name: path} of those loaded (ValueError: bad adapter or name taken)."""
        self._check_runtime_change("loading")
        self.manager.load(lora_name, lora_path)
        return self.manager.paths()

    def unload(self, lora_name: str) -> dict[str, str]:
        """Unload an adapter no request uses; returns {name: path} of those still loaded."""
        self._check_runtime_change("unloading")
        uid = self.manager.uid_of(lora_name)
        users = sum(1 for req in self.live() if req.lora_uid == uid)
        if users:
            raise ValueError(f"LoRA adapter {lora_name!r} is in use by {users} request(s); unload it when they finish")
        self.manager.unload(lora_name)
        return self.manager.paths()


def no_lora(name: str | None) -> int:
    """`uid_for` of a server without LoRA: any adapter name is refused."""
    if name is not None:
        raise ValueError(f"LoRA adapter {name!r} requested, but this server serves no adapters (see --lora-paths)")
    return BASE

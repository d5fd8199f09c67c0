"""The scheduler process's LoRA state: loaded adapters by name, their device slots, and the
per-row adapter slots of each forward (see `LoraManager.prepare`)."""

from __future__ import annotations

import itertools
from typing import Any, Optional

import torch
from torch import nn

from radixlm.forward.batch import ForwardBatch
from radixlm.lora.adapter import LoraAdapter, load_adapter
from radixlm.lora.batch_info import LoraBatchInfo
from radixlm.lora.config import parse_lora_paths, read_adapter_config
from radixlm.lora.layer import LoraKernels
from radixlm.lora.pool import SlotPool
from radixlm.lora.wrap import model_targets, wrap_model

BASE = 0  # the adapter uid of a request on the base model


class LoraManager:
    """Invariants: every name in `by_name` has a distinct uid >= 1, never reused (so a KV cache
    keyed by uid never mixes two adapters loaded under one name); `uid_of` answers only loaded
    adapters; `prepare(batch)` leaves the layers reading `batch`'s per-row slots."""

    def __init__(
        self,
        model: nn.Module,
        config: Any,
        max_loras: int,
        max_rank: int,
        max_tokens: int,
        device: torch.device,
    ) -> None:
        self.max_rank, self.max_loras = max_rank, max_loras
        self.info = LoraBatchInfo(max_tokens, device, max_loras)
        self._scale_dev = torch.zeros(max_loras, dtype=torch.float32, device=device)
        self._scale_host = [0.0] * max_loras
        scales = (self._scale_dev, self._scale_host)
        self.layers, self.shapes = wrap_model(
            model, config, self.info, LoraKernels(device), scales, max_loras, max_rank
        )
        self.targets = model_targets(self.layers)
        self.by_name: dict[str, LoraAdapter] = {}
        self.uids: dict[str, int] = {}
        self._adapters: dict[int, LoraAdapter] = {}
        self._next_uid = itertools.count(BASE + 1)
        self.slots = SlotPool(max_loras, self._load_slot)

    # -- registry ---------------------------------------------------------------------
    def load(self, name: str, path: str) -> None:
        """Read, check and register adapter `name` (ValueError: bad adapter, or the name is taken)."""
        if not name or not isinstance(name, str):
            raise ValueError(f"LoRA adapter name must be a non-empty string, got {name!r}")
        if name in self.uids:
            raise ValueError(f"LoRA adapter {name!r} is already loaded")
        config = read_adapter_config(name, path, self.max_rank)
        missing = sorted(config.targets - self.targets)
        if missing:
            raise ValueError(f"LoRA adapter {name!r}: target module(s) {', '.join(missing)} not in this model")
        adapter = load_adapter(name, path, self.shapes, self.max_rank)
        uid = next(self._next_uid)
        self.uids[name], self.by_name[name], self._adapters[uid] = uid, adapter, adapter

    def unload(self, name: str) -> int:
        """Forget adapter `name`; returns its uid (KeyError-free: ValueError when not loaded)."""
        uid = self.uid_of(name)
        del self.uids[name], self.by_name[name], self._adapters[uid]
        self.slots.drop(uid)
        return uid

    def uid_of(self, name: str) -> int:
        """The uid of a loaded adapter; ValueError naming `name` otherwise."""
        uid = self.uids.get(name)
        if uid is None:
            raise ValueError(f"LoRA adapter {name!r} is not loaded")
        return uid

    def names(self) -> list[str]:
        return list(self.uids)

    def paths(self) -> dict[str, str]:
        """{name: adapter directory} of the loaded adapters, in load order."""
        return {name: adapter.path for name, adapter in self.by_name.items()}

    # -- per forward -------------------------------------------------------------------
    def prepare(self, batch: ForwardBatch) -> None:
        """Make the batch's adapters resident and point every row at its adapter's slot."""
        ids = batch.lora_ids or [BASE] * batch.batch_size
        used = [uid for uid in ids if uid != BASE]
        slot_of = self.slots.acquire(used) if used else {}
        row_slots = [slot_of[uid] if uid != BASE else -1 for uid in ids]
        self.info.set_rows(row_slots, batch.extend_seq_lens_cpu)

    def reset(self) -> None:
        """All rows on the base model, decode layout."""
        self.info.reset()

    def capture_variant(self, with_lora: bool) -> None:
        """Before a CUDA-graph capture: all rows on the base model, decode layout, and the layers
        launching their LoRA kernels (empty until a replay's rows name adapters) iff `with_lora`.
        A replay picks the variant by `info.active` (set by `prepare`)."""
        self.info.reset(active=with_lora)

    def _load_slot(self, slot: int, uid: int) -> None:
        adapter = self._adapters[uid]
        for layer, wrapped in enumerate(self.layers):
            by_layer: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
            for module in adapter.config.targets:
                by_layer.setdefault(id(wrapped[module]), {})[module] = adapter.weights[layer, module]
            for module_obj in {id(m): m for m in wrapped.values()}.values():
                module_obj.load_slot(slot, by_layer.get(id(module_obj), {}))
        self._scale_host[slot] = adapter.config.scaling
        self._scale_dev[slot] = adapter.config.scaling


def build_lora_manager(
    args: Any, model: nn.Module, config: Any, max_tokens: int, device: torch.device
) -> Optional[LoraManager]:
    """The manager with `args.lora_paths` loaded, or None when LoRA is off (no adapters, no
    `enable_lora`). The pool's rank is `max_lora_rank`, else the largest start-up adapter's."""
    paths = parse_lora_paths(args.lora_paths)
    if not paths and not args.enable_lora:
        return None
    if args.enable_torch_compile:
        raise ValueError("LoRA adapters with --enable-torch-compile are not supported yet: drop one of the two")
    rank = args.max_lora_rank
    if rank is None:
        if not paths:
            raise ValueError("enable_lora without lora_paths needs max_lora_rank (the pool's rank)")
        rank = max(read_adapter_config(name, path).rank for name, path in paths.items())
    manager = LoraManager(model, config, args.max_loras_per_batch, rank, max_tokens, device)
    for name, path in paths.items():
        manager.load(name, path)
    return manager

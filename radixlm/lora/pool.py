"""Device slots for adapters: which adapter sits in which slot, least recently used evicted first.

Every loaded adapter stays in host memory (its `LoraAdapter`); `max_loras_per_batch` slots hold
copies on the device. A batch's adapters are made resident before it runs: missing ones take a
free slot or the slot of the least recently used adapter that the batch does not use.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable


class SlotPool:
    """Invariant: `resident` maps each device-resident adapter uid to a distinct slot in
    [0, num_slots), least recently used first; `load_fn(slot, uid)` has filled that slot."""

    def __init__(self, num_slots: int, load_fn: Callable[[int, int], None]) -> None:
        self.num_slots, self.load_fn = num_slots, load_fn
        self.resident: OrderedDict[int, int] = OrderedDict()
        self.num_loads = 0

    def acquire(self, uids: list[int]) -> dict[int, int]:
        """Slots of the distinct `uids` (at most `num_slots` of them), loading those not resident."""
        wanted = list(dict.fromkeys(uids))
        if len(wanted) > self.num_slots:
            raise ValueError(f"a batch uses {len(wanted)} adapters; max_loras_per_batch is {self.num_slots}")
        for uid in wanted:
            if uid in self.resident:
                self.resident.move_to_end(uid)
            else:
                slot = self._free_slot(set(wanted))
                self.load_fn(slot, uid)
                self.num_loads += 1
                self.resident[uid] = slot
        return {uid: self.resident[uid] for uid in wanted}

    def drop(self, uid: int) -> None:
        """Forget `uid` (unloaded): its slot becomes free."""
        self.resident.pop(uid, None)

    def _free_slot(self, keep: set[int]) -> int:
        used = set(self.resident.values())
        for slot in range(self.num_slots):
            if slot not in used:
                return slot
        for uid, slot in self.resident.items():  # least recently used first
            if uid not in keep:
                del self.resident[uid]
                return slot
        raise AssertionError("no slot to evict: the batch's adapters were counted above")

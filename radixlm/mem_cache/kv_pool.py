"""Preallocated KV storage, the page allocator over it, and the request-to-token table."""

from __future__ import annotations

import torch


class KVPool:
    """K and V buffers for every layer: [num_slots, num_kv_heads, head_dim] each.

    The first page (slots 0..page_size-1) is reserved as a padding target and never
    handed out, so padded index tensors may point at slot 0 harmlessly.
    """

    def __init__(
        self,
        size: int,
        page_size: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.size = size
        self.page_size = page_size
        total = size + page_size
        shape = (total, num_kv_heads, head_dim)
        self.k_buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    def set_kv(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write new tokens' k/v [T, Hkv, D] at slots `loc` [T]."""
        self.k_buffers[layer_id][loc] = k.to(self.k_buffers[layer_id].dtype)
        self.v_buffers[layer_id][loc] = v.to(self.v_buffers[layer_id].dtype)

    def bytes_per_token(self) -> int:
        k = self.k_buffers[0]
        return 2 * len(self.k_buffers) * k.shape[1] * k.shape[2] * k.element_size()


KV_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def kv_cache_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """The pool's storage dtype for `--kv-cache-dtype` (`auto`: the model's). fp8 entries are
    stored unscaled (scale 1.0): values are cast on write and cast back to the query's dtype on read."""
    return model_dtype if name == "auto" else KV_DTYPES[name]


class SlotAllocator:
    """Hands out KV slots page by page. Invariant: a page is either free or handed out, and
    `available_size()` counts free slots (whole free pages times page_size)."""

    def __init__(self, size: int, page_size: int) -> None:
        self.size = size
        self.page_size = page_size
        self.num_pages = size // page_size
        self.reset()

    def reset(self) -> None:
        # Page 0 is the reserved padding page; usable pages are 1..num_pages.
        self._free_pages = list(range(self.num_pages, 0, -1))

    def available_size(self) -> int:
        return len(self._free_pages) * self.page_size

    def alloc(self, last_loc: int, start: int, count: int) -> list[int] | None:
        """Slots for positions [start, start+count) of one sequence whose slot at position
        start-1 is `last_loc` (ignored when start is page-aligned). Returns None, changing
        nothing, when there are not enough free pages."""
        p = self.page_size
        if p == 1:  # what popping `count` single pages gives, as one slice
            if count > len(self._free_pages):
                return None
            slots = self._free_pages[len(self._free_pages) - count :]
            del self._free_pages[len(self._free_pages) - count :]
            slots.reverse()
            return slots
        in_page = min(count, (-start) % p)
        pages_needed = -(-(count - in_page) // p)
        if pages_needed > len(self._free_pages):
            return None
        slots = list(range(last_loc + 1, last_loc + 1 + in_page))
        for _ in range(pages_needed):
            page = self._free_pages.pop()
            slots.extend(range(page * p, page * p + p))
        return slots[:count]

    def alloc_singles(self, count: int) -> list[int] | None:
        """`count` single slots at once (page size 1 only); None, changing nothing, if too few."""
        assert self.page_size == 1
        if count > len(self._free_pages):
            return None
        slots = self._free_pages[len(self._free_pages) - count :]
        del self._free_pages[len(self._free_pages) - count :]
        return slots

    def free(self, slots: list[int]) -> None:
        """Return the pages of `slots`; callers only ever free whole pages they own."""
        if not slots:
            return
        p = self.page_size
        pages = set(s // p for s in slots) if p > 1 else slots
        self._free_pages.extend(pages)


class ReqToTokenPool:
    """Row i maps the token positions of the request holding row i to KV slots."""

    def __init__(self, max_reqs: int, max_context_len: int, device: torch.device) -> None:
        self.table = torch.zeros((max_reqs, max_context_len), dtype=torch.int64, device=device)
        self._free = list(range(max_reqs - 1, -1, -1))
        self.max_reqs = max_reqs

    def available(self) -> int:
        return len(self._free)

    def alloc(self) -> int | None:
        return self._free.pop() if self._free else None

    def free(self, index: int) -> None:
        self._free.append(index)

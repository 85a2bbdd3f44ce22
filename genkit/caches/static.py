"""The static KV cache: preallocated to the request's maximum length, written in place."""

from __future__ import annotations

import torch

from genkit.caches.base import CacheCapacityError, CacheUsage, KVCache, tensor_bytes


class StaticKVCache(KVCache):
    """Allocates ``(batch, heads, max_length, head_dim)`` per layer once and writes each step into it.

    No step copies old entries, and the memory is known up front; the price is
    that memory for ``max_length`` positions is held from the first token on.
    """

    name = "static"

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        head_dim: int,
        max_length: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        shape = (batch_size, n_heads, max_length, head_dim)
        self.max_length = max_length
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.lengths = [0] * n_layers

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.lengths[layer]
        end = start + key.shape[2]
        self.check_capacity(end)
        self.keys[layer][:, :, start:end] = key
        self.values[layer][:, :, start:end] = value
        self.lengths[layer] = end
        # Views of the filled prefix: no copy.
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def check_capacity(self, end: int) -> None:
        """Raise :class:`CacheCapacityError` when a sequence needs ``end`` positions, more than allocated."""
        if end > self.max_length:
            raise CacheCapacityError(
                f"static KV cache overflow: a sequence needs {end} positions but {self.max_length} are "
                "allocated; raise cache_options max_length or lower max_new_tokens"
            )

    def length(self, layer: int = 0) -> int:
        return self.lengths[layer]

    def row_writer(self, row: int, offset: int) -> KVCache:
        return _StaticRowWriter(self, row, offset)

    def usage(self) -> CacheUsage:
        rows = self.keys[0].shape[0] if self.keys else 0
        held = tensor_bytes(*self.keys, *self.values)
        return CacheUsage(
            allocated_slots=rows * self.max_length, used_slots=rows * self.lengths[0], bytes=held, pool_bytes=held
        )

    def select_rows(self, rows: torch.Tensor) -> bool:
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        return True

    def release(self) -> None:
        # New empty tensors: a zero-row view would keep the old storage alive.
        self.keys = [k.new_empty((0, *k.shape[1:])) for k in self.keys]
        self.values = [v.new_empty((0, *v.shape[1:])) for v in self.values]


class _StaticRowWriter(KVCache):
    """Writes one row of a :class:`StaticKVCache` from a logical offset on (prefill of one prompt of a batch)."""

    name = "static-row"

    def __init__(self, parent: StaticKVCache, row: int, offset: int):
        self.parent, self.row, self.offset = parent, row, offset
        self.lengths = [0] * len(parent.keys)

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parent = self.parent
        start = self.offset + self.lengths[layer]
        end = start + key.shape[2]
        parent.check_capacity(end)
        parent.keys[layer][self.row : self.row + 1, :, start:end] = key
        parent.values[layer][self.row : self.row + 1, :, start:end] = value
        self.lengths[layer] += key.shape[2]
        # Every row of a left-padded batch ends at the same logical position.
        parent.lengths[layer] = max(parent.lengths[layer], end)
        row_keys = parent.keys[layer][self.row : self.row + 1, :, self.offset : end]
        return row_keys, parent.values[layer][self.row : self.row + 1, :, self.offset : end]

    def length(self, layer: int = 0) -> int:
        return self.lengths[layer]

    def usage(self) -> CacheUsage:
        return self.parent.usage()

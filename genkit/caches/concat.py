"""The growing KV cache: each step concatenates the new keys and values (the teaching version)."""

from __future__ import annotations

import torch

from genkit.caches.base import CacheUsage, KVCache, tensor_bytes


class ConcatKVCache(KVCache):
    """Keeps one ``(batch, heads, seq, head_dim)`` key and value tensor per layer and grows them with ``torch.cat``.

    Simple to read, but every decode step copies the whole cache of each layer,
    so a step costs O(seq) memory traffic on top of attention.
    """

    name = "concat"

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = key, value
        else:
            self.keys[layer] = torch.cat([self.keys[layer], key], dim=2)
            self.values[layer] = torch.cat([self.values[layer], value], dim=2)
        return self.keys[layer], self.values[layer]

    def length(self, layer: int = 0) -> int:
        stored = self.keys[layer]
        return 0 if stored is None else stored.shape[2]

    def usage(self) -> CacheUsage:
        stored = self.keys[0]
        slots = 0 if stored is None else stored.shape[0] * stored.shape[2]
        held = tensor_bytes(*self.keys, *self.values)
        return CacheUsage(allocated_slots=slots, used_slots=slots, bytes=held, pool_bytes=held)

    def select_rows(self, rows: torch.Tensor) -> bool:
        self.keys = [None if k is None else k.index_select(0, rows) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, rows) for v in self.values]
        return True

    def release(self) -> None:
        self.keys = [None] * len(self.keys)
        self.values = [None] * len(self.values)

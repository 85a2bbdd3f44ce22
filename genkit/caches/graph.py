"""The graph KV cache: fixed-shape buffers and a fixed-shape decode step, for ``torch.compile``.

A compiled function is specialised to the shapes and Python values it saw, so a
decode step whose key length grows by one each time would compile again and
again. This backend keeps every shape of the decode step fixed: keys and values
live in ``(batch, heads, capacity, head_dim)`` buffers, the write position is a
tensor, and attention always reads the whole buffer with a mask of the positions
written so far. The same step can then be compiled once per request shape, or
captured in a CUDA graph.

The price is attention over ``capacity`` positions at every step instead of the
positions written so far, which is small next to the weights for the models
genkit runs. Memory for ``capacity`` positions is reserved from the start, as in
the static cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genkit.caches.base import CacheCapacityError, CacheUsage, KVCache, attention, tensor_bytes
from genkit.models.attention import build_attention_mask


def round_up(value: int, multiple: int) -> int:
    """Return the smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-value // multiple) * multiple


class GraphKVCache(KVCache):
    """Static buffers with a decode step whose shapes and Python values never change.

    A forward pass of several tokens (the prompt, or a chunk of it) runs like the
    static cache. A forward pass of one token per row after that is the decode
    step, with the same shapes and Python values every time. ``capacity`` is the
    request's maximum length rounded up to ``round_to`` positions, so that requests
    of similar length share one compiled step.
    """

    name = "graph"
    graph_safe = True  # the engine may run the decode step through torch.compile

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        shape = (batch_size, n_heads, capacity, head_dim)
        self.n_layers = n_layers
        self.capacity = capacity
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.written = torch.zeros(batch_size, capacity, dtype=torch.bool, device=device)  # key slots a query may see
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # next slot to write, as a tensor
        self.prefilled = False
        self._real: torch.Tensor | None = None  # which new slots of the current eager pass hold real tokens

    def length(self, layer: int = 0) -> int:
        # Reads the position tensor (a device sync on GPU); the engine calls it
        # only for bookkeeping, never inside the decode step.
        return int(self.position.item())

    def _is_decode_step(self, new_length: int) -> bool:
        return new_length == 1 and self.prefilled

    def attention_mask(
        self, padding_mask: torch.Tensor | None, new_length: int, device: torch.device
    ) -> torch.Tensor | None:
        if self._is_decode_step(new_length):
            # attend() masks with the written slots. The engine feeds only real tokens
            # here and passes no padding mask; a caller that feeds padding passes one.
            self._real = None if padding_mask is None else padding_mask[:, -1:].bool()
            return None
        past = self.length()
        # Slots of left padding stay unwritten, so no later decode step attends to them.
        self._real = None if padding_mask is None else padding_mask[:, past : past + new_length].bool()
        return build_attention_mask(padding_mask, new_length, past, device)

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        if not self._is_decode_step(key.shape[2]):
            return self._attend_eager(layer, query, key, value, mask)
        # Decode: write one slot at the position tensor, then attend over the whole buffer.
        self.keys[layer].index_copy_(2, self.position, key)
        self.values[layer].index_copy_(2, self.position, value)
        if layer == 0:
            self.written.index_fill_(1, self.position, True)
        visible = self.written[:, None, None, :]  # (B, 1, 1, capacity)
        out = F.scaled_dot_product_attention(query, self.keys[layer], self.values[layer], attn_mask=visible)
        if layer == self.n_layers - 1:
            if self._real is not None:
                # A padding token saw itself (no NaN from an empty row); later tokens must not see it.
                self.written.index_copy_(1, self.position, self._real)
            self.position.add_(1)
        return out

    def _attend_eager(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Write the slots of the prompt, or of a chunk of several tokens, and attend like the static cache."""
        start = self.length()
        T = key.shape[2]
        end = start + T
        if end > self.capacity:
            raise CacheCapacityError(
                f"graph KV cache overflow: a sequence needs {end} positions but {self.capacity} are allocated; "
                "lower max_new_tokens or use another cache"
            )
        self.keys[layer][:, :, start:end] = key
        self.values[layer][:, :, start:end] = value
        if layer == 0:
            self.written[:, start:end] = True if self._real is None else self._real
        if layer == self.n_layers - 1:
            self.position.fill_(end)
            self.prefilled = True
        keys, values = self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        return attention(query, keys, values, mask)

    def usage(self) -> CacheUsage:
        rows = self.written.shape[0]
        held = tensor_bytes(*self.keys, *self.values)
        return CacheUsage(
            allocated_slots=rows * self.capacity, used_slots=rows * self.length(), bytes=held, pool_bytes=held
        )

    def release(self) -> None:
        self.keys = [k.new_empty((0, *k.shape[1:])) for k in self.keys]
        self.values = [v.new_empty((0, *v.shape[1:])) for v in self.values]

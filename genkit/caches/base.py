"""The KV cache protocol: the only thing the engine and the models know about a cache.

A model calls :meth:`KVCache.attend` once per layer and forward pass with the new
queries, keys and values. The cache stores the keys and values and returns the
attention output over everything it keeps for that layer, so a backend that keeps
its storage in another layout (paged blocks, int8, a sliding window) also owns the
read. The engine calls the bookkeeping methods (:meth:`usage`, :meth:`select_rows`,
:meth:`release`) between forward passes, never inside one.

Positions are counted per batch row in *logical* positions: every token fed to the
model, left padding included, whether or not the backend still stores it. The mask
a model passes to :meth:`attend` is over logical positions; a backend that stores
fewer (sliding window) picks the columns of the positions it kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from genkit.errors import GenerationError
from genkit.models.attention import build_attention_mask


class CacheCapacityError(GenerationError):
    """A sequence outgrew its KV cache, or a paged pool ran out of blocks.

    Raised in the middle of a request: the request fails and reports no result as
    complete. The message names the numbers and the option that raises the limit.
    """


@dataclass(frozen=True)
class CacheUsage:
    """Slots and bytes a cache stores right now, summed over layers and batch rows.

    ``allocated_slots`` are token positions with storage reserved for them (per
    row and layer, counted once: a slot is one position of one row in every layer);
    ``used_slots`` are the positions actually written. ``bytes`` is the memory of
    key and value storage including scales and unused reserved space; ``pool_bytes``
    is the memory reserved up front (a paged pool), equal to ``bytes`` for backends
    without a pool.
    """

    allocated_slots: int
    used_slots: int
    bytes: int
    pool_bytes: int

    @property
    def waste(self) -> float:
        """Fraction of the allocated slots not written (0.0 when nothing is allocated)."""
        if self.allocated_slots == 0:
            return 0.0
        return 1.0 - self.used_slots / self.allocated_slots


class KVCache:
    """Base class of KV cache backends.

    A backend implements :meth:`update`, :meth:`length` and :meth:`usage`; the
    default :meth:`attend` then runs SDPA over what :meth:`update` returns. A backend
    whose stored layout SDPA cannot read directly overrides :meth:`attend`.
    Tensors are ``(batch, heads, seq, head_dim)``.

    Class attributes a backend may set:

    - ``name``: the registry name.
    - ``exact``: True when attention over the cache equals attention over the
      unstored keys and values (greedy output then matches every other exact
      backend); int8 and sliding window are not exact.
    - ``extends_context``: True when the backend keeps a bounded window, so a
      request may run past the model's maximum positions (see the sliding cache).
    """

    name: str = "base"
    exact: bool = True
    extends_context: bool = False

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``key``/``value`` for ``layer`` and return all keys and values stored for it."""
        raise NotImplementedError

    def length(self, layer: int = 0) -> int:
        """Return the number of logical positions fed to ``layer`` so far (padding included)."""
        raise NotImplementedError

    def usage(self) -> CacheUsage:
        """Return slots and bytes held now."""
        raise NotImplementedError

    def memory_bytes(self) -> int:
        """Return the bytes held by key and value storage, allocated but unused space included."""
        return self.usage().bytes

    def attention_mask(
        self, padding_mask: torch.Tensor | None, new_length: int, device: torch.device
    ) -> torch.Tensor | None:
        """Build the mask a model passes to :meth:`attend` for a forward pass of ``new_length`` positions.

        Models call it once per forward pass, before the first layer. The default is
        a bool ``(batch, 1, new, logical)`` mask over logical positions from
        ``padding_mask`` (``(batch, logical)``, 0 at left padding), or None when
        plain causal attention is right. A backend with fixed-shape buffers returns
        its own mask instead (see the graph cache).
        """
        return build_attention_mask(padding_mask, new_length, self.length(0), device)

    def position_ids(self, position_ids: torch.Tensor, max_positions: int) -> torch.Tensor:
        """Map the logical position ids of the next tokens to the ids the model embeds.

        Called by the engine before each decode step, only when ``extends_context``
        is set: logical positions then grow past the model's ``max_positions``, and
        the backend decides which position ids the new tokens get. The default is
        the identity.
        """
        return position_ids

    def row_writer(self, row: int, offset: int) -> KVCache | None:
        """Return a one-row cache that writes row ``row`` from logical position ``offset`` on, or None.

        The engine uses it to prefill a left-padded batch one prompt at a time, so
        no forward pass is spent on padding. Row ``row`` is fed its real tokens alone
        (batch 1, no padding mask), and they land at positions ``offset`` onwards,
        after its left padding. The padding slots stay unwritten and later decode steps mask
        them. When every row has been written, the cache holds the same logical
        positions as after one padded prefill. The default returns None, and the
        engine then runs the padded batch in one forward pass.
        """
        return None

    def select_rows(self, rows: torch.Tensor) -> bool:
        """Keep only batch ``rows`` (a 1-D long tensor of current row indices, in order).

        The engine calls it when sequences finish, so that finished sequences stop
        costing compute and memory. Return True when the rows were selected; the
        default returns False, and the engine then keeps feeding the whole batch.
        """
        return False

    def release(self) -> None:
        """Free the storage at the end of a request (a paged pool gets its blocks back)."""

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Store the new keys/values of ``layer`` and return attention over the whole layer.

        ``mask`` is a bool ``(batch, 1, new, logical)`` tensor over the logical
        positions (past and new), True where a query may attend, or None when plain
        causal attention is right: the cache was empty before this call, or only
        one new position is given.
        """
        keys, values = self.update(layer, key, value)
        return attention(query, keys, values, mask)


class ReadBackKVCache(KVCache):
    """Base class of backends whose stored keys and values must be read back (gathered, dequantized) for attention.

    Subclasses implement ``_write(layer, key, value)``, which stores without reading
    back, and ``update`` as usual. When a layer is still empty, the new keys and
    values are all there is to attend over, so :meth:`attend` stores them and runs
    attention on them directly, skipping the read back.
    """

    def _write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> Any:
        """Store ``key``/``value`` for ``layer`` without reading anything back."""
        raise NotImplementedError

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        if self.length(layer) > 0:
            return super().attend(layer, query, key, value, mask)
        self._write(layer, key, value)
        return attention(query, key, value, mask)


def attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Return SDPA of ``query`` over ``keys``/``values``: masked by ``mask``, or causal when it is None.

    Shapes: (B, nh, T, hs) x (B, nh, S, hs) -> (B, nh, T, hs). A None mask with one
    query attends to every key, which is right for a decode step.
    """
    causal = mask is None and query.shape[2] > 1
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, is_causal=causal)


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    """Return the bytes of the given tensors' elements (None entries count 0)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)

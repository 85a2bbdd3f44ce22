"""The KV cache protocol that every model writes through.

A model calls :meth:`KVCache.attend` once per layer and forward pass with the
new queries, keys and values. The cache stores the keys and values and returns the
attention output over everything stored for that layer, so a backend that keeps
its storage in another layout (paged blocks, int8) also owns the read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class KVCache:
    """Base class of KV cache backends.

    Subclasses implement :meth:`update`, :meth:`length` and :meth:`memory_bytes`;
    :meth:`attend` then works unchanged. Tensors are ``(batch, heads, seq, head_dim)``.
    """

    name: str = "base"

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``key``/``value`` for ``layer`` and return all keys and values stored for it."""
        raise NotImplementedError

    def length(self, layer: int = 0) -> int:
        """Return the number of positions stored for ``layer``."""
        raise NotImplementedError

    def memory_bytes(self) -> int:
        """Return the bytes held by key and value storage, allocated but unused space included."""
        raise NotImplementedError

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Store the new keys/values of ``layer`` and return attention over the whole layer.

        ``mask`` is a bool ``(batch, 1, new, total)`` tensor, True where a query may
        attend, or None when plain causal attention is right: the cache was empty
        before this call, or only one new position is given.
        """
        keys, values = self.update(layer, key, value)
        # (B, nh, T, hs) x (B, nh, S, hs) -> (B, nh, T, hs)
        causal = mask is None and query.shape[2] > 1
        return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, is_causal=causal)

"""KV cache backends: storage for keys and values plus the attention read over them."""

from genkit.caches.base import KVCache

__all__ = ["KVCache"]

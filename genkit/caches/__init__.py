"""KV cache backends: storage for keys and values plus the attention read over them.

See docs/caches.md for the protocol and for what each backend trades.
"""

from genkit.caches.base import CacheCapacityError, CacheUsage, KVCache
from genkit.caches.concat import ConcatKVCache
from genkit.caches.graph import GraphKVCache
from genkit.caches.int8 import Int8KVCache
from genkit.caches.paged import BlockPool, PagedKVCache
from genkit.caches.sliding import SlidingWindowKVCache
from genkit.caches.static import StaticKVCache

__all__ = [
    "BlockPool",
    "CacheCapacityError",
    "CacheUsage",
    "ConcatKVCache",
    "GraphKVCache",
    "Int8KVCache",
    "KVCache",
    "PagedKVCache",
    "SlidingWindowKVCache",
    "StaticKVCache",
]

"""Built-in KV cache backends: ``concat`` and ``static``."""

from __future__ import annotations

from genkit.caches.concat import ConcatKVCache
from genkit.caches.static import StaticKVCache
from genkit.hookspecs import hookimpl
from genkit.specs import CacheSpec, RequestContext


def build_concat(ctx: RequestContext) -> ConcatKVCache:
    return ConcatKVCache(ctx.shape.n_layers)


def build_static(ctx: RequestContext) -> StaticKVCache:
    shape = ctx.shape
    return StaticKVCache(
        shape.n_layers, ctx.batch_size, shape.n_heads, shape.head_dim, ctx.max_length, ctx.dtype, ctx.device
    )


@hookimpl
def register_kv_caches(register):
    register(CacheSpec("concat", build_concat, "grows by torch.cat each step"))
    register(CacheSpec("static", build_static, "preallocated to the request's maximum length, written in place"))

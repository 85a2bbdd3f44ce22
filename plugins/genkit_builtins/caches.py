"""Built-in KV cache backends: ``concat``, ``static``, ``paged``, ``int8``, ``sliding`` and ``graph``.

Each build function receives the request's ``cache_options`` as keyword arguments
and checks them itself, so an unknown option or a bad value is a
:class:`~genkit.errors.ConfigError` that names it.
"""

from __future__ import annotations

from typing import Any

from genkit.caches.concat import ConcatKVCache
from genkit.caches.graph import GraphKVCache, round_up
from genkit.caches.int8 import Int8KVCache
from genkit.caches.paged import BlockPool, PagedKVCache, default_num_blocks
from genkit.caches.sliding import DEFAULT_SINKS, SlidingWindowKVCache
from genkit.caches.static import StaticKVCache
from genkit.errors import ConfigError
from genkit.hookspecs import hookimpl
from genkit.specs import CacheSpec, RequestContext

DEFAULT_BLOCK_SIZE = 16


def check_options(cache: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` for an option that ``cache`` does not take."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) if allowed else "none"
        raise ConfigError(
            f"unknown cache_options {unknown} for the {cache!r} KV cache; it accepts: {accepted}"
        )


def int_option(cache: str, name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` when it is an integer in [``minimum``, ``maximum``]; raise :class:`ConfigError` naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"invalid cache_options {name}={value!r} for the {cache!r} KV cache: expected an integer >= {minimum}"
        )
    if maximum is not None and value > maximum:
        raise ConfigError(
            f"invalid cache_options {name}={value!r} for the {cache!r} KV cache: expected at most {maximum}, "
            "the most positions a sequence of this request can reach (prompt + the model's positions); lower it"
        )
    return value


def position_limit(ctx: RequestContext) -> int:
    """Return the most logical positions a row of this request can reach: the padded prompt plus the model's window."""
    return ctx.prompt_length + ctx.shape.max_positions + 1


def build_concat(ctx: RequestContext, **options: Any) -> ConcatKVCache:
    check_options("concat", options, ())
    return ConcatKVCache(ctx.shape.n_layers)


def build_static(ctx: RequestContext, **options: Any) -> StaticKVCache:
    check_options("static", options, ("max_length",))
    max_length = int_option("static", "max_length", options.get("max_length", ctx.max_length), 1, position_limit(ctx))
    shape = ctx.shape
    return StaticKVCache(
        shape.n_layers, ctx.batch_size, shape.n_heads, shape.head_dim, max_length, ctx.dtype, ctx.device
    )


def build_paged(ctx: RequestContext, **options: Any) -> PagedKVCache:
    check_options("paged", options, ("block_size", "num_blocks"))
    block_size = int_option("paged", "block_size", options.get("block_size", DEFAULT_BLOCK_SIZE), 1,
                            max(position_limit(ctx), DEFAULT_BLOCK_SIZE))
    num_blocks = options.get("num_blocks", default_num_blocks(ctx.batch_size, ctx.max_length, block_size))
    num_blocks = int_option("paged", "num_blocks", num_blocks, 1)
    shape = ctx.shape
    pool = BlockPool(num_blocks, block_size, shape.n_layers, shape.n_heads, shape.head_dim, ctx.dtype, ctx.device)
    return PagedKVCache(pool, ctx.batch_size, shape.n_layers, ctx.padding_lengths)


def build_int8(ctx: RequestContext, **options: Any) -> Int8KVCache:
    check_options("int8", options, ("max_length",))
    max_length = int_option("int8", "max_length", options.get("max_length", ctx.max_length), 1, position_limit(ctx))
    shape = ctx.shape
    return Int8KVCache(shape.n_layers, ctx.batch_size, shape.n_heads, shape.head_dim, max_length, ctx.dtype, ctx.device)


def build_sliding(ctx: RequestContext, **options: Any) -> SlidingWindowKVCache:
    check_options("sliding", options, ("window", "sinks"))
    max_positions = ctx.shape.max_positions
    sinks = int_option("sliding", "sinks", options.get("sinks", min(DEFAULT_SINKS, max_positions - 1)), 0)
    window = int_option("sliding", "window", options.get("window", max_positions - sinks), 1)
    # Past max_positions new tokens share the last position id, so a longer window
    # would only add keys the model never saw that many of in training.
    if window + sinks > max_positions:
        raise ConfigError(
            f"invalid cache_options window={window}, sinks={sinks} for the 'sliding' KV cache: window + sinks "
            f"is {window + sinks} but the model has {max_positions} positions; lower window or sinks"
        )
    shape = ctx.shape
    return SlidingWindowKVCache(
        shape.n_layers,
        ctx.batch_size,
        shape.n_heads,
        shape.head_dim,
        window=window,
        sinks=sinks,
        max_length=ctx.max_length,
        dtype=ctx.dtype,
        device=ctx.device,
        padding_lengths=ctx.padding_lengths,
    )


def build_graph(ctx: RequestContext, **options: Any) -> GraphKVCache:
    check_options("graph", options, ("round_to",))
    round_to = int_option("graph", "round_to", options.get("round_to", 64), 1, max(position_limit(ctx), 64))
    shape = ctx.shape
    capacity = round_up(ctx.max_length, round_to)
    return GraphKVCache(shape.n_layers, ctx.batch_size, shape.n_heads, shape.head_dim, capacity, ctx.dtype, ctx.device)


@hookimpl
def register_kv_caches(register):
    register(CacheSpec("concat", build_concat, "grows by torch.cat each step"))
    register(CacheSpec("graph", build_graph, "fixed-shape buffers and decode step, for Generator(compile=True)"))
    register(CacheSpec("static", build_static, "preallocated to the request's maximum length, written in place"))
    register(CacheSpec("paged", build_paged, "fixed-size blocks from a preallocated pool, one block table per sequence"))
    register(CacheSpec("int8", build_int8, "int8 keys and values with a float32 scale per token and head (inexact)",
                       exact=False))
    register(
        CacheSpec(
            "sliding",
            build_sliding,
            "attention sinks plus the last window positions; runs past the model's maximum positions (inexact)",
            exact=False,
            extends_context=True,
        )
    )

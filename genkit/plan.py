"""Turn one request into plain objects: the logits-processor chain, sampler, stopping criteria and cache.

This runs once per request. The decode loop then calls the objects directly and
never goes back to the registry or to pluggy.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from genkit.caches.base import KVCache
from genkit.errors import ConfigError, GenerationError, GenkitError, PluginError
from genkit.registry import Registry
from genkit.specs import LogitsProcessor, RequestContext, Sampler, StoppingCriterion

logger = logging.getLogger("genkit")


@dataclass
class Plan:
    """The components of one request, in the order the decode loop calls them.

    ``stopping`` pairs each criterion with the finish reason it reports.
    """

    processors: list[LogitsProcessor]
    sampler: Sampler
    stopping: list[tuple[str, StoppingCriterion]]
    cache: KVCache
    context: RequestContext
    processor_names: list[str] = field(default_factory=list)

    def reset(self) -> None:
        """Call ``reset()`` on every stateful component before a new prefill."""
        for component in (*self.processors, self.sampler, *(c for _, c in self.stopping)):
            reset = getattr(component, "reset", None)
            if callable(reset):
                reset()


def default_sampler_name(config) -> str:
    if config.sampler:
        return config.sampler
    if config.mirostat == 2:
        return "mirostat_v2"
    return "multinomial" if config.do_sample else "greedy"


def _build(kind: str, name: str, plugin: str, build: Callable[..., Any], ctx: RequestContext, options: dict) -> Any:
    """Call a plugin's build function, naming the plugin when it fails."""
    try:
        return build(ctx, **options)
    except GenkitError:
        raise
    except TypeError as exc:
        raise PluginError(
            f"{kind} {name!r} from plugin {plugin!r} rejected options {sorted(options)}: {exc}"
        ) from exc
    except (MemoryError, torch.OutOfMemoryError) as exc:
        raise GenerationError(_no_memory(kind, name, options, exc)) from exc
    except Exception as exc:
        if isinstance(exc, RuntimeError) and "allocate" in str(exc):  # the CPU allocator's message
            raise GenerationError(_no_memory(kind, name, options, exc)) from exc
        raise PluginError(f"{kind} {name!r} from plugin {plugin!r} failed to build: {type(exc).__name__}: {exc}") from exc


def _no_memory(kind: str, name: str, options: dict, exc: BaseException) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"{kind} {name!r} could not allocate its memory with options {options or '{}'} ({first_line}); "
            "lower max_new_tokens, the batch size or the sizes in the options")


def _require_callable(component: Any, kind: str, name: str, plugin: str) -> None:
    if not callable(component):
        raise PluginError(f"{kind} {name!r} from plugin {plugin!r} built {component!r}; expected a callable object")


def _split_entry(entry: Any, field_name: str) -> tuple[str | None, dict, Any]:
    """Read one item of ``logits_processors``/``stopping_criteria``: a name, (name, options) or an instance."""
    if isinstance(entry, str):
        return entry, {}, None
    if isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], dict):
        return entry[0], dict(entry[1]), None
    if callable(entry):
        return None, {}, entry
    raise ConfigError(
        f"invalid {field_name} entry {entry!r}: expected a registered name, (name, options) or a callable object"
    )


def _choose(registry: Registry, kind: str, entries: list[Any], field_name: str) -> tuple[list, list]:
    """Split a request's component list into registered (name, options) pairs, in chain order, and objects.

    Every ``auto`` spec of ``kind`` is included; a named entry adds its spec or
    replaces the auto entry's options. Ties in ``order`` keep registration order.
    """
    table = getattr(registry, kind)
    chosen: dict[str, dict] = {name: {} for name, registered in table.items() if registered.spec.auto}
    instances: list[Any] = []
    for entry in entries:
        name, options, instance = _split_entry(entry, field_name)
        if instance is not None:
            instances.append(instance)
            continue
        registry.lookup(kind, name)
        chosen[name] = options
    ordered = sorted(chosen.items(), key=lambda item: table[item[0]].spec.order)
    return ordered, instances


def build_processors(registry: Registry, ctx: RequestContext) -> list[tuple[str, LogitsProcessor]]:
    """Build the logits-processor chain of a request as (name, processor) pairs, in call order.

    A processor passed as an object is named after its class.
    """
    config = ctx.config
    ordered, instances = _choose(registry, "processors", config.logits_processors, "logits_processors")

    # Sampling-only processors (temperature and the truncation warpers) are skipped
    # when the sampler takes the argmax, as transformers skips them without do_sample.
    sampling = default_sampler_name(config) != "greedy"
    masks: list[tuple[str, LogitsProcessor]] = []
    warpers: list[tuple[str, LogitsProcessor]] = []
    for name, options in ordered:
        registered = registry.processors[name]
        if registered.spec.sampling_only and not sampling:
            continue
        processor = _build("logits processor", name, registered.plugin, registered.spec.build, ctx, options)
        if processor is not None:
            _require_callable(processor, "logits processor", name, registered.plugin)
            (warpers if registered.spec.sampling_only else masks).append((name, processor))
    # transformers places processors passed as objects after its own penalties and
    # masks but before the sampling warpers; genkit does the same.
    named_instances = [(type(instance).__name__, instance) for instance in instances]
    return masks + named_instances + warpers


class _PositionalCriterion:
    """Call a criterion with ``(input_ids, scores)`` only, as transformers' loop does.

    transformers criteria written without ``**kwargs`` reject the ``texts=`` and
    ``detokenizers=`` keywords that genkit's engine passes.
    """

    def __init__(self, criterion: Any):
        self.criterion = criterion
        self.reset = getattr(criterion, "reset", None)

    def __call__(self, input_ids, scores, **kwargs):
        return self.criterion(input_ids, scores)


def _takes_engine_keywords(criterion: Any) -> bool:
    try:
        parameters = inspect.signature(criterion).parameters.values()
    except (TypeError, ValueError):
        return True
    names = {p.name for p in parameters}
    return any(p.kind is p.VAR_KEYWORD for p in parameters) or {"texts", "detokenizers"} <= names


def build_stopping(registry: Registry, ctx: RequestContext) -> list[tuple[str, StoppingCriterion]]:
    ordered, instances = _choose(registry, "stopping_criteria", ctx.config.stopping_criteria, "stopping_criteria")

    criteria = []
    for name, options in ordered:
        registered = registry.stopping_criteria[name]
        criterion = _build("stopping criterion", name, registered.plugin, registered.spec.build, ctx, options)
        if criterion is not None:
            _require_callable(criterion, "stopping criterion", name, registered.plugin)
            criteria.append((getattr(criterion, "reason", None) or name, criterion))

    # Objects run after the registered criteria; transformers criteria may lack **kwargs.
    for instance in instances:
        reason = getattr(instance, "reason", None) or type(instance).__name__
        if not _takes_engine_keywords(instance):
            instance = _PositionalCriterion(instance)
        criteria.append((reason, instance))
    return criteria


def build_plan(registry: Registry, ctx: RequestContext) -> Plan:
    """Build every component of one request from the registry."""
    config = ctx.config
    named_processors = build_processors(registry, ctx)

    sampler_name = default_sampler_name(config)
    registered = registry.lookup("samplers", sampler_name)
    sampler = _build("sampler", sampler_name, registered.plugin, registered.spec.build, ctx, config.sampler_options)
    _require_callable(sampler, "sampler", sampler_name, registered.plugin)

    stopping = build_stopping(registry, ctx)

    registered = registry.lookup("caches", config.cache)
    cache = _build("KV cache", config.cache, registered.plugin, registered.spec.build, ctx, config.cache_options)
    if not isinstance(cache, KVCache):
        raise PluginError(
            f"KV cache {config.cache!r} from plugin {registered.plugin!r} built {cache!r}; "
            "expected a genkit.caches.KVCache instance"
        )
    processors = [processor for _, processor in named_processors]
    names = [name for name, _ in named_processors]
    return Plan(processors, sampler, stopping, cache, ctx, names)

"""The hooks a genkit plugin can implement.

A plugin is a module (or object) with functions marked ``@genkit.hookimpl`` and
named after the hooks below. Each hook receives a ``register`` callback and calls
it once per component it provides. genkit calls every hook once, when the plugin
registry is built, so a hook never runs inside the token loop.

Third-party plugins announce themselves with an entry point in the ``genkit``
group of their ``pyproject.toml``::

    [project.entry-points.genkit]
    my_sampler = "my_sampler_plugin"

and implement, in ``my_sampler_plugin/__init__.py``::

    import genkit
    from genkit.specs import SamplerSpec

    @genkit.hookimpl
    def register_samplers(register):
        register(SamplerSpec(name="my_sampler", build=MySampler.from_request))

See docs/plugins.md for every hook's contract, the order of the chain, and how
errors name the plugin that caused them.
"""

from __future__ import annotations

from typing import Callable

import pluggy

from genkit.specs import CacheSpec, ModelSpec, ProcessorSpec, SamplerSpec, StoppingSpec

PROJECT_NAME = "genkit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_logits_processors(register: Callable[[ProcessorSpec], None]) -> None:
    """Register logits processors.

    :param register: call with one :class:`~genkit.specs.ProcessorSpec` per processor.
    """


@hookspec
def register_samplers(register: Callable[[SamplerSpec], None]) -> None:
    """Register samplers that pick the next token from processed scores.

    :param register: call with one :class:`~genkit.specs.SamplerSpec` per sampler.
    """


@hookspec
def register_stopping_criteria(register: Callable[[StoppingSpec], None]) -> None:
    """Register stopping criteria.

    :param register: call with one :class:`~genkit.specs.StoppingSpec` per criterion.
    """


@hookspec
def register_kv_caches(register: Callable[[CacheSpec], None]) -> None:
    """Register KV cache backends.

    :param register: call with one :class:`~genkit.specs.CacheSpec` per backend.
    """


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    """Register model loaders, keyed by the ``model_type`` of ``config.json``.

    :param register: call with one :class:`~genkit.specs.ModelSpec` per model type.
    """

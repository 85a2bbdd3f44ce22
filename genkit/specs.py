"""Component protocols and the specs that plugins register.

A plugin registers *specs*: a name plus a ``build`` function. The planner calls
``build`` once per request and gets back a plain object (a logits processor, a
sampler, a stopping criterion or a KV cache) that the decode loop calls per token.

Shapes: ``input_ids`` is ``(batch, seq)`` and contains the prompt (left-padded in a
batch) followed by the tokens generated so far; ``scores`` is ``(batch, vocab)``
float32 logits of the next position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from genkit.caches.base import KVCache
    from genkit.config import GenerationConfig
    from genkit.models.base import LoadedModel, ModelShape
    from genkit.models.tokenizer import Tokenizer


@runtime_checkable
class LogitsProcessor(Protocol):
    """Transform next-token scores; the same call signature as ``transformers.LogitsProcessor``."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor: ...


@runtime_checkable
class Sampler(Protocol):
    """Pick one next token per sequence from processed scores.

    ``generator`` is the request's seeded ``torch.Generator``, or None to use the
    global RNG. A stateful sampler also defines ``reset()``; the engine calls it
    once before each request's prefill.
    """

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, generator: torch.Generator | None
    ) -> torch.LongTensor: ...


@runtime_checkable
class StoppingCriterion(Protocol):
    """Flag the sequences that must stop; ``transformers.StoppingCriteria`` fits too.

    Returns a ``(batch,)`` bool tensor. The attribute ``reason`` (a short string such
    as ``"eos"``, ``"length"``, ``"stop"``) becomes the finish reason of each sequence
    it stops; a criterion without one reports its registered name or class name.
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor: ...


@dataclass
class RequestContext:
    """What a ``build`` function may read about the request besides its config.

    ``prompt_length`` is the padded prompt length, so ``input_ids[:, prompt_length:]``
    are the generated tokens. ``padding_lengths`` gives the number of left-padding
    positions of each row (all zero unless prompts of different lengths are batched).
    ``max_length`` is the total length the cache must hold. ``row_max_lengths``
    gives, per row and in the padded frame, the length at which that row stops:
    it differs from ``max_length`` only when the context window cuts a batch short,
    because a left-padded row reaches the window later than the longest one.
    """

    config: GenerationConfig
    tokenizer: Tokenizer
    shape: ModelShape
    batch_size: int
    prompt_length: int
    max_length: int
    device: torch.device
    dtype: torch.dtype
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    padding_lengths: tuple[int, ...] = ()
    row_max_lengths: tuple[int, ...] = ()


# Each build function receives the request context and the options given for that
# component by name, and returns the component, or None when the config leaves it off.
ProcessorBuild = Callable[..., "LogitsProcessor | None"]
SamplerBuild = Callable[..., "Sampler"]
StoppingBuild = Callable[..., "StoppingCriterion | None"]
CacheBuild = Callable[..., "KVCache"]
ModelLoad = Callable[..., "LoadedModel"]


@dataclass(frozen=True)
class ProcessorSpec:
    """A logits processor plugin.

    ``order`` places it in the chain (lower runs first; the built-ins use the
    transformers order, see docs/plugins.md). With ``auto=True`` the planner builds
    it for every request and ``build`` returns None when the config leaves it off;
    with ``auto=False`` it runs only when a request names it in ``logits_processors``.
    ``sampling_only`` processors are skipped under greedy decoding, as transformers
    skips its warpers.
    """

    name: str
    build: ProcessorBuild
    order: float = 1000.0
    auto: bool = False
    sampling_only: bool = False
    description: str = ""


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler plugin, chosen by ``GenerationConfig.sampler``."""

    name: str
    build: SamplerBuild
    description: str = ""


@dataclass(frozen=True)
class StoppingSpec:
    """A stopping criterion plugin; ``auto`` as in :class:`ProcessorSpec`.

    ``order`` decides which reason wins when several criteria stop a sequence on
    the same token (lower wins).
    """

    name: str
    build: StoppingBuild
    order: float = 1000.0
    auto: bool = False
    description: str = ""


@dataclass(frozen=True)
class CacheSpec:
    """A KV cache backend, chosen by ``GenerationConfig.cache``.

    ``exact`` and ``extends_context`` repeat the attributes of the backend's
    KVCache class, so that the engine and tools can read them without building a
    cache: ``exact`` is False for a backend whose attention differs from attention
    over the unstored keys and values (int8, sliding window), and
    ``extends_context`` lets a request run past the model's maximum positions.
    """

    name: str
    build: CacheBuild
    description: str = ""
    exact: bool = True
    extends_context: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """A model loader for checkpoints whose ``config.json`` has this ``model_type``."""

    model_type: str
    load: ModelLoad
    description: str = ""

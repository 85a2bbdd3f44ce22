"""Pass genkit components to transformers.

transformers objects go the other way without any wrapper: a request accepts a
``transformers.GenerationConfig`` as its config, and ``LogitsProcessor`` and
``StoppingCriteria`` instances in ``logits_processors`` / ``stopping_criteria``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor as HFLogitsProcessor

from genkit.errors import ConfigError
from genkit.registry import Registry, get_registry
from genkit.specs import RequestContext


class TransformersLogitsProcessor(HFLogitsProcessor):
    """A genkit logits processor presented as a ``transformers.LogitsProcessor``.

    >>> model.generate(ids, logits_processor=LogitsProcessorList([to_transformers(processor)]))
    """

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.processor(input_ids, scores)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.processor!r})"


def to_transformers(
    processor: Any,
    context: RequestContext | None = None,
    registry: Registry | None = None,
    **options: Any,
) -> TransformersLogitsProcessor:
    """Wrap a genkit processor for ``model.generate(logits_processor=[...])``.

    ``processor`` is a processor object, or the name of a registered processor,
    built with ``context`` (needed by processors that read the prompt length, the
    EOS ids or the tokenizer) and ``options``. Processors that keep per-request
    state must be wrapped anew for each ``generate`` call.

    Raises :class:`~genkit.errors.ConfigError` when a name comes without a context or
    the context's config leaves the processor off, and ``TypeError`` when an object
    comes with a context or options, which only a build by name would use.
    """
    if not isinstance(processor, str):
        if context is not None or options:
            ignored = sorted(options) + (["context"] if context is not None else [])
            raise TypeError(
                f"to_transformers got {', '.join(ignored)} with a processor object; they only apply when "
                "the processor is given by its registered name, so configure the object instead"
            )
        if not callable(processor):
            raise TypeError(
                f"to_transformers expects a logits processor (a callable taking input_ids and scores) "
                f"or a registered processor name, not {processor!r}"
            )
        return TransformersLogitsProcessor(processor)

    if context is None:
        raise ConfigError(
            f"building processor {processor!r} by name needs a RequestContext; "
            "make one with genkit.testing.request_context(vocab_size=..., **config)"
        )
    # NOTE: a wrapped processor never receives the attention mask of transformers'
    # generate(). For a left-padded batch, set padding_lengths in the context, or the
    # repetition penalty and DRY count the padding tokens.
    spec = (registry or get_registry()).lookup("processors", processor).spec
    built = spec.build(context, **options)
    if built is None:
        raise ConfigError(
            f"processor {processor!r} is off for this config; set its parameter "
            f"(e.g. {processor}=...) in the context's config or pass it as an option"
        )
    return TransformersLogitsProcessor(built)

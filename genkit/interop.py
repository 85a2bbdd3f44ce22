"""Pass genkit components to transformers.

transformers objects go the other way without any wrapper: a request accepts a
``transformers.GenerationConfig`` as its config, and ``LogitsProcessor`` and
``StoppingCriteria`` instances in ``logits_processors`` / ``stopping_criteria``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor as HFLogitsProcessor

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
    """
    if isinstance(processor, str):
        if context is None:
            raise ValueError(
                f"building processor {processor!r} by name needs a RequestContext; "
                "make one with genkit.testing.request_context(vocab_size=..., **config)"
            )
        spec = (registry or get_registry()).lookup("processors", processor).spec
        built = spec.build(context, **options)
        if built is None:
            raise ValueError(
                f"processor {processor!r} is off for this config; set its parameter "
                f"(e.g. {processor}=...) in the context's config"
            )
        processor = built
    return TransformersLogitsProcessor(processor)

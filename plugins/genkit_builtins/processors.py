"""Built-in logits processors, with transformers' semantics and order.

``ORDER`` gives each processor's place in the chain: penalties and masks first,
then the sampling warpers temperature, top_k, top_p, min_p, typical_p, epsilon,
eta, as ``GenerationMixin._get_logits_processor`` builds them.
"""

from __future__ import annotations

import torch

from genkit.errors import ConfigError
from genkit.hookspecs import hookimpl
from genkit.specs import ProcessorSpec, RequestContext

ORDER = {
    "temperature": 500,
    "top_k": 510,
    "top_p": 520,
}


class TemperatureLogitsProcessor:
    """Divide the scores by ``temperature`` (> 0)."""

    def __init__(self, temperature: float):
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
            raise ConfigError(f"invalid temperature={temperature!r}: expected a number > 0")
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopKLogitsProcessor:
    """Keep the ``top_k`` highest scores and every score tied with the k-th; set the rest to -inf."""

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1, filter_value: float = -float("inf")):
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k <= 0:
            raise ConfigError(f"invalid top_k={top_k!r}: expected an integer > 0 (0 turns top-k off)")
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        top_k = min(self.top_k, scores.size(-1))
        kth_value = torch.topk(scores, top_k)[0][..., -1, None]  # (B, 1)
        return scores.masked_fill(scores < kth_value, self.filter_value)


class TopPLogitsProcessor:
    """Nucleus filtering: keep the smallest set of top tokens whose probability mass exceeds ``top_p``.

    ``top_p=0`` keeps exactly ``min_tokens_to_keep`` (one) token.
    """

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1, filter_value: float = -float("inf")):
        if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0.0 <= top_p <= 1.0:
            raise ConfigError(f"invalid top_p={top_p!r}: expected a number in [0, 1]")
        self.top_p = float(top_p)
        self.min_tokens_to_keep = min_tokens_to_keep
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Remove the low tail whose total mass is at most 1 - top_p, but keep the best tokens.
        sorted_to_remove = cumulative_probs <= (1 - self.top_p)
        sorted_to_remove[..., -self.min_tokens_to_keep :] = False
        to_remove = sorted_to_remove.scatter(1, sorted_indices, sorted_to_remove)
        return scores.masked_fill(to_remove, self.filter_value)


def build_temperature(ctx: RequestContext, temperature: float | None = None) -> TemperatureLogitsProcessor | None:
    value = ctx.config.temperature if temperature is None else temperature
    return None if value == 1.0 else TemperatureLogitsProcessor(value)


def build_top_k(ctx: RequestContext, top_k: int | None = None) -> TopKLogitsProcessor | None:
    value = ctx.config.top_k if top_k is None else top_k
    return None if value == 0 else TopKLogitsProcessor(value)


def build_top_p(ctx: RequestContext, top_p: float | None = None) -> TopPLogitsProcessor | None:
    value = ctx.config.top_p if top_p is None else top_p
    return None if value >= 1.0 else TopPLogitsProcessor(value)


@hookimpl
def register_logits_processors(register):
    register(ProcessorSpec("temperature", build_temperature, ORDER["temperature"], auto=True, sampling_only=True,
                           description="divide scores by temperature"))
    register(ProcessorSpec("top_k", build_top_k, ORDER["top_k"], auto=True, sampling_only=True,
                           description="keep the k best tokens (ties with the k-th kept)"))
    register(ProcessorSpec("top_p", build_top_p, ORDER["top_p"], auto=True, sampling_only=True,
                           description="nucleus filtering"))

"""Sampling warpers: temperature and the truncation filters, as transformers defines them.

Each class takes the same parameters as its transformers counterpart
(``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``,
``MinPLogitsWarper``, ``TypicalLogitsWarper``, ``EpsilonLogitsWarper``,
``EtaLogitsWarper`` in transformers 5.x) and returns the same scores for the same
input. ``min_tokens_to_keep`` (default 1) and ``filter_value`` (default -inf) are
keyword-only here. A filtered token gets ``filter_value``; the others keep their score.
"""

from __future__ import annotations

import math

import torch

from genkit_builtins.checks import (
    check_filter_value,
    check_min_tokens_to_keep,
    check_number,
    fail,
)

NEG_INF = -float("inf")


class TemperatureLogitsProcessor:
    """Divide the scores by ``temperature`` (> 0)."""

    def __init__(self, temperature: float):
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopKLogitsProcessor:
    """Keep the ``top_k`` highest scores and every score tied with the k-th; set the rest to -inf."""

    def __init__(self, top_k: int, *, min_tokens_to_keep: int = 1, filter_value: float = NEG_INF):
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k <= 0:
            fail("top_k", top_k, "an integer > 0 (0 turns top-k off)")
        self.top_k = max(top_k, check_min_tokens_to_keep(min_tokens_to_keep))
        self.filter_value = check_filter_value(filter_value)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        top_k = min(self.top_k, scores.size(-1))
        kth_value = torch.topk(scores, top_k)[0][..., -1, None]  # (B, 1)
        return scores.masked_fill(scores < kth_value, self.filter_value)


class TopPLogitsProcessor:
    """Nucleus filtering: keep the smallest set of top tokens whose probability mass exceeds ``top_p``.

    ``top_p=0`` keeps exactly ``min_tokens_to_keep`` (one) token.
    """

    def __init__(self, top_p: float, *, min_tokens_to_keep: int = 1, filter_value: float = NEG_INF):
        self.top_p = check_number("top_p", top_p, low=0.0, high=1.0)
        self.min_tokens_to_keep = check_min_tokens_to_keep(min_tokens_to_keep)
        self.filter_value = check_filter_value(filter_value)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Remove the low tail whose total mass is at most 1 - top_p, but keep the best tokens.
        sorted_to_remove = cumulative_probs <= (1 - self.top_p)
        sorted_to_remove[..., -self.min_tokens_to_keep :] = False
        to_remove = sorted_to_remove.scatter(1, sorted_indices, sorted_to_remove)
        return scores.masked_fill(to_remove, self.filter_value)


class MinPLogitsProcessor:
    """Min-p filtering: remove tokens whose probability is below ``min_p`` times the top probability.

    The cut scales with the model's confidence: a peaked distribution keeps few
    tokens, a flat one keeps many. The ``min_tokens_to_keep`` most probable tokens
    always stay.
    """

    def __init__(self, min_p: float, *, min_tokens_to_keep: int = 1, filter_value: float = NEG_INF):
        self.min_p = check_number("min_p", min_p, low=0.0, high=1.0)
        self.min_tokens_to_keep = check_min_tokens_to_keep(min_tokens_to_keep)
        self.filter_value = check_filter_value(filter_value)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores, dim=-1)  # (B, V)
        threshold = self.min_p * probs.amax(dim=-1, keepdim=True)  # (B, 1)
        to_remove = probs < threshold

        keep = min(self.min_tokens_to_keep, probs.size(-1))
        best = torch.topk(probs, keep, dim=-1).indices  # (B, keep)
        to_remove.scatter_(-1, best, False)
        return scores.masked_fill(to_remove, self.filter_value)


class TypicalLogitsProcessor:
    """Locally typical sampling (Meister et al. 2022, arXiv:2202.00666).

    Ranks tokens by how close their surprise ``-log p`` is to the entropy of the
    distribution, then keeps the most typical tokens until their probability mass
    reaches ``typical_p``. The most likely token can be removed.
    """

    def __init__(self, typical_p: float, *, min_tokens_to_keep: int = 1, filter_value: float = NEG_INF):
        self.typical_p = check_number("typical_p", typical_p, low=0.0, high=1.0, low_open=True, high_open=True)
        self.min_tokens_to_keep = check_min_tokens_to_keep(min_tokens_to_keep)
        self.filter_value = check_filter_value(filter_value)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(scores, dim=-1)  # (B, V)
        probs = log_probs.exp()
        # A -inf logit gives 0 * -inf = nan, which nansum skips: it adds no entropy.
        entropy = -(log_probs * probs).nansum(dim=-1, keepdim=True)  # (B, 1)

        distance = (-log_probs - entropy).abs()  # (B, V); small means typical
        sorted_distance, order = torch.sort(distance, descending=False)
        sorted_probs = scores.gather(-1, order).softmax(dim=-1)
        cumulative = sorted_probs.cumsum(dim=-1)

        # The token at which the kept mass first reaches typical_p sets the distance cut;
        # every token no further from the entropy than that one stays.
        cut_index = (cumulative < self.typical_p).sum(dim=-1, keepdim=True)  # (B, 1)
        cut_index.clamp_(max=scores.size(-1) - 1)
        cut_distance = sorted_distance.gather(-1, cut_index)
        sorted_to_remove = sorted_distance > cut_distance
        sorted_to_remove[..., : self.min_tokens_to_keep] = False

        to_remove = sorted_to_remove.scatter(1, order, sorted_to_remove)
        return scores.masked_fill(to_remove, self.filter_value)


class EpsilonLogitsProcessor:
    """Epsilon sampling (Hewitt et al. 2022, arXiv:2210.15191): remove tokens with probability below ``epsilon``.

    When that would remove everything, the ``min_tokens_to_keep`` best tokens
    (and any tied with the last of them) stay.
    """

    def __init__(self, epsilon: float, *, min_tokens_to_keep: int = 1, filter_value: float = NEG_INF):
        self.epsilon = check_number("epsilon_cutoff", epsilon, low=0.0, high=1.0, low_open=True, high_open=True)
        self.min_tokens_to_keep = check_min_tokens_to_keep(min_tokens_to_keep)
        self.filter_value = check_filter_value(filter_value)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(dim=-1)
        to_remove = probs < self.epsilon
        return scores.masked_fill(to_remove & _below_top(scores, self.min_tokens_to_keep), self.filter_value)


class EtaLogitsProcessor:
    """Eta sampling (Hewitt et al. 2022, arXiv:2210.15191): an entropy-dependent epsilon cut.

    The cut is ``eta = min(epsilon, sqrt(epsilon) * exp(-entropy))``, so a flat
    (high-entropy) distribution keeps more of its tail. ``epsilon`` is the
    ``eta_cutoff`` field of the generation config.
    """

    def __init__(self, epsilon: float, *, min_tokens_to_keep: int = 1, filter_value: float = NEG_INF):
        self.epsilon = check_number("eta_cutoff", epsilon, low=0.0, high=1.0, low_open=True, high_open=True)
        self.sqrt_epsilon = math.sqrt(self.epsilon)
        self.min_tokens_to_keep = check_min_tokens_to_keep(min_tokens_to_keep)
        self.filter_value = check_filter_value(filter_value)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(dim=-1)  # (B, V)
        entropy = -(torch.log_softmax(scores, dim=-1) * probs).nansum(dim=-1, keepdim=True)  # (B, 1)
        eta = torch.clamp(self.sqrt_epsilon * torch.exp(-entropy), max=self.epsilon)  # (B, 1)

        to_remove = probs < eta
        return scores.masked_fill(to_remove & _below_top(scores, self.min_tokens_to_keep), self.filter_value)


def _below_top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Flag the scores strictly below the ``count``-th highest of their row."""
    count = min(count, scores.size(-1))
    kth_value = torch.topk(scores, count)[0][..., -1, None]  # (B, 1)
    return scores < kth_value

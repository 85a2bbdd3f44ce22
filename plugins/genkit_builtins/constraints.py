"""Token biases and bans: sequence_bias, bad_words_ids, logit_bias, suppress_tokens, min_length, min_new_tokens.

All but ``LogitBiasLogitsProcessor`` return the same scores as their transformers
5.x counterparts (``SequenceBiasLogitsProcessor``, ``NoBadWordsLogitsProcessor``,
``SuppressTokensLogitsProcessor``, ``MinLengthLogitsProcessor``,
``MinNewTokensLengthLogitsProcessor``). ``logit_bias`` is the OpenAI API's
per-token additive bias.

With ``vocab_size`` given, a class rejects token ids outside the vocabulary when it
is built. Without it, each class handles them on the first call as its docstring describes.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

from genkit_builtins.checks import (
    check_eos_token_ids,
    check_int,
    check_token_id,
    check_token_ids,
    fail,
    is_number,
)

NEG_INF = -float("inf")


class SequenceBiasLogitsProcessor:
    """Add a bias to the token that would complete a given token sequence.

    ``sequence_bias`` maps token sequences to biases, either as transformers'
    list form ``[[[10, 45], -2.0], [[64], -7.5]]`` or as a dict
    ``{(10, 45): -2.0, (64,): -7.5}``. A one-token sequence gets its bias at every
    step. A longer sequence gets it only when ``input_ids`` ends with all of the
    sequence but its last token, and the bias then goes to that last token. Biases
    are finite numbers or -inf (a ban). A token id outside the vocabulary raises
    :class:`~genkit.errors.ConfigError`.
    """

    name = "sequence_bias"

    def __init__(self, sequence_bias: Any, vocab_size: int | None = None):
        self.sequence_bias = self._parse(sequence_bias)
        self._check_vocab(vocab_size)
        self._prepared_for: tuple[int, torch.device] | None = None

    def _parse(self, sequence_bias: Any) -> dict[tuple[int, ...], float]:
        expected = "a non-empty list of [token ids, bias] pairs, e.g. [[[10, 45], -2.0]], or a dict {(10, 45): -2.0}"
        if isinstance(sequence_bias, Mapping):
            pairs = list(sequence_bias.items())
        elif isinstance(sequence_bias, (list, tuple)):
            pairs = []
            for pair in sequence_bias:
                if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    fail(self.name, pair, "[token ids, bias] pairs, e.g. [[10, 45], -2.0]")
                pairs.append((pair[0], pair[1]))
        else:
            fail(self.name, sequence_bias, expected)
        if not pairs:
            fail(self.name, sequence_bias, expected)

        parsed: dict[tuple[int, ...], float] = {}
        for ids, bias in pairs:
            ids = tuple(check_token_ids(self.name, list(ids) if isinstance(ids, (list, tuple)) else ids))
            if not is_number(bias) or math.isnan(bias) or bias == math.inf:
                fail(self.name, bias, "a finite bias or -inf for each token sequence")
            parsed[ids] = float(bias)
        return parsed

    def _check_vocab(self, vocab_size: int | None) -> None:
        if vocab_size is None:
            return
        for ids in self.sequence_bias:
            for token in ids:
                check_token_id(self.name, token, vocab_size)

    def _prepare(self, scores: torch.Tensor) -> None:
        """Build the bias tensors for this vocabulary size and device, once."""
        vocab_size, device = scores.size(-1), scores.device
        self._check_vocab(vocab_size)

        self.single_token_bias = torch.zeros(vocab_size, dtype=torch.float, device=device)
        for ids, bias in self.sequence_bias.items():
            if len(ids) == 1:
                self.single_token_bias[ids[0]] = bias

        # Longer sequences are grouped by prefix length, so one comparison matches a group.
        by_prefix_length: dict[int, list[tuple[tuple[int, ...], float]]] = {}
        for ids, bias in self.sequence_bias.items():
            if len(ids) > 1:
                by_prefix_length.setdefault(len(ids) - 1, []).append((ids, bias))
        self.multi_token_groups = []
        for group in by_prefix_length.values():
            prefixes = torch.tensor([ids[:-1] for ids, _ in group], dtype=torch.long, device=device)  # (G, L)
            last_tokens = torch.tensor([ids[-1] for ids, _ in group], dtype=torch.long, device=device)  # (G,)
            biases = torch.tensor([bias for _, bias in group], dtype=torch.float, device=device)  # (G,)
            self.multi_token_groups.append((prefixes, last_tokens, biases))
        self._prepared_for = (vocab_size, device)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._prepared_for != (scores.size(-1), scores.device):
            self._prepare(scores)

        # Sum every bias first and add once, so that each score is rounded once.
        bias = torch.zeros_like(scores)  # (B, V)
        bias += self.single_token_bias
        for prefixes, last_tokens, biases in self.multi_token_groups:
            prefix_length = prefixes.size(1)
            if prefix_length > input_ids.size(1):
                continue
            tail = input_ids[:, None, -prefix_length:]  # (B, 1, L)
            completes = (tail == prefixes[None]).all(dim=-1)  # (B, G)
            bias.index_add_(1, last_tokens, torch.where(completes, biases, 0.0).to(bias.dtype))
        return scores + bias


class NoBadWordsLogitsProcessor(SequenceBiasLogitsProcessor):
    """Never complete one of the token sequences in ``bad_words_ids``.

    A sequence of one token is banned outright; a longer one has its last token
    banned when ``input_ids`` ends with the rest. Entries that are a single EOS id
    are dropped, as transformers drops them, so that banning EOS needs
    ``suppress_tokens`` instead.
    """

    name = "bad_words_ids"

    def __init__(
        self,
        bad_words_ids: list[list[int]],
        eos_token_id: int | Iterable[int] | None = None,
        vocab_size: int | None = None,
    ):
        if not isinstance(bad_words_ids, (list, tuple)) or not bad_words_ids:
            fail(self.name, bad_words_ids, "a non-empty list of token id lists, e.g. [[10, 20], [30]]")
        sequences = [tuple(check_token_ids(self.name, ids)) for ids in bad_words_ids]

        eos_ids = check_eos_token_ids("eos_token_id", eos_token_id)
        sequences = [ids for ids in sequences if not (len(ids) == 1 and ids[0] in eos_ids)]
        # NOTE: with only EOS entries left nothing is banned; the processor then adds zeros.
        self.sequence_bias = {ids: NEG_INF for ids in sequences}
        self._check_vocab(vocab_size)
        self._prepared_for = None


class LogitBiasLogitsProcessor:
    """Add a fixed bias to chosen token ids at every step: OpenAI's ``logit_bias``.

    ``logit_bias`` maps token id to a finite bias, e.g. ``{50256: -100}``. The
    OpenAI API documents biases from -100 to 100, where -100 or 100 should ban or
    force a token. genkit accepts any finite bias and does not clip it. A token id
    outside the vocabulary raises :class:`~genkit.errors.ConfigError`.
    """

    def __init__(self, logit_bias: Mapping[int, float], vocab_size: int | None = None):
        if not isinstance(logit_bias, Mapping) or not logit_bias:
            fail("logit_bias", logit_bias, "a non-empty mapping of token id to bias, e.g. {50256: -100}")
        self.logit_bias: dict[int, float] = {}
        for token, bias in logit_bias.items():
            check_token_id("logit_bias", token, vocab_size)
            if not is_number(bias) or not math.isfinite(bias):
                fail("logit_bias", bias, f"a finite bias for token {token}")
            self.logit_bias[int(token)] = float(bias)
        self._bias: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab_size = scores.size(-1)
        if self._bias is None or self._bias.size(0) != vocab_size or self._bias.device != scores.device:
            for token in self.logit_bias:
                check_token_id("logit_bias", token, vocab_size)
            bias = torch.zeros(vocab_size, dtype=scores.dtype, device=scores.device)
            values = torch.tensor(list(self.logit_bias.values()), dtype=scores.dtype, device=scores.device)
            bias[list(self.logit_bias)] = values
            self._bias = bias
        return scores + self._bias


class SuppressTokensLogitsProcessor:
    """Set the scores of the ``suppress_tokens`` ids to -inf at every step.

    Ids at or past the width of ``scores`` are ignored, as transformers ignores them;
    with ``vocab_size`` given they are rejected up front instead.
    """

    def __init__(self, suppress_tokens: Iterable[int], vocab_size: int | None = None):
        ids = list(suppress_tokens) if isinstance(suppress_tokens, (list, tuple, set, frozenset)) else suppress_tokens
        self.suppress_tokens = check_token_ids("suppress_tokens", ids, vocab_size)
        self._mask: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._mask = _cached_token_mask(self._mask, self.suppress_tokens, scores)
        return scores.masked_fill(self._mask, NEG_INF)


class MinLengthLogitsProcessor:
    """Ban the EOS ids while ``input_ids`` (prompt included) is shorter than ``min_length``."""

    def __init__(self, min_length: int, eos_token_id: int | Iterable[int]):
        self.min_length = check_int("min_length", min_length, minimum=0)
        self.eos_token_ids = check_eos_token_ids("eos_token_id", eos_token_id)
        self._mask: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.size(1) >= self.min_length:
            return scores
        self._mask = _cached_token_mask(self._mask, self.eos_token_ids, scores)
        return scores.masked_fill(self._mask, NEG_INF)


class MinNewTokensLogitsProcessor:
    """Ban the EOS ids until ``min_new_tokens`` tokens follow the (padded) prompt of length ``prompt_length``."""

    def __init__(self, min_new_tokens: int, eos_token_id: int | Iterable[int], prompt_length: int):
        self.min_new_tokens = check_int("min_new_tokens", min_new_tokens, minimum=0)
        self.eos_token_ids = check_eos_token_ids("eos_token_id", eos_token_id)
        self.prompt_length = check_int("prompt_length", prompt_length, minimum=0)
        self._mask: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.size(1) - self.prompt_length >= self.min_new_tokens:
            return scores
        self._mask = _cached_token_mask(self._mask, self.eos_token_ids, scores)
        return scores.masked_fill(self._mask, NEG_INF)


def _token_mask(token_ids: list[int], vocab_size: int, device: torch.device) -> torch.Tensor:
    """Return a ``(V,)`` bool mask set at ``token_ids``; ids past the vocabulary are left out."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    inside = [token for token in token_ids if token < vocab_size]
    if inside:
        mask[inside] = True
    return mask


def _cached_token_mask(mask: torch.Tensor | None, token_ids: list[int], scores: torch.Tensor) -> torch.Tensor:
    if mask is None or mask.size(0) != scores.size(-1) or mask.device != scores.device:
        return _token_mask(token_ids, scores.size(-1), scores.device)
    return mask

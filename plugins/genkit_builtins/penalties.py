"""Repetition penalties: transformers' repetition penalty and n-gram ban, OpenAI's presence and frequency penalties.

``RepetitionPenaltyLogitsProcessor`` and ``NoRepeatNGramLogitsProcessor`` return
the same scores as the transformers 5.x classes of the same name. The presence
and frequency penalties follow the OpenAI API and vLLM: they count only the
generated tokens and subtract from the logits.
"""

from __future__ import annotations

import torch

from genkit_builtins.checks import check_int, check_number, fail, is_int

NEG_INF = -float("inf")


class RepetitionPenaltyLogitsProcessor:
    """The CTRL repetition penalty (Keskar et al. 2019, arXiv:1909.05858) with transformers' sign fix.

    Every token id present in ``input_ids`` (prompt included) has its score divided
    by ``penalty`` when the score is positive and multiplied by it otherwise, once
    however often the token occurs. ``penalty > 1`` discourages repeats and
    ``0 < penalty < 1`` encourages them.

    ``prompt_ignore_length`` skips leading positions: an int for every row, or one
    count per row (a ``(B,)`` tensor or a list). transformers 5.x passes each row's
    number of left-padding positions, so pad tokens are not penalised. genkit's
    build function passes ``RequestContext.padding_lengths`` the same way.
    """

    def __init__(self, penalty: float, prompt_ignore_length: int | torch.Tensor | list[int] | None = None):
        self.penalty = check_number("repetition_penalty", penalty, low=0.0, low_open=True)
        self.prompt_ignore_length = _check_ignore_length(prompt_ignore_length)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab_size = scores.size(-1)
        ids = self._counted_ids(input_ids, vocab_size)  # (B, S'), vocab_size where not counted

        # Ids at or past the vocabulary (skipped positions, or an embedding table larger
        # than the output head) land in a spare column that is dropped.
        seen = torch.zeros(scores.size(0), vocab_size + 1, dtype=torch.bool, device=scores.device)
        seen.scatter_(1, ids.clamp(max=vocab_size), True)
        seen = seen[:, :vocab_size]  # (B, V)

        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)

    def _counted_ids(self, input_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
        skip = self.prompt_ignore_length
        if skip is None:
            return input_ids
        if isinstance(skip, int):
            return input_ids[:, skip:]
        if skip.size(0) != input_ids.size(0):
            fail("prompt_ignore_length", skip.tolist(), f"one count per sequence ({input_ids.size(0)} sequences)")
        skip = skip.to(input_ids.device)
        positions = torch.arange(input_ids.size(1), device=input_ids.device)  # (S,)
        return input_ids.masked_fill(positions[None, :] < skip[:, None], vocab_size)


class PresencePenaltyLogitsProcessor:
    """OpenAI's presence penalty: subtract ``presence_penalty`` once from each token already generated.

    Only ``input_ids[:, prompt_length:]`` count, as in the OpenAI API and vLLM. A
    negative value encourages repeats. The range [-2, 2] is the OpenAI API's.
    """

    def __init__(self, presence_penalty: float, prompt_length: int = 0):
        self.presence_penalty = check_number("presence_penalty", presence_penalty, low=-2.0, high=2.0)
        self.prompt_length = check_int("prompt_length", prompt_length, minimum=0)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        counts = count_generated_tokens(input_ids, self.prompt_length, scores)
        return scores - self.presence_penalty * (counts > 0).to(scores.dtype)


class FrequencyPenaltyLogitsProcessor:
    """OpenAI's frequency penalty: subtract ``frequency_penalty`` times the number of times a token was generated.

    Only ``input_ids[:, prompt_length:]`` count, as in the OpenAI API and vLLM. A
    negative value encourages repeats. The range [-2, 2] is the OpenAI API's.
    """

    def __init__(self, frequency_penalty: float, prompt_length: int = 0):
        self.frequency_penalty = check_number("frequency_penalty", frequency_penalty, low=-2.0, high=2.0)
        self.prompt_length = check_int("prompt_length", prompt_length, minimum=0)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        counts = count_generated_tokens(input_ids, self.prompt_length, scores)
        return scores - self.frequency_penalty * counts


def count_generated_tokens(input_ids: torch.Tensor, prompt_length: int, scores: torch.Tensor) -> torch.Tensor:
    """Count each token id in ``input_ids[:, prompt_length:]``; returns ``(B, V)`` in the dtype of ``scores``."""
    vocab_size = scores.size(-1)
    generated = input_ids[:, prompt_length:].clamp(max=vocab_size)  # (B, G); out-of-head ids go to the spare column
    counts = torch.zeros(scores.size(0), vocab_size + 1, dtype=scores.dtype, device=scores.device)
    counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
    return counts[:, :vocab_size]


class NoRepeatNGramLogitsProcessor:
    """Ban every token that would complete an n-gram of size ``ngram_size`` already present in ``input_ids``.

    The whole row counts, prompt (and left padding) included, as in transformers.
    With ``ngram_size=1`` no token may occur twice.
    """

    def __init__(self, ngram_size: int):
        if not is_int(ngram_size) or ngram_size < 1:
            fail("no_repeat_ngram_size", ngram_size, "an integer >= 1 (0 turns the n-gram ban off)")
        self.ngram_size = int(ngram_size)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        size = self.ngram_size
        length = input_ids.size(1)
        if length < size:
            return scores

        # The next token completes an n-gram whose first size-1 tokens are the current
        # suffix, so each earlier n-gram starting with that suffix bans its last token.
        suffix = input_ids[:, length - (size - 1) :]  # (B, size-1)
        ngrams = input_ids.unfold(1, size, 1)  # (B, length-size+1, size)
        repeats = (ngrams[:, :, :-1] == suffix[:, None, :]).all(dim=-1)  # (B, length-size+1)

        vocab_size = scores.size(-1)
        banned_ids = torch.where(repeats, ngrams[:, :, -1].clamp(max=vocab_size), vocab_size)
        banned = torch.zeros(scores.size(0), vocab_size + 1, dtype=torch.bool, device=scores.device)
        banned.scatter_(1, banned_ids, True)
        return scores.masked_fill(banned[:, :vocab_size], NEG_INF)


def _check_ignore_length(value: int | torch.Tensor | list[int] | None) -> int | torch.Tensor | None:
    if value is None:
        return None
    if is_int(value):
        return check_int("prompt_ignore_length", value, minimum=0)
    if isinstance(value, (list, tuple)):
        for count in value:
            check_int("prompt_ignore_length", count, minimum=0)
        return torch.tensor(list(value), dtype=torch.long)
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.is_floating_point() or bool((value < 0).any()):
            fail("prompt_ignore_length", value, "a 1-D integer tensor of non-negative counts, one per sequence")
        return value.long()
    fail("prompt_ignore_length", value, "None, an int, or one non-negative count per sequence")

"""DRY ("Don't Repeat Yourself"): penalise tokens that would extend a repeat of earlier text.

Definition: p-e-w introduced DRY in text-generation-webui (oobabooga/text-generation-webui
pull request #5677, ``DRYLogitsProcessor`` in ``modules/sampler_hijack.py``); llama.cpp
implements it as ``llama_sampler_dry_apply`` in ``src/llama-sampling.cpp``. Suppose the
context ends with tokens ``s`` that already occurred earlier, followed there by token
``t``. Emitting ``t`` now would extend the repeat, so ``t`` is penalised by::

    dry_multiplier * dry_base ** (n - dry_allowed_length)      if n >= dry_allowed_length

where ``n`` is the length of the longest such repeated suffix that ``t`` would
extend. The penalty is subtracted from the logit. A sequence breaker ends every
match: a repeated suffix never contains a breaker, and a breaker token is never
penalised. Only the last ``dry_penalty_last_n`` tokens are searched (-1: the whole
context, prompt included; 0: DRY off).

Choices where the two sources differ, and why:

- Breaker strings become single token ids as text-generation-webui does: the last
  token of ``tokenizer.encode("a" + breaker)``, so a tokenizer that marks the start
  of a text (SentencePiece's leading space) yields the mid-text token.
  NOTE: a breaker that spans several tokens only breaks at its last token;
  llama.cpp also matches multi-token breakers, genkit does not.
- The exponent ``n - dry_allowed_length`` is clamped as llama.cpp clamps it, at
  ``log(float32 max) / log(dry_base)``, so the penalty stays finite;
  text-generation-webui instead stops extending a match at 50 tokens.
- Left padding (``prompt_ignore_length`` per row) never takes part in a match.
"""

from __future__ import annotations

import logging
import math
from typing import Iterable, Sequence

import torch

from genkit.errors import ConfigError
from genkit_builtins.checks import check_int, check_number, check_token_ids, fail

logger = logging.getLogger("genkit")

# Natural log of the largest float32 value; llama.cpp uses the same constant.
FLOAT32_MAX_LOG = 88.7228391


class DRYLogitsProcessor:
    """The DRY repetition penalty; see the module docstring for the definition and sources.

    ``sequence_breaker_ids`` are token ids (see :func:`sequence_breaker_ids` to
    get them from strings). ``prompt_ignore_length`` gives, per row, the number of
    left-padding positions to leave out of matching.
    """

    def __init__(
        self,
        multiplier: float,
        base: float = 1.75,
        allowed_length: int = 2,
        sequence_breaker_ids: Iterable[int] = (),
        penalty_last_n: int = -1,
        prompt_ignore_length: Sequence[int] | torch.Tensor | None = None,
    ):
        self.multiplier = check_number("dry_multiplier", multiplier, low=0.0)
        self.base = check_number("dry_base", base, low=1.0, low_open=True)
        self.allowed_length = check_int("dry_allowed_length", allowed_length, minimum=1)
        self.penalty_last_n = check_int("dry_penalty_last_n", penalty_last_n, minimum=-1)
        self.sequence_breaker_ids = sorted(set(check_token_ids("dry_sequence_breakers", list(sequence_breaker_ids),
                                                               allow_empty=True)))
        self.prompt_ignore_length = _check_padding(prompt_ignore_length)

        # Past this exponent the penalty would overflow float32, so longer matches count as this long.
        self.max_exponent = int(FLOAT32_MAX_LOG / math.log(self.base)) if self.base > 1.000001 else None
        self.max_match_length = None if self.max_exponent is None else self.allowed_length + self.max_exponent

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.multiplier == 0.0 or self.penalty_last_n == 0:
            return scores
        tokens = self._window(input_ids)  # (B, N); -1 marks left padding
        if tokens.size(1) < 2:
            return scores

        match_lengths = self._match_lengths(tokens)  # (B, N-1)
        return self._apply_penalties(tokens, match_lengths, scores)

    def _window(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return the searched tail of ``input_ids`` with left padding replaced by -1."""
        length = input_ids.size(1)
        start = 0 if self.penalty_last_n == -1 else max(0, length - self.penalty_last_n)
        tokens = input_ids[:, start:]
        if self.prompt_ignore_length is None:
            return tokens
        padding = self.prompt_ignore_length.to(input_ids.device)
        if padding.size(0) != input_ids.size(0):
            fail("prompt_ignore_length", padding.tolist(), f"one count per sequence ({input_ids.size(0)} sequences)")
        positions = torch.arange(start, length, device=input_ids.device)  # (N,)
        return tokens.masked_fill(positions[None, :] < padding[:, None], -1)

    def _match_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        """For each earlier position e, count how many tokens ending at e equal the tokens ending the window.

        Returns ``(B, N-1)`` long: entry e is the length of the longest common suffix
        of ``tokens[:, :e+1]`` and ``tokens``, stopped by the first breaker or padding
        (counted from the end of the window) and capped at ``max_match_length``.
        """
        batch, length = tokens.shape
        stops = tokens < 0
        if self.sequence_breaker_ids:
            breakers = torch.tensor(self.sequence_breaker_ids, dtype=tokens.dtype, device=tokens.device)
            stops |= torch.isin(tokens, breakers)

        match_lengths = torch.zeros(batch, length - 1, dtype=torch.long, device=tokens.device)
        still_matching = torch.ones(batch, length - 1, dtype=torch.bool, device=tokens.device)
        steps = length - 1 if self.max_match_length is None else min(length - 1, self.max_match_length)
        for step in range(steps):
            # Compare the token `step` places before the window's end with the token
            # `step` places before each end e; positions e < step have run out.
            current = tokens[:, length - 1 - step]  # (B,)
            earlier = tokens[:, : length - 1 - step]  # (B, N-1-step): token at e - step for e >= step
            same = (earlier == current[:, None]) & ~stops[:, length - 1 - step, None]
            still_matching[:, :step] = False
            still_matching[:, step:] &= same
            if not bool(still_matching.any()):
                break
            match_lengths += still_matching
        return match_lengths

    def _apply_penalties(self, tokens: torch.Tensor, match_lengths: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Subtract the penalty from each token that would extend a long enough match."""
        vocab_size = scores.size(-1)
        next_tokens = tokens[:, 1:]  # (B, N-1): the token that followed each end position
        eligible = (match_lengths >= self.allowed_length) & (next_tokens >= 0) & (next_tokens < vocab_size)
        if self.sequence_breaker_ids:
            breakers = torch.tensor(self.sequence_breaker_ids, dtype=tokens.dtype, device=tokens.device)
            eligible &= ~torch.isin(next_tokens, breakers)
        if not bool(eligible.any()):
            return scores

        # Few positions qualify, so work on them alone: key each by (row, token) in the
        # flattened scores and keep the longest match per key.
        rows, positions = eligible.nonzero(as_tuple=True)  # (K,), (K,)
        keys = rows * vocab_size + next_tokens[rows, positions]
        unique_keys, key_index = torch.unique(keys, return_inverse=True)
        longest = torch.zeros(unique_keys.size(0), dtype=torch.long, device=scores.device)
        longest.scatter_reduce_(0, key_index, match_lengths[rows, positions], reduce="amax")

        exponent = longest - self.allowed_length
        if self.max_exponent is not None:
            exponent = exponent.clamp(max=self.max_exponent)
        penalty = self.multiplier * torch.pow(self.base, exponent.to(scores.dtype))  # (unique K,)

        penalised = scores.clone(memory_format=torch.contiguous_format)
        penalised.view(-1)[unique_keys] -= penalty
        return penalised


def sequence_breaker_ids(tokenizer, breakers: Iterable[str]) -> list[int]:
    """Map each breaker string to one token id: the last token of ``encode("a" + breaker)``.

    A breaker the tokenizer cannot encode even on its own (a character outside a
    character-level vocabulary) can never occur in the context, so it is skipped.
    """
    if isinstance(breakers, str) or not isinstance(breakers, (list, tuple)):
        fail("dry_sequence_breakers", breakers, 'a list of strings, e.g. ["\\n", ":", "\\"", "*"]')
    ids: list[int] = []
    for text in breakers:
        if not isinstance(text, str) or not text:
            fail("dry_sequence_breakers", text, "non-empty strings")
        try:
            encoded = tokenizer.encode("a" + text)
        except ConfigError:
            try:
                encoded = tokenizer.encode(text)
            except ConfigError:
                logger.debug("DRY: the tokenizer cannot encode sequence breaker %r; skipping it", text)
                continue
        if encoded:
            ids.append(int(encoded[-1]))
    return ids


def _check_padding(value: Sequence[int] | torch.Tensor | None) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.is_floating_point() or bool((value < 0).any()):
            fail("prompt_ignore_length", value, "a 1-D integer tensor of non-negative counts, one per sequence")
        return value.long()
    if not isinstance(value, (list, tuple)):
        fail("prompt_ignore_length", value, "one non-negative count per sequence")
    return torch.tensor([check_int("prompt_ignore_length", count, minimum=0) for count in value], dtype=torch.long)

"""Built-in stopping criteria: EOS, maximum length, stop strings and a time limit.

``order`` decides which finish reason a sequence reports when several criteria
stop it on the same token: EOS first, then a stop string, then length, then time.
"""

from __future__ import annotations

import time

import torch

from genkit.errors import ConfigError, PluginError
from genkit.hookspecs import hookimpl
from genkit.specs import RequestContext, StoppingSpec


class EosStoppingCriterion:
    """Stop a sequence whose last token is one of the EOS ids."""

    reason = "eos"

    def __init__(self, eos_token_ids: list[int] | tuple[int, ...], device: torch.device | str = "cpu"):
        if not eos_token_ids:
            raise ConfigError("EosStoppingCriterion needs at least one eos_token_id")
        self.eos_token_ids = torch.tensor(list(eos_token_ids), dtype=torch.long, device=device)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.isin(input_ids[:, -1], self.eos_token_ids.to(input_ids.device))


class MaxLengthStoppingCriterion:
    """Stop every sequence once ``input_ids`` contains ``max_length`` positions (prompt included).

    With ``row_max_lengths`` each row stops at its own length (left-padded rows that
    the context window cuts short). Returns a Python bool when one limit holds for
    every row, which costs the decode loop no tensor operation.
    """

    reason = "length"

    def __init__(self, max_length: int, row_max_lengths: tuple[int, ...] | list[int] = ()):
        self.max_length = max_length
        self.row_max_lengths = None
        if row_max_lengths and len(set(row_max_lengths)) > 1:
            self.row_max_lengths = torch.tensor(list(row_max_lengths), dtype=torch.long)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor | bool:
        if self.row_max_lengths is None:
            return input_ids.shape[-1] >= self.max_length
        if self.row_max_lengths.device != input_ids.device:
            self.row_max_lengths = self.row_max_lengths.to(input_ids.device)
        return self.row_max_lengths <= input_ids.shape[-1]


class StopStringCriterion:
    """Stop a sequence when its generated text contains one of the stop strings.

    Matching runs on the decoded text, so a stop string may span several tokens,
    and one that ends inside a multi-byte character matches once the character is
    complete. ``output_text`` cuts the returned text before the earliest match, or
    after it with ``include_stop_str_in_output``.
    """

    reason = "stop"

    def __init__(self, stop_strings: list[str], include_in_output: bool = False):
        if not stop_strings or not all(isinstance(s, str) and s for s in stop_strings):
            raise ConfigError(f"invalid stop_strings={stop_strings!r}: expected non-empty strings")
        self.stop_strings = list(stop_strings)
        self.include_in_output = include_in_output
        self._longest = max(len(s) for s in self.stop_strings)
        self._scanned: dict[int, int] = {}  # row -> text length already searched
        self._cut: dict[int, int] = {}  # row -> end of the returned text

    def reset(self) -> None:
        self._scanned.clear()
        self._cut.clear()

    def _find(self, row: int, text: str) -> int | None:
        # Only the tail can hold a new match: earlier text was searched before.
        start = max(0, self._scanned.get(row, 0) - self._longest + 1)
        self._scanned[row] = len(text)
        best: tuple[int, int] | None = None
        for stop in self.stop_strings:
            position = text.find(stop, start)
            if position >= 0 and (best is None or position < best[0]):
                best = (position, len(stop))
        if best is None:
            return None
        return best[0] + best[1] if self.include_in_output else best[0]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, texts: list[str] | None = None, **kwargs):
        if texts is None:
            raise PluginError("StopStringCriterion needs the decoded texts; it runs inside genkit's engine only")
        hits = []
        for row, text in enumerate(texts):
            if row not in self._cut:
                cut = self._find(row, text)
                if cut is not None:
                    self._cut[row] = cut
            hits.append(row in self._cut)
        return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)

    def output_text(self, row: int, text: str) -> str:
        cut = self._cut.get(row)
        return text if cut is None else text[:cut]


class MaxTimeStoppingCriterion:
    """Stop every sequence once ``max_time`` seconds have passed since the request was planned."""

    reason = "time"

    def __init__(self, max_time: float):
        if not max_time > 0:
            raise ConfigError(f"invalid max_time={max_time!r}: expected seconds > 0")
        self.max_time = float(max_time)
        self.start = time.perf_counter()

    def reset(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        done = time.perf_counter() - self.start > self.max_time
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def build_eos(ctx: RequestContext) -> EosStoppingCriterion | None:
    if not ctx.eos_token_ids:
        return None
    return EosStoppingCriterion(ctx.eos_token_ids, ctx.device)


def build_max_length(ctx: RequestContext) -> MaxLengthStoppingCriterion:
    return MaxLengthStoppingCriterion(ctx.max_length, ctx.row_max_lengths)


def build_stop_strings(ctx: RequestContext) -> StopStringCriterion | None:
    stops = ctx.config.stop_string_list()
    if not stops:
        return None
    return StopStringCriterion(stops, ctx.config.include_stop_str_in_output)


def build_max_time(ctx: RequestContext) -> MaxTimeStoppingCriterion | None:
    if ctx.config.max_time is None:
        return None
    return MaxTimeStoppingCriterion(ctx.config.max_time)


@hookimpl
def register_stopping_criteria(register):
    register(StoppingSpec("eos", build_eos, order=100, auto=True, description="stop at an EOS token id"))
    register(StoppingSpec("stop_strings", build_stop_strings, order=200, auto=True,
                          description="stop when the decoded text contains a stop string"))
    register(StoppingSpec("max_new_tokens", build_max_length, order=900, auto=True,
                          description="stop after max_new_tokens, or when the context window is full"))
    register(StoppingSpec("max_time", build_max_time, order=950, auto=True,
                          description="stop after max_time seconds"))

"""Parameter checks shared by the built-in logits processors and samplers.

Each check raises :class:`~genkit.errors.ConfigError` with the parameter's name,
the value it got and the allowed range, and returns the value converted to the
plain Python type the component stores.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, NoReturn

from genkit.errors import ConfigError


def fail(name: str, value: Any, expected: str) -> NoReturn:
    raise ConfigError(f"invalid {name}={value!r}: expected {expected}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Check that ``value`` is a real number inside the interval and return it as a float.

    ``low_open``/``high_open`` exclude the bound itself; a missing bound is infinite.
    NaN is always rejected.
    """
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    expected = f"a number in {left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    if not is_number(value) or math.isnan(value):
        fail(name, value, expected)
    if low is not None and (value <= low if low_open else value < low):
        fail(name, value, expected)
    if high is not None and (value >= high if high_open else value > high):
        fail(name, value, expected)
    return float(value)


def check_int(name: str, value: Any, minimum: int) -> int:
    """Check that ``value`` is an integer (not a bool) of at least ``minimum``."""
    if not is_int(value) or value < minimum:
        fail(name, value, f"an integer >= {minimum}")
    return int(value)


def check_min_tokens_to_keep(value: Any) -> int:
    return check_int("min_tokens_to_keep", value, minimum=1)


def check_filter_value(value: Any) -> float:
    """Accept any float except NaN and +inf: filtered tokens must stay the least likely."""
    if not is_number(value) or math.isnan(value) or value == math.inf:
        fail("filter_value", value, "a number below +inf, usually -inf")
    return float(value)


def check_token_ids(name: str, ids: Any, vocab_size: int | None = None, allow_empty: bool = False) -> list[int]:
    """Check a list of token ids: non-negative integers, below ``vocab_size`` when it is given."""
    if not isinstance(ids, (list, tuple)) or (not ids and not allow_empty):
        fail(name, ids, "a non-empty list of non-negative integer token ids")
    for token in ids:
        check_token_id(name, token, vocab_size)
    return [int(token) for token in ids]


def check_token_id(name: str, token: Any, vocab_size: int | None = None) -> int:
    if not is_int(token) or token < 0:
        fail(name, token, "a non-negative integer token id")
    if vocab_size is not None and token >= vocab_size:
        fail(name, token, f"a token id below the model's vocabulary size {vocab_size}")
    return int(token)


def check_eos_token_ids(name: str, ids: Iterable[int] | int | None) -> list[int]:
    """Normalise one EOS id or several to a list, rejecting anything that is not a token id."""
    if ids is None:
        return []
    if is_int(ids):
        ids = [ids]
    return check_token_ids(name, list(ids), allow_empty=True)

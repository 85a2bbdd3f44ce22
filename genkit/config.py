"""The generation config: Hugging Face field names, validated once per request.

Values come from three layers, later ones winning: genkit's defaults (the same as
transformers' ``GenerationConfig`` defaults), the checkpoint's
``generation_config.json``, and the request.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

from genkit.errors import ConfigError

logger = logging.getLogger("genkit")

# transformers applies max_length=20 (prompt included) when nothing sets a length.
DEFAULT_MAX_LENGTH = 20


@dataclass
class GenerationConfig:
    """Decoding settings of one request. Field names and meanings follow transformers."""

    # Length.
    max_new_tokens: int | None = None
    max_length: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    max_time: float | None = None

    # Greedy or sampling, and the sampling warpers in transformers' order.
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    min_p: float | None = None
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0

    # Penalties and masks, applied before the warpers.
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: list[list[int]] | None = None
    sequence_bias: Any = None
    suppress_tokens: list[int] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None

    # Samplers beyond transformers (llama.cpp names).
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    dry_sequence_breakers: list[str] = field(default_factory=lambda: ["\n", ":", '"', "*"])

    # Stopping.
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    stop_strings: str | list[str] | None = None
    include_stop_str_in_output: bool = False

    # Randomness and components.
    seed: int | None = None
    sampler: str | None = None
    cache: str = "static"
    logits_processors: list[Any] = field(default_factory=list)
    stopping_criteria: list[Any] = field(default_factory=list)
    sampler_options: dict[str, Any] = field(default_factory=dict)
    cache_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(
        cls,
        model_defaults: Mapping[str, Any] | None = None,
        config: Any = None,
        **overrides: Any,
    ) -> GenerationConfig:
        """Merge the checkpoint's defaults, a base config and keyword overrides, then validate.

        ``config`` may be a genkit ``GenerationConfig``, a ``transformers.GenerationConfig``
        or a plain dict. Unknown keyword names raise :class:`ConfigError`; unknown keys
        in ``generation_config.json`` (``transformers_version``, ...) are ignored.
        """
        names = set(cls.field_names())
        defaults = {k: _plain(v) for k, v in (model_defaults or {}).items() if k in names and v is not None}
        if defaults:
            try:
                cls(**defaults).validate()
            except ConfigError as exc:
                raise ConfigError(f"{exc} (set in the checkpoint's generation_config.json; fix that file)") from exc

        unknown = sorted(set(overrides) - names)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, names, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                f"unknown generation parameter {', '.join(hints)}; "
                "see GenerationConfig.field_names() for the accepted names"
            )
        request = _config_values(config, names)
        request.update({k: _plain(v) for k, v in overrides.items() if v is not None})

        # A length set by the request wins over any length the checkpoint sets:
        # max_length alone from the request replaces the checkpoint's max_new_tokens.
        if "max_length" in request and "max_new_tokens" not in request:
            defaults.pop("max_new_tokens", None)
        values = {**defaults, **request}

        result = cls(**values)
        result.validate()
        return result

    def replace(self, **changes: Any) -> GenerationConfig:
        result = dataclasses.replace(self, **changes)
        result.validate()
        return result

    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def stop_string_list(self) -> list[str]:
        if self.stop_strings is None:
            return []
        if isinstance(self.stop_strings, str):
            return [self.stop_strings]
        return list(self.stop_strings)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field outside its allowed range."""
        _check_int(self, "max_new_tokens", minimum=1, optional=True)
        _check_int(self, "max_length", minimum=1, optional=True)
        _check_int(self, "min_length", minimum=0)
        _check_int(self, "min_new_tokens", minimum=0, optional=True)
        _check_float(self, "max_time", low=0.0, low_open=True, optional=True)
        if not isinstance(self.do_sample, bool):
            _fail("do_sample", self.do_sample, "True or False")

        _check_float(self, "temperature", low=0.0)
        if self.do_sample and self.temperature <= 0:
            _fail(
                "temperature",
                self.temperature,
                "a value > 0 when do_sample=True; use do_sample=False (greedy) for deterministic output",
            )
        _check_int(self, "top_k", minimum=0)
        _check_float(self, "top_p", low=0.0, high=1.0)
        _check_float(self, "min_p", low=0.0, high=1.0, optional=True)
        _check_float(self, "typical_p", low=0.0, high=1.0, low_open=True)
        _check_float(self, "epsilon_cutoff", low=0.0, high=1.0, high_open=True)
        _check_float(self, "eta_cutoff", low=0.0, high=1.0, high_open=True)

        _check_float(self, "repetition_penalty", low=0.0, low_open=True)
        _check_int(self, "no_repeat_ngram_size", minimum=0)
        _check_float(self, "presence_penalty", low=-2.0, high=2.0)
        _check_float(self, "frequency_penalty", low=-2.0, high=2.0)
        _check_token_lists(self.bad_words_ids, "bad_words_ids")
        _check_id_list(self.suppress_tokens, "suppress_tokens")
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, Mapping):
                _fail("logit_bias", self.logit_bias, "a mapping of token id to bias, e.g. {50256: -100}")
            for token, bias in self.logit_bias.items():
                if not _is_int(token) or int(token) < 0:
                    _fail("logit_bias", token, "non-negative integer token ids as keys")
                if not _is_number(bias) or not math.isfinite(float(bias)):
                    _fail("logit_bias", bias, "finite float biases as values")

        if self.mirostat not in (0, 2):
            _fail("mirostat", self.mirostat, "0 (off) or 2 (mirostat v2)")
        _check_float(self, "mirostat_tau", low=0.0, low_open=True)
        _check_float(self, "mirostat_eta", low=0.0, low_open=True, high=1.0)
        _check_float(self, "dry_multiplier", low=0.0)
        _check_float(self, "dry_base", low=1.0, low_open=True)
        _check_int(self, "dry_allowed_length", minimum=1)
        _check_int(self, "dry_penalty_last_n", minimum=-1)
        breakers = self.dry_sequence_breakers
        if not isinstance(breakers, (list, tuple)) or not all(isinstance(b, str) and b for b in breakers):
            _fail("dry_sequence_breakers", breakers, 'a list of non-empty strings, e.g. ["\\n", ":"]')

        if self.eos_token_id is not None:
            ids = [self.eos_token_id] if _is_int(self.eos_token_id) else self.eos_token_id
            _check_id_list(ids, "eos_token_id")
        _check_int(self, "pad_token_id", minimum=0, optional=True)
        for stop in self.stop_string_list():
            if not isinstance(stop, str) or not stop:
                _fail("stop_strings", stop, "non-empty strings")
        _check_int(self, "seed", minimum=0, optional=True)
        if self.seed is not None and self.seed >= 2**64:
            _fail("seed", self.seed, "an integer in [0, 2**64)")
        if self.sampler is not None and not isinstance(self.sampler, str):
            _fail("sampler", self.sampler, "a registered sampler name such as 'multinomial'")
        for name in ("sampler_options", "cache_options"):
            if not isinstance(getattr(self, name), Mapping):
                _fail(name, getattr(self, name), "a dict of options for the component's build function")
        for name in ("logits_processors", "stopping_criteria"):
            if not isinstance(getattr(self, name), (list, tuple)):
                _fail(name, getattr(self, name), "a list of names, (name, options) pairs or objects")
        if not isinstance(self.cache, str) or not self.cache:
            _fail("cache", self.cache, "a registered KV cache name such as 'concat' or 'static'")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-friendly fields (component instances are left out)."""
        data = dataclasses.asdict(self)
        for key in ("logits_processors", "stopping_criteria"):
            data[key] = [item for item in data[key] if isinstance(item, str)]
        return data


# transformers GenerationConfig fields that genkit does not implement, each with the
# value that leaves the output unchanged. Ignoring any other value would silently
# generate something else, so a transformers config that sets one is rejected.
TRANSFORMERS_ONLY_FIELDS: dict[str, Any] = {
    "num_beams": 1,
    "num_beam_groups": 1,
    "num_return_sequences": 1,
    "penalty_alpha": None,
    "diversity_penalty": 0.0,
    "guidance_scale": 1.0,
    "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "begin_suppress_tokens": None,
    "exponential_decay_length_penalty": None,
    "top_h": None,
    "constraints": None,
    "force_words_ids": None,
    "watermarking_config": None,
    "token_healing": False,
    "dola_layers": None,
}


def _config_values(config: Any, names: set[str]) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, GenerationConfig):
        # Only the fields set away from their defaults, so the checkpoint's defaults still apply.
        blank = GenerationConfig()
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                if getattr(config, f.name) != getattr(blank, f.name)}
    if isinstance(config, Mapping):
        raw = dict(config)
    elif hasattr(config, "to_dict"):  # transformers.GenerationConfig
        # to_diff_dict keeps only the fields set away from transformers' defaults.
        raw = config.to_diff_dict() if hasattr(config, "to_diff_dict") else config.to_dict()
        for key, neutral in TRANSFORMERS_ONLY_FIELDS.items():
            value = raw.get(key)
            if value is not None and value != neutral:
                raise ConfigError(
                    f"the transformers GenerationConfig sets {key}={value!r}, which genkit does not implement; "
                    f"remove it or set it to {neutral!r}"
                )
    else:
        raise ConfigError(
            f"config of type {type(config).__name__} is not supported; "
            "pass a genkit GenerationConfig, a transformers.GenerationConfig or a dict"
        )
    return {k: v for k, v in raw.items() if k in names and v is not None}


def _plain(value: Any) -> Any:
    """Turn NumPy and other non-builtin scalars into int or float, so checks and JSON output see builtins."""
    if isinstance(value, bool) or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def _fail(name: str, value: Any, expected: str) -> None:
    raise ConfigError(f"invalid {name}={value!r}: expected {expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(config: GenerationConfig, name: str, minimum: int, optional: bool = False) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    if not _is_int(value) or value < minimum:
        _fail(name, value, f"an integer >= {minimum}")


def _check_float(
    config: GenerationConfig,
    name: str,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    expected = f"a number in {left}{low}, {high if high is not None else 'inf'}{right}"
    if not _is_number(value) or not math.isfinite(value):
        _fail(name, value, expected)
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        _fail(name, value, expected)


def _check_id_list(ids: Any, name: str) -> None:
    if ids is None:
        return
    if not isinstance(ids, (list, tuple)) or not all(_is_int(i) and i >= 0 for i in ids):
        _fail(name, ids, "a list of non-negative integer token ids")


def _check_token_lists(lists: Any, name: str) -> None:
    if lists is None:
        return
    if not isinstance(lists, (list, tuple)) or not lists:
        _fail(name, lists, "a non-empty list of token id lists, e.g. [[10, 20], [30]]")
    for ids in lists:
        if not isinstance(ids, (list, tuple)) or not ids:
            _fail(name, ids, "non-empty lists of token ids")
        _check_id_list(list(ids), name)

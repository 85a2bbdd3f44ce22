"""Built-in logits processors: the spec table, the build functions and the registration hook.

The chain runs in ascending ``order``. The rows that transformers also has keep the
order in which ``GenerationMixin._get_logits_processor`` (transformers 5.x) appends
them: sequence bias, repetition penalty, n-gram ban, bad words, minimum lengths,
suppressed tokens, then the sampling warpers temperature, top_k, top_p, min_p,
typical_p, epsilon_cutoff, eta_cutoff.

The processors that transformers lacks sit with the penalties, before temperature.
logit_bias, frequency_penalty and presence_penalty take the places vLLM's v1
sampler gives them: logit bias first, then the repetition, frequency and presence
penalties in that order. DRY follows them, because llama.cpp's default sampler
chain runs its penalties before DRY.

The processor classes live in :mod:`genkit_builtins.warpers`,
:mod:`genkit_builtins.penalties`, :mod:`genkit_builtins.constraints` and
:mod:`genkit_builtins.dry`; this module only registers them, so it is the one
entry point for all of them.
"""

from __future__ import annotations

from typing import Any


from genkit.hookspecs import hookimpl
from genkit.specs import ProcessorSpec, RequestContext
from genkit_builtins.constraints import (
    LogitBiasLogitsProcessor,
    MinLengthLogitsProcessor,
    MinNewTokensLogitsProcessor,
    NoBadWordsLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensLogitsProcessor,
)
from genkit_builtins.dry import DRYLogitsProcessor, sequence_breaker_ids
from genkit_builtins.penalties import (
    FrequencyPenaltyLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    PresencePenaltyLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)
from genkit_builtins.warpers import (
    EpsilonLogitsProcessor,
    EtaLogitsProcessor,
    MinPLogitsProcessor,
    TemperatureLogitsProcessor,
    TopKLogitsProcessor,
    TopPLogitsProcessor,
    TypicalLogitsProcessor,
)

# name, order, sampling_only, description. Rows marked "transformers" must stay in
# the order of GenerationMixin._get_logits_processor.
PROCESSOR_TABLE: tuple[tuple[str, int, bool, str], ...] = (
    ("sequence_bias", 100, False, "add a bias to tokens that complete given sequences (transformers)"),
    ("logit_bias", 105, False, "add a fixed bias per token id (OpenAI API)"),
    ("repetition_penalty", 110, False, "divide or multiply the scores of tokens already present (transformers)"),
    ("frequency_penalty", 112, False, "subtract penalty x count of each generated token (OpenAI API)"),
    ("presence_penalty", 114, False, "subtract a penalty from each token generated at least once (OpenAI API)"),
    ("dry", 116, False, "penalise tokens that would extend a repeated sequence (DRY)"),
    ("no_repeat_ngram_size", 120, False, "ban tokens that would repeat an n-gram (transformers)"),
    ("bad_words_ids", 130, False, "ban tokens that would complete a banned sequence (transformers)"),
    ("min_length", 140, False, "ban EOS below a total length (transformers)"),
    ("min_new_tokens", 145, False, "ban EOS until enough new tokens (transformers)"),
    ("suppress_tokens", 150, False, "ban token ids at every step (transformers)"),
    ("temperature", 500, True, "divide scores by temperature (transformers)"),
    ("top_k", 510, True, "keep the k best tokens, ties with the k-th kept (transformers)"),
    ("top_p", 520, True, "nucleus filtering (transformers)"),
    ("min_p", 530, True, "remove tokens below min_p x the top probability (transformers)"),
    ("typical_p", 540, True, "locally typical sampling (transformers)"),
    ("epsilon_cutoff", 550, True, "remove tokens below a fixed probability (transformers)"),
    ("eta_cutoff", 560, True, "remove tokens below an entropy-dependent probability (transformers)"),
)

ORDER = {name: order for name, order, _, _ in PROCESSOR_TABLE}


def padding_lengths(ctx: RequestContext) -> list[int] | None:
    """Return the left-padding count of each row, or None when no row is padded.

    Repetition penalty and DRY skip those positions, as transformers 5.x does.
    """
    if not any(ctx.padding_lengths):
        return None
    return list(ctx.padding_lengths)


def _mirostat_on(ctx: RequestContext) -> bool:
    # Mirostat chooses its own truncation, so the truncation warpers step aside:
    # llama.cpp (common_sampler_init) and text-generation-webui keep only temperature
    # in front of mirostat. genkit's penalties and masks still run, unlike llama.cpp's.
    return ctx.config.mirostat == 2


def _pick(option: Any, default: Any) -> Any:
    return default if option is None else option


# Penalties and masks.


def build_sequence_bias(ctx: RequestContext, sequence_bias: Any = None) -> SequenceBiasLogitsProcessor | None:
    value = _pick(sequence_bias, ctx.config.sequence_bias)
    return None if value is None else SequenceBiasLogitsProcessor(value, vocab_size=ctx.shape.vocab_size)


def build_logit_bias(ctx: RequestContext, logit_bias: dict[int, float] | None = None) -> LogitBiasLogitsProcessor | None:
    value = _pick(logit_bias, ctx.config.logit_bias)
    return LogitBiasLogitsProcessor(value, vocab_size=ctx.shape.vocab_size) if value else None


def build_repetition_penalty(
    ctx: RequestContext, repetition_penalty: float | None = None
) -> RepetitionPenaltyLogitsProcessor | None:
    value = _pick(repetition_penalty, ctx.config.repetition_penalty)
    if value == 1.0:
        return None
    return RepetitionPenaltyLogitsProcessor(value, prompt_ignore_length=padding_lengths(ctx))


def build_frequency_penalty(
    ctx: RequestContext, frequency_penalty: float | None = None
) -> FrequencyPenaltyLogitsProcessor | None:
    value = _pick(frequency_penalty, ctx.config.frequency_penalty)
    return None if value == 0.0 else FrequencyPenaltyLogitsProcessor(value, prompt_length=ctx.prompt_length)


def build_presence_penalty(
    ctx: RequestContext, presence_penalty: float | None = None
) -> PresencePenaltyLogitsProcessor | None:
    value = _pick(presence_penalty, ctx.config.presence_penalty)
    return None if value == 0.0 else PresencePenaltyLogitsProcessor(value, prompt_length=ctx.prompt_length)


def build_dry(
    ctx: RequestContext,
    dry_multiplier: float | None = None,
    dry_base: float | None = None,
    dry_allowed_length: int | None = None,
    dry_penalty_last_n: int | None = None,
    dry_sequence_breakers: list[str] | None = None,
) -> DRYLogitsProcessor | None:
    config = ctx.config
    multiplier = _pick(dry_multiplier, config.dry_multiplier)
    last_n = _pick(dry_penalty_last_n, config.dry_penalty_last_n)
    if multiplier == 0.0 or last_n == 0:
        return None
    breakers = _pick(dry_sequence_breakers, config.dry_sequence_breakers)
    return DRYLogitsProcessor(
        multiplier,
        base=_pick(dry_base, config.dry_base),
        allowed_length=_pick(dry_allowed_length, config.dry_allowed_length),
        sequence_breaker_ids=sequence_breaker_ids(ctx.tokenizer, breakers),
        penalty_last_n=last_n,
        prompt_ignore_length=padding_lengths(ctx),
    )


def build_no_repeat_ngram_size(
    ctx: RequestContext, no_repeat_ngram_size: int | None = None
) -> NoRepeatNGramLogitsProcessor | None:
    value = _pick(no_repeat_ngram_size, ctx.config.no_repeat_ngram_size)
    return None if value == 0 else NoRepeatNGramLogitsProcessor(value)


def build_bad_words_ids(ctx: RequestContext, bad_words_ids: list[list[int]] | None = None) -> NoBadWordsLogitsProcessor | None:
    value = _pick(bad_words_ids, ctx.config.bad_words_ids)
    if value is None:
        return None
    return NoBadWordsLogitsProcessor(value, eos_token_id=ctx.eos_token_ids, vocab_size=ctx.shape.vocab_size)


def build_min_length(ctx: RequestContext, min_length: int | None = None) -> MinLengthLogitsProcessor | None:
    value = _pick(min_length, ctx.config.min_length)
    if not value or not ctx.eos_token_ids:
        return None
    return MinLengthLogitsProcessor(value, ctx.eos_token_ids)


def build_min_new_tokens(ctx: RequestContext, min_new_tokens: int | None = None) -> MinNewTokensLogitsProcessor | None:
    value = _pick(min_new_tokens, ctx.config.min_new_tokens)
    if not value or not ctx.eos_token_ids:
        return None
    return MinNewTokensLogitsProcessor(value, ctx.eos_token_ids, prompt_length=ctx.prompt_length)


def build_suppress_tokens(
    ctx: RequestContext, suppress_tokens: list[int] | None = None
) -> SuppressTokensLogitsProcessor | None:
    value = _pick(suppress_tokens, ctx.config.suppress_tokens)
    return SuppressTokensLogitsProcessor(value, vocab_size=ctx.shape.vocab_size) if value else None


# Sampling warpers.


def build_temperature(ctx: RequestContext, temperature: float | None = None) -> TemperatureLogitsProcessor | None:
    value = ctx.config.temperature if temperature is None else temperature
    return None if value == 1.0 else TemperatureLogitsProcessor(value)


def build_top_k(ctx: RequestContext, top_k: int | None = None, min_tokens_to_keep: int = 1) -> TopKLogitsProcessor | None:
    if top_k is None and _mirostat_on(ctx):
        return None
    value = ctx.config.top_k if top_k is None else top_k
    return None if value == 0 else TopKLogitsProcessor(value, min_tokens_to_keep=min_tokens_to_keep)


def build_top_p(ctx: RequestContext, top_p: float | None = None, min_tokens_to_keep: int = 1) -> TopPLogitsProcessor | None:
    if top_p is None and _mirostat_on(ctx):
        return None
    value = ctx.config.top_p if top_p is None else top_p
    return None if value >= 1.0 else TopPLogitsProcessor(value, min_tokens_to_keep=min_tokens_to_keep)


def build_min_p(ctx: RequestContext, min_p: float | None = None, min_tokens_to_keep: int = 1) -> MinPLogitsProcessor | None:
    if min_p is None and _mirostat_on(ctx):
        return None
    value = _pick(min_p, ctx.config.min_p)
    # transformers also appends min_p=0, which removes nothing; skipping it gives the same scores.
    return None if not value else MinPLogitsProcessor(value, min_tokens_to_keep=min_tokens_to_keep)


def build_typical_p(
    ctx: RequestContext, typical_p: float | None = None, min_tokens_to_keep: int = 1
) -> TypicalLogitsProcessor | None:
    if typical_p is None and _mirostat_on(ctx):
        return None
    value = _pick(typical_p, ctx.config.typical_p)
    return None if value >= 1.0 else TypicalLogitsProcessor(value, min_tokens_to_keep=min_tokens_to_keep)


def build_epsilon_cutoff(
    ctx: RequestContext, epsilon_cutoff: float | None = None, min_tokens_to_keep: int = 1
) -> EpsilonLogitsProcessor | None:
    if epsilon_cutoff is None and _mirostat_on(ctx):
        return None
    value = _pick(epsilon_cutoff, ctx.config.epsilon_cutoff)
    return None if value == 0.0 else EpsilonLogitsProcessor(value, min_tokens_to_keep=min_tokens_to_keep)


def build_eta_cutoff(
    ctx: RequestContext, eta_cutoff: float | None = None, min_tokens_to_keep: int = 1
) -> EtaLogitsProcessor | None:
    if eta_cutoff is None and _mirostat_on(ctx):
        return None
    value = _pick(eta_cutoff, ctx.config.eta_cutoff)
    return None if value == 0.0 else EtaLogitsProcessor(value, min_tokens_to_keep=min_tokens_to_keep)


BUILDS = {
    "sequence_bias": build_sequence_bias,
    "logit_bias": build_logit_bias,
    "repetition_penalty": build_repetition_penalty,
    "frequency_penalty": build_frequency_penalty,
    "presence_penalty": build_presence_penalty,
    "dry": build_dry,
    "no_repeat_ngram_size": build_no_repeat_ngram_size,
    "bad_words_ids": build_bad_words_ids,
    "min_length": build_min_length,
    "min_new_tokens": build_min_new_tokens,
    "suppress_tokens": build_suppress_tokens,
    "temperature": build_temperature,
    "top_k": build_top_k,
    "top_p": build_top_p,
    "min_p": build_min_p,
    "typical_p": build_typical_p,
    "epsilon_cutoff": build_epsilon_cutoff,
    "eta_cutoff": build_eta_cutoff,
}


@hookimpl
def register_logits_processors(register):
    for name, order, sampling_only, description in PROCESSOR_TABLE:
        register(ProcessorSpec(name, BUILDS[name], order, auto=True, sampling_only=sampling_only,
                               description=description))

"""transformers objects handed to genkit, and genkit processors handed to transformers.

On the tiny GPT-2 with the real GPT-2 tokenizer:

- a ``transformers.GenerationConfig`` as the request config gives the tokens of the
  same keyword arguments, and of transformers' own ``generate()``;
- transformers ``LogitsProcessor`` and ``StoppingCriteria`` objects run inside
  genkit's loop. Processors sit where transformers merges custom ones: after the
  penalties and masks, before the sampling warpers. Criteria report their ``reason``
  attribute or class name as the finish reason;
- ``genkit.interop.to_transformers`` wraps a genkit processor, by object or by
  registered name, for ``model.generate(logits_processor=...)``. The wrapped
  processor gives the tokens of transformers' own flag and of genkit's generate.
"""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any, Callable

import pytest
import torch
import transformers
from transformers import GenerationConfig as HFGenerationConfig
from transformers import LogitsProcessor as HFLogitsProcessor
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation import (
    MaxLengthCriteria,
    NoRepeatNGramLogitsProcessor as HFNoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor as HFRepetitionPenaltyLogitsProcessor,
    StopStringCriteria,
)

from genkit.config import GenerationConfig
from genkit.engine import Generator
from genkit.errors import ConfigError, UnknownNameError
from genkit.interop import TransformersLogitsProcessor, to_transformers
from genkit.testing import request_context
from genkit_builtins.constraints import (
    LogitBiasLogitsProcessor,
    MinLengthLogitsProcessor,
    MinNewTokensLogitsProcessor,
    NoBadWordsLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensLogitsProcessor,
)
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

# transformers 5.25 fills a passed config's unset fields from the checkpoint's
# generation_config.json and skips left padding in its repetition penalty. Older
# versions were not checked, so the tests that rely on either skip there.
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5

PROMPT = "ROMEO:\nWhat light through yonder window breaks?"
MAX_NEW_TOKENS = 40
SEEDS = (0, 1)
# transformers' default top_k=50 would run after a wrapped warper and change its
# result, so every sampled run turns it off unless the case is about top_k.
BASE_SETTINGS = {"do_sample": True, "top_k": 0, "max_new_tokens": MAX_NEW_TOKENS}
# The tiny random GPT-2 has a nearly flat next-token distribution, so it draws EOS
# only with a large bias.
EOS_BOOST = 14.0
MIN_NEW_TOKENS = 30


@pytest.fixture(scope="module")
def checkpoint(tiny_gpt2):
    return tiny_gpt2(tokenizer="gpt2")


@pytest.fixture(scope="module")
def hf_tokenizer(checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(checkpoint.folder))


@pytest.fixture(scope="module")
def generator(checkpoint):
    return Generator.from_pretrained(checkpoint.folder)


@pytest.fixture(scope="module")
def eos(checkpoint) -> int:
    return checkpoint.model.config.eos_token_id


@pytest.fixture(scope="module")
def vocab_size(checkpoint) -> int:
    return checkpoint.model.config.vocab_size


@pytest.fixture(scope="module")
def prompt_ids(hf_tokenizer) -> list[int]:
    return hf_tokenizer.encode(PROMPT)


def cut_after_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def hf_generate(model, prompt_ids: list[int], seed: int | None = None, **settings: Any) -> list[int]:
    """Return transformers' new tokens for one prompt, cut after the first EOS."""
    input_ids = torch.tensor([prompt_ids])
    eos = model.config.eos_token_id
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), pad_token_id=eos, **settings)
    return cut_after_eos(output[0, len(prompt_ids) :].tolist(), eos)


@pytest.fixture(scope="module")
def greedy_tokens(checkpoint, prompt_ids) -> list[int]:
    return hf_generate(checkpoint.model, prompt_ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)


class BoostTokens(HFLogitsProcessor):
    """A custom transformers processor: add ``bias`` to the scores of ``token_ids`` at every step.

    An additive bias commutes with neither temperature nor top-k, so the tokens
    sampled with it show where it sits in the chain.
    """

    def __init__(self, token_ids: list[int], bias: float):
        self.token_ids = list(token_ids)
        self.bias = bias

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        scores[:, self.token_ids] += self.bias
        return scores


class RecordScores(HFLogitsProcessor):
    """A custom transformers processor that keeps a copy of the scores it receives and changes nothing."""

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.seen.append(scores.clone())
        return scores


class StopAfterTokens(StoppingCriteria):
    """A custom transformers criterion with a ``reason``: stop once ``count`` tokens follow the prompt."""

    reason = "token_budget"

    def __init__(self, prompt_length: int, count: int):
        self.stop_length = prompt_length + count

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        done = input_ids.shape[1] >= self.stop_length
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class StopAfterTokensPlain(StoppingCriteria):
    """A criterion written without ``**kwargs`` and returning a bool, which transformers' loop accepts."""

    def __init__(self, prompt_length: int, count: int):
        self.stop_length = prompt_length + count

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> bool:
        return input_ids.shape[1] >= self.stop_length


# (a) transformers.GenerationConfig as the request config.


@pytest.mark.parametrize("seed", SEEDS)
def test_transformers_config_matches_keywords(generator, checkpoint, prompt_ids, seed):
    settings = dict(
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=True,
        temperature=0.7,
        top_k=20,
        top_p=0.9,
        repetition_penalty=1.2,
        no_repeat_ngram_size=2,
        min_new_tokens=5,
    )

    from_config = generator.generate(PROMPT, HFGenerationConfig(**settings), seed=seed)
    from_keywords = generator.generate(PROMPT, seed=seed, **settings)
    expected = hf_generate(checkpoint.model, prompt_ids, seed, generation_config=HFGenerationConfig(**settings))

    assert from_config.token_ids == from_keywords.token_ids
    assert from_config.token_ids == expected


def test_config_stop_strings_match_transformers(generator, checkpoint, hf_tokenizer, prompt_ids):
    greedy = generator.generate(PROMPT, max_new_tokens=MAX_NEW_TOKENS)
    stop = greedy.text[20:24]  # a string that spans a token boundary of the greedy text
    config = HFGenerationConfig(max_new_tokens=MAX_NEW_TOKENS, do_sample=False, stop_strings=[stop])

    result = generator.generate(PROMPT, config)
    expected = hf_generate(checkpoint.model, prompt_ids, generation_config=config, tokenizer=hf_tokenizer)

    assert result.token_ids == expected
    assert len(expected) < len(greedy.token_ids)
    assert result.finish_reason == "stop"
    assert result.text == greedy.text[:20]


@pytest.mark.skipif(not TRANSFORMERS_5, reason="checked against transformers 5.x only")
def test_transformers_config_keeps_checkpoint_defaults(checkpoint, prompt_ids, tmp_path):
    # transformers 5.x fills the fields a passed config leaves unset from the
    # checkpoint's generation_config.json, and genkit layers them the same way.
    from transformers import GPT2LMHeadModel

    folder = tmp_path / "checkpoint"
    shutil.copytree(checkpoint.folder, folder)
    eos = checkpoint.model.config.eos_token_id
    HFGenerationConfig(do_sample=True, temperature=0.6, top_k=7, bos_token_id=eos, eos_token_id=eos).save_pretrained(
        str(folder)
    )
    model = GPT2LMHeadModel.from_pretrained(str(folder)).eval()
    config = HFGenerationConfig(max_new_tokens=MAX_NEW_TOKENS, top_k=3)

    result = Generator.from_pretrained(folder).generate(PROMPT, config, seed=5)
    expected = hf_generate(model, prompt_ids, 5, generation_config=config)

    assert result.token_ids == expected


def test_transformers_config_with_beams_raises(generator):
    # genkit has no beam search. A config that requests it must not silently
    # produce the greedy tokens instead.
    config = HFGenerationConfig(max_new_tokens=5, num_beams=4)

    with pytest.raises(ConfigError, match="num_beams"):
        generator.generate(PROMPT, config)


# (b) transformers processors and criteria inside genkit's loop.


@pytest.mark.parametrize("seed", SEEDS)
def test_custom_processor_sampling_matches_transformers(generator, checkpoint, prompt_ids, greedy_tokens, seed):
    # Boosted by +6 before top_k, the greedy tokens are among the 20 best. Boosted after
    # top_k, they would stay -inf unless they were among the 20 best anyway.
    settings = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=0.5, top_k=20, repetition_penalty=1.3)
    boost = BoostTokens(greedy_tokens[5:15], 6.0)

    result = generator.generate(PROMPT, seed=seed, logits_processors=[boost], **settings)
    boosted = LogitsProcessorList([boost])
    expected = hf_generate(checkpoint.model, prompt_ids, seed, logits_processor=boosted, **settings)
    unboosted = hf_generate(checkpoint.model, prompt_ids, seed, **settings)

    assert result.token_ids == expected
    assert expected != unboosted


def test_transformers_processors_mix_with_genkit(generator, checkpoint, prompt_ids):
    processors = [HFNoRepeatNGramLogitsProcessor(1), BoostTokens([11, 13], 2.0)]
    settings = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=0.5, suppress_tokens=[198])

    result = generator.generate(PROMPT, seed=3, logits_processors=processors, **settings)
    hf_processors = LogitsProcessorList(processors)
    expected = hf_generate(checkpoint.model, prompt_ids, 3, logits_processor=hf_processors, **settings)

    assert result.token_ids == expected
    assert len(set(result.token_ids)) == len(result.token_ids)  # the 1-gram ban held
    assert not set(result.token_ids) & set(prompt_ids)
    assert 198 not in result.token_ids


def test_processor_list_accepted_as_logits_processors(generator):
    processors = LogitsProcessorList([HFNoRepeatNGramLogitsProcessor(1)])

    result = generator.generate(PROMPT, max_new_tokens=MAX_NEW_TOKENS, logits_processors=processors)

    assert len(set(result.token_ids)) == len(result.token_ids)


def test_custom_processor_runs_before_warpers(generator, checkpoint, prompt_ids):
    settings = dict(max_new_tokens=6, do_sample=True, temperature=0.5, top_k=20, repetition_penalty=1.3)
    genkit_recorder, hf_recorder = RecordScores(), RecordScores()

    generator.generate(PROMPT, seed=0, logits_processors=[genkit_recorder], **settings)
    hf_generate(checkpoint.model, prompt_ids, 0, logits_processor=LogitsProcessorList([hf_recorder]), **settings)
    input_ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        raw = checkpoint.model(input_ids).logits[:, -1, :].float()
    penalised = HFRepetitionPenaltyLogitsProcessor(1.3)(input_ids, raw.clone())

    assert len(genkit_recorder.seen) == len(hf_recorder.seen) == 6
    for step, (ours, theirs) in enumerate(zip(genkit_recorder.seen, hf_recorder.seen)):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0, msg=f"scores at step {step}")
    # Neither top_k (-inf entries) nor temperature (scores x 2) has run yet.
    assert torch.isfinite(genkit_recorder.seen[0]).all()
    torch.testing.assert_close(genkit_recorder.seen[0], penalised, atol=1e-4, rtol=0)


def test_max_length_criteria_reports_class_name(generator, checkpoint, prompt_ids):
    criterion = MaxLengthCriteria(max_length=len(prompt_ids) + 7)

    result = generator.generate(PROMPT, max_new_tokens=MAX_NEW_TOKENS, stopping_criteria=[criterion])
    expected = hf_generate(
        checkpoint.model, prompt_ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
        stopping_criteria=StoppingCriteriaList([criterion]),
    )

    assert result.token_ids == expected
    assert len(result.token_ids) == 7
    assert result.finish_reason == "MaxLengthCriteria"


def test_stop_string_criteria_matches_transformers(generator, checkpoint, hf_tokenizer, prompt_ids):
    greedy = generator.generate(PROMPT, max_new_tokens=MAX_NEW_TOKENS)
    stop = greedy.text[20:24]
    criterion = StopStringCriteria(tokenizer=hf_tokenizer, stop_strings=[stop])

    result = generator.generate(PROMPT, max_new_tokens=MAX_NEW_TOKENS, stopping_criteria=[criterion])
    expected = hf_generate(
        checkpoint.model, prompt_ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
        stopping_criteria=StoppingCriteriaList([criterion]),
    )

    assert result.token_ids == expected
    assert result.finish_reason == "StopStringCriteria"
    # Only genkit's own stop_strings cut the text. A foreign criterion leaves it whole.
    assert stop in result.text


def test_custom_criterion_reason_becomes_finish_reason(generator, prompt_ids):
    criterion = StopAfterTokens(len(prompt_ids), 9)

    result = generator.generate(PROMPT, max_new_tokens=MAX_NEW_TOKENS, stopping_criteria=[criterion])

    assert len(result.token_ids) == 9
    assert result.finish_reason == "token_budget"


def test_criterion_without_kwargs_matches_transformers(generator, checkpoint, prompt_ids):
    # transformers calls a criterion with (input_ids, scores) only, so criteria written
    # without **kwargs work there. genkit's extra texts=/detokenizers= must not break them.
    criterion = StopAfterTokensPlain(len(prompt_ids), 4)

    result = generator.generate(PROMPT, max_new_tokens=MAX_NEW_TOKENS, stopping_criteria=[criterion])
    expected = hf_generate(
        checkpoint.model, prompt_ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
        stopping_criteria=StoppingCriteriaList([criterion]),
    )

    assert result.token_ids == expected
    assert result.finish_reason == "StopAfterTokensPlain"


def test_genkit_criterion_wins_a_tie(generator, prompt_ids):
    # Both stop on the same token, and a registered criterion is checked first.
    criterion = StopAfterTokens(len(prompt_ids), 5)

    result = generator.generate(PROMPT, max_new_tokens=5, stopping_criteria=[criterion])

    assert result.finish_reason == "length"


# (c) genkit processors wrapped for transformers.


@dataclasses.dataclass(frozen=True)
class CaseInputs:
    """Values a case builds its processor from: vocabulary size, prompt length, EOS id and likely tokens.

    ``first_pairs`` contains the first two tokens that transformers samples under
    ``BASE_SETTINGS`` for each seed of ``SEEDS``: bans and biases on them change
    the sampled output, where bans on the greedy tokens rarely would.
    """

    vocab_size: int
    prompt_length: int
    eos: int
    greedy_tokens: list[int]
    first_pairs: list[list[int]]


# A case: (settings under test as generation fields, a builder of the same processor
# as an object, the extra settings that every run of the case keeps).
WrapCase = tuple[Callable[[CaseInputs], dict], Callable[[CaseInputs, dict], Any], Callable[[CaseInputs], dict]]


def no_extra(c: CaseInputs) -> dict:
    return {}


def eos_boost(c: CaseInputs) -> dict:
    return {"sequence_bias": [[[c.eos], EOS_BOOST]]}


def sharpen(c: CaseInputs) -> dict:
    return {"temperature": 0.5}


SHARED_CASES: dict[str, WrapCase] = {
    "sequence_bias": (
        lambda c: {"sequence_bias": [[pair, -5.0] for pair in c.first_pairs] + [[[c.greedy_tokens[3]], 4.0]]},
        lambda c, s: SequenceBiasLogitsProcessor(s["sequence_bias"], vocab_size=c.vocab_size),
        no_extra,
    ),
    "repetition_penalty": (
        lambda c: {"repetition_penalty": 1.3},
        lambda c, s: RepetitionPenaltyLogitsProcessor(s["repetition_penalty"]),
        sharpen,
    ),
    "no_repeat_ngram_size": (
        lambda c: {"no_repeat_ngram_size": 1},
        lambda c, s: NoRepeatNGramLogitsProcessor(s["no_repeat_ngram_size"]),
        sharpen,
    ),
    "bad_words_ids": (
        lambda c: {"bad_words_ids": [*c.first_pairs, [c.greedy_tokens[2]], [c.eos]]},
        lambda c, s: NoBadWordsLogitsProcessor(s["bad_words_ids"], eos_token_id=c.eos, vocab_size=c.vocab_size),
        no_extra,
    ),
    "min_length": (
        lambda c: {"min_length": c.prompt_length + MIN_NEW_TOKENS},
        lambda c, s: MinLengthLogitsProcessor(s["min_length"], c.eos),
        eos_boost,
    ),
    "min_new_tokens": (
        lambda c: {"min_new_tokens": MIN_NEW_TOKENS},
        lambda c, s: MinNewTokensLogitsProcessor(s["min_new_tokens"], c.eos, prompt_length=c.prompt_length),
        eos_boost,
    ),
    "suppress_tokens": (
        lambda c: {"suppress_tokens": [pair[0] for pair in c.first_pairs]},
        lambda c, s: SuppressTokensLogitsProcessor(s["suppress_tokens"], vocab_size=c.vocab_size),
        no_extra,
    ),
    "temperature": (
        lambda c: {"temperature": 0.7},
        lambda c, s: TemperatureLogitsProcessor(s["temperature"]),
        no_extra,
    ),
    "top_k": (lambda c: {"top_k": 10}, lambda c, s: TopKLogitsProcessor(s["top_k"]), no_extra),
    "top_p": (lambda c: {"top_p": 0.8}, lambda c, s: TopPLogitsProcessor(s["top_p"]), no_extra),
    "min_p": (lambda c: {"min_p": 0.1}, lambda c, s: MinPLogitsProcessor(s["min_p"]), no_extra),
    "typical_p": (lambda c: {"typical_p": 0.7}, lambda c, s: TypicalLogitsProcessor(s["typical_p"]), no_extra),
    "epsilon_cutoff": (
        lambda c: {"epsilon_cutoff": 3e-4},
        lambda c, s: EpsilonLogitsProcessor(s["epsilon_cutoff"]),
        no_extra,
    ),
    "eta_cutoff": (lambda c: {"eta_cutoff": 0.05}, lambda c, s: EtaLogitsProcessor(s["eta_cutoff"]), no_extra),
}

# Processors that transformers lacks: the wrapped one is compared with genkit's generate only.
GENKIT_ONLY_CASES: dict[str, WrapCase] = {
    "presence_penalty": (
        lambda c: {"presence_penalty": -2.0},
        lambda c, s: PresencePenaltyLogitsProcessor(s["presence_penalty"], prompt_length=c.prompt_length),
        sharpen,
    ),
    "frequency_penalty": (
        lambda c: {"frequency_penalty": -1.5},
        lambda c, s: FrequencyPenaltyLogitsProcessor(s["frequency_penalty"], prompt_length=c.prompt_length),
        sharpen,
    ),
    "logit_bias": (
        lambda c: {"logit_bias": {c.greedy_tokens[0]: -100.0, c.greedy_tokens[4]: 6.0}},
        lambda c, s: LogitBiasLogitsProcessor(s["logit_bias"], vocab_size=c.vocab_size),
        no_extra,
    ),
}


@pytest.fixture(scope="module")
def case_inputs(checkpoint, vocab_size, prompt_ids, eos, greedy_tokens) -> CaseInputs:
    first_pairs = [hf_generate(checkpoint.model, prompt_ids, seed, **BASE_SETTINGS)[:2] for seed in SEEDS]
    return CaseInputs(vocab_size, len(prompt_ids), eos, greedy_tokens, first_pairs)


def wrap(case: WrapCase, build_by: str, c: CaseInputs) -> TransformersLogitsProcessor:
    """Wrap the case's processor for transformers, built directly or by registered name."""
    settings_of, build_object, _ = case
    settings = settings_of(c)
    if build_by == "object":
        return to_transformers(build_object(c, settings))
    name = next(iter(settings))
    context = request_context(
        vocab_size=c.vocab_size, prompt_length=c.prompt_length, eos_token_ids=(c.eos,), **settings
    )
    return to_transformers(name, context)


def wrapped_and_flag_runs(checkpoint, generator, prompt_ids, case, build_by, c, seed):
    """Return (transformers with the wrapped processor, genkit with the flag, run settings)."""
    settings_of, _, extra_of = case
    settings = settings_of(c)
    run = {**BASE_SETTINGS, **extra_of(c)}
    wrapped = hf_generate(
        checkpoint.model, prompt_ids, seed, logits_processor=LogitsProcessorList([wrap(case, build_by, c)]), **run
    )
    ours = generator.generate(PROMPT, seed=seed, **{**run, **settings})
    return wrapped, ours, {**run, **settings}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("build_by", ["object", "name"])
@pytest.mark.parametrize("case", sorted(SHARED_CASES))
def test_wrapped_processor_matches_transformers_flag(
    checkpoint, generator, prompt_ids, case_inputs, case, build_by, seed
):
    wrapped, ours, settings = wrapped_and_flag_runs(
        checkpoint, generator, prompt_ids, SHARED_CASES[case], build_by, case_inputs, seed
    )

    flag = hf_generate(checkpoint.model, prompt_ids, seed, **settings)

    assert wrapped == flag
    assert ours.token_ids == flag


@pytest.mark.parametrize("case", sorted(SHARED_CASES))
def test_shared_case_changes_tokens(checkpoint, prompt_ids, case_inputs, case):
    # A case whose setting changes nothing would pass the parity check above trivially.
    settings_of, _, extra_of = SHARED_CASES[case]
    run = {**BASE_SETTINGS, **extra_of(case_inputs)}

    changed = [
        hf_generate(checkpoint.model, prompt_ids, seed, **{**run, **settings_of(case_inputs)})
        != hf_generate(checkpoint.model, prompt_ids, seed, **run)
        for seed in SEEDS
    ]

    assert any(changed), f"{case} leaves transformers' tokens unchanged for seeds {SEEDS}"


@pytest.mark.parametrize("build_by", ["object", "name"])
@pytest.mark.parametrize("case", sorted(GENKIT_ONLY_CASES))
def test_wrapped_genkit_only_processor_matches_genkit(checkpoint, generator, prompt_ids, case_inputs, case, build_by):
    _, _, extra_of = GENKIT_ONLY_CASES[case]
    for seed in SEEDS:
        wrapped, ours, _ = wrapped_and_flag_runs(
            checkpoint, generator, prompt_ids, GENKIT_ONLY_CASES[case], build_by, case_inputs, seed
        )
        without = hf_generate(checkpoint.model, prompt_ids, seed, **BASE_SETTINGS, **extra_of(case_inputs))

        assert wrapped == ours.token_ids, f"seed {seed}"
        assert wrapped != without, f"seed {seed}: {case} changed nothing"


def test_wrapped_processor_greedy_matches_genkit(checkpoint, generator, prompt_ids, case_inputs, greedy_tokens):
    processors = LogitsProcessorList(
        [
            to_transformers(PresencePenaltyLogitsProcessor(-2.0, prompt_length=len(prompt_ids))),
            to_transformers(LogitBiasLogitsProcessor({greedy_tokens[1]: -100.0})),
        ]
    )

    expected = hf_generate(
        checkpoint.model, prompt_ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, logits_processor=processors
    )
    result = generator.generate(
        PROMPT, max_new_tokens=MAX_NEW_TOKENS, presence_penalty=-2.0, logit_bias={greedy_tokens[1]: -100.0}
    )

    assert result.token_ids == expected
    assert expected != greedy_tokens


@pytest.mark.skipif(not TRANSFORMERS_5, reason="checked against transformers 5.x only")
@pytest.mark.parametrize("seed", SEEDS)
def test_wrapped_penalty_skips_context_padding(checkpoint, hf_tokenizer, vocab_size, eos, seed):
    # transformers' flag reads each row's left padding from the attention mask, but the
    # wrapped processor reads it from its context. The padding is EOS, boosted so that
    # penalising it by mistake changes the draws.
    prompts = [PROMPT, "ROMEO:"]
    lengths = [len(hf_tokenizer.encode(prompt)) for prompt in prompts]
    longest = max(lengths)
    padding = [longest - n for n in lengths]
    input_ids = torch.tensor([[eos] * pad + hf_tokenizer.encode(p) for p, pad in zip(prompts, padding)])
    attention_mask = (torch.arange(longest)[None, :] >= torch.tensor(padding)[:, None]).long()
    unaware = request_context(vocab_size=vocab_size, batch_size=2, prompt_length=longest, repetition_penalty=1.3)
    aware = dataclasses.replace(unaware, padding_lengths=tuple(padding))
    settings = dict(
        max_new_tokens=MAX_NEW_TOKENS, do_sample=True, top_k=0, sequence_bias=[[[eos], 13.0]], pad_token_id=eos
    )

    def run(**extra: Any) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            return checkpoint.model.generate(input_ids, attention_mask=attention_mask, **settings, **extra)

    flag = run(repetition_penalty=1.3)
    wrapped = run(logits_processor=LogitsProcessorList([to_transformers("repetition_penalty", aware)]))
    padding_penalised = run(logits_processor=LogitsProcessorList([to_transformers("repetition_penalty", unaware)]))

    assert torch.equal(wrapped, flag)
    assert not torch.equal(padding_penalised, flag)


def test_wrapped_processor_subclasses_transformers():
    wrapped = to_transformers(RepetitionPenaltyLogitsProcessor(1.3))

    assert isinstance(wrapped, HFLogitsProcessor)
    assert "RepetitionPenaltyLogitsProcessor" in repr(wrapped)


def test_wrap_by_name_without_context_raises():
    with pytest.raises(ConfigError, match="request_context"):
        to_transformers("repetition_penalty")


def test_wrap_by_name_when_off_raises(vocab_size):
    context = request_context(vocab_size=vocab_size)

    with pytest.raises(ConfigError, match="repetition_penalty"):
        to_transformers("repetition_penalty", context)


def test_wrap_by_name_with_options(vocab_size):
    context = request_context(vocab_size=vocab_size)
    scores = torch.tensor([[2.0, -2.0, 1.0]])

    wrapped = to_transformers("repetition_penalty", context, repetition_penalty=2.0)

    torch.testing.assert_close(wrapped(torch.tensor([[0, 1]]), scores), torch.tensor([[1.0, -4.0, 1.0]]))


def test_wrap_unknown_name_lists_available(vocab_size):
    with pytest.raises(UnknownNameError, match="repetition_penalty"):
        to_transformers("no_such_processor", request_context(vocab_size=vocab_size))


def test_wrap_object_with_options_raises():
    # Options configure a processor built by name, so an object given with them would ignore them.
    with pytest.raises(TypeError, match="top_k"):
        to_transformers(TopKLogitsProcessor(5), top_k=10)


def test_wrap_object_with_context_raises(vocab_size):
    with pytest.raises(TypeError, match="context"):
        to_transformers(TopKLogitsProcessor(5), request_context(vocab_size=vocab_size))


def test_wrap_non_callable_raises():
    with pytest.raises(TypeError, match="42"):
        to_transformers(42)


def test_transformers_config_fields_map_by_name():
    # Every field genkit shares with transformers' GenerationConfig has the same name,
    # so a transformers config built from genkit's values is accepted as it is.
    shared = set(GenerationConfig.field_names()) & set(HFGenerationConfig().to_dict())
    settings = dict(do_sample=True, temperature=0.7, top_k=5, top_p=0.9, min_p=0.05, typical_p=0.9,
                    epsilon_cutoff=1e-3, eta_cutoff=1e-3, repetition_penalty=1.1, no_repeat_ngram_size=3)

    built = GenerationConfig.build(None, HFGenerationConfig(**settings))

    assert set(settings) <= shared
    for name, value in settings.items():
        assert getattr(built, name) == value, name

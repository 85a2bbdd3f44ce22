"""Seeded sampling through genkit against transformers' ``generate()`` on the same tiny GPT-2.

Both sides load the checkpoint that transformers wrote, with the real GPT-2
tokenizer. transformers draws from the global RNG after ``torch.manual_seed(seed)``;
genkit draws from a ``torch.Generator`` seeded with the request's ``seed``. The two
streams are the same, so equal settings must give equal tokens, step for step, for
every processor that both implement and for both KV cache backends.

A parity check passes trivially when the setting changes nothing, for example an
n-gram ban that never fires. ``test_setting_changes_tokens`` checks that each case
changes transformers' own tokens for at least one seed.

genkit's default length is 20 new tokens, transformers' is ``max_length=20`` with
the prompt counted, so every call passes ``max_new_tokens``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
import transformers

from genkit.engine import Generator

# transformers 5.25 skips each row's left padding in its repetition penalty. Older
# versions were not checked, so the test that relies on it skips there.
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5

PROMPT = "ROMEO:\nWhat light through yonder window breaks?"
BATCH_PROMPTS = [
    "ROMEO:",
    "But soft, what light through yonder window breaks? It is the east,",
    "JULIET:\nO Romeo, Romeo!",
]
MAX_NEW_TOKENS = 48
SEEDS = (0, 1, 2)
CACHE_NAMES = ("concat", "static")

# Every run samples with top_k=0 unless a case sets top_k: transformers' default
# top_k=50 would otherwise run in front of each truncation warper under test.
BASE_SETTINGS = {"do_sample": True, "top_k": 0}

# The tiny random GPT-2 has a flat next-token distribution (entropy about 8 nats
# over 50257 tokens), so its EOS token is never drawn. A bias of +14 on EOS makes it
# likely within a few tokens, which gives min_new_tokens an EOS to hold back.
EOS_BOOST = 14.0
MIN_NEW_TOKENS = 40


@dataclass(frozen=True)
class LikelyTokens:
    """Token ids that the reference run draws, for cases that ban or bias likely tokens.

    ``first_pairs`` contains the first two tokens that transformers samples under
    ``BASE_SETTINGS`` for each seed of ``SEEDS``. ``eos`` is the EOS id and
    ``prompt_length`` the number of tokens of PROMPT.
    """

    first_pairs: list[tuple[int, int]]
    eos: int
    prompt_length: int

    @property
    def first_tokens(self) -> list[int]:
        return [pair[0] for pair in self.first_pairs]


# name -> likely tokens -> (settings under test, extra settings that the control run keeps).
# A low temperature in the extras sharpens the distribution so that the penalties
# hit tokens the sampler would otherwise draw.
CASES: dict[str, Callable[[LikelyTokens], tuple[dict[str, Any], dict[str, Any]]]] = {
    "temperature": lambda likely: ({"temperature": 0.7}, {}),
    "top_k": lambda likely: ({"top_k": 10}, {}),
    "top_p": lambda likely: ({"top_p": 0.8}, {}),
    "min_p": lambda likely: ({"min_p": 0.1}, {}),
    "typical_p": lambda likely: ({"typical_p": 0.7}, {}),
    "repetition_penalty": lambda likely: ({"repetition_penalty": 1.3}, {"temperature": 0.5}),
    "repetition_penalty_below_one": lambda likely: ({"repetition_penalty": 0.8}, {}),
    "epsilon_cutoff": lambda likely: ({"epsilon_cutoff": 3e-4}, {}),
    "eta_cutoff": lambda likely: ({"eta_cutoff": 0.05}, {}),
    "no_repeat_ngram_size_1": lambda likely: ({"no_repeat_ngram_size": 1}, {"temperature": 0.5}),
    # A penalty below one favours repeats, so that bigrams recur and the ban fires.
    "no_repeat_ngram_size_2": lambda likely: (
        {"no_repeat_ngram_size": 2}, {"repetition_penalty": 0.3, "temperature": 0.5}
    ),
    "bad_words_ids": lambda likely: ({"bad_words_ids": [list(pair) for pair in likely.first_pairs]}, {}),
    "suppress_tokens": lambda likely: ({"suppress_tokens": likely.first_tokens}, {}),
    "sequence_bias": lambda likely: (
        {
            "sequence_bias": [[list(pair), -5.0] for pair in likely.first_pairs]
            + [[[likely.first_pairs[0][1]], 4.0]]
        },
        {},
    ),
    "min_new_tokens": lambda likely: (
        {"min_new_tokens": MIN_NEW_TOKENS}, {"sequence_bias": [[[likely.eos], EOS_BOOST]]}
    ),
    "min_length": lambda likely: (
        {"min_length": likely.prompt_length + MIN_NEW_TOKENS}, {"sequence_bias": [[[likely.eos], EOS_BOOST]]}
    ),
    "combined": lambda likely: (
        {
            "temperature": 0.8,
            "top_k": 40,
            "top_p": 0.95,
            "min_p": 0.02,
            "typical_p": 0.95,
            "epsilon_cutoff": 1e-4,
            "eta_cutoff": 1e-3,
            "repetition_penalty": 1.2,
            "no_repeat_ngram_size": 3,
            "bad_words_ids": [list(likely.first_pairs[0])],
            "suppress_tokens": likely.first_tokens[1:],
            "sequence_bias": [[[likely.eos], EOS_BOOST], [[likely.first_pairs[2][1]], 3.0]],
            "min_new_tokens": 8,
        },
        {},
    ),
}


@pytest.fixture(scope="module")
def checkpoint(tiny_gpt2):
    return tiny_gpt2(tokenizer="gpt2")


@pytest.fixture(scope="module")
def hf_tokenizer(checkpoint):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint.folder))
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="module")
def generator(checkpoint):
    return Generator.from_pretrained(checkpoint.folder)


@pytest.fixture(scope="module")
def eos(checkpoint) -> int:
    return checkpoint.model.config.eos_token_id


def cut_after_eos(tokens: list[int], eos: int) -> list[int]:
    """Drop what follows the first EOS: transformers pads finished rows, genkit returns no tokens there."""
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def hf_generate(model, hf_tokenizer, prompts: list[str], seed: int | None, **settings: Any) -> list[list[int]]:
    """Return transformers' new tokens per prompt, left-padded as one batch, cut after the first EOS."""
    batch = hf_tokenizer(prompts, return_tensors="pt", padding=True)
    eos = model.config.eos_token_id
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(**batch, pad_token_id=eos, **settings)
    prompt_length = batch["input_ids"].shape[1]
    return [cut_after_eos(row, eos) for row in output[:, prompt_length:].tolist()]


@pytest.fixture(scope="module")
def hf_reference(checkpoint, hf_tokenizer):
    """Return ``run(seed, **settings)``: transformers' tokens for PROMPT, computed once per setting."""
    memo: dict[str, list[int]] = {}

    def run(seed: int | None, **settings: Any) -> list[int]:
        key = repr((seed, sorted(settings.items())))
        if key not in memo:
            memo[key] = hf_generate(checkpoint.model, hf_tokenizer, [PROMPT], seed, **settings)[0]
        return memo[key]

    return run


@pytest.fixture(scope="module")
def likely(hf_reference, hf_tokenizer, eos) -> LikelyTokens:
    pairs = []
    for seed in SEEDS:
        tokens = hf_reference(seed, max_new_tokens=MAX_NEW_TOKENS, **BASE_SETTINGS)
        pairs.append((tokens[0], tokens[1]))
    return LikelyTokens(first_pairs=pairs, eos=eos, prompt_length=len(hf_tokenizer.encode(PROMPT)))


def case_settings(name: str, likely: LikelyTokens) -> dict[str, Any]:
    settings, extra = CASES[name](likely)
    return {"max_new_tokens": MAX_NEW_TOKENS, **BASE_SETTINGS, **extra, **settings}


# Single prompt, one setting at a time.


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cache_name", CACHE_NAMES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_sampled_tokens_match_transformers(generator, hf_reference, likely, eos, case, cache_name, seed):
    settings = case_settings(case, likely)
    expected = hf_reference(seed, **settings)

    result = generator.generate(PROMPT, seed=seed, cache=cache_name, **settings)

    assert result.token_ids == expected
    assert result.finish_reason == ("eos" if expected[-1] == eos else "length")


@pytest.mark.parametrize("case", sorted(CASES))
def test_setting_changes_tokens(hf_reference, likely, case):
    settings, extra = CASES[case](likely)
    control = {"max_new_tokens": MAX_NEW_TOKENS, **BASE_SETTINGS, **extra}

    changed = [hf_reference(seed, **{**control, **settings}) != hf_reference(seed, **control) for seed in SEEDS]

    assert any(changed), f"{case} {settings} leaves transformers' tokens unchanged for seeds {SEEDS}"


def test_eos_boost_stops_early(hf_reference, likely, eos):
    # Without this, the min_new_tokens and min_length cases would hold back an EOS
    # that the sampler never draws anyway.
    _, extra = CASES["min_new_tokens"](likely)

    for seed in SEEDS:
        tokens = hf_reference(seed, max_new_tokens=MAX_NEW_TOKENS, **BASE_SETTINGS, **extra)
        assert tokens[-1] == eos
        assert len(tokens) < MIN_NEW_TOKENS


@pytest.mark.parametrize("seed", SEEDS)
def test_min_new_tokens_holds_back_eos(generator, likely, eos, seed):
    result = generator.generate(PROMPT, seed=seed, **case_settings("min_new_tokens", likely))

    assert eos not in result.token_ids[:MIN_NEW_TOKENS]
    assert result.finish_reason == "eos"


# Greedy decoding with a penalty.


@pytest.mark.parametrize("cache_name", CACHE_NAMES)
@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_greedy_repetition_penalty_matches_transformers(generator, hf_reference, cache_name, penalty):
    settings = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, "repetition_penalty": penalty}
    expected = hf_reference(None, **settings)

    result = generator.generate(PROMPT, cache=cache_name, **settings)

    assert expected != hf_reference(None, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    assert result.token_ids == expected


# Left-padded batches.


def test_batch_prompts_have_different_lengths(hf_tokenizer):
    lengths = [len(hf_tokenizer.encode(prompt)) for prompt in BATCH_PROMPTS]

    assert len(set(lengths)) == len(lengths)


@pytest.mark.parametrize("cache_name", CACHE_NAMES)
def test_greedy_batch_matches_transformers(checkpoint, hf_tokenizer, generator, eos, cache_name):
    settings = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}
    expected = hf_generate(checkpoint.model, hf_tokenizer, BATCH_PROMPTS, None, **settings)

    results = generator.generate_batch(BATCH_PROMPTS, cache=cache_name, **settings)

    for row, result in enumerate(results):
        assert result.token_ids == expected[row], f"row {row}"
        assert result.finish_reason == ("eos" if expected[row][-1] == eos else "length"), f"row {row}"


@pytest.mark.skipif(not TRANSFORMERS_5, reason="checked against transformers 5.x only")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cache_name", CACHE_NAMES)
def test_sampled_penalty_batch_matches_transformers(checkpoint, hf_tokenizer, generator, cache_name, seed):
    # The penalty must skip each row's left padding (EOS ids here), as transformers 5.x does.
    settings = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": True, "repetition_penalty": 1.3, "temperature": 0.5}
    expected = hf_generate(checkpoint.model, hf_tokenizer, BATCH_PROMPTS, seed, **settings)

    results = generator.generate_batch(BATCH_PROMPTS, seed=seed, cache=cache_name, **settings)

    for row, result in enumerate(results):
        assert result.token_ids == expected[row], f"row {row}"


@pytest.mark.parametrize("seed", SEEDS)
def test_sampled_batch_with_eos_matches_transformers(checkpoint, hf_tokenizer, generator, eos, seed):
    # Rows stop at different steps, and finished rows still take part in the batch draw.
    settings = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": True, "top_k": 0, "sequence_bias": [[[eos], EOS_BOOST]]}
    expected = hf_generate(checkpoint.model, hf_tokenizer, BATCH_PROMPTS, seed, **settings)

    results = generator.generate_batch(BATCH_PROMPTS, seed=seed, **settings)

    assert any(tokens[-1] == eos for tokens in expected)
    for row, result in enumerate(results):
        assert result.token_ids == expected[row], f"row {row}"
        assert result.finish_reason == ("eos" if expected[row][-1] == eos else "length"), f"row {row}"


# generation_config.json defaults.


@pytest.fixture(scope="module")
def sampling_defaults_checkpoint(checkpoint, tmp_path_factory):
    """A copy of the checkpoint whose generation_config.json turns sampling on."""
    from transformers import GenerationConfig as HFGenerationConfig
    from transformers import GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("sampling-defaults") / "checkpoint"
    shutil.copytree(checkpoint.folder, folder)
    eos = checkpoint.model.config.eos_token_id
    defaults = HFGenerationConfig(do_sample=True, top_k=7, temperature=0.6, bos_token_id=eos, eos_token_id=eos)
    defaults.save_pretrained(str(folder))
    return folder, GPT2LMHeadModel.from_pretrained(str(folder)).eval()


@pytest.mark.parametrize("seed", SEEDS)
def test_checkpoint_defaults_match_transformers(sampling_defaults_checkpoint, hf_tokenizer, generator, seed):
    folder, model = sampling_defaults_checkpoint
    expected = hf_generate(model, hf_tokenizer, [PROMPT], seed, max_new_tokens=MAX_NEW_TOKENS)[0]

    result = Generator.from_pretrained(folder).generate(PROMPT, seed=seed, max_new_tokens=MAX_NEW_TOKENS)
    explicit = generator.generate(
        PROMPT, seed=seed, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, top_k=7, temperature=0.6
    )

    assert model.generation_config.top_k == 7
    assert result.token_ids == expected
    assert result.token_ids == explicit.token_ids
    assert result.token_ids != generator.generate(PROMPT, max_new_tokens=MAX_NEW_TOKENS).token_ids


def test_checkpoint_max_length_matches_transformers(checkpoint, hf_tokenizer, likely, tmp_path):
    from transformers import GenerationConfig as HFGenerationConfig
    from transformers import GPT2LMHeadModel

    folder = tmp_path / "checkpoint"
    shutil.copytree(checkpoint.folder, folder)
    eos = checkpoint.model.config.eos_token_id
    max_length = likely.prompt_length + 25
    HFGenerationConfig(max_length=max_length, bos_token_id=eos, eos_token_id=eos).save_pretrained(str(folder))
    model = GPT2LMHeadModel.from_pretrained(str(folder)).eval()
    expected = hf_generate(model, hf_tokenizer, [PROMPT], None)[0]

    result = Generator.from_pretrained(folder).generate(PROMPT)

    assert len(expected) == 25
    assert result.token_ids == expected
    assert result.finish_reason == "length"

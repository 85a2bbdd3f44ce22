"""The built-in logits processors and samplers against transformers and hand-derived numbers.

Every processor that transformers also has gets the same random batched logits
(ties and -inf entries included) and the same random token ids as its transformers
counterpart. The -inf masks must be identical and the finite scores equal within
1e-6. The OpenAI penalties, logit_bias, DRY and mirostat, which transformers lacks,
are checked on small examples whose expected numbers are worked out by hand in the
test. The chain built from the registry must have transformers' order.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GenerationConfig as HFGenerationConfig
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation import logits_process as hf

import genkit_builtins.processors as processors_plugin
import genkit_builtins.samplers as samplers_plugin
from conftest import write_byte_bpe_files
from genkit.config import GenerationConfig
from genkit.errors import ConfigError
from genkit.models.base import ModelShape
from genkit.models.tokenizer import CharTokenizer, load_tokenizer
from genkit.plan import build_processors
from genkit.registry import Registry
from genkit.specs import RequestContext
from genkit_builtins.constraints import (
    LogitBiasLogitsProcessor,
    MinLengthLogitsProcessor,
    MinNewTokensLogitsProcessor,
    NoBadWordsLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensLogitsProcessor,
)
from genkit_builtins.dry import DRYLogitsProcessor, sequence_breaker_ids
from genkit_builtins.mirostat import MirostatV2Sampler
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

BATCH = 4
VOCAB = 1000
SEQ_LEN = 24
PROMPT_LEN = 16
SEEDS = range(6)
NEG_INF = -float("inf")


# ---------------------------------------------------------------------------- inputs


def random_scores(seed: int) -> torch.Tensor:
    """Return (BATCH, VOCAB) logits with -inf entries, ties and one peaked row.

    Every row has about 5% -inf entries. Row 1 is rounded to steps of 0.5, so most
    of its scores tie with others. Row 2 has its maximum twice. Row 3 has one
    dominant token, so the truncation filters keep very few tokens there.
    """
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(BATCH, VOCAB, generator=generator) * 3.0
    scores[torch.rand(BATCH, VOCAB, generator=generator) < 0.05] = NEG_INF

    scores[1] = torch.round(scores[1] * 2.0) / 2.0
    top = int(scores[2].argmax())
    scores[2, (top + 17) % VOCAB] = scores[2, top]
    scores[3, 7] = scores[3].max() + 8.0
    return scores


def random_ids(seed: int, length: int = SEQ_LEN) -> torch.Tensor:
    """Return (BATCH, length) ids drawn from 40 values, so repeats and n-gram matches occur.

    Row 2 repeats a 5-token pattern, which gives long n-gram repeats.
    """
    generator = torch.Generator().manual_seed(1000 + seed)
    ids = torch.randint(0, 40, (BATCH, length), generator=generator)
    pattern = torch.randint(0, 40, (5,), generator=generator)
    ids[2] = pattern.repeat(length // 5 + 1)[:length]
    return ids


def assert_same_scores(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert ours.dtype == theirs.dtype
    assert torch.equal(torch.isneginf(ours), torch.isneginf(theirs)), "the -inf masks differ"
    assert torch.equal(torch.isposinf(ours), torch.isposinf(theirs)), "the +inf entries differ"
    finite = torch.isfinite(theirs)
    assert torch.equal(torch.isfinite(ours), finite)
    torch.testing.assert_close(ours[finite], theirs[finite], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- parity with transformers


def tail_sequences(ids: torch.Tensor) -> list[list[int]]:
    """Token sequences that end-match rows of ``ids``, so multi-token biases and bans fire."""
    return [
        [int(ids[0, -1]), 11],
        [int(ids[1, -2]), int(ids[1, -1]), 12],
        [int(ids[2, -3]), int(ids[2, -2]), int(ids[2, -1]), 13],
        [int(ids[3, -1]), 14],
        [999, 15],  # a prefix that never matches
    ]


# Each case: id, genkit factory, transformers factory. Factories get the input ids,
# so that biases and bans can be built from the sequence they will see.
PARITY_CASES = [
    ("temperature-0.7", lambda ids: TemperatureLogitsProcessor(0.7), lambda ids: hf.TemperatureLogitsWarper(0.7)),
    ("temperature-1.6", lambda ids: TemperatureLogitsProcessor(1.6), lambda ids: hf.TemperatureLogitsWarper(1.6)),
    ("top_k-1", lambda ids: TopKLogitsProcessor(1), lambda ids: hf.TopKLogitsWarper(1)),
    ("top_k-5", lambda ids: TopKLogitsProcessor(5), lambda ids: hf.TopKLogitsWarper(5)),
    ("top_k-50", lambda ids: TopKLogitsProcessor(50), lambda ids: hf.TopKLogitsWarper(50)),
    ("top_k-2-keep-4", lambda ids: TopKLogitsProcessor(2, min_tokens_to_keep=4),
     lambda ids: hf.TopKLogitsWarper(2, min_tokens_to_keep=4)),
    ("top_p-0.0", lambda ids: TopPLogitsProcessor(0.0), lambda ids: hf.TopPLogitsWarper(0.0)),
    ("top_p-0.3", lambda ids: TopPLogitsProcessor(0.3), lambda ids: hf.TopPLogitsWarper(0.3)),
    ("top_p-0.9", lambda ids: TopPLogitsProcessor(0.9), lambda ids: hf.TopPLogitsWarper(0.9)),
    ("top_p-0.5-keep-3", lambda ids: TopPLogitsProcessor(0.5, min_tokens_to_keep=3),
     lambda ids: hf.TopPLogitsWarper(0.5, min_tokens_to_keep=3)),
    ("min_p-0.05", lambda ids: MinPLogitsProcessor(0.05), lambda ids: hf.MinPLogitsWarper(0.05)),
    ("min_p-0.3", lambda ids: MinPLogitsProcessor(0.3), lambda ids: hf.MinPLogitsWarper(0.3)),
    ("min_p-0.9-keep-3", lambda ids: MinPLogitsProcessor(0.9, min_tokens_to_keep=3),
     lambda ids: hf.MinPLogitsWarper(0.9, min_tokens_to_keep=3)),
    ("typical_p-0.2", lambda ids: TypicalLogitsProcessor(0.2), lambda ids: hf.TypicalLogitsWarper(0.2)),
    ("typical_p-0.9", lambda ids: TypicalLogitsProcessor(0.9), lambda ids: hf.TypicalLogitsWarper(0.9)),
    ("typical_p-0.5-keep-5", lambda ids: TypicalLogitsProcessor(0.5, min_tokens_to_keep=5),
     lambda ids: hf.TypicalLogitsWarper(0.5, min_tokens_to_keep=5)),
    ("epsilon-3e-4", lambda ids: EpsilonLogitsProcessor(3e-4), lambda ids: hf.EpsilonLogitsWarper(3e-4)),
    ("epsilon-0.05", lambda ids: EpsilonLogitsProcessor(0.05), lambda ids: hf.EpsilonLogitsWarper(0.05)),
    ("epsilon-0.5-keep-2", lambda ids: EpsilonLogitsProcessor(0.5, min_tokens_to_keep=2),
     lambda ids: hf.EpsilonLogitsWarper(0.5, min_tokens_to_keep=2)),
    ("eta-3e-4", lambda ids: EtaLogitsProcessor(3e-4), lambda ids: hf.EtaLogitsWarper(3e-4)),
    ("eta-0.02", lambda ids: EtaLogitsProcessor(0.02), lambda ids: hf.EtaLogitsWarper(0.02)),
    ("eta-0.5-keep-3", lambda ids: EtaLogitsProcessor(0.5, min_tokens_to_keep=3),
     lambda ids: hf.EtaLogitsWarper(0.5, min_tokens_to_keep=3)),
    ("repetition-1.3", lambda ids: RepetitionPenaltyLogitsProcessor(1.3),
     lambda ids: hf.RepetitionPenaltyLogitsProcessor(1.3)),
    ("repetition-0.7", lambda ids: RepetitionPenaltyLogitsProcessor(0.7),
     lambda ids: hf.RepetitionPenaltyLogitsProcessor(0.7)),
    ("repetition-skip-int", lambda ids: RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=6),
     lambda ids: hf.RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=6)),
    ("repetition-skip-per-row", lambda ids: RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=[0, 3, 9, 0]),
     lambda ids: hf.RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=torch.tensor([0, 3, 9, 0]))),
    ("no_repeat_ngram-1", lambda ids: NoRepeatNGramLogitsProcessor(1), lambda ids: hf.NoRepeatNGramLogitsProcessor(1)),
    ("no_repeat_ngram-2", lambda ids: NoRepeatNGramLogitsProcessor(2), lambda ids: hf.NoRepeatNGramLogitsProcessor(2)),
    ("no_repeat_ngram-3", lambda ids: NoRepeatNGramLogitsProcessor(3), lambda ids: hf.NoRepeatNGramLogitsProcessor(3)),
    ("no_repeat_ngram-longer-than-input", lambda ids: NoRepeatNGramLogitsProcessor(SEQ_LEN + 1),
     lambda ids: hf.NoRepeatNGramLogitsProcessor(SEQ_LEN + 1)),
    ("bad_words", lambda ids: NoBadWordsLogitsProcessor([[5], [7], *tail_sequences(ids)], eos_token_id=[7]),
     lambda ids: hf.NoBadWordsLogitsProcessor([[5], [7], *tail_sequences(ids)], eos_token_id=[7])),
    ("sequence_bias",
     lambda ids: SequenceBiasLogitsProcessor([[[5], 2.5], [[6], -1.25]] + [[seq, -3.0 + i] for i, seq in
                                                                          enumerate(tail_sequences(ids))]),
     lambda ids: hf.SequenceBiasLogitsProcessor([[[5], 2.5], [[6], -1.25]] + [[seq, -3.0 + i] for i, seq in
                                                                             enumerate(tail_sequences(ids))])),
    ("sequence_bias-dict", lambda ids: SequenceBiasLogitsProcessor({(5,): 1.5, tuple(tail_sequences(ids)[0]): -2.0}),
     lambda ids: hf.SequenceBiasLogitsProcessor({(5,): 1.5, tuple(tail_sequences(ids)[0]): -2.0})),
    ("suppress_tokens", lambda ids: SuppressTokensLogitsProcessor([0, 3, 7, 999]),
     lambda ids: hf.SuppressTokensLogitsProcessor([0, 3, 7, 999])),
    ("min_length-active", lambda ids: MinLengthLogitsProcessor(SEQ_LEN + 1, [2, 7]),
     lambda ids: hf.MinLengthLogitsProcessor(SEQ_LEN + 1, [2, 7])),
    ("min_length-reached", lambda ids: MinLengthLogitsProcessor(SEQ_LEN, [2, 7]),
     lambda ids: hf.MinLengthLogitsProcessor(SEQ_LEN, [2, 7])),
    ("min_new_tokens-active", lambda ids: MinNewTokensLogitsProcessor(SEQ_LEN - PROMPT_LEN + 1, [2, 7], PROMPT_LEN),
     lambda ids: hf.MinNewTokensLengthLogitsProcessor(PROMPT_LEN, SEQ_LEN - PROMPT_LEN + 1, [2, 7])),
    ("min_new_tokens-reached", lambda ids: MinNewTokensLogitsProcessor(SEQ_LEN - PROMPT_LEN, 2, PROMPT_LEN),
     lambda ids: hf.MinNewTokensLengthLogitsProcessor(PROMPT_LEN, SEQ_LEN - PROMPT_LEN, 2)),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("make_ours, make_theirs", [case[1:] for case in PARITY_CASES],
                         ids=[case[0] for case in PARITY_CASES])
def test_processor_matches_transformers(make_ours, make_theirs, seed):
    scores = random_scores(seed)
    ids = random_ids(seed)
    before = scores.clone()

    ours = make_ours(ids)(ids, scores)
    theirs = make_theirs(ids)(ids.clone(), scores.clone())

    assert_same_scores(ours, theirs)
    assert torch.equal(scores.nan_to_num(), before.nan_to_num()), "the processor changed its input in place"


def test_parity_inputs_contain_ties_and_neg_inf():
    scores = random_scores(0)
    assert bool(torch.isneginf(scores).any())
    assert scores[1].unique().numel() < VOCAB // 4
    assert int((scores[2] == scores[2].max()).sum()) == 2


def test_sequence_bias_completion_fires():
    """Guard for the parity test: the crafted tail sequences do complete in the input."""
    ids = random_ids(0)
    scores = torch.zeros(BATCH, VOCAB)
    out = NoBadWordsLogitsProcessor(tail_sequences(ids))(ids, scores)
    assert bool(torch.isneginf(out[0, 11]))
    assert bool(torch.isneginf(out[1, 12]))
    assert bool(torch.isneginf(out[2, 13]))
    assert not bool(torch.isneginf(out[0, 12]))
    assert not bool(torch.isneginf(out[:, 15]).any())


def test_bad_words_drops_single_eos_entry():
    processor = NoBadWordsLogitsProcessor([[5], [7], [7, 8]], eos_token_id=7)
    assert set(processor.sequence_bias) == {(5,), (7, 8)}


# ---------------------------------------------------------------------------- hand-checked semantics


def test_top_p_zero_keeps_exactly_one_token():
    scores = random_scores(3)
    scores[0, :3] = scores[0].max() + 1.0  # a three-way tie at the top
    out = TopPLogitsProcessor(0.0)(random_ids(3), scores)
    kept_counts = torch.isfinite(out).sum(dim=-1)
    assert kept_counts.tolist() == [1] * BATCH


def test_top_k_keeps_ties_with_kth_value():
    scores = torch.tensor([[5.0, 4.0, 3.0, 3.0, 3.0, 1.0, NEG_INF]])
    out = TopKLogitsProcessor(3)(torch.zeros(1, 1, dtype=torch.long), scores)
    expected = torch.tensor([[5.0, 4.0, 3.0, 3.0, 3.0, NEG_INF, NEG_INF]])
    assert torch.equal(out, expected)


def test_repetition_penalty_hand_example():
    # Token 1 (score 2.0) and token 3 (score -1.0) occur; 1 is divided, 3 multiplied, once each.
    ids = torch.tensor([[1, 3, 1, 1]])
    scores = torch.tensor([[0.5, 2.0, 4.0, -1.0, 0.0]])
    out = RepetitionPenaltyLogitsProcessor(2.0)(ids, scores)
    assert torch.equal(out, torch.tensor([[0.5, 1.0, 4.0, -2.0, 0.0]]))


# Generated tokens (after the 2-token prompt): token 2 once, token 3 three times.
# Token 1 occurs only in the prompt, so the OpenAI penalties leave it alone.
PENALTY_IDS = torch.tensor([[1, 3, 2, 3, 3, 3]])
PENALTY_SCORES = torch.tensor([[0.5, 1.0, 2.0, 3.0, -1.0, 0.0]])


def test_frequency_penalty_hand_example():
    out = FrequencyPenaltyLogitsProcessor(0.5, prompt_length=2)(PENALTY_IDS, PENALTY_SCORES)
    # 2.0 - 0.5 * 1 = 1.5 and 3.0 - 0.5 * 3 = 1.5
    assert torch.equal(out, torch.tensor([[0.5, 1.0, 1.5, 1.5, -1.0, 0.0]]))


def test_presence_penalty_hand_example():
    out = PresencePenaltyLogitsProcessor(0.25, prompt_length=2)(PENALTY_IDS, PENALTY_SCORES)
    # 2.0 - 0.25 = 1.75 and 3.0 - 0.25 = 2.75, whatever the count
    assert torch.equal(out, torch.tensor([[0.5, 1.0, 1.75, 2.75, -1.0, 0.0]]))


def test_presence_and_frequency_combined():
    chain = [FrequencyPenaltyLogitsProcessor(0.5, prompt_length=2), PresencePenaltyLogitsProcessor(0.25, prompt_length=2)]
    out = PENALTY_SCORES
    for processor in chain:
        out = processor(PENALTY_IDS, out)
    # logits -= frequency * count + presence * (count > 0): 2.0 - 0.75 = 1.25, 3.0 - 1.75 = 1.25
    assert torch.equal(out, torch.tensor([[0.5, 1.0, 1.25, 1.25, -1.0, 0.0]]))


def test_negative_frequency_penalty_rewards_repeats():
    out = FrequencyPenaltyLogitsProcessor(-1.0, prompt_length=2)(PENALTY_IDS, PENALTY_SCORES)
    assert torch.equal(out, torch.tensor([[0.5, 1.0, 3.0, 6.0, -1.0, 0.0]]))


def test_penalties_ignore_prompt_only_tokens():
    ids = torch.tensor([[4, 4, 4]])  # all prompt, nothing generated yet
    out = FrequencyPenaltyLogitsProcessor(2.0, prompt_length=3)(ids, PENALTY_SCORES)
    assert torch.equal(out, PENALTY_SCORES)


def test_logit_bias_hand_example():
    processor = LogitBiasLogitsProcessor({0: 2.0, 4: -100.0, 5: 0.5})
    out = processor(PENALTY_IDS, PENALTY_SCORES)
    assert torch.equal(out, torch.tensor([[2.5, 1.0, 2.0, 3.0, -101.0, 0.5]]))


def test_logit_bias_rejects_token_past_vocab():
    processor = LogitBiasLogitsProcessor({10: 1.0})
    with pytest.raises(ConfigError, match="logit_bias"):
        processor(PENALTY_IDS, PENALTY_SCORES)


def test_min_new_tokens_masks_every_eos():
    processor = MinNewTokensLogitsProcessor(3, [1, 4], prompt_length=4)
    scores = torch.zeros(1, 6)
    masked = processor(torch.zeros(1, 6, dtype=torch.long), scores)  # 2 new tokens
    assert torch.isneginf(masked[0]).tolist() == [False, True, False, False, True, False]
    unmasked = processor(torch.zeros(1, 7, dtype=torch.long), scores)  # 3 new tokens
    assert torch.equal(unmasked, scores)


# ---------------------------------------------------------------------------- DRY


def dry_reference(ids: list[int], vocab: int, multiplier: float, base: float, allowed: int,
                  breakers: set[int]) -> list[float]:
    """Apply the DRY definition directly: for every earlier occurrence of the context's suffix, extend it back."""
    penalties = [0.0] * vocab
    longest: dict[int, int] = {}
    for end in range(len(ids) - 1):
        next_token = ids[end + 1]
        if next_token in breakers:
            continue
        length = 0
        while (length <= end and ids[end - length] == ids[-1 - length] and ids[-1 - length] not in breakers):
            length += 1
        if length >= allowed:
            longest[next_token] = max(length, longest.get(next_token, 0))
    for token, length in longest.items():
        penalties[token] = multiplier * base ** (length - allowed)
    return penalties


def test_dry_penalises_only_the_continuation():
    # "1 2 3 4 9 1 2 3": the suffix "1 2 3" occurred before, followed by 4.
    ids = torch.tensor([[1, 2, 3, 4, 9, 1, 2, 3]])
    scores = torch.zeros(1, 10)
    out = DRYLogitsProcessor(0.8, base=1.75, allowed_length=2)(ids, scores)
    expected = torch.zeros(1, 10)
    expected[0, 4] = -0.8 * 1.75 ** (3 - 2)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_dry_exponent_grows_with_match_length():
    # The suffix "5 6 7 8 1" (length 5) occurred before, followed by 2.
    ids = torch.tensor([[5, 6, 7, 8, 1, 2, 0, 5, 6, 7, 8, 1]])
    out = DRYLogitsProcessor(1.0, base=2.0, allowed_length=3)(ids, torch.zeros(1, 10))
    penalised = (out != 0).nonzero()[:, 1].tolist()
    assert penalised == [2]
    assert out[0, 2].item() == pytest.approx(-(2.0 ** (5 - 3)))


def test_dry_below_allowed_length_is_free():
    ids = torch.tensor([[1, 2, 3, 4, 9, 1, 2, 3]])
    out = DRYLogitsProcessor(0.8, base=1.75, allowed_length=4)(ids, torch.zeros(1, 10))
    assert torch.equal(out, torch.zeros(1, 10))


def test_dry_sequence_breaker_stops_match():
    ids = torch.tensor([[1, 2, 3, 4, 9, 1, 2, 3]])
    # With 2 as a breaker the repeated suffix is only "3", shorter than allowed_length=2.
    out = DRYLogitsProcessor(0.8, allowed_length=2, sequence_breaker_ids=[2])(ids, torch.zeros(1, 10))
    assert torch.equal(out, torch.zeros(1, 10))


def test_dry_never_penalises_a_breaker():
    ids = torch.tensor([[1, 2, 3, 4, 9, 1, 2, 3]])
    out = DRYLogitsProcessor(0.8, allowed_length=2, sequence_breaker_ids=[4])(ids, torch.zeros(1, 10))
    assert torch.equal(out, torch.zeros(1, 10))


def test_dry_penalty_last_n_limits_search():
    ids = torch.tensor([[1, 2, 3, 4, 9, 1, 2, 3]])
    # The last 4 tokens "9 1 2 3" hold no earlier "1 2 3".
    out = DRYLogitsProcessor(0.8, allowed_length=2, penalty_last_n=4)(ids, torch.zeros(1, 10))
    assert torch.equal(out, torch.zeros(1, 10))


def test_dry_ignores_left_padding():
    # Row 0 is padded with token 0 over its first 4 positions. Without the padding
    # count, the run of zeros would match the suffix "0 0" and token 0 would be penalised.
    ids = torch.tensor([[0, 0, 0, 0, 5, 0, 0], [0, 0, 0, 0, 5, 0, 0]])
    processor = DRYLogitsProcessor(1.0, allowed_length=2, prompt_ignore_length=[4, 0])
    out = processor(ids, torch.zeros(2, 6))
    assert torch.equal(out[0], torch.zeros(6))
    assert out[1, 0].item() < 0


@pytest.mark.parametrize("seed", range(20))
def test_dry_matches_reference_definition(seed):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 5, (3, 40), generator=generator)
    processor = DRYLogitsProcessor(0.5, base=1.5, allowed_length=2, sequence_breaker_ids=[0])
    out = processor(ids, torch.zeros(3, 5))
    for row in range(3):
        expected = dry_reference(ids[row].tolist(), 5, 0.5, 1.5, 2, {0})
        torch.testing.assert_close(-out[row], torch.tensor(expected), atol=1e-5, rtol=1e-6)


def test_dry_exponent_is_clamped():
    ids = torch.full((1, 400), 3)
    out = DRYLogitsProcessor(1.0, base=1.75, allowed_length=2)(ids, torch.zeros(1, 5))
    assert torch.isfinite(out).all()
    assert out[0, 3].item() < -1e30


def test_sequence_breakers_from_byte_bpe(tmp_path):
    write_byte_bpe_files(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    ids = sequence_breaker_ids(tokenizer, ["\n", ":"])
    assert ids == [tokenizer.encode("\n")[-1], tokenizer.encode(":")[-1]]


def test_sequence_breakers_skip_unknown_characters():
    tokenizer = CharTokenizer(list("xy:"))
    assert sequence_breaker_ids(tokenizer, [":", "*"]) == [2]


# ---------------------------------------------------------------------------- mirostat v2

# Probabilities 1/2, 1/4, 1/8, 1/8: surprises of 1, 2, 3 and 3 bits.
MIROSTAT_SCORES = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))


def test_mirostat_truncates_and_updates_mu():
    # tau=1 starts mu at 2 bits: tokens 0 and 1 stay, renormalised to 2/3 and 1/3.
    sampler = MirostatV2Sampler(tau=1.0, eta=0.1)
    expected_mu = {0: 2.0 - 0.1 * (math.log2(3 / 2) - 1.0), 1: 2.0 - 0.1 * (math.log2(3) - 1.0)}
    seen = set()
    for seed in range(40):
        sampler.reset()
        token = int(sampler(torch.zeros(1, 1, dtype=torch.long), MIROSTAT_SCORES, torch.Generator().manual_seed(seed)))
        assert token in expected_mu
        assert sampler.mu.item() == pytest.approx(expected_mu[token], abs=1e-6)
        seen.add(token)
    assert seen == {0, 1}


def test_mirostat_keeps_top_token_when_mu_is_small():
    # tau=0.25 gives mu=0.5 bits, below the top token's 1 bit: only token 0 stays,
    # its renormalised surprise is 0 and mu rises by eta * tau.
    sampler = MirostatV2Sampler(tau=0.25, eta=0.2)
    token = sampler(torch.zeros(1, 1, dtype=torch.long), MIROSTAT_SCORES, torch.Generator().manual_seed(0))
    assert token.tolist() == [0]
    assert sampler.mu.item() == pytest.approx(0.5 + 0.2 * 0.25)


def test_mirostat_reset_restores_mu():
    sampler = MirostatV2Sampler(tau=3.0, eta=0.5, batch_size=2)
    assert sampler.mu.tolist() == [6.0, 6.0]
    scores = random_scores(0)[:2]
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        sampler(torch.zeros(2, 1, dtype=torch.long), scores, generator)
    assert sampler.mu.tolist() != [6.0, 6.0]
    sampler.reset()
    assert sampler.mu.tolist() == [6.0, 6.0]


def test_mirostat_keeps_mu_per_sequence():
    sampler = MirostatV2Sampler(tau=1.0, eta=0.5)
    scores = torch.cat([MIROSTAT_SCORES, torch.tensor([[10.0, 0.0, 0.0, 0.0]])])
    sampler(torch.zeros(2, 1, dtype=torch.long), scores, torch.Generator().manual_seed(1))
    # Row 1 keeps only token 0 (the others carry over 14 bits of surprise), so the
    # observed surprise is 0 and mu rises by eta * tau to 2.5.
    assert sampler.mu[1].item() == pytest.approx(2.0 + 0.5 * 1.0, abs=1e-6)
    assert sampler.mu[0].item() != pytest.approx(sampler.mu[1].item())


def test_mirostat_seeded_sampling_is_deterministic():
    def draw(seed: int) -> list[list[int]]:
        sampler = MirostatV2Sampler(tau=4.0, eta=0.1)
        generator = torch.Generator().manual_seed(seed)
        return [sampler(random_ids(step), random_scores(step), generator).tolist() for step in range(8)]

    assert draw(123) == draw(123)
    assert draw(123) != draw(124)


# ---------------------------------------------------------------------------- invalid parameters

INVALID_PARAMETERS = [
    ("temperature", lambda: TemperatureLogitsProcessor(0.0)),
    ("temperature", lambda: TemperatureLogitsProcessor(float("nan"))),
    ("top_k", lambda: TopKLogitsProcessor(0)),
    ("top_k", lambda: TopKLogitsProcessor(2.5)),
    ("min_tokens_to_keep", lambda: TopKLogitsProcessor(5, min_tokens_to_keep=0)),
    ("top_p", lambda: TopPLogitsProcessor(1.5)),
    ("top_p", lambda: TopPLogitsProcessor(-0.1)),
    ("filter_value", lambda: TopPLogitsProcessor(0.5, filter_value=float("inf"))),
    ("min_p", lambda: MinPLogitsProcessor(1.1)),
    ("min_tokens_to_keep", lambda: MinPLogitsProcessor(0.1, min_tokens_to_keep=-1)),
    ("typical_p", lambda: TypicalLogitsProcessor(0.0)),
    ("typical_p", lambda: TypicalLogitsProcessor(1.0)),
    ("epsilon_cutoff", lambda: EpsilonLogitsProcessor(0.0)),
    ("epsilon_cutoff", lambda: EpsilonLogitsProcessor(1.0)),
    ("eta_cutoff", lambda: EtaLogitsProcessor(-0.1)),
    ("eta_cutoff", lambda: EtaLogitsProcessor(1.0)),
    ("repetition_penalty", lambda: RepetitionPenaltyLogitsProcessor(0.0)),
    ("repetition_penalty", lambda: RepetitionPenaltyLogitsProcessor("1.2")),
    ("prompt_ignore_length", lambda: RepetitionPenaltyLogitsProcessor(1.2, prompt_ignore_length=-1)),
    ("prompt_ignore_length", lambda: RepetitionPenaltyLogitsProcessor(1.2, prompt_ignore_length=torch.ones(2, 2))),
    ("presence_penalty", lambda: PresencePenaltyLogitsProcessor(2.5)),
    ("frequency_penalty", lambda: FrequencyPenaltyLogitsProcessor(-2.5)),
    ("prompt_length", lambda: FrequencyPenaltyLogitsProcessor(0.5, prompt_length=-1)),
    ("no_repeat_ngram_size", lambda: NoRepeatNGramLogitsProcessor(0)),
    ("bad_words_ids", lambda: NoBadWordsLogitsProcessor([])),
    ("bad_words_ids", lambda: NoBadWordsLogitsProcessor([[1, -2]])),
    ("bad_words_ids", lambda: NoBadWordsLogitsProcessor([[5]], vocab_size=5)),
    ("sequence_bias", lambda: SequenceBiasLogitsProcessor([])),
    ("sequence_bias", lambda: SequenceBiasLogitsProcessor([[[1, 2], float("nan")]])),
    ("sequence_bias", lambda: SequenceBiasLogitsProcessor({(1,): float("inf")})),
    ("sequence_bias", lambda: SequenceBiasLogitsProcessor([[[1, 2]]])),
    ("logit_bias", lambda: LogitBiasLogitsProcessor({})),
    ("logit_bias", lambda: LogitBiasLogitsProcessor({-1: 1.0})),
    ("logit_bias", lambda: LogitBiasLogitsProcessor({3: float("inf")})),
    ("logit_bias", lambda: LogitBiasLogitsProcessor({3: 1.0}, vocab_size=3)),
    ("suppress_tokens", lambda: SuppressTokensLogitsProcessor([1, "2"])),
    ("suppress_tokens", lambda: SuppressTokensLogitsProcessor([10], vocab_size=10)),
    ("min_length", lambda: MinLengthLogitsProcessor(-1, 0)),
    ("eos_token_id", lambda: MinLengthLogitsProcessor(3, [-1])),
    ("min_new_tokens", lambda: MinNewTokensLogitsProcessor(-1, 0, prompt_length=3)),
    ("prompt_length", lambda: MinNewTokensLogitsProcessor(2, 0, prompt_length=-3)),
    ("dry_multiplier", lambda: DRYLogitsProcessor(-0.5)),
    ("dry_base", lambda: DRYLogitsProcessor(0.8, base=1.0)),
    ("dry_allowed_length", lambda: DRYLogitsProcessor(0.8, allowed_length=0)),
    ("dry_penalty_last_n", lambda: DRYLogitsProcessor(0.8, penalty_last_n=-2)),
    ("dry_sequence_breakers", lambda: DRYLogitsProcessor(0.8, sequence_breaker_ids=[-1])),
    ("dry_sequence_breakers", lambda: sequence_breaker_ids(CharTokenizer(list("ab")), "\n")),
    ("dry_sequence_breakers", lambda: sequence_breaker_ids(CharTokenizer(list("ab")), [""])),
    ("mirostat_tau", lambda: MirostatV2Sampler(tau=0.0)),
    ("mirostat_eta", lambda: MirostatV2Sampler(eta=0.0)),
    ("mirostat_eta", lambda: MirostatV2Sampler(eta=1.5)),
]


@pytest.mark.parametrize("parameter, make", INVALID_PARAMETERS,
                         ids=[f"{name}-{i}" for i, (name, _) in enumerate(INVALID_PARAMETERS)])
def test_invalid_parameter_raises_config_error(parameter, make):
    with pytest.raises(ConfigError, match=f"invalid {parameter}="):
        make()


# ---------------------------------------------------------------------------- chain order

# Every field that adds a processor, set to a value that turns it on.
ALL_FIELDS = dict(
    do_sample=True,
    temperature=0.7,
    top_k=20,
    top_p=0.9,
    min_p=0.05,
    typical_p=0.9,
    epsilon_cutoff=3e-4,
    eta_cutoff=1e-3,
    repetition_penalty=1.2,
    no_repeat_ngram_size=3,
    bad_words_ids=[[5], [6, 7]],
    sequence_bias=[[[8], 1.0], [[9, 10], -2.0]],
    suppress_tokens=[11],
    min_length=30,
    min_new_tokens=3,
    eos_token_id=0,
    pad_token_id=0,
)
GENKIT_ONLY_FIELDS = dict(presence_penalty=0.5, frequency_penalty=0.3, logit_bias={12: -1.0}, dry_multiplier=0.8)

# Spec name for each transformers class in the chain.
TRANSFORMERS_NAMES = {
    "SequenceBiasLogitsProcessor": "sequence_bias",
    "RepetitionPenaltyLogitsProcessor": "repetition_penalty",
    "NoRepeatNGramLogitsProcessor": "no_repeat_ngram_size",
    "NoBadWordsLogitsProcessor": "bad_words_ids",
    "MinLengthLogitsProcessor": "min_length",
    "MinNewTokensLengthLogitsProcessor": "min_new_tokens",
    "SuppressTokensLogitsProcessor": "suppress_tokens",
    "TemperatureLogitsWarper": "temperature",
    "TopKLogitsWarper": "top_k",
    "TopPLogitsWarper": "top_p",
    "MinPLogitsWarper": "min_p",
    "TypicalLogitsWarper": "typical_p",
    "EpsilonLogitsWarper": "epsilon_cutoff",
    "EtaLogitsWarper": "eta_cutoff",
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(
        entry_points=False,
        plugins=[("builtin_processors", processors_plugin), ("builtin_samplers", samplers_plugin)],
    )


@pytest.fixture(scope="module")
def tiny_model() -> GPT2LMHeadModel:
    config = GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=64, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def make_context(config: GenerationConfig, padding: list[int] | None = None) -> RequestContext:
    tokenizer = CharTokenizer([chr(ord("a") + i) for i in range(20)] + ["\n", ":", '"', "*"])
    return RequestContext(
        config=config,
        tokenizer=tokenizer,
        shape=ModelShape(n_layers=1, n_heads=2, head_dim=4, vocab_size=VOCAB, max_positions=64),
        batch_size=BATCH,
        prompt_length=PROMPT_LEN,
        max_length=64,
        device=torch.device("cpu"),
        dtype=torch.float32,
        eos_token_ids=config.eos_token_ids(),
        pad_token_id=0,
        padding_lengths=tuple(padding or ()),
    )


def build_chain(registry: Registry, ctx: RequestContext) -> list[tuple[str, object]]:
    """Build the request's processor chain with the planner, as (name, processor) pairs."""
    return build_processors(registry, ctx)


def transformers_chain(model: GPT2LMHeadModel, fields: dict, padding: list[int]) -> list:
    config = HFGenerationConfig(**fields)
    config._eos_token_tensor = torch.tensor([fields["eos_token_id"]])
    attention_mask = torch.ones(BATCH, PROMPT_LEN, dtype=torch.long)
    for row, count in enumerate(padding):
        attention_mask[row, :count] = 0
    return list(model._get_logits_processor(
        config,
        input_ids_seq_length=PROMPT_LEN,
        encoder_input_ids=torch.zeros(BATCH, PROMPT_LEN, dtype=torch.long),
        device="cpu",
        model_kwargs={"attention_mask": attention_mask},
    ))


@pytest.mark.parametrize("do_sample", [True, False])
def test_chain_order_matches_transformers(registry, tiny_model, do_sample):
    fields = {**ALL_FIELDS, "do_sample": do_sample}
    ours = [name for name, _ in build_chain(registry, make_context(GenerationConfig.build(**fields)))]
    theirs = [TRANSFORMERS_NAMES[type(p).__name__] for p in transformers_chain(tiny_model, fields, [0] * BATCH)]
    assert ours == theirs


def test_chain_order_with_genkit_only_processors(registry):
    config = GenerationConfig.build(**ALL_FIELDS, **GENKIT_ONLY_FIELDS)
    names = [name for name, _ in build_chain(registry, make_context(config))]
    assert names == [
        "sequence_bias", "logit_bias", "repetition_penalty", "frequency_penalty", "presence_penalty", "dry",
        "no_repeat_ngram_size", "bad_words_ids", "min_length", "min_new_tokens", "suppress_tokens",
        "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
    ]


# Left padding uses a token id that occurs nowhere else in random_ids, so counting
# the padding as prompt would penalise that token and show up in the scores.
PAD_ID = 900
PADDING = [0, 3, 0, 6]


def padded_ids(seed: int) -> torch.Tensor:
    ids = random_ids(seed)
    is_padding = torch.arange(SEQ_LEN) < torch.tensor(PADDING)[:, None]
    return ids.masked_fill(is_padding, PAD_ID)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("do_sample", [True, False])
def test_full_chain_matches_transformers_with_padding(registry, tiny_model, seed, do_sample):
    fields = {**ALL_FIELDS, "do_sample": do_sample, "min_length": SEQ_LEN + 1, "pad_token_id": PAD_ID}
    chain = build_chain(registry, make_context(GenerationConfig.build(**fields), padding=PADDING))
    ids = padded_ids(seed)

    ours = random_scores(seed)
    for _, processor in chain:
        ours = processor(ids, ours)
    theirs = random_scores(seed)
    for processor in transformers_chain(tiny_model, fields, PADDING):
        theirs = processor(ids, theirs)
    assert_same_scores(ours, theirs)


@pytest.mark.parametrize("seed", SEEDS)
def test_repetition_penalty_build_skips_padding(registry, tiny_model, seed):
    fields = {"repetition_penalty": 1.4, "eos_token_id": 0, "pad_token_id": PAD_ID}
    ctx = make_context(GenerationConfig.build(**fields), padding=PADDING)
    ours = registry.lookup("processors", "repetition_penalty").spec.build(ctx)
    (theirs,) = transformers_chain(tiny_model, fields, PADDING)

    ids = padded_ids(seed)
    scores = random_scores(seed)
    scores[:, PAD_ID] = 2.0
    assert_same_scores(ours(ids, scores), theirs(ids, scores.clone()))
    assert (ours(ids, scores)[:, PAD_ID] == 2.0).all()


def test_default_config_builds_top_k_only(registry):
    config = GenerationConfig.build(do_sample=True)
    assert [name for name, _ in build_chain(registry, make_context(config))] == ["top_k"]
    assert build_chain(registry, make_context(GenerationConfig.build())) == []


def test_mirostat_keeps_only_temperature_of_the_warpers(registry):
    config = GenerationConfig.build(**ALL_FIELDS, mirostat=2)
    names = [name for name, _ in build_chain(registry, make_context(config))]
    assert "temperature" in names
    assert not {"top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"} & set(names)


def test_mirostat_sampler_is_registered(registry):
    config = GenerationConfig.build(do_sample=True, mirostat=2, mirostat_tau=4.0, mirostat_eta=0.2)
    sampler = registry.lookup("samplers", "mirostat_v2").spec.build(make_context(config))
    assert isinstance(sampler, MirostatV2Sampler)
    assert sampler.mu.tolist() == [8.0] * BATCH
    assert sampler.eta == 0.2


def test_dry_build_tokenizes_breakers(registry):
    config = GenerationConfig.build(dry_multiplier=0.8, dry_sequence_breakers=[":", "*"])
    processor = registry.lookup("processors", "dry").spec.build(make_context(config))
    tokenizer = make_context(config).tokenizer
    assert processor.sequence_breaker_ids == sorted(tokenizer.encode(":*"))


def test_build_rejects_token_past_vocab(registry):
    config = GenerationConfig.build(suppress_tokens=[VOCAB])
    with pytest.raises(ConfigError, match="suppress_tokens"):
        registry.lookup("processors", "suppress_tokens").spec.build(make_context(config))

"""The gumbel sampler on its own: distribution, seeding, options and degenerate scores.

Each statistical test draws a large batch in one call with a fixed seed, so it
gives the same counts on every run and cannot flake.
"""

from __future__ import annotations

import math

import pytest
import torch

from genkit.errors import ConfigError, GenkitError
from genkit.testing import plugin_registered, request_context, run_sampler

genkit_gumbel_sampler = pytest.importorskip(
    "genkit_gumbel_sampler", reason="not installed; run `pip install -e examples/genkit-gumbel-sampler`"
)
GumbelSampler = genkit_gumbel_sampler.GumbelSampler
build_gumbel = genkit_gumbel_sampler.build_gumbel

# A fixed small distribution. Token 5 has probability 0 (a score of -inf).
PROBS = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05, 0.0])
DRAWS = 20_000

# Upper 0.1% point of the standard normal, for the chi-square critical value below.
Z_999 = 3.0902


@pytest.fixture(scope="module")
def registry():
    with plugin_registered(genkit_gumbel_sampler, name="gumbel") as registry:
        yield registry


def fixed_scores(shift: float = 3.0) -> torch.Tensor:
    """Return ``(DRAWS, 6)`` scores whose softmax is PROBS, offset by ``shift``, which softmax ignores."""
    return (PROBS.log() + shift).expand(DRAWS, -1).clone()


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Return Pearson's statistic and its degrees of freedom over the tokens with probability > 0."""
    support = probs > 0
    expected = probs[support] * counts.sum()
    observed = counts[support].double()
    statistic = float(((observed - expected) ** 2 / expected).sum())
    return statistic, int(support.sum()) - 1


def chi_square_critical(degrees: int, z: float = Z_999) -> float:
    """Return the chi-square quantile for a standard normal quantile ``z``.

    Wilson-Hilferty approximation: for 3 or more degrees of freedom it is at most 2%
    above the exact value (18.72 against 18.47 at 4 degrees and the 0.999 quantile).
    """
    term = 2.0 / (9.0 * degrees)
    return degrees * (1.0 - term + z * math.sqrt(term)) ** 3


def draw_counts(registry, seed: int = 0, **options) -> torch.Tensor:
    tokens = run_sampler("gumbel", fixed_scores(), seed=seed, registry=registry, do_sample=True, **options)
    return torch.bincount(tokens, minlength=PROBS.numel())


def test_samples_follow_softmax(registry):
    counts = draw_counts(registry)
    statistic, degrees = chi_square(counts, PROBS)
    assert statistic < chi_square_critical(degrees), f"counts {counts.tolist()} do not fit {PROBS.tolist()}"


def test_zero_probability_token_never_drawn(registry):
    counts = draw_counts(registry)
    assert counts[5] == 0


def test_chi_square_detects_wrong_distribution(registry):
    # The check above must be able to fail: the same counts against softmax(log p / 1.1).
    counts = draw_counts(registry)
    tempered = torch.softmax(PROBS.log() / 1.1, dim=-1)
    statistic, degrees = chi_square(counts, tempered)
    assert statistic > chi_square_critical(degrees)


def test_tau_samples_from_tempered_softmax(registry):
    counts = draw_counts(registry, seed=1, sampler_options={"tau": 2.0})
    statistic, degrees = chi_square(counts, torch.softmax(PROBS.log() / 2.0, dim=-1))
    assert statistic < chi_square_critical(degrees), f"counts {counts.tolist()}"


def test_same_seed_same_tokens(registry):
    first = run_sampler("gumbel", fixed_scores(), seed=7, registry=registry, do_sample=True)
    second = run_sampler("gumbel", fixed_scores(), seed=7, registry=registry, do_sample=True)
    assert torch.equal(first, second)


def test_other_seed_other_tokens(registry):
    first = run_sampler("gumbel", fixed_scores(), seed=7, registry=registry, do_sample=True)
    second = run_sampler("gumbel", fixed_scores(), seed=8, registry=registry, do_sample=True)
    assert not torch.equal(first, second)


def test_global_rng_without_generator():
    sampler = GumbelSampler()
    torch.manual_seed(3)
    first = sampler(torch.zeros(DRAWS, 1, dtype=torch.long), fixed_scores(), None)
    torch.manual_seed(3)
    second = sampler(torch.zeros(DRAWS, 1, dtype=torch.long), fixed_scores(), None)
    assert torch.equal(first, second)


def test_returns_one_long_token_per_row():
    scores = torch.randn(4, 11)
    tokens = run_sampler(GumbelSampler(), scores, seed=0)
    assert tokens.shape == (4,)
    assert tokens.dtype == torch.long
    assert bool(((tokens >= 0) & (tokens < 11)).all())


def test_rows_draw_independently():
    # Two rows with opposite one-hot-like scores must each get their own token.
    scores = torch.full((2, 3), -math.inf)
    scores[0, 0] = 0.0
    scores[1, 2] = 0.0
    tokens = run_sampler(GumbelSampler(), scores, seed=0)
    assert tokens.tolist() == [0, 2]


def test_leaves_scores_unchanged():
    scores = torch.randn(3, 7)
    before = scores.clone()
    GumbelSampler()(torch.zeros(3, 1, dtype=torch.long), scores, torch.Generator().manual_seed(0))
    assert torch.equal(scores, before)


@pytest.mark.parametrize("tau", [0, 0.0, -1.0, math.nan, math.inf, "1.0", True, None])
def test_invalid_tau_names_value_and_fix(tau):
    ctx = request_context(vocab_size=10, do_sample=True)
    with pytest.raises(ConfigError) as excinfo:
        build_gumbel(ctx, tau=tau)
    message = str(excinfo.value)
    assert f"tau={tau!r}" in message
    assert "sampler_options={'tau': 1.0}" in message


def test_unknown_option_lists_accepted():
    ctx = request_context(vocab_size=10, do_sample=True)
    with pytest.raises(ConfigError) as excinfo:
        build_gumbel(ctx, temperature=0.5)
    message = str(excinfo.value)
    assert "'temperature'" in message
    assert "['tau']" in message


def test_all_minus_inf_row_raises():
    scores = torch.zeros(3, 5)
    scores[1] = -math.inf
    with pytest.raises(GenkitError, match=r"batch row\(s\) \[1\]"):
        run_sampler(GumbelSampler(), scores, seed=0)


def test_nan_row_raises():
    scores = torch.zeros(2, 5)
    scores[0] = math.nan
    with pytest.raises(GenkitError, match=r"batch row\(s\) \[0\]"):
        run_sampler(GumbelSampler(), scores, seed=0)


def test_registered_with_description(registry):
    registered = registry.lookup("samplers", "gumbel")
    assert registered.spec.build is build_gumbel
    assert registered.spec.description
    assert registered.plugin == "gumbel"

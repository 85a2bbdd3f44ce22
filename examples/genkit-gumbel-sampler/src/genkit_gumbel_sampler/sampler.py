"""The Gumbel-max sampler and its build function.

The Gumbel-max trick: add independent standard Gumbel noise
``g_i = -log(-log(u_i))``, with ``u_i`` uniform on (0, 1), to every score and
take the argmax. Token ``i`` then wins with probability exactly
``softmax(scores)_i``: ``exp(-g_i)`` is exponential with rate 1, so
``exp(-(s_i + g_i))`` is exponential with rate ``exp(s_i)``, and the smallest of
independent exponentials is ``i`` with probability ``exp(s_i) / sum_j exp(s_j)``.
Dividing the scores by ``tau`` first samples from ``softmax(scores / tau)``, so
``tau`` acts like a temperature. tests/test_gumbel_sampler.py checks the
distribution with a chi-square test.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from genkit.errors import ConfigError, GenkitError
from genkit.specs import RequestContext

logger = logging.getLogger("genkit_gumbel_sampler")

OPTIONS = ("tau",)


def check_tau(tau: Any) -> float:
    """Return ``tau`` as a float, or raise ConfigError unless it is a finite number > 0."""
    is_number = isinstance(tau, (int, float)) and not isinstance(tau, bool)
    if not is_number or not math.isfinite(tau) or tau <= 0:
        raise ConfigError(
            f"invalid gumbel sampler option tau={tau!r}: expected a finite number > 0 "
            "(1.0 samples from softmax(scores) unchanged); pass e.g. sampler_options={'tau': 1.0}"
        )
    return float(tau)


class GumbelSampler:
    """Pick one token per row as ``argmax(scores / tau + Gumbel noise)``: a draw from ``softmax(scores / tau)``.

    The noise comes from ``generator`` (the request's seeded ``torch.Generator``,
    or the global RNG when it is None), so a fixed seed gives fixed tokens. The
    sampler keeps no state between calls, so it has no ``reset()``.
    """

    def __init__(self, tau: float = 1.0):
        self.tau = check_tau(tau)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        scores = scores.float()
        uniform = torch.rand(scores.shape, generator=generator, device=scores.device)  # (B, V) in [0, 1)

        # torch.rand can return 0, whose Gumbel value is -inf, so 0 becomes the smallest
        # positive float. NOTE: float32 uniforms have 24-bit resolution, so the noise lies
        # in about [-4.5, 16.6]. The draw is exact only up to that resolution: it cuts off
        # events rarer than about 1e-7 per token.
        uniform = uniform.clamp_(min=torch.finfo(torch.float32).tiny)
        gumbel = -torch.log(-torch.log(uniform))  # (B, V)

        best, tokens = (scores / self.tau + gumbel).max(dim=-1)  # (B,), (B,)

        # A row whose scores are all -inf (or NaN) has no distribution to sample from.
        # argmax would return token 0 there, so raise, as torch.multinomial does.
        invalid = ~(best > -math.inf)
        if bool(invalid.any()):
            rows = invalid.nonzero().flatten().tolist()
            raise GenkitError(
                f"gumbel sampler: every score of batch row(s) {rows} is -inf or NaN, so no token can be drawn; "
                "a logits processor before the sampler removed every token, check its settings"
            )
        return tokens


def build_gumbel(ctx: RequestContext, **options: Any) -> GumbelSampler:
    """Build the sampler from ``GenerationConfig.sampler_options``, rejecting unknown option names."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown gumbel sampler option(s) {unknown} in sampler_options; the accepted options are "
            f"{list(OPTIONS)}, e.g. sampler_options={{'tau': 1.0}}"
        )
    if not ctx.config.do_sample:
        # The planner skips sampling-only processors (temperature, top_k, top_p, ...)
        # when do_sample is False, whatever the sampler.
        logger.warning(
            "gumbel sampler with do_sample=False: temperature, top_k, top_p and the other sampling "
            "processors are skipped, so tokens are drawn from the unfiltered scores; set do_sample=True "
            "(--do-sample) to apply them"
        )
    return GumbelSampler(**options)

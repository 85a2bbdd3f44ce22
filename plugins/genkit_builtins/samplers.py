"""Built-in samplers: ``greedy`` (argmax), ``multinomial`` (one draw per step, as transformers does)
and ``mirostat_v2`` (see :mod:`genkit_builtins.mirostat`)."""

from __future__ import annotations

import torch

from genkit.hookspecs import hookimpl
from genkit.specs import RequestContext, SamplerSpec
from genkit_builtins.mirostat import MirostatV2Sampler


class GreedySampler:
    """Take the highest-scoring token; ties go to the lowest id, as ``torch.argmax`` does."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.argmax(scores, dim=-1)


class MultinomialSampler:
    """Draw from softmax(scores) with one ``torch.multinomial`` call for the whole batch.

    transformers samples the same way, so the same seed gives the same tokens.
    """

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        probs = torch.softmax(scores, dim=-1)  # (B, V)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)  # (B,)


def build_greedy(ctx: RequestContext) -> GreedySampler:
    return GreedySampler()


def build_multinomial(ctx: RequestContext) -> MultinomialSampler:
    return MultinomialSampler()


def build_mirostat_v2(
    ctx: RequestContext, mirostat_tau: float | None = None, mirostat_eta: float | None = None
) -> MirostatV2Sampler:
    tau = ctx.config.mirostat_tau if mirostat_tau is None else mirostat_tau
    eta = ctx.config.mirostat_eta if mirostat_eta is None else mirostat_eta
    return MirostatV2Sampler(tau, eta, batch_size=ctx.batch_size, device=ctx.device)


@hookimpl
def register_samplers(register):
    register(SamplerSpec("greedy", build_greedy, "argmax of the processed scores (do_sample=False)"))
    register(SamplerSpec("multinomial", build_multinomial, "one torch.multinomial draw per step (do_sample=True)"))
    register(SamplerSpec("mirostat_v2", build_mirostat_v2, "mirostat v2: steer each token's surprise toward mirostat_tau"))

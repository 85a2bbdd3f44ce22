"""Built-in stopping criteria: EOS (one id or several) and the maximum length."""

from __future__ import annotations

import torch

from genkit.hookspecs import hookimpl
from genkit.specs import RequestContext, StoppingSpec


class EosStoppingCriterion:
    """Stop a sequence whose last token is one of the EOS ids."""

    reason = "eos"

    def __init__(self, eos_token_ids: list[int] | tuple[int, ...], device: torch.device | str = "cpu"):
        self.eos_token_ids = torch.tensor(list(eos_token_ids), dtype=torch.long, device=device)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.isin(input_ids[:, -1], self.eos_token_ids.to(input_ids.device))


class MaxLengthStoppingCriterion:
    """Stop every sequence once ``input_ids`` holds ``max_length`` positions (prompt included)."""

    reason = "length"

    def __init__(self, max_length: int):
        self.max_length = max_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        done = input_ids.shape[-1] >= self.max_length
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def build_eos(ctx: RequestContext) -> EosStoppingCriterion | None:
    if not ctx.eos_token_ids:
        return None
    return EosStoppingCriterion(ctx.eos_token_ids, ctx.device)


def build_max_length(ctx: RequestContext) -> MaxLengthStoppingCriterion:
    return MaxLengthStoppingCriterion(ctx.max_length)


@hookimpl
def register_stopping_criteria(register):
    # Lower order wins when two criteria stop a sequence on the same token.
    register(StoppingSpec("eos", build_eos, order=100, auto=True, description="stop at an EOS token id"))
    register(StoppingSpec("max_new_tokens", build_max_length, order=900, auto=True,
                          description="stop after max_new_tokens, or when the context window is full"))

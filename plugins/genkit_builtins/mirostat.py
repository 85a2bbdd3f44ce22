"""Mirostat v2: a sampler that steers the surprise of each token toward a target.

Source: Basu et al. 2020, "Mirostat: A Neural Text Decoding Algorithm that Directly
Controls Perplexity", arXiv:2007.14966. The paper's feedback loop keeps a maximum
surprise ``mu`` (in bits), starts it at ``2 * tau`` and, after each token, moves it
by the error between the token's observed surprise and the target ``tau``::

    mu <- mu - eta * (surprise - tau)

Version 2 is the simpler truncation that llama.cpp ships as
``llama_sampler_mirostat_v2_apply`` (``src/llama-sampling.cpp``) in place of the
paper's Zipf-based estimate of k, step by step:

1. Compute ``p = softmax(scores)`` and drop every token whose surprise
   ``-log2 p`` exceeds ``mu``. If that drops all tokens, keep the most likely one.
2. Renormalise over the kept tokens and draw one of them.
3. Take the drawn token's surprise under the renormalised distribution and
   update ``mu`` as above.
"""

from __future__ import annotations

import math

import torch

from genkit_builtins.checks import check_int, check_number


class MirostatV2Sampler:
    """Mirostat v2 with one ``mu`` per sequence; see the module docstring for the algorithm.

    ``tau`` is the target surprise in bits (``mirostat_tau``), ``eta`` the learning
    rate (``mirostat_eta``). :meth:`reset` restores ``mu = 2 * tau`` for every
    sequence; the engine calls it before each request. The draw is one
    ``torch.multinomial`` call for the whole batch, using ``generator``.

    With ``batch_size`` given, ``mu`` exists from construction on; otherwise it is
    created on the first call, sized to the batch of ``scores``.
    """

    def __init__(
        self,
        tau: float = 5.0,
        eta: float = 0.1,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
    ):
        self.tau = check_number("mirostat_tau", tau, low=0.0, low_open=True)
        self.eta = check_number("mirostat_eta", eta, low=0.0, high=1.0, low_open=True)
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size, minimum=1)
        self.device = device
        self.mu: torch.Tensor | None = None  # (B,) float32 maximum surprise in bits
        self.reset()

    def reset(self) -> None:
        """Restore ``mu = 2 * tau`` for every sequence."""
        if self.batch_size is None:
            self.mu = None
        else:
            self.mu = self._initial_mu(self.batch_size, self.device)

    def _initial_mu(self, batch_size: int, device: torch.device | str | None) -> torch.Tensor:
        return torch.full((batch_size,), 2.0 * self.tau, dtype=torch.float32, device=device)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        batch = scores.size(0)
        if self.mu is None or self.mu.size(0) != batch or self.mu.device != scores.device:
            self.mu = self._initial_mu(batch, scores.device)

        # 1. Keep the tokens whose surprise is at most mu, and always the most likely one.
        log2_probs = torch.log_softmax(scores.float(), dim=-1) / math.log(2.0)  # (B, V)
        keep = -log2_probs <= self.mu[:, None]
        keep[torch.arange(batch, device=scores.device), log2_probs.argmax(dim=-1)] = True
        truncated = scores.float().masked_fill(~keep, -float("inf"))

        # 2. Renormalise over the kept tokens and draw one per sequence.
        probs = torch.softmax(truncated, dim=-1)  # (B, V)
        next_tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)  # (B,)

        # 3. Move mu against the error between the observed and the target surprise.
        chosen_probs = probs.gather(1, next_tokens[:, None]).squeeze(1)  # (B,)
        surprise = -torch.log2(chosen_probs)
        self.mu = self.mu - self.eta * (surprise - self.tau)
        return next_tokens

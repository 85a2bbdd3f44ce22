"""The model protocol the engine drives, and the bundle a loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from genkit.caches.base import KVCache
    from genkit.models.tokenizer import Tokenizer


@dataclass(frozen=True)
class ModelShape:
    """The sizes the engine and the cache backends need to know about a model."""

    n_layers: int
    n_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int


class CausalLM(Protocol):
    """A causal language model: token ids and positions in, logits out.

    ``input_ids`` and ``position_ids`` are ``(batch, new)``. ``padding_mask`` is
    ``(batch, past + new)`` with 0 at left padding, or None when nothing is padded.
    The model reads and writes keys and values only through ``cache.attend``.
    Returns float logits ``(batch, new, vocab)``, or ``(batch, 1, vocab)`` for the
    last position when ``last_only`` is set (the engine's prefill needs no more).
    """

    shape: ModelShape

    def __call__(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache,
        padding_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor: ...


@dataclass
class LoadedModel:
    """A model ready for generation: network, tokenizer and the checkpoint's generation defaults.

    ``generation_defaults`` contains the fields of ``generation_config.json`` (an empty
    dict when the checkpoint has none); they override genkit's defaults and are
    overridden by the request.
    """

    name: str
    model_type: str
    model: Any  # a torch.nn.Module following CausalLM
    tokenizer: Tokenizer
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def shape(self) -> ModelShape:
        return self.model.shape

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

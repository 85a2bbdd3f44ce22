"""The toy GPT: a small decoder-only transformer written for teaching.

The classic GPT layout, as in nanoGPT: token and learned position embeddings,
``n_layer`` pre-norm blocks (causal self-attention, then a GELU MLP), a final
LayerNorm and an output head that is not tied to the token embedding. It reads
top to bottom in a few minutes; :mod:`genkit.training` trains one on a text file
with a character tokenizer.

Shapes in comments: B batch, T new positions in this forward pass, S positions
stored in the KV cache after it (past + new), C = n_embd, nh = n_head,
hs = head size = C / nh, V = vocab_size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from genkit.caches.base import KVCache
from genkit.caches.concat import ConcatKVCache
from genkit.errors import CheckpointError, ConfigError
from genkit.models.base import LoadedModel, ModelShape
from genkit.models.loading import (
    SAFETENSORS_FILE,
    check_layer_count,
    read_generation_defaults,
    read_state_dict,
)
from genkit.models.tokenizer import CharTokenizer, load_tokenizer

MODEL_TYPE = "genkit-toy"


@dataclass
class ToyConfig:
    """Sizes of a toy GPT, saved as ``config.json`` next to the weights."""

    vocab_size: int
    n_positions: int = 128  # block size: the longest sequence the model can see
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in the Linear and LayerNorm layers

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"invalid {name}={value!r}: expected an integer >= 1")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"invalid n_embd={self.n_embd} for n_head={self.n_head}: n_embd must be a multiple of n_head "
                "so that every head gets the same size"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"invalid dropout={self.dropout!r}: expected a number in [0, 1)")
        if not isinstance(self.bias, bool):
            raise ConfigError(f"invalid bias={self.bias!r}: expected true or false")

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToyConfig:
        """Build a config from ``config.json`` contents, ignoring keys that are not fields (``model_type``)."""
        if "vocab_size" not in data:
            raise ConfigError("missing vocab_size: expected an integer >= 1, the size of the character alphabet")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention whose keys, values and attention read live in the KV cache."""

    def __init__(self, config: ToyConfig, layer: int):
        super().__init__()
        self.layer = layer  # the cache stores keys and values per layer index
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head

        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)

        # The cache appends k and v to this layer's past and attends over all of it.
        # NOTE: the cache runs attention without dropout, so config.dropout applies only after the projection.
        y = cache.attend(self.layer, q, k, v, mask)  # (B, nh, T, hs)

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.dropout(self.proj(y))  # (B, T, C)


class MLP(nn.Module):
    """The position-wise feed-forward network: widen 4x, GELU, project back."""

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.fc(x))  # (B, T, 4C)
        return self.dropout(self.proj(x))  # (B, T, C)


class Block(nn.Module):
    """One transformer block. Pre-norm: each sublayer reads a normalised copy and adds to the residual stream."""

    def __init__(self, config: ToyConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, mask)  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x


class ToyGPT(nn.Module):
    """The toy GPT, following the :class:`genkit.models.base.CausalLM` protocol."""

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.shape = ModelShape(
            n_layers=config.n_layer,
            n_heads=config.n_head,
            head_dim=config.n_embd // config.n_head,
            vocab_size=config.vocab_size,
            max_positions=config.n_positions,
        )

        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.n_positions, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

        self.apply(self._init_weights)
        # The two projections per block that add into the residual stream start
        # smaller, by 1/sqrt(2 * n_layer), so the stream's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache,
        padding_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Run ``input_ids`` (B, T) at ``position_ids`` (B, T) and return logits (B, T, V).

        ``cache`` contains the keys and values of earlier positions and receives this
        pass's. ``padding_mask`` is (B, S) with 0 at left padding, or None.
        Positions must be below ``n_positions``; the caller checks that.
        ``last_only`` returns logits (B, 1, V) of the last position only.
        """
        T = input_ids.shape[1]
        # One mask for all layers, built before any layer adds to the cache.
        mask = cache.attention_mask(padding_mask, T, input_ids.device)  # (B, 1, T, S) or None

        x = self.token_embedding(input_ids) + self.position_embedding(position_ids)  # (B, T, C)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, cache, mask)  # (B, T, C)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C): prefill needs only the next token's logits
        x = self.ln_f(x)  # (B, T, C)
        return self.lm_head(x)  # (B, T, V)

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the mean cross-entropy of predicting ``targets`` (B, T) from ``input_ids`` (B, T).

        This is the training path: no padding, positions 0..T-1, and a fresh cache
        that is dropped when this call returns, so training keeps no keys and values around.
        """
        B, T = input_ids.shape
        if T > self.config.n_positions:
            raise ConfigError(
                f"sequence length {T} is longer than the model's n_positions={self.config.n_positions}; "
                "use shorter training sequences"
            )
        position_ids = torch.arange(T, device=input_ids.device).expand(B, T)  # (B, T)
        logits = self(input_ids, position_ids, ConcatKVCache(self.config.n_layer))  # (B, T, V)
        return F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))


def save_toy(
    model: ToyGPT,
    tokenizer: CharTokenizer,
    folder: str | Path,
    generation_defaults: Mapping[str, Any] | None = None,
) -> None:
    """Write a toy checkpoint: model.safetensors, config.json, char_tokenizer.json, generation_config.json.

    Creates ``folder`` if needed and overwrites these four files in it.
    """
    from safetensors.torch import save_file

    # load_toy rejects a checkpoint whose alphabet and vocab_size differ, so save none.
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} characters but the model's vocab_size is "
            f"{model.config.vocab_size}; build the model with vocab_size={tokenizer.vocab_size}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    (folder / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")

    # safetensors needs contiguous CPU tensors, none sharing memory.
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    weights = folder / SAFETENSORS_FILE
    save_file(state, str(weights), metadata={"format": "pt"})
    # safetensors 0.8.0 creates the file with mode 0600, whatever the umask.
    # Give it the mode of config.json, which open() created with the umask applied.
    os.chmod(weights, stat.S_IMODE((folder / "config.json").stat().st_mode))
    tokenizer.save(folder)
    (folder / "generation_config.json").write_text(
        json.dumps(dict(generation_defaults or {}), indent=2) + "\n", encoding="utf-8"
    )


def load_toy(
    folder: str | Path,
    config: Mapping[str, Any],
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Build a :class:`ToyGPT` from a checkpoint folder whose ``config.json`` contents are ``config``.

    ``dtype`` None keeps the dtype the weights were saved in. Raises
    :class:`CheckpointError` for an invalid config field, an alphabet whose size is
    not vocab_size, or missing, unexpected or mis-shaped tensors.
    """
    folder = Path(folder)
    try:
        toy_config = ToyConfig.from_dict(config)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(
            f"{folder / 'config.json'}: {exc}; correct the field, or re-save the checkpoint with save_toy"
        ) from exc

    # Every id the model can sample must decode, and every character must have an embedding.
    tokenizer = load_tokenizer(folder)
    if tokenizer.vocab_size != toy_config.vocab_size:
        raise CheckpointError(
            f"the tokenizer in {folder} has {tokenizer.vocab_size} characters but config.json sets "
            f"vocab_size={toy_config.vocab_size}; the tokenizer does not belong to these weights, "
            "so re-save the checkpoint with save_toy"
        )

    # Compare sizes before building the model: 10**8 blocks take minutes to build even
    # on the meta device, and a size above 2**62 overflows torch's size arithmetic.
    state = read_state_dict(folder)
    check_layer_count(state, "blocks.", toy_config.n_layer, folder)
    embeddings = {
        "token_embedding.weight": (toy_config.vocab_size, toy_config.n_embd),
        "position_embedding.weight": (toy_config.n_positions, toy_config.n_embd),
    }
    _check_state_dict(state, embeddings, folder, complete=False)

    # The meta device allocates no memory, so the full check runs before any allocation.
    with torch.device("meta"):
        model = ToyGPT(toy_config)
    _check_state_dict(state, {name: tuple(t.shape) for name, t in model.state_dict().items()}, folder)
    if dtype is None:
        dtype = state["token_embedding.weight"].dtype
    if not dtype.is_floating_point:
        raise CheckpointError(f"token_embedding.weight in {folder} has dtype {dtype}; expected a floating-point dtype")

    # Copy the weights rather than assign them: safetensors memory-maps the file, so
    # assigned tensors would change if the file were rewritten, as save_toy does.
    model.to_empty(device="cpu")
    model.load_state_dict(state)
    model.to(device=device, dtype=dtype)
    model.eval()

    return LoadedModel(
        name=folder.name,
        model_type=MODEL_TYPE,
        model=model,
        tokenizer=tokenizer,
        generation_defaults=read_generation_defaults(folder),
        path=folder,
    )


def _check_state_dict(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    folder: Path,
    complete: bool = True,
) -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped tensors.

    ``complete`` False compares only the shapes of the tensors in ``expected`` that ``state`` contains.
    """
    problems = []
    missing = sorted(set(expected) - set(state)) if complete else []
    if missing:
        problems.append(f"missing tensors: {_listed(missing)}")
    unexpected = sorted(set(state) - set(expected)) if complete else []
    if unexpected:
        problems.append(f"unexpected tensors: {_listed(unexpected)}")
    wrong_shapes = [
        f"{name} has shape {tuple(state[name].shape)}, config.json implies {expected[name]}"
        for name in sorted(set(state) & set(expected))
        if tuple(state[name].shape) != expected[name]
    ]
    if wrong_shapes:
        problems.append(_listed(wrong_shapes))
    if problems:
        raise CheckpointError(
            f"weights in {folder} do not match its config.json ({'; '.join(problems)}); "
            "re-save the checkpoint with save_toy or retrain it"
        )


def _listed(items: list[str], limit: int = 5) -> str:
    """Join the first ``limit`` items, so a config with a thousand extra blocks gives a readable message."""
    joined = ", ".join(items[:limit])
    return joined + (f" and {len(items) - limit} more" if len(items) > limit else "")

"""GPT-2 in plain PyTorch, loaded from Hugging Face checkpoints.

The module names follow the Hugging Face checkpoint keys (``wte``, ``h.0.attn.c_attn``,
``ln_f``, ...), so a state dict maps onto this model one key to one parameter.
Attention goes through the KV cache object passed to :meth:`GPT2.forward`; the
model itself keeps no state between calls.

The model is inference-only: it has no dropout layers, and :func:`load_gpt2`
returns it in eval mode with gradients switched off.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from genkit.caches.base import KVCache
from genkit.errors import CheckpointError
from genkit.models.base import LoadedModel, ModelShape
from genkit.models.loading import (
    check_layer_count,
    read_generation_defaults,
    read_state_dict,
)
from genkit.models.tokenizer import load_tokenizer

logger = logging.getLogger("genkit")


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """Apply the tanh approximation of GELU used by the original GPT-2, written out as transformers writes it."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


# The values of ``activation_function`` that GPT-2 configs use, with the same
# formulas as transformers' ACT2FN table (transformers 5.x, activations.py).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": gelu_new,
    "gelu_accurate": gelu_new,  # the same formula; transformers precomputes sqrt(2/pi)
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": gelu_fast,
    "gelu": F.gelu,
    "gelu_python": F.gelu,  # erf-based GELU written in Python in transformers; same value
    "quick_gelu": quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


BOOLEAN = "a JSON boolean, true or false"


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_field(name: str, value: Any, valid: bool, expected: str, source: str | Path) -> None:
    """Raise :class:`CheckpointError` unless ``valid``, so a bad field fails at load and not in the forward pass."""
    if not valid:
        raise CheckpointError(
            f"invalid {name}={value!r} in {source}: expected {expected}; "
            "correct the field, or re-download or re-save the checkpoint"
        )


@dataclass(frozen=True)
class GPT2Config:
    """The fields of a Hugging Face GPT-2 ``config.json`` that change the forward pass."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # None means 4 * n_embd
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True

    @classmethod
    def from_hf(cls, config: dict[str, Any], source: str | Path = "config.json") -> GPT2Config:
        """Read a ``config.json`` dict. A missing field takes transformers' ``GPT2Config`` default.

        Raises :class:`CheckpointError` naming ``source``, the field and its value for
        a field of the wrong JSON type or out of range, or a config this model cannot run.
        """
        defaults = cls()
        values = {name: config.get(name, getattr(defaults, name)) for name in cls.__dataclass_fields__}
        if values["tie_word_embeddings"] is None:
            values["tie_word_embeddings"] = True

        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            _check_field(name, values[name], _is_positive_int(values[name]), "a positive integer", source)
        n_inner = values["n_inner"]
        if n_inner is not None:
            expected = "a positive integer, or null for 4 * n_embd"
            _check_field("n_inner", n_inner, _is_positive_int(n_inner), expected, source)
        for name in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "tie_word_embeddings"):
            _check_field(name, values[name], isinstance(values[name], bool), BOOLEAN, source)
        cross_attention = config.get("add_cross_attention", False)
        _check_field("add_cross_attention", cross_attention, isinstance(cross_attention, bool), BOOLEAN, source)

        # LayerNorm divides by sqrt(variance + epsilon): a negative epsilon gives NaN
        # for rows of small variance, and zero gives NaN for constant rows.
        epsilon = values["layer_norm_epsilon"]
        valid_epsilon = _is_number(epsilon) and math.isfinite(epsilon) and epsilon > 0
        _check_field("layer_norm_epsilon", epsilon, valid_epsilon, "a finite number > 0, such as 1e-5", source)
        values["layer_norm_epsilon"] = float(epsilon)

        activation = values["activation_function"]
        valid_activation = isinstance(activation, str)
        _check_field("activation_function", activation, valid_activation, "a string such as 'gelu_new'", source)
        if activation not in ACTIVATIONS:
            raise CheckpointError(
                f"unsupported activation_function={activation!r} in {source}; "
                f"genkit's GPT-2 supports: {', '.join(sorted(ACTIVATIONS))}"
            )

        result = cls(**values)
        if result.n_embd % result.n_head:
            raise CheckpointError(
                f"invalid {source}: n_embd={result.n_embd} is not divisible by n_head={result.n_head}"
            )
        if cross_attention:
            raise CheckpointError(
                f"{source} sets add_cross_attention=true, which adds encoder-decoder cross-attention layers; "
                "genkit's GPT-2 runs decoder-only checkpoints, so use transformers for this model"
            )
        # reorder_and_upcast_attn is accepted without a change: transformers 5.x applies
        # it only in its eager attention path, and its default SDPA path ignores it too.
        return result

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention; the KV cache stores keys and values and computes the attention."""

    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v projections in one matrix
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

        # The cache's attention applies SDPA's default scale 1/sqrt(hs). GPT-2 variants
        # may want another scale (none at all, or also 1/(layer_idx + 1)), so the
        # queries are multiplied by the ratio: SDPA(q * r) == softmax(q k^T * scale) v.
        scale = config.head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= float(layer_idx + 1)
        self.query_factor = scale * math.sqrt(config.head_dim)

    def forward(self, x: torch.Tensor, cache: KVCache, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.size()  # batch, new positions, n_embd
        hs = C // self.n_head

        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if self.query_factor != 1.0:
            q = q * self.query_factor

        # The cache appends k and v for this layer and attends over past + new positions.
        y = cache.attend(self.layer_idx, q, k, v, mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.inner_dim)
        self.act = ACTIVATIONS[config.activation_function]
        self.c_proj = nn.Linear(config.inner_dim, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))  # (B, T, C) -> (B, T, inner) -> (B, T, C)


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT2(nn.Module):
    """GPT-2 following the :class:`~genkit.models.base.CausalLM` protocol."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.shape = ModelShape(
            n_layers=config.n_layer,
            n_heads=config.n_head,
            head_dim=config.head_dim,
            vocab_size=config.vocab_size,
            max_positions=config.n_positions,
        )
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)  # learned position embeddings
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight  # one matrix embeds tokens and scores them

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache,
        padding_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Run ``input_ids`` (B, T) after the positions stored in ``cache``; return float32 logits (B, T, V).

        ``position_ids`` (B, T) must be below ``n_positions``; the caller checks that,
        because checking here would cost a device sync per step. ``padding_mask`` is
        (B, past + T) with 0 at left padding, or None. ``last_only`` returns (B, 1, V)
        for the last position only, which spares prefill the largest matmul.
        """
        B, T = input_ids.size()

        # One mask for all layers, because every layer stores the same number of positions.
        mask = cache.attention_mask(padding_mask, T, input_ids.device)  # (B, 1, T, past + T) or None

        x = self.wte(input_ids) + self.wpe(position_ids)  # (B, T, C)
        for block in self.h:
            x = block(x, cache, mask)  # (B, T, C)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        x = self.ln_f(x)

        logits = self.lm_head(x)  # (B, T, V)
        return logits.float()


# Hugging Face stores the four GPT-2 projections as transformers' Conv1D, whose weight
# is (in, out) and computes x @ W + b. nn.Linear keeps (out, in) and computes x @ W^T + b,
# so these weights are transposed once at load time.
CONV1D_WEIGHTS = re.compile(r"^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")

# Buffers that older transformers versions saved with the weights: the causal-mask
# triangle (attn.bias) and the fill value for masked scores (attn.masked_bias).
# The cache's attention builds its own mask, so they are dropped.
IGNORED_KEYS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")

LISTED_NAMES = 5  # names shown per kind of mismatch in an error message


def _checkpoint_state(raw: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    """Strip the ``transformer.`` prefix of GPT2LMHeadModel keys and drop the mask buffers."""
    state: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        name = key.removeprefix("transformer.")
        if IGNORED_KEYS.match(name):
            continue
        if name in state:
            raise CheckpointError(
                f"weights in {folder} contain both {name!r} and 'transformer.{name}'; re-save the checkpoint"
            )
        state[name] = tensor
    return state


def _listed(names: list[str]) -> str:
    listed = ", ".join(names[:LISTED_NAMES])
    return listed + (f" and {len(names) - LISTED_NAMES} more" if len(names) > LISTED_NAMES else "")


def _stored_shapes(model: GPT2, tied: bool) -> dict[str, tuple[int, ...]]:
    """Return the shape each tensor of ``model`` has in a checkpoint file (Conv1D weights transposed)."""
    expected: dict[str, tuple[int, ...]] = {}
    for name, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        expected[name] = shape[::-1] if CONV1D_WEIGHTS.match(name) else shape
    if tied:
        del expected["lm_head.weight"]
    return expected


def _check_tensors(
    state: dict[str, torch.Tensor],
    expected: dict[str, tuple[int, ...]],
    config: GPT2Config,
    folder: Path,
    complete: bool = True,
) -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped tensors.

    ``complete`` False compares only the shapes of the tensors in ``expected`` that ``state`` contains.
    """
    wrong_shapes = [
        f"{name} is {tuple(state[name].shape)}, expected {expected[name]}"
        for name in sorted(set(expected) & set(state))
        if tuple(state[name].shape) != expected[name]
    ]
    missing = sorted(set(expected) - set(state)) if complete else []
    unexpected = sorted(set(state) - set(expected)) if complete else []
    problems = []
    if missing:
        problems.append(f"missing tensors: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_listed(unexpected)}")
    if wrong_shapes:
        problems.append(f"wrong shapes: {_listed(wrong_shapes)}")
    if problems:
        raise CheckpointError(
            f"the weights in {folder} do not match its config.json "
            f"(n_layer={config.n_layer}, n_embd={config.n_embd}, vocab_size={config.vocab_size}): "
            + "; ".join(problems)
            + ". Check that config.json and the weights come from the same GPT-2 checkpoint"
        )


def _check_sizes_before_build(state: dict[str, torch.Tensor], config: GPT2Config, folder: Path) -> None:
    """Compare the config's sizes with the stored tensors before the model is built.

    Building the model, even on the meta device, takes minutes for a config.json
    with n_layer=10**8, and raises a torch overflow error for a size above 2**62.
    """
    check_layer_count(state, "h.", config.n_layer, folder)
    embeddings = {
        "wte.weight": (config.vocab_size, config.n_embd),
        "wpe.weight": (config.n_positions, config.n_embd),
        "h.0.mlp.c_fc.weight": (config.n_embd, config.inner_dim),  # Conv1D layout (in, out)
    }
    _check_tensors(state, embeddings, config, folder, complete=False)


def _ties_lm_head(state: dict[str, torch.Tensor], config: GPT2Config, folder: Path) -> bool:
    """Decide whether lm_head shares wte's weight, as transformers 5.x decides it."""
    lm_head = state.get("lm_head.weight")
    wte = state.get("wte.weight")
    if lm_head is None:
        if not config.tie_word_embeddings:
            logger.info("%s has no lm_head.weight; tying lm_head to the token embeddings (wte)", folder)
        return True
    if not config.tie_word_embeddings:
        return False
    if wte is not None and lm_head.shape == wte.shape and torch.equal(lm_head, wte):
        return True
    logger.warning(
        "config.json in %s sets tie_word_embeddings but lm_head.weight differs from wte.weight; "
        "keeping both, as transformers does",
        folder,
    )
    return False


def _eos_token_id(config: dict[str, Any], folder: Path) -> int | None:
    """Return the first ``eos_token_id`` of config.json, which may hold one id, a list of ids, or null."""
    value = config.get("eos_token_id")
    if value is None:
        ids = []
    elif isinstance(value, list):
        ids = value
    else:
        ids = [value]
    valid = all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
    _check_field("eos_token_id", value, valid, "a token id >= 0, a list of them, or null", folder / "config.json")
    return ids[0] if ids else None


def load_gpt2(
    folder: Path,
    config: dict[str, Any],
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load a Hugging Face GPT-2 checkpoint folder into :class:`GPT2`, with its tokenizer and generation defaults.

    ``dtype`` None keeps the dtype of the stored token embeddings (``wte.weight``),
    and every tensor is converted to it. ``lm_head`` shares ``wte``'s weight when
    the checkpoint stores no ``lm_head.weight``, or ``tie_word_embeddings`` is true
    and the stored ``lm_head.weight`` equals ``wte.weight``.
    """
    folder = Path(folder)
    device = torch.device(device)
    model_config = GPT2Config.from_hf(config, source=folder / "config.json")

    # Load the tokenizer first, so a missing one fails before the weights are read.
    tokenizer = load_tokenizer(folder, eos_token_id=_eos_token_id(config, folder))
    if tokenizer.vocab_size > model_config.vocab_size:
        logger.warning(
            "the tokenizer in %s has %d tokens but the model only %d; ids from %d up will fail in the embedding",
            folder,
            tokenizer.vocab_size,
            model_config.vocab_size,
            model_config.vocab_size,
        )
    elif tokenizer.vocab_size < model_config.vocab_size:
        # Some checkpoints pad the vocabulary, for example to a multiple of 64, because GPU matmuls
        # run faster on such sizes. The extra ids have no token and decode to empty text.
        logger.warning(
            "the tokenizer in %s has %d tokens but the model's vocab_size is %d; "
            "sampled ids %d to %d have no token and decode to empty text",
            folder,
            tokenizer.vocab_size,
            model_config.vocab_size,
            tokenizer.vocab_size,
            model_config.vocab_size - 1,
        )

    state = _checkpoint_state(read_state_dict(folder), folder)
    _check_sizes_before_build(state, model_config, folder)
    tied = _ties_lm_head(state, model_config, folder)
    if tied:
        state.pop("lm_head.weight", None)
    model_config = dataclasses.replace(model_config, tie_word_embeddings=tied)

    # Build on the meta device: no memory and no random init for weights that are
    # overwritten next. load_state_dict(assign=True) then puts the real tensors in.
    with torch.device("meta"):
        model = GPT2(model_config)
    _check_tensors(state, _stored_shapes(model, tied), model_config, folder)

    if dtype is None:
        dtype = state["wte.weight"].dtype
    if not dtype.is_floating_point:
        raise CheckpointError(f"wte.weight in {folder} has dtype {dtype}; expected a floating-point dtype")
    for name, tensor in state.items():
        if CONV1D_WEIGHTS.match(name):
            tensor = tensor.t()  # (in, out) -> (out, in), see CONV1D_WEIGHTS
        state[name] = tensor.to(device=device, dtype=dtype).contiguous()
    if tied:
        state["lm_head.weight"] = state["wte.weight"]

    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        # assign=True wraps each entry in its own Parameter; share one again.
        model.lm_head.weight = model.wte.weight
    model.requires_grad_(False)
    model.eval()

    return LoadedModel(
        name=folder.name,
        model_type="gpt2",
        model=model,
        tokenizer=tokenizer,
        generation_defaults=read_generation_defaults(folder),
        path=folder,
    )

"""KV cache memory: the formula for any model config, and the bytes a real request holds.

The keys and values of one token take ``2 x layers x kv_heads x head_dim`` elements
(2 for K and V). A cache for ``batch`` sequences of ``seq_len`` tokens therefore takes

    2 x layers x kv_heads x head_dim x seq_len x batch x bytes per element

With grouped-query attention (GQA) several query heads share one key/value head, so
``kv_heads`` is ``num_key_value_heads``, not ``num_attention_heads``.

:func:`read_model_config` reads the sizes from a Hugging Face ``config.json`` (GPT-2
and LLaMA-style field names) or from a preset. :func:`kv_cache_bytes` applies the
formula. :func:`measure_kv_memory` runs one real request with a genkit cache backend
and returns the bytes the cache held beside the formula's prediction.

    >>> kv_cache_bytes(read_model_config("llama-7b"), batch_size=1, seq_len=4096, dtype="float16")
    2147483648
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from genkit.errors import CheckpointError, ConfigError, ModelNotFoundError, UnknownNameError

logger = logging.getLogger("genkit")

# Bytes per stored element. Names follow torch; the aliases are the usual short forms.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}

# Presets as the fields of the published Hugging Face config.json files, so that they
# go through the same reader as a user's file.
PRESETS: dict[str, dict[str, Any]] = {
    # openai-community/gpt2: 124M parameters, multi-head attention.
    "gpt2": {"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024},
    # LLaMA 7B (the same shape in LLaMA 1 and Llama 2): multi-head attention.
    "llama-7b": {
        "model_type": "llama",
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "hidden_size": 4096,
    },
    # Llama 2 70B (Llama 3 70B has the same attention shape): GQA with 8 KV heads.
    "llama-70b": {
        "model_type": "llama",
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "hidden_size": 8192,
        "head_dim": 128,
    },
}

# genkit's int8 cache (genkit/caches/int8.py) stores one float32 scale per token and
# KV head, for keys and for values.
INT8_SCALE_BYTES = 4

DEFAULT_SEQ_LENS = (2048, 8192, 32768)
DEFAULT_TABLE_DTYPE = "float16"

# Field names in the order they are tried: Hugging Face's common names first, then
# the GPT-2 names, then names used by other architectures.
LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
HEAD_FIELDS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
KV_HEAD_FIELDS = ("num_key_value_heads", "num_kv_heads")
HIDDEN_FIELDS = ("hidden_size", "n_embd", "d_model")
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx")


@dataclass(frozen=True)
class KVCacheConfig:
    """The attention sizes that set KV cache memory, with Hugging Face field names.

    ``max_position_embeddings`` is the model's context window when the config gives
    one, else None; the formula does not depend on it.
    """

    name: str
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int | None = None

    @property
    def attention(self) -> str:
        """Attention kind: MHA (one KV head per query head), MQA (one KV head) or GQA (in between)."""
        if self.num_key_value_heads == self.num_attention_heads:
            return "MHA"
        if self.num_key_value_heads == 1:
            return "MQA"
        return "GQA"

    def elements_per_token(self) -> int:
        """Key and value elements stored per token of one sequence, over all layers."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "attention": self.attention}


def dtype_name(dtype: Any) -> str:
    """Return the canonical name of ``dtype`` (a name, an alias or a ``torch.dtype``).

    Raises :class:`ConfigError` for a dtype without a known element size.
    """
    text = str(dtype).removeprefix("torch.")
    name = DTYPE_ALIASES.get(text.lower(), text.lower())
    if name not in DTYPE_BYTES:
        choices = ", ".join(DTYPE_BYTES)
        raise ConfigError(f"unknown dtype {dtype!r}: expected one of {choices} (or fp32, fp16, bf16)")
    return name


def dtype_bytes(dtype: Any) -> int:
    """Return the bytes of one element of ``dtype``."""
    return DTYPE_BYTES[dtype_name(dtype)]


def _positive_int(value: Any, label: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"invalid {label}={value!r}: expected a positive integer; {fix}")
    return value


def kv_cache_bytes(config: KVCacheConfig | Mapping[str, Any] | str | os.PathLike, batch_size: int, seq_len: int,
                   dtype: Any = DEFAULT_TABLE_DTYPE, scale_bytes: int = 0) -> int:
    """Return the bytes of keys and values for ``batch_size`` sequences of ``seq_len`` tokens.

    ``config`` is a :class:`KVCacheConfig` or anything :func:`read_model_config`
    accepts. A quantized cache stores scales beside its elements, so ``scale_bytes``
    adds that many bytes per token and KV head, for keys and for values
    (:data:`INT8_SCALE_BYTES` for genkit's int8 cache). The default 0 counts the
    elements only.
    """
    if not isinstance(config, KVCacheConfig):
        config = read_model_config(config)
    batch_size = _positive_int(batch_size, "batch_size", "pass the number of sequences, e.g. 1")
    seq_len = _positive_int(seq_len, "seq_len", "pass the number of token positions, e.g. 4096")
    if isinstance(scale_bytes, bool) or not isinstance(scale_bytes, int) or scale_bytes < 0:
        raise ConfigError(f"invalid scale_bytes={scale_bytes!r}: expected an integer >= 0 (4 for float32 scales)")
    scales_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads
    per_token = config.elements_per_token() * dtype_bytes(dtype) + scales_per_token * scale_bytes
    return per_token * seq_len * batch_size


# ---------------------------------------------------------------------- config reading


def read_model_config(source: Any) -> KVCacheConfig:
    """Read attention sizes from a preset name, a ``config.json`` path, a checkpoint folder or a dict.

    A ``transformers.PretrainedConfig`` works too (anything with ``to_dict()``).
    Field names follow Hugging Face: ``num_hidden_layers``, ``num_attention_heads``,
    ``num_key_value_heads`` (absent or null means multi-head attention) and
    ``head_dim`` (absent or null means ``hidden_size / num_attention_heads``), or
    the GPT-2 names ``n_layer``, ``n_head``, ``n_embd``. A multimodal config's
    ``text_config`` is read when the top level has no layer count.
    """
    if isinstance(source, KVCacheConfig):
        return source
    if isinstance(source, Mapping):
        return config_from_dict(source, str(source.get("_name_or_path") or source.get("model_type") or "config"))
    if hasattr(source, "to_dict") and callable(source.to_dict):
        fields = source.to_dict()
        return config_from_dict(fields, str(fields.get("_name_or_path") or fields.get("model_type") or "config"))
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(
            f"invalid model config {source!r}: expected a preset name ({', '.join(PRESETS)}), "
            "a config.json path, a checkpoint folder or a dict"
        )

    text = os.fspath(source)
    path = Path(text)
    # A preset name is a plain string; a file or folder of that name takes precedence.
    if isinstance(source, str) and text in PRESETS and not path.exists():
        return config_from_dict(PRESETS[text], text)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        if isinstance(source, str) and "/" not in text and os.sep not in text and not text.endswith(".json"):
            raise UnknownNameError(
                f"unknown model config {text!r}: expected a preset ({', '.join(PRESETS)}), "
                "a config.json path or a checkpoint folder"
            )
        raise ModelNotFoundError(f"model config {str(path)!r} not found; pass a config.json path or its folder")
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"failed to read {path} as JSON ({exc}); pass a Hugging Face config.json") from exc
    if not isinstance(fields, dict):
        raise CheckpointError(f"{path} contains {type(fields).__name__} JSON; expected an object of config fields")
    return config_from_dict(fields, str(path))


def _first_field(fields: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str, Any]:
    """Return the first of ``names`` that ``fields`` sets to a non-null value, or (names[0], None)."""
    for name in names:
        if fields.get(name) is not None:
            return name, fields[name]
    return names[0], None


def _config_int(fields: Mapping[str, Any], names: tuple[str, ...], source: str) -> int:
    name, value = _first_field(fields, names)
    if value is None:
        raise ConfigError(f"{source}: missing {name} (or {', '.join(names[1:])}); add it to the config")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{source}: invalid {name}={value!r}; expected a positive integer")
    return value


def config_from_dict(fields: Mapping[str, Any], source: str) -> KVCacheConfig:
    """Build a :class:`KVCacheConfig` from config.json fields; ``source`` names the config in errors."""
    if _first_field(fields, LAYER_FIELDS)[1] is None and isinstance(fields.get("text_config"), Mapping):
        fields = fields["text_config"]
    if fields.get("kv_lora_rank") is not None:
        # DeepSeek-V2/V3 cache a compressed latent per token, not per-head keys and values.
        raise ConfigError(
            f"{source}: kv_lora_rank={fields['kv_lora_rank']!r} means multi-head latent attention, "
            "whose cache size this formula does not model"
        )

    layers = _config_int(fields, LAYER_FIELDS, source)
    heads = _config_int(fields, HEAD_FIELDS, source)

    if _first_field(fields, KV_HEAD_FIELDS)[1] is not None:
        kv_heads = _config_int(fields, KV_HEAD_FIELDS, source)
    elif fields.get("multi_query") is True:
        kv_heads = 1  # GPTBigCode and Falcon-7B: one key/value head shared by all query heads
    else:
        kv_heads = heads
    if kv_heads > heads or heads % kv_heads:
        raise ConfigError(
            f"{source}: num_key_value_heads={kv_heads} must divide num_attention_heads={heads}; "
            "check both fields"
        )

    if fields.get("head_dim") is not None:
        head_dim = _config_int(fields, ("head_dim",), source)
    else:
        hidden_name, hidden = _first_field(fields, HIDDEN_FIELDS)
        hidden = _config_int(fields, HIDDEN_FIELDS, source)
        if hidden % heads:
            raise ConfigError(
                f"{source}: {hidden_name}={hidden} is not divisible by {heads} attention heads; "
                "set head_dim in the config"
            )
        head_dim = hidden // heads

    _, positions = _first_field(fields, POSITION_FIELDS)
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
        positions = None
    return KVCacheConfig(source, layers, heads, kv_heads, head_dim, positions)


# ---------------------------------------------------------------------- table


def format_bytes(count: float) -> str:
    """Format a byte count in binary units (KiB = 1024 bytes, MiB, GiB, TiB)."""
    if count < 1024:
        return f"{int(count)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            return f"{count:.2f} {unit}"
    raise AssertionError("unreachable")


def format_length(seq_len: int) -> str:
    """Write a token count as 2K, 8K, 32K when it is a whole multiple of 1024."""
    return f"{seq_len // 1024}K" if seq_len % 1024 == 0 else str(seq_len)


def parse_length(text: str) -> int:
    """Parse a token count such as ``4096``, ``4K`` or ``32k`` (K = 1024 tokens)."""
    cleaned = text.strip()
    scale = 1
    if cleaned[-1:] in ("k", "K"):
        cleaned, scale = cleaned[:-1], 1024
    try:
        value = int(cleaned) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid length {text!r}: expected a token count such as 4096 or 4K")
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid length {text!r}: expected a positive token count")
    return value


def kv_memory_table(configs: list[Any], seq_lens: list[int], batch_size: int = 1,
                    dtype: Any = DEFAULT_TABLE_DTYPE) -> list[dict[str, Any]]:
    """Return one row per model config: its sizes, bytes per token and the bytes at each length.

    ``bytes`` counts the elements only. For ``int8`` each row and entry also has the
    bytes of genkit's ``int8`` backend, which adds a float32 scale per token and KV
    head: ``bytes_per_token_with_scales`` and ``bytes_with_scales``.
    """
    name = dtype_name(dtype)
    scale_bytes = INT8_SCALE_BYTES if name == "int8" else 0
    rows = []
    for source in configs:
        config = read_model_config(source)
        entries = []
        for seq_len in seq_lens:
            entry = {
                "seq_len": seq_len,
                "bytes": kv_cache_bytes(config, batch_size, seq_len, name),
                "beyond_context": config.max_position_embeddings is not None
                and seq_len > config.max_position_embeddings,
            }
            if scale_bytes:
                entry["bytes_with_scales"] = kv_cache_bytes(config, batch_size, seq_len, name, scale_bytes)
            entries.append(entry)
        row = {
            "config": config.to_dict(),
            "dtype": name,
            "batch_size": batch_size,
            "bytes_per_token": kv_cache_bytes(config, 1, 1, name),
            "entries": entries,
        }
        if scale_bytes:
            row["bytes_per_token_with_scales"] = kv_cache_bytes(config, 1, 1, name, scale_bytes)
        rows.append(row)
    return rows


def render_table(rows: list[dict[str, Any]]) -> str:
    """Render :func:`kv_memory_table` rows as an aligned text table."""
    seq_lens = [entry["seq_len"] for entry in rows[0]["entries"]] if rows else []
    with_scales = bool(rows) and "bytes_per_token_with_scales" in rows[0]
    header = ["model", "layers", "heads", "KV heads", "head_dim", "per token"]
    if with_scales:
        header.append("with scales")
    header += [format_length(n) for n in seq_lens]
    lines = [header]
    beyond = False
    for row in rows:
        config = row["config"]
        cells = [
            config["name"],
            str(config["num_hidden_layers"]),
            str(config["num_attention_heads"]),
            f"{config['num_key_value_heads']} ({config['attention']})",
            str(config["head_dim"]),
            format_bytes(row["bytes_per_token"]),
        ]
        if with_scales:
            cells.append(format_bytes(row["bytes_per_token_with_scales"]))
        for entry in row["entries"]:
            mark = " *" if entry["beyond_context"] else ""
            beyond = beyond or entry["beyond_context"]
            cells.append(format_bytes(entry["bytes"]) + mark)
        lines.append(cells)

    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = []
    for line in lines:
        left = line[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(line[1:], widths[1:])]
        text.append("  ".join([left, *rest]))
    if rows:
        text.append("")
        text.append(
            f"KV cache = 2 x layers x KV heads x head_dim x tokens x batch ({rows[0]['batch_size']}) "
            f"x bytes per element ({dtype_bytes(rows[0]['dtype'])}, {rows[0]['dtype']})."
        )
        text.append("Per token: one position of one sequence. Binary units: 1 GiB = 1024^3 bytes.")
        if with_scales:
            text.append(
                "int8 counts one byte per element. genkit's `int8` backend also stores a float32 scale per token "
                "and KV head, for keys and for values."
            )
            text.append(
                f"'with scales' is its size per token, and each length column grows by the same factor, "
                f"1 + {INT8_SCALE_BYTES} / head_dim."
            )
    if beyond:
        text.append("* longer than the model's context window (max_position_embeddings).")
    return "\n".join(text)


# ---------------------------------------------------------------------- real request


@dataclass
class KVMeasurement:
    """The KV cache bytes one real request held, beside the formula's predictions.

    ``request_positions`` is prompt length + max_new_tokens, which is what a
    preallocating backend reserves per row. ``allocated_slots`` and ``used_slots``
    are the backend's own counts at the peak (rows x positions). ``held_bytes`` is
    the peak of ``usage().bytes``; ``pool_bytes`` is the memory reserved at that
    peak (a paged pool), equal to ``held_bytes`` for other backends.
    """

    model: str
    cache: str
    dtype: str
    scale_bytes: int
    config: KVCacheConfig
    config_source: str
    batch_size: int
    prompt_length: int
    max_new_tokens: int
    request_positions: int
    formula_bytes: int
    allocated_slots: int
    used_slots: int
    formula_allocated_bytes: int
    held_bytes: int
    pool_bytes: int
    generated_tokens: int

    @property
    def ratio(self) -> float:
        """Bytes held over the formula at the request's length (1.0 means equal)."""
        return self.held_bytes / self.formula_bytes

    @property
    def allocated_ratio(self) -> float:
        """Bytes held over the formula at the positions the backend allocated."""
        if self.formula_allocated_bytes == 0:
            return math.nan
        return self.held_bytes / self.formula_allocated_bytes

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["config"] = self.config.to_dict()
        payload["ratio"] = self.ratio
        payload["allocated_ratio"] = self.allocated_ratio
        return payload


def _config_of_loaded(loaded) -> tuple[KVCacheConfig, str]:
    """Read the formula's sizes from the checkpoint's config.json, or from the loaded model's shape.

    The config file is read independently of the model loader, so a loader that
    misreads a size shows up as a ratio other than 1. A config this reader cannot
    parse (a model type with other field names) falls back to the model's shape.
    """
    if loaded.path is not None and (Path(loaded.path) / "config.json").is_file():
        try:
            return read_model_config(Path(loaded.path)), "config.json"
        except (ConfigError, CheckpointError) as exc:
            logger.warning("failed to read attention sizes from %s (%s); using the loaded model's shape",
                           Path(loaded.path) / "config.json", exc)
    shape = loaded.shape
    heads = shape.n_heads
    # ModelShape has no KV head count yet: genkit's models use multi-head attention.
    kv_heads = getattr(shape, "n_kv_heads", heads)
    return KVCacheConfig(loaded.name, shape.n_layers, heads, kv_heads, shape.head_dim, shape.max_positions), "model"


def measure_kv_memory(
    model: str | os.PathLike | None = None,
    cache: str = "static",
    prompt_length: int = 64,
    max_new_tokens: int = 64,
    batch_size: int = 1,
    dtype: Any = None,
    device: str | None = None,
    cache_options: dict[str, Any] | None = None,
    generator: Any = None,
) -> KVMeasurement:
    """Run one greedy request with the ``cache`` backend and compare its bytes with the formula.

    The prompt is ``prompt_length`` token ids, repeated for ``batch_size`` rows, and
    EOS is masked until ``max_new_tokens`` tokens are generated, so every row runs to
    the full length. The cache's ``usage()`` is read after the prefill and after
    every decode step, and the peak is reported. ``model`` is a checkpoint (None:
    the shipped toy model), or pass a loaded ``generator`` to reuse one. ``dtype``
    sets the model's compute dtype, which is also the dtype of a float cache. The
    ``int8`` backend is compared with the formula at one byte per element plus
    :data:`INT8_SCALE_BYTES` per token and KV head.
    """
    from genkit.engine import Generator
    from genkit.registry import get_registry

    batch_size = _positive_int(batch_size, "batch_size", "pass the number of sequences, e.g. 1")
    prompt_length = _positive_int(prompt_length, "prompt_length", "pass the prompt length in tokens, e.g. 64")
    max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens", "pass the number of new tokens, e.g. 64")
    torch_dtype = None
    if dtype is not None:
        name = dtype_name(dtype)
        if name == "int8":
            raise ConfigError("invalid dtype 'int8' for a real request: the model computes in float; "
                              "pass --cache int8 to store the cache in int8")
        import torch

        torch_dtype = getattr(torch, name)

    # Check the backend name before loading any weights.
    registry = generator.registry if generator is not None else get_registry()
    extends_context = registry.lookup("caches", cache).spec.extends_context
    if generator is None:
        generator = Generator.from_pretrained(model, device=device, dtype=torch_dtype, registry=registry)
    loaded = generator.loaded

    positions = prompt_length + max_new_tokens
    shape = loaded.shape
    # The last generated token is never fed to the model, so max_positions + 1 fit.
    if positions > shape.max_positions + 1 and not extends_context:
        raise ConfigError(
            f"prompt_length ({prompt_length}) + max_new_tokens ({max_new_tokens}) = {positions} exceeds the "
            f"{shape.max_positions} positions of {loaded.name} (plus the last token, which is never fed); "
            "lower --prompt-length or --max-new-tokens"
        )

    # Any valid token ids do: the request measures memory, not text.
    prompt = [(7 * i + 1) % shape.vocab_size for i in range(prompt_length)]
    state = generator.prefill(
        [prompt] * batch_size,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        cache=cache,
        cache_options=cache_options or {},
    )
    kv_cache = state.plan.cache
    try:
        peak = kv_cache.usage()
        pool_bytes = peak.pool_bytes
        while not state.done:
            generator.decode_step(state)
            usage = kv_cache.usage()
            pool_bytes = max(pool_bytes, usage.pool_bytes)
            if usage.bytes >= peak.bytes:
                peak = usage
    finally:
        kv_cache.release()

    config, config_source = _config_of_loaded(loaded)
    element = "int8" if cache == "int8" else dtype_name(loaded.dtype)
    scale_bytes = INT8_SCALE_BYTES if cache == "int8" else 0
    formula_allocated = 0
    if peak.allocated_slots:
        formula_allocated = kv_cache_bytes(config, 1, peak.allocated_slots, element, scale_bytes)
    return KVMeasurement(
        model=loaded.name,
        cache=cache,
        dtype=element,
        scale_bytes=scale_bytes,
        config=config,
        config_source=config_source,
        batch_size=batch_size,
        prompt_length=prompt_length,
        max_new_tokens=max_new_tokens,
        request_positions=positions,
        formula_bytes=kv_cache_bytes(config, batch_size, positions, element, scale_bytes),
        allocated_slots=peak.allocated_slots,
        used_slots=peak.used_slots,
        formula_allocated_bytes=formula_allocated,
        held_bytes=peak.bytes,
        pool_bytes=pool_bytes,
        generated_tokens=state.input_ids.shape[1] - prompt_length,
    )


def render_measurement(m: KVMeasurement) -> str:
    """Render a :class:`KVMeasurement` as a short text report."""
    config = m.config
    lines = [
        f"real request: {m.model}, cache {m.cache}, {m.dtype}, batch {m.batch_size}, "
        f"prompt {m.prompt_length} + {m.max_new_tokens} new tokens = {m.request_positions} positions",
        f"model config ({m.config_source}): {config.num_hidden_layers} layers, {config.num_attention_heads} heads, "
        f"{config.num_key_value_heads} KV heads ({config.attention}), head_dim {config.head_dim}",
        "",
    ]

    rows = [
        ("formula at the request length", f"{m.batch_size * m.request_positions} ({m.batch_size} x "
         f"{m.request_positions})", m.formula_bytes),
        ("formula at the allocated slots", str(m.allocated_slots), m.formula_allocated_bytes),
        ("held by the cache at its peak", f"{m.allocated_slots} ({m.used_slots} used)", m.held_bytes),
    ]
    if m.pool_bytes != m.held_bytes:
        rows.append(("reserved pool", "", m.pool_bytes))

    table = [("", "slots", "bytes", "")] + [(label, slots, f"{count:,}", format_bytes(count))
                                               for label, slots, count in rows]
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    for line in table:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())

    lines.append("")
    lines.append(f"held / formula at the request length: {m.ratio:.4f} ({(m.ratio - 1) * 100:+.2f}%)")
    lines.append(f"held / formula at the allocated slots: {m.allocated_ratio:.4f} "
                 f"({(m.allocated_ratio - 1) * 100:+.2f}%)")
    if m.scale_bytes:
        lines.append(f"The formula counts one byte per int8 element plus a {m.scale_bytes}-byte scale per token "
                     "and KV head, for keys and for values.")
    return "\n".join(lines)


# ---------------------------------------------------------------------- CLI


def add_kv_memory_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print KV cache memory for model configs (default: the gpt2, llama-7b and llama-70b presets at 2K, 8K "
        "and 32K tokens). With --model or --cache, run one real request instead and compare the bytes the "
        "cache held with the formula; add --config or --seq-len to print the table too."
    )
    parser.add_argument("--config", dest="configs", action="append", default=None, metavar="NAME_OR_PATH",
                        help=f"preset ({', '.join(PRESETS)}), config.json path or checkpoint folder; "
                        "repeat for several (default: all presets)")
    parser.add_argument("--seq-len", dest="seq_lens", action="append", type=parse_length, default=None,
                        metavar="TOKENS", help="sequence length in tokens, e.g. 4096 or 4K (K = 1024); "
                        "repeat for several (default: 2K, 8K, 32K)")
    parser.add_argument("--batch-size", type=int, default=1, help="number of sequences (default: 1)")
    parser.add_argument("--dtype", default=None,
                        help="element type: float32, float16, bfloat16 or int8 (default: float16 for the table, "
                        "the checkpoint's dtype for a real request)")
    parser.add_argument("--json", action="store_true", help="print JSON")

    real = parser.add_argument_group("real request (runs when --model or --cache is given)")
    real.add_argument("--model", default=None,
                      help="checkpoint folder, shipped name or cached hub id (default: the shipped toy model)")
    real.add_argument("--cache", default=None, help="KV cache backend, e.g. static, paged, concat (default: static)")
    real.add_argument("--cache-options", type=_json_object, default=None,
                      help="options for the cache's build function, as a JSON object, e.g. '{\"block_size\": 16}'")
    real.add_argument("--prompt-length", type=int, default=64, help="prompt length in tokens (default: 64)")
    real.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default: 64)")
    real.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cache options must be JSON ({exc}), e.g. '{{\"block_size\": 16}}'")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"cache options must be a JSON object, got {text!r}")
    return value


def run_kv_memory(args: argparse.Namespace) -> int:
    real_request = args.model is not None or args.cache is not None
    show_table = not real_request or args.configs is not None or args.seq_lens is not None
    _positive_int(args.batch_size, "--batch-size", "pass the number of sequences, e.g. 1")

    payload: dict[str, Any] = {}
    sections = []
    if show_table:
        configs = args.configs or list(PRESETS)
        seq_lens = args.seq_lens or list(DEFAULT_SEQ_LENS)
        rows = kv_memory_table(configs, seq_lens, args.batch_size, args.dtype or DEFAULT_TABLE_DTYPE)
        payload["table"] = rows
        sections.append(render_table(rows))
    if real_request:
        measurement = measure_kv_memory(
            model=args.model,
            cache=args.cache or "static",
            prompt_length=args.prompt_length,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            dtype=args.dtype,
            device=args.device,
            cache_options=args.cache_options,
        )
        payload["measurement"] = measurement.to_dict()
        sections.append(render_measurement(measurement))

    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print("\n\n".join(sections))
    return 0

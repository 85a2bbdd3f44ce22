"""Shared fixtures: the development data folder and tiny GPT-2 checkpoints written by transformers.

Checkpoints come from ``transformers.GPT2LMHeadModel(...).save_pretrained``, so the
files on disk are the real formats. Session-scoped fixtures share them between
tests: treat a checkpoint folder as read-only and ``shutil.copytree`` it before
deleting or damaging files.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

# The test models are tiny, so one intra-op thread is enough. With two threads on a
# 2-core machine shared with other jobs, the two GPT-2 test files took 39 s instead
# of 6 s, because each op waits for a worker thread that is not scheduled.
torch.set_num_threads(1)

# The development data folder beside the repository: present on development machines
# and in CI, absent in a plain clone. Tests that need it skip.
SHARED_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GPT2_TOKENIZER_DIR = SHARED_DATA_DIR / "gpt2-tokenizer"

# Config of the tiny test model; vocab_size comes from the tokenizer. With
# transformers' default initializer_range=0.02 a random GPT-2 repeats one token under
# greedy decoding. With 0.3 it changes token at most steps, so a cache bug changes the output.
# NOTE: greedy parity needs the top two logits of each step to differ by more than
# float rounding. In the greedy runs measured, the smallest gap was about 1e-3.
TINY_GPT2_FIELDS: dict[str, Any] = dict(n_layer=2, n_embd=64, n_head=4, n_positions=128, initializer_range=0.3)

# The byte-level BPE of the self-contained tokenizer: the 256 byte symbols of GPT-2's
# byte-to-unicode table, three merges ("Ġ" stands for a space) and an end-of-text token.
BYTE_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
EOS_TOKEN = "<|endoftext|>"


def require_gpt2_tokenizer_dir() -> Path:
    """Return the real GPT-2 vocab.json/merges.txt folder, or skip the calling test."""
    if not (GPT2_TOKENIZER_DIR / "vocab.json").is_file() or not (GPT2_TOKENIZER_DIR / "merges.txt").is_file():
        pytest.skip(f"GPT-2 tokenizer files not found in {GPT2_TOKENIZER_DIR} (the shared data folder beside the repo)")
    return GPT2_TOKENIZER_DIR


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared development data folder; tests using it skip when it is absent."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA_DIR}")
    return SHARED_DATA_DIR


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir() -> Path:
    """The folder with the real GPT-2 ``vocab.json`` and ``merges.txt``."""
    return require_gpt2_tokenizer_dir()


@pytest.fixture(scope="session")
def hf_gpt2_tokenizer(gpt2_tokenizer_dir):
    """transformers' GPT-2 tokenizer over the real vocabulary: the reference for genkit's."""
    return hf_tokenizer_class().from_pretrained(str(gpt2_tokenizer_dir))


def hf_tokenizer_class():
    """Return transformers' tokenizers-backed GPT-2 tokenizer class (GPT2TokenizerFast before 5.0)."""
    import transformers

    return getattr(transformers, "GPT2TokenizerFast", None) or transformers.GPT2Tokenizer


def write_byte_bpe_files(folder: Path) -> int:
    """Write vocab.json and merges.txt of a small byte-level BPE into ``folder``; return its vocab size."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    symbols += ["".join(pair) for pair in BYTE_MERGES]
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab[EOS_TOKEN] = len(vocab)

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in BYTE_MERGES)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    return len(vocab)


def save_tokenizer(kind: str | None, folder: Path, scratch: Path) -> tuple[int, int]:
    """Save the tokenizer ``kind`` into ``folder``; return (vocab size, eos id).

    Kinds: ``"bytes"`` (tokenizer.json of the small byte-level BPE, no shared data
    needed), ``"gpt2"`` (tokenizer.json of the real GPT-2 vocabulary), ``"gpt2-files"``
    (the real vocab.json + merges.txt, no tokenizer.json) and None (no tokenizer).
    """
    if kind in ("gpt2", "gpt2-files"):
        source = require_gpt2_tokenizer_dir()
    elif kind in ("bytes", None):
        source = scratch / "byte-bpe"
        write_byte_bpe_files(source)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")

    tokenizer = hf_tokenizer_class().from_pretrained(str(source))
    if kind in ("gpt2", "bytes"):
        tokenizer.save_pretrained(str(folder))
    elif kind == "gpt2-files":
        shutil.copy(source / "vocab.json", folder / "vocab.json")
        shutil.copy(source / "merges.txt", folder / "merges.txt")
    return len(tokenizer), tokenizer.convert_tokens_to_ids(EOS_TOKEN)


def save_weights(model, folder: Path, weights: str) -> None:
    """Write the weights of a transformers GPT-2 in the layout ``weights`` names.

    ``"safetensors"`` and ``"sharded"`` use save_pretrained. ``"bin"`` is the state
    dict in pytorch_model.bin, keys as GPT2LMHeadModel names them. ``"bin-hub"``
    imitates the original openai-community/gpt2 file: no ``transformer.`` prefix, no
    ``lm_head.weight``, plus the ``attn.bias`` / ``attn.masked_bias`` buffers that
    transformers 4.x and earlier saved. transformers 5 writes only safetensors, so the
    legacy files are written with torch.save.
    """
    if weights == "safetensors":
        model.save_pretrained(str(folder))
        return
    if weights == "sharded":
        model.save_pretrained(str(folder), max_shard_size="100KB")
        return

    # Config and generation_config.json as save_pretrained writes them, then the .bin file.
    model.config.save_pretrained(str(folder))
    model.generation_config.save_pretrained(str(folder))
    state = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    if weights == "bin-hub":
        n_positions = model.config.n_positions
        causal = torch.tril(torch.ones(n_positions, n_positions, dtype=torch.uint8)).view(1, 1, n_positions, n_positions)
        hub_state = {}
        for key, tensor in state.items():
            if key == "lm_head.weight":
                continue
            hub_state[key.removeprefix("transformer.")] = tensor
        for layer in range(model.config.n_layer):
            hub_state[f"h.{layer}.attn.bias"] = causal
            hub_state[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
        state = hub_state
    elif weights != "bin":
        raise ValueError(f"unknown weights layout {weights!r}")
    torch.save(state, folder / "pytorch_model.bin")


@dataclass
class TinyGPT2:
    """A tiny GPT-2 checkpoint on disk and the transformers model that wrote it (eval mode, do not modify)."""

    folder: Path
    model: Any  # transformers.GPT2LMHeadModel

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size


def build_tiny_gpt2(
    folder: Path,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    weights: str = "safetensors",
    tokenizer: str | None = "bytes",
    **config_fields: Any,
) -> TinyGPT2:
    """Build a randomly initialised tiny GPT-2 with transformers and save it, with a tokenizer, into ``folder``.

    ``config_fields`` override ``transformers.GPT2Config`` fields (``activation_function``,
    ``tie_word_embeddings``, ...); ``vocab_size`` defaults to the tokenizer's size.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size, eos_id = save_tokenizer(tokenizer, folder, folder.parent / (folder.name + "-scratch"))

    fields = {**TINY_GPT2_FIELDS, "vocab_size": vocab_size, "bos_token_id": eos_id, "eos_token_id": eos_id}
    fields.update(config_fields)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**fields)).to(dtype).eval()
    save_weights(model, folder, weights)
    return TinyGPT2(folder=folder, model=model)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Callable[..., TinyGPT2]:
    """Return ``make(**options) -> TinyGPT2``; options as in :func:`build_tiny_gpt2`.

    Equal options return the same checkpoint, built once per test session.
    """
    built: dict[str, TinyGPT2] = {}

    def make(**options: Any) -> TinyGPT2:
        key = repr(sorted(options.items()))
        if key not in built:
            folder = tmp_path_factory.mktemp("tiny-gpt2") / "checkpoint"
            built[key] = build_tiny_gpt2(folder, **options)
        return built[key]

    return make

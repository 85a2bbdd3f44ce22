"""The toy GPT, its trainer and the shipped toy-shakespeare checkpoint."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from genkit.caches.concat import ConcatKVCache
from genkit.caches.static import StaticKVCache
from genkit.cli import main as cli_main
from genkit.errors import CheckpointError, ConfigError, GenkitError
from genkit.models.loading import DEFAULT_MODEL, load_model
from genkit.models.tokenizer import CharTokenizer
from genkit.models.toy import ToyConfig, ToyGPT, load_toy, save_toy
from genkit.errors import CorpusNotFoundError
from genkit.training import DEFAULT_CORPUS, train_toy

CORPUS = (
    "Shall I compare thee to a summer's day?\n"
    "Thou art more lovely and more temperate:\n"
    "Rough winds do shake the darling buds of May,\n"
    "And summer's lease hath all too short a date;\n"
)

# A model small enough to train for a few steps in well under a second.
TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, progress=False)


def make_model(seed: int = 0, vocab_size: int = 23, n_positions: int = 32) -> ToyGPT:
    torch.manual_seed(seed)
    config = ToyConfig(vocab_size=vocab_size, n_positions=n_positions, n_layer=2, n_head=2, n_embd=16)
    return ToyGPT(config).eval()


def make_cache(kind: str, model: ToyGPT, batch_size: int, max_length: int):
    shape = model.shape
    if kind == "concat":
        return ConcatKVCache(shape.n_layers)
    return StaticKVCache(
        shape.n_layers, batch_size, shape.n_heads, shape.head_dim, max_length, torch.float32, torch.device("cpu")
    )


def positions(batch_size: int, start: int, stop: int) -> torch.Tensor:
    return torch.arange(start, stop).expand(batch_size, stop - start)


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests that only read its checkpoint."""
    folder = tmp_path_factory.mktemp("trained")
    corpus = folder / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    summary = train_toy(corpus, steps=5, seed=3, out_dir=folder / "toy", **TINY)
    return summary


# The model and its caches.


@pytest.mark.parametrize("cache_kind", ["concat", "static"])
def test_cached_decoding_matches_full_forward(cache_kind):
    model = make_model()
    ids = torch.randint(0, 23, (2, 12), generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        full = model(ids, positions(2, 0, 12), ConcatKVCache(2))  # (2, 12, V)

        # Prefill 5 tokens, then a 3-token chunk (past and new both > 0), then one token at a time.
        cache = make_cache(cache_kind, model, batch_size=2, max_length=12)
        pieces = [model(ids[:, :5], positions(2, 0, 5), cache), model(ids[:, 5:8], positions(2, 5, 8), cache)]
        for i in range(8, 12):
            pieces.append(model(ids[:, i : i + 1], positions(2, i, i + 1), cache))
        stepwise = torch.cat(pieces, dim=1)

    assert cache.length() == 12
    torch.testing.assert_close(stepwise, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cache_kind", ["concat", "static"])
def test_token_by_token_matches_full_forward(cache_kind):
    model = make_model(seed=4)
    ids = torch.randint(0, 23, (1, 10), generator=torch.Generator().manual_seed(2))

    with torch.no_grad():
        full = model(ids, positions(1, 0, 10), ConcatKVCache(2))
        cache = make_cache(cache_kind, model, batch_size=1, max_length=10)
        steps = [model(ids[:, i : i + 1], positions(1, i, i + 1), cache) for i in range(10)]

    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cache_kind", ["concat", "static"])
def test_left_padded_batch_matches_rows(cache_kind):
    model = make_model(seed=5)
    rows = [[3, 1, 4, 1, 5, 9, 2], [6, 5, 3, 5]]
    next_tokens = [7, 8]
    longest = max(len(row) for row in rows)
    pad = 0
    input_ids = torch.tensor([[pad] * (longest - len(row)) + row for row in rows])  # (2, 7)
    padding_mask = torch.tensor([[0] * (longest - len(row)) + [1] * len(row) for row in rows])  # (2, 7)
    position_ids = (padding_mask.cumsum(-1) - 1).clamp(min=0)

    with torch.no_grad():
        cache = make_cache(cache_kind, model, batch_size=2, max_length=longest + 1)
        prefill = model(input_ids, position_ids, cache, padding_mask)  # (2, 7, V)
        step_mask = torch.cat([padding_mask, torch.ones(2, 1, dtype=padding_mask.dtype)], dim=1)
        step_positions = position_ids[:, -1:] + 1
        step = model(torch.tensor([next_tokens]).T, step_positions, cache, step_mask)  # (2, 1, V)

        for b, row in enumerate(rows):
            alone_ids = torch.tensor([row + [next_tokens[b]]])
            alone = model(alone_ids, positions(1, 0, len(row) + 1), ConcatKVCache(2))[0]  # (len + 1, V)
            torch.testing.assert_close(prefill[b, longest - len(row) :], alone[: len(row)], atol=1e-5, rtol=0)
            torch.testing.assert_close(step[b, 0], alone[len(row)], atol=1e-5, rtol=0)


def test_loss_is_cross_entropy_of_forward():
    model = make_model(seed=6)
    ids = torch.randint(0, 23, (3, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(ids[:, :-1], positions(3, 0, 8), ConcatKVCache(2))
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 23), ids[:, 1:].reshape(-1))
        assert torch.allclose(model.loss(ids[:, :-1], ids[:, 1:]), expected, atol=1e-6)


def test_loss_rejects_sequence_longer_than_block():
    model = make_model(n_positions=8)
    ids = torch.zeros(1, 9, dtype=torch.long)
    with pytest.raises(ConfigError, match="n_positions=8"):
        model.loss(ids, ids)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(n_embd=30, n_head=4), "multiple of n_head"),
        (dict(n_layer=0), "n_layer=0"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(bias="yes"), "bias='yes'"),
    ],
)
def test_config_rejects_invalid_sizes(fields, message):
    with pytest.raises(ConfigError, match=message):
        ToyConfig(vocab_size=10, **fields)


# Saving and loading.


def saved_checkpoint(folder: Path, seed: int = 0) -> Path:
    tokenizer = CharTokenizer.from_text(CORPUS)
    model = make_model(seed=seed, vocab_size=tokenizer.vocab_size)
    save_toy(model, tokenizer, folder, {"do_sample": True, "top_k": 5})
    return folder


def test_save_and_load_round_trip(tmp_path):
    folder = saved_checkpoint(tmp_path / "toy")
    loaded = load_model(folder)

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "genkit-toy"
    assert loaded.model_type == "genkit-toy"
    assert isinstance(loaded.tokenizer, CharTokenizer)
    assert loaded.generation_defaults == {"do_sample": True, "top_k": 5}
    assert loaded.dtype == torch.float32
    assert not loaded.model.training
    original = make_model(seed=0, vocab_size=loaded.tokenizer.vocab_size)
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_saved_weights_follow_umask(tmp_path):
    folder = saved_checkpoint(tmp_path / "toy")
    weights_mode = (folder / "model.safetensors").stat().st_mode
    config_mode = (folder / "config.json").stat().st_mode
    assert weights_mode == config_mode


def test_load_with_dtype(tmp_path):
    folder = saved_checkpoint(tmp_path / "toy")
    loaded = load_model(folder, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16


def test_load_without_weights_raises(tmp_path):
    folder = saved_checkpoint(tmp_path / "toy")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_model(folder)


def test_load_names_missing_tensor(tmp_path):
    folder = saved_checkpoint(tmp_path / "toy")
    state = load_file(folder / "model.safetensors")
    del state["blocks.1.mlp.fc.weight"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors: blocks\.1\.mlp\.fc\.weight"):
        load_model(folder)


def test_load_names_unexpected_tensor(tmp_path):
    folder = saved_checkpoint(tmp_path / "toy")
    state = load_file(folder / "model.safetensors")
    state["blocks.2.attn.qkv.weight"] = torch.zeros(48, 16)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected tensors: blocks\.2\.attn\.qkv\.weight"):
        load_model(folder)


def test_load_names_misshaped_tensor(tmp_path):
    folder = saved_checkpoint(tmp_path / "toy")
    state = load_file(folder / "model.safetensors")
    state["position_embedding.weight"] = torch.zeros(16, 16)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"position_embedding\.weight has shape \(16, 16\).*\(32, 16\)"):
        load_model(folder)


def test_load_rejects_invalid_config(tmp_path):
    folder = saved_checkpoint(tmp_path / "toy")
    config = json.loads((folder / "config.json").read_text())
    config["n_head"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json.*multiple of n_head"):
        load_model(folder)


INVALID_TOY_FIELDS = [
    ("n_layer", "x", "expected an integer >= 1"),
    ("n_layer", 2.0, "expected an integer >= 1"),
    ("n_head", True, "expected an integer >= 1"),
    ("n_embd", -16, "expected an integer >= 1"),
    ("n_positions", None, "expected an integer >= 1"),
    ("vocab_size", [23], "expected an integer >= 1"),
    ("dropout", "0.1", "expected a number in [0, 1)"),
    ("dropout", float("nan"), "expected a number in [0, 1)"),
    ("bias", "false", "expected true or false"),
    ("bias", 1, "expected true or false"),
]


@pytest.mark.parametrize(
    "field, value, expected", INVALID_TOY_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in INVALID_TOY_FIELDS]
)
def test_load_rejects_invalid_field(tmp_path, field, value, expected):
    folder = saved_checkpoint(tmp_path / "toy")
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))

    with pytest.raises(CheckpointError) as error:
        load_model(folder)

    message = str(error.value)
    assert str(folder / "config.json") in message
    assert f"invalid {field}={value!r}" in message
    assert expected in message


def test_load_rejects_missing_vocab_size(tmp_path):
    folder = saved_checkpoint(tmp_path / "toy")
    config = json.loads((folder / "config.json").read_text())
    del config["vocab_size"]
    (folder / "config.json").write_text(json.dumps(config))

    with pytest.raises(CheckpointError, match="config.json: missing vocab_size"):
        load_model(folder)


def test_huge_n_layer_fails_before_building(tmp_path):
    folder = saved_checkpoint(tmp_path / "toy")
    config = json.loads((folder / "config.json").read_text())
    config["n_layer"] = 10**8
    (folder / "config.json").write_text(json.dumps(config))

    started = time.perf_counter()
    with pytest.raises(CheckpointError) as error:
        load_model(folder)
    elapsed = time.perf_counter() - started

    message = str(error.value)
    assert "n_layer=100000000" in message
    assert "the weights contain 2 blocks" in message
    assert "blocks.0.* to blocks.1.*" in message
    assert elapsed < 5.0  # building the blocks first took minutes


@pytest.mark.parametrize(
    "field, tensor", [("n_positions", "position_embedding.weight"), ("n_embd", "token_embedding.weight")]
)
def test_oversized_config_names_tensor(tmp_path, field, tensor):
    # A size of 2**62 overflows torch's size arithmetic even on the meta device.
    folder = saved_checkpoint(tmp_path / "toy")
    config = json.loads((folder / "config.json").read_text())
    config[field] = 2**62
    (folder / "config.json").write_text(json.dumps(config))

    with pytest.raises(CheckpointError) as error:
        load_model(folder)

    assert f"{tensor} has shape" in str(error.value)
    assert str(2**62) in str(error.value)


def test_extra_layers_are_listed_briefly(tmp_path):
    folder = saved_checkpoint(tmp_path / "toy")
    config = json.loads((folder / "config.json").read_text())
    config["n_layer"] = 1
    (folder / "config.json").write_text(json.dumps(config))

    with pytest.raises(CheckpointError) as error:
        load_model(folder)

    message = str(error.value)
    assert "unexpected tensors: blocks.1." in message
    assert "and 7 more" in message  # 12 tensors in block 1, 5 listed


def test_load_rejects_non_finite_weights(tmp_path):
    folder = saved_checkpoint(tmp_path / "toy")
    state = load_file(folder / "model.safetensors")
    state["blocks.0.attn.qkv.weight"][2, 3] = float("nan")
    save_file(state, folder / "model.safetensors")

    with pytest.raises(CheckpointError) as error:
        load_model(folder)

    message = str(error.value)
    assert "'blocks.0.attn.qkv.weight'" in message
    assert str(folder / "model.safetensors") in message
    assert "corrupted" in message


def test_loaded_weights_do_not_follow_file(tmp_path):
    # safetensors memory-maps the file; the loaded model must keep its own copy.
    folder = saved_checkpoint(tmp_path / "toy")
    loaded = load_model(folder)
    before = loaded.model.lm_head.weight.clone()

    saved_checkpoint(folder, seed=9)

    assert torch.equal(loaded.model.lm_head.weight, before)


@pytest.mark.parametrize("chars", ["abc", ["a", "b", "c"]])
def test_load_rejects_tokenizer_smaller_than_vocab(tmp_path, chars):
    folder = saved_checkpoint(tmp_path / "toy")
    (folder / "char_tokenizer.json").write_text(json.dumps({"type": "char", "chars": chars}))
    vocab_size = json.loads((folder / "config.json").read_text())["vocab_size"]

    with pytest.raises(CheckpointError) as error:
        load_model(folder)

    message = str(error.value)
    assert f"has 3 characters but config.json sets vocab_size={vocab_size}" in message
    assert str(folder) in message


@pytest.mark.parametrize("chars", [["ab", "c"], 5, ["a", 1], None])
def test_load_rejects_invalid_alphabet(tmp_path, chars):
    folder = saved_checkpoint(tmp_path / "toy")
    (folder / "char_tokenizer.json").write_text(json.dumps({"type": "char", "chars": chars}))

    with pytest.raises(CheckpointError) as error:
        load_model(folder)

    message = str(error.value)
    assert f"invalid chars={chars!r}" in message
    assert "expected a list of single characters" in message


def test_save_rejects_tokenizer_smaller_than_vocab(tmp_path):
    tokenizer = CharTokenizer.from_text(CORPUS)
    model = make_model(vocab_size=tokenizer.vocab_size + 1)

    with pytest.raises(ConfigError, match=f"build the model with vocab_size={tokenizer.vocab_size}"):
        save_toy(model, tokenizer, tmp_path / "toy")


def test_load_rejects_tokenizer_larger_than_vocab(tmp_path):
    folder = saved_checkpoint(tmp_path / "toy")
    config = json.loads((folder / "config.json").read_text())
    tokenizer = CharTokenizer.from_text(CORPUS + "0123456789")
    tokenizer.save(folder)
    assert tokenizer.vocab_size > config["vocab_size"]
    with pytest.raises(CheckpointError, match="does not belong to these weights"):
        load_toy(folder, config)


# Training.


def test_trained_checkpoint_loads_with_same_logits(trained):
    loaded = load_model(trained.out_dir)
    ids = torch.tensor([loaded.tokenizer.encode("Shall I compare")])
    with torch.no_grad():
        expected = trained.model(ids, positions(1, 0, ids.shape[1]), ConcatKVCache(1))
        actual = loaded.model(ids, positions(1, 0, ids.shape[1]), ConcatKVCache(1))
    assert torch.equal(actual, expected)
    assert loaded.tokenizer.chars == trained.tokenizer.chars


def test_trained_checkpoint_files(trained):
    names = sorted(p.name for p in trained.out_dir.iterdir())
    assert names == ["char_tokenizer.json", "config.json", "generation_config.json", "model.safetensors"]
    config = json.loads((trained.out_dir / "config.json").read_text())
    assert config["n_positions"] == 16
    defaults = json.loads((trained.out_dir / "generation_config.json").read_text())
    assert defaults["do_sample"] is True
    assert 1 <= defaults["max_new_tokens"] <= config["n_positions"]


def test_training_summary(trained):
    assert trained.steps == 5
    assert trained.corpus_chars == len(CORPUS)
    assert trained.vocab_size == len(set(CORPUS))
    assert trained.parameters == sum(p.numel() for p in trained.model.parameters())
    assert trained.train_loss > 0
    assert trained.val_loss > 0


def test_training_reduces_loss(corpus, tmp_path):
    summary = train_toy(corpus, steps=60, seed=0, out_dir=tmp_path / "toy", lr=1e-2, **TINY)
    uniform = torch.log(torch.tensor(float(summary.vocab_size))).item()
    assert summary.train_loss < uniform - 0.5


def test_same_seed_gives_same_weights(corpus, tmp_path):
    first = train_toy(corpus, steps=3, seed=11, out_dir=tmp_path / "a", **TINY)
    second = train_toy(corpus, steps=3, seed=11, out_dir=tmp_path / "b", **TINY)
    other = train_toy(corpus, steps=3, seed=12, out_dir=tmp_path / "c", **TINY)

    a = load_file(first.out_dir / "model.safetensors")
    b = load_file(second.out_dir / "model.safetensors")
    c = load_file(other.out_dir / "model.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not all(torch.equal(a[name], c[name]) for name in a)


def test_training_restores_global_rng(corpus, tmp_path):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    train_toy(corpus, steps=2, seed=0, out_dir=tmp_path / "toy", **TINY)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_training_replaces_earlier_checkpoint(corpus, tmp_path):
    out = tmp_path / "toy"
    train_toy(corpus, steps=2, seed=0, out_dir=out, **TINY)
    first = load_file(out / "model.safetensors")
    train_toy(corpus, steps=2, seed=1, out_dir=out, **TINY)
    second = load_file(out / "model.safetensors")

    assert not torch.equal(first["lm_head.weight"], second["lm_head.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "toy"]


def test_training_into_empty_folder(corpus, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    train_toy(corpus, steps=1, seed=0, out_dir=out, **TINY)
    assert (out / "model.safetensors").is_file()


def test_missing_corpus_raises(tmp_path):
    with pytest.raises(CorpusNotFoundError, match="nope.txt") as info:
        train_toy(tmp_path / "nope.txt", steps=1, seed=0, out_dir=tmp_path / "toy", **TINY)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, GenkitError)


def test_corpus_folder_raises(tmp_path):
    with pytest.raises(ConfigError, match="not a file"):
        train_toy(tmp_path, steps=1, seed=0, out_dir=tmp_path / "toy", **TINY)


def test_non_utf8_corpus_raises(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café ".encode("latin-1") * 20)
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        train_toy(path, steps=1, seed=0, out_dir=tmp_path / "toy", **TINY)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(steps=0), "steps=0"),
        (dict(steps=2.5), "steps=2.5"),
        (dict(seed=-1), "seed=-1"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(block_size=0), "block_size=0"),
        (dict(lr=0.0), "lr=0.0"),
        (dict(n_head=3), "multiple of n_head"),
        (dict(device="tpu9"), "device='tpu9'"),
        (dict(generation_defaults={"temperature": -1.0}), "temperature=-1.0"),
    ],
)
def test_invalid_training_argument_raises(corpus, tmp_path, overrides, message):
    arguments = dict(steps=1, seed=0, **TINY)
    arguments.update(overrides)
    with pytest.raises(ConfigError, match=message):
        train_toy(corpus, out_dir=tmp_path / "toy", **arguments)
    assert not (tmp_path / "toy").exists()


def test_corpus_shorter_than_two_blocks_raises(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("x" * 33, encoding="utf-8")
    with pytest.raises(ConfigError, match="33 characters, but block_size=16 needs at least 34"):
        train_toy(path, steps=1, seed=0, out_dir=tmp_path / "toy", **TINY)


def test_empty_corpus_names_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("", encoding="utf-8")

    with pytest.raises(ConfigError) as error:
        train_toy(path, steps=1, seed=0, out_dir=tmp_path / "toy", **TINY)

    message = str(error.value)
    assert f"corpus file {path} is empty" in message
    assert "block_size=16 needs at least 34 characters" in message
    assert "vocab_size" not in message
    assert not (tmp_path / "toy").exists()


def test_diverged_training_writes_nothing(corpus, tmp_path):
    out = tmp_path / "toy"
    train_toy(corpus, steps=1, seed=0, out_dir=out, **TINY)
    before = (out / "model.safetensors").read_bytes()

    with pytest.raises(ConfigError) as error:
        train_toy(corpus, steps=20, seed=0, out_dir=out, lr=1e30, **TINY)

    message = str(error.value)
    assert "training diverged: the loss is nan" in message
    assert "lr=1e+30" in message
    assert "lower the learning rate (--lr" in message
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "toy"]


def test_non_finite_final_loss_raises(corpus, tmp_path, monkeypatch):
    # The last optimizer step can break the weights after every training loss was finite.
    monkeypatch.setattr("genkit.training.estimate_loss", lambda *args: float("inf"))

    with pytest.raises(ConfigError, match="the loss is inf on the training data after the last step"):
        train_toy(corpus, steps=1, seed=0, out_dir=tmp_path / "toy", **TINY)

    assert not (tmp_path / "toy").exists()


def test_out_dir_that_is_a_file_raises(corpus, tmp_path):
    out = tmp_path / "file"
    out.write_text("keep me")
    with pytest.raises(ConfigError, match="not a folder"):
        train_toy(corpus, steps=1, seed=0, out_dir=out, **TINY)
    assert out.read_text() == "keep me"


def test_out_dir_inside_a_file_raises(corpus, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    with pytest.raises(ConfigError, match="is not a writable folder"):
        train_toy(corpus, steps=1, seed=0, out_dir=blocker / "sub" / "toy", **TINY)
    assert blocker.read_text() == "keep me"


def test_out_dir_with_other_files_raises(corpus, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "gpt2"}')
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a toy checkpoint"):
        train_toy(corpus, steps=1, seed=0, out_dir=out, **TINY)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]


def test_failed_save_leaves_out_dir_unchanged(corpus, tmp_path, monkeypatch):
    out = tmp_path / "toy"
    train_toy(corpus, steps=1, seed=0, out_dir=out, **TINY)
    before = (out / "model.safetensors").read_bytes()

    def broken_save(model, tokenizer, folder, generation_defaults=None):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr("genkit.training.save_toy", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train_toy(corpus, steps=1, seed=5, out_dir=out, **TINY)

    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "toy"]


def test_cli_train_toy(corpus, tmp_path, capsys):
    out = tmp_path / "cli-toy"
    argv = ["train-toy", "--corpus", str(corpus), "--steps", "2", "--seed", "0", "--out", str(out),
            "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
            "--no-progress"]
    assert cli_main(argv) == 0
    assert f"saved checkpoint to {out}" in capsys.readouterr().out
    assert load_model(out).shape.max_positions == 16


def test_cli_train_toy_reports_missing_corpus(tmp_path, capsys):
    argv = ["train-toy", "--corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "toy"), "--no-progress"]
    assert cli_main(argv) == 2
    assert "corpus file" in capsys.readouterr().err


def test_cli_train_toy_reports_divergence(corpus, tmp_path, capsys):
    out = tmp_path / "toy"
    argv = ["train-toy", "--corpus", str(corpus), "--steps", "20", "--seed", "0", "--out", str(out), "--lr", "1e30",
            "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
            "--no-progress"]

    assert cli_main(argv) == 2
    assert "training diverged" in capsys.readouterr().err
    assert not out.exists()


def test_cli_train_toy_reports_empty_corpus(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    argv = ["train-toy", "--corpus", str(empty), "--out", str(tmp_path / "toy"), "--no-progress"]

    assert cli_main(argv) == 2
    assert f"corpus file {empty} is empty" in capsys.readouterr().err


# The shipped checkpoint.


def test_shipped_checkpoint_loads_by_default():
    loaded = load_model()
    assert loaded.name == DEFAULT_MODEL == "toy-shakespeare"
    assert loaded.model_type == "genkit-toy"
    assert isinstance(loaded.tokenizer, CharTokenizer)
    defaults = loaded.generation_defaults
    assert defaults["do_sample"] is True
    assert defaults["max_new_tokens"] + len("ROMEO:") <= loaded.shape.max_positions


def test_shipped_checkpoint_size():
    weights = load_model().path / "model.safetensors"
    assert os.path.getsize(weights) < 4_000_000


def test_shipped_tokenizer_round_trips_corpus():
    tokenizer = load_model().tokenizer
    text = DEFAULT_CORPUS.read_text(encoding="utf-8")
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.decode(tokenizer.encode("ROMEO:")) == "ROMEO:"


def test_shipped_model_generates_text():
    from genkit.engine import Generator

    generator = Generator.from_pretrained("toy-shakespeare")
    first = generator.generate("ROMEO:", max_new_tokens=50, seed=0)
    second = generator.generate("ROMEO:", max_new_tokens=50, seed=0)

    assert len(first.token_ids) == 50
    assert first.finish_reason == "length"
    assert first.text == second.text
    assert len(first.text) == 50  # one character per token
    assert " " in first.text

"""Loading checkpoint folders and cached hub snapshots from real files, and the errors for broken ones.

Every checkpoint here is written by transformers (``save_pretrained``) or, for the
legacy ``pytorch_model.bin`` that transformers 5 no longer writes, by ``torch.save``.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from genkit.errors import CheckpointError, ModelNotFoundError, UnknownNameError
from genkit.models.loading import load_model, resolve_checkpoint
from genkit.models.tokenizer import HFTokenizer, load_tokenizer

VECTOR_SEPARATOR = "\n__ggml_vocab_test__\n"


def assert_same_logits(loaded, hf_model, length: int = 16) -> None:
    ids = torch.randint(0, hf_model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    from genkit.caches.concat import ConcatKVCache

    actual = loaded.model(ids, torch.arange(length)[None, :], ConcatKVCache(loaded.shape.n_layers))
    with torch.no_grad():
        expected = hf_model(ids).logits.float()
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def copy_checkpoint(checkpoint, tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoint"
    shutil.copytree(checkpoint.folder, folder)
    return folder


def edit_config(folder: Path, **fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    for key in [k for k, v in fields.items() if v is None]:
        del config[key]
    (folder / "config.json").write_text(json.dumps(config))


# Weight files.


@pytest.mark.parametrize("weights", ["safetensors", "sharded", "bin", "bin-hub"])
def test_weight_layout_loads(tiny_gpt2, weights):
    checkpoint = tiny_gpt2(weights=weights)

    loaded = load_model(checkpoint.folder)

    assert loaded.model_type == "gpt2"
    assert loaded.path == checkpoint.folder
    assert loaded.dtype == torch.float32
    assert_same_logits(loaded, checkpoint.model)


def test_sharded_checkpoint_has_several_shards(tiny_gpt2):
    checkpoint = tiny_gpt2(weights="sharded")

    index = json.loads((checkpoint.folder / "model.safetensors.index.json").read_text())

    assert len(set(index["weight_map"].values())) > 1
    assert not (checkpoint.folder / "model.safetensors").exists()


def test_hub_style_bin_keeps_its_buffers_out(tiny_gpt2):
    checkpoint = tiny_gpt2(weights="bin-hub")
    stored = torch.load(checkpoint.folder / "pytorch_model.bin", weights_only=True)

    loaded = load_model(checkpoint.folder)

    assert "h.0.attn.bias" in stored
    assert "lm_head.weight" not in stored
    assert not any(name.endswith("attn.bias") for name, _ in loaded.model.named_buffers())
    assert loaded.model.lm_head.weight is loaded.model.wte.weight


def test_safetensors_preferred_over_bin(tiny_gpt2, tmp_path):
    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    other = tiny_gpt2(weights="bin", seed=1)
    shutil.copy(other.folder / "pytorch_model.bin", folder / "pytorch_model.bin")

    loaded = load_model(folder)

    assert_same_logits(loaded, tiny_gpt2().model)


def test_fp16_weights_keep_dtype(tiny_gpt2):
    checkpoint = tiny_gpt2(dtype=torch.float16)

    loaded = load_model(checkpoint.folder)

    assert loaded.dtype == torch.float16
    assert load_file(str(checkpoint.folder / "model.safetensors"))["transformer.wte.weight"].dtype == torch.float16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_argument_converts_weights(tiny_gpt2, dtype):
    checkpoint = tiny_gpt2(dtype=torch.float16)

    loaded = load_model(checkpoint.folder, dtype=dtype)

    assert {p.dtype for p in loaded.model.parameters()} == {dtype}


def test_generation_defaults_read(tiny_gpt2, tmp_path):
    from transformers import GenerationConfig

    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    GenerationConfig(
        do_sample=True, temperature=0.7, top_k=7, top_p=0.9, repetition_penalty=1.3, max_new_tokens=33, eos_token_id=5
    ).save_pretrained(str(folder))

    defaults = load_model(folder).generation_defaults

    assert defaults["do_sample"] is True
    assert defaults["temperature"] == 0.7
    assert defaults["top_k"] == 7
    assert defaults["top_p"] == 0.9
    assert defaults["repetition_penalty"] == 1.3
    assert defaults["max_new_tokens"] == 33
    assert defaults["eos_token_id"] == 5


def test_generation_defaults_empty_without_file(tiny_gpt2, tmp_path):
    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    (folder / "generation_config.json").unlink()

    assert load_model(folder).generation_defaults == {}


# Tokenizers.


def read_vectors(data_dir: Path) -> list[tuple[str, list[int]]]:
    """Read the text / expected-ids pairs of the llama.cpp GPT-2 tokenizer test vectors."""
    vectors = data_dir / "gpt2-tokenizer" / "vectors"
    if not (vectors / "gpt2.inp").is_file():
        pytest.skip(f"GPT-2 tokenizer test vectors not found in {vectors}")
    texts = (vectors / "gpt2.inp").read_text(encoding="utf-8").split(VECTOR_SEPARATOR)
    outputs = (vectors / "gpt2.out").read_text(encoding="utf-8").split("\n")
    # Both files end with a separator or newline, which leaves one empty last entry.
    assert texts[-1] == ""
    assert outputs[-1] == ""
    texts, outputs = texts[:-1], outputs[:-1]
    assert len(texts) == len(outputs)
    return [(text, [int(i) for i in ids.split()]) for text, ids in zip(texts, outputs)]


@pytest.fixture(scope="module")
def tokenizer_folders(gpt2_tokenizer_dir, hf_gpt2_tokenizer, tmp_path_factory) -> dict[str, Path]:
    """Folders with the real GPT-2 tokenizer as tokenizer.json and as vocab.json + merges.txt."""
    root = tmp_path_factory.mktemp("gpt2-tokenizers")
    tokenizer_json = root / "tokenizer-json"
    hf_gpt2_tokenizer.save_pretrained(str(tokenizer_json))
    vocab_merges = root / "vocab-merges"
    vocab_merges.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(gpt2_tokenizer_dir / name, vocab_merges / name)
    return {"tokenizer.json": tokenizer_json, "vocab.json+merges.txt": vocab_merges}


@pytest.mark.parametrize("files", ["tokenizer.json", "vocab.json+merges.txt"])
def test_tokenizer_matches_test_vectors(tokenizer_folders, hf_gpt2_tokenizer, shared_data_dir, files):
    tokenizer = load_tokenizer(tokenizer_folders[files], eos_token_id=50256)
    vectors = read_vectors(shared_data_dir)

    for text, expected in vectors:
        ids = tokenizer.encode(text)
        assert ids == expected, f"encode({text!r})"
        assert ids == hf_gpt2_tokenizer.encode(text), f"encode({text!r}) differs from transformers"
        assert tokenizer.decode(ids) == hf_gpt2_tokenizer.decode(ids), f"decode of {text!r}"


@pytest.mark.parametrize("files", ["tokenizer.json", "vocab.json+merges.txt"])
def test_tokenizer_special_tokens(tokenizer_folders, hf_gpt2_tokenizer, files):
    tokenizer = load_tokenizer(tokenizer_folders[files], eos_token_id=50256)
    text = "Hello<|endoftext|> world"

    ids = tokenizer.encode(text)

    assert isinstance(tokenizer, HFTokenizer)
    assert tokenizer.vocab_size == 50257
    assert tokenizer.eos_token_id == 50256
    assert ids == hf_gpt2_tokenizer.encode(text) == [15496, 50256, 995]
    assert tokenizer.decode(ids) == "Hello world"  # special tokens are left out of text


def test_tokenizer_eos_from_tokenizer_config(tokenizer_folders):
    # transformers writes eos_token into tokenizer_config.json; the model config may omit it.
    tokenizer = load_tokenizer(tokenizer_folders["tokenizer.json"])

    assert tokenizer.eos_token_id == 50256


def test_checkpoint_with_vocab_and_merges_loads(tiny_gpt2):
    checkpoint = tiny_gpt2(tokenizer="gpt2-files")

    loaded = load_model(checkpoint.folder)

    assert not (checkpoint.folder / "tokenizer.json").exists()
    assert loaded.tokenizer.encode("Hello world") == [15496, 995]
    assert loaded.tokenizer.eos_token_id == 50256  # from config.json


# Hub ids resolved offline from a Hugging Face cache tree.

HUB_ID = "tiny-org/tiny-gpt2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def write_hub_cache(cache: Path, checkpoint_folder: Path, commit: str, ref: str | None = "main") -> Path:
    """Lay a checkpoint out as huggingface_hub caches it: blobs, symlinked snapshot files, refs."""
    import hashlib

    repo = cache / ("models--" + HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in checkpoint_folder.iterdir():
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty environment for the hub cache variables, offline, run from an empty folder."""
    for name in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return monkeypatch


def test_hub_id_from_hf_home(tiny_gpt2, tmp_path, offline):
    from huggingface_hub import snapshot_download

    checkpoint = tiny_gpt2()
    snapshot = write_hub_cache(tmp_path / "hf-home" / "hub", checkpoint.folder, COMMIT)
    offline.setenv("HF_HOME", str(tmp_path / "hf-home"))

    loaded = load_model(HUB_ID)

    # huggingface_hub resolves the same tree to the same folder.
    expected = snapshot_download(HUB_ID, cache_dir=str(tmp_path / "hf-home" / "hub"), local_files_only=True)
    assert loaded.path == snapshot == Path(expected)
    assert loaded.name == HUB_ID
    assert_same_logits(loaded, checkpoint.model)


def test_hub_id_from_hf_hub_cache(tiny_gpt2, tmp_path, offline):
    checkpoint = tiny_gpt2()
    snapshot = write_hub_cache(tmp_path / "hub-cache", checkpoint.folder, COMMIT)
    offline.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    offline.setenv("HF_HOME", str(tmp_path / "elsewhere"))  # HF_HUB_CACHE wins

    assert resolve_checkpoint(HUB_ID) == snapshot


def test_hub_revision_by_commit(tiny_gpt2, tmp_path, offline):
    cache = tmp_path / "hub-cache"
    write_hub_cache(cache, tiny_gpt2().folder, COMMIT)
    other = write_hub_cache(cache, tiny_gpt2(seed=1).folder, OTHER_COMMIT, ref=None)
    offline.setenv("HF_HUB_CACHE", str(cache))

    loaded = load_model(HUB_ID, revision=OTHER_COMMIT)

    assert loaded.path == other
    assert_same_logits(loaded, tiny_gpt2(seed=1).model)


@pytest.mark.parametrize("hub_id", ["nobody/nothing", "nothing"])
def test_unknown_hub_id_says_where_it_looked(tmp_path, offline, hub_id):
    offline.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))

    with pytest.raises(ModelNotFoundError) as error:
        load_model(hub_id)

    message = str(error.value)
    assert str(tmp_path / "hub-cache" / ("models--" + hub_id.replace("/", "--"))) in message
    assert f"`hf download {hub_id}`" in message
    assert f"`huggingface-cli download {hub_id}` before huggingface_hub 0.34" in message


def test_unknown_hub_revision_names_it(tiny_gpt2, tmp_path, offline):
    cache = tmp_path / "hub-cache"
    write_hub_cache(cache, tiny_gpt2().folder, COMMIT)
    offline.setenv("HF_HUB_CACHE", str(cache))

    with pytest.raises(ModelNotFoundError) as error:
        load_model(HUB_ID, revision="v2.0")

    message = str(error.value)
    assert "no ref or snapshot named 'v2.0'" in message
    assert f"`hf download {HUB_ID} --revision v2.0`" in message


def test_ref_to_missing_snapshot_raises(tiny_gpt2, tmp_path, offline):
    cache = tmp_path / "hub-cache"
    write_hub_cache(cache, tiny_gpt2().folder, COMMIT)
    ref = cache / "models--tiny-org--tiny-gpt2" / "refs" / "main"
    ref.write_text(OTHER_COMMIT)
    offline.setenv("HF_HUB_CACHE", str(cache))

    with pytest.raises(ModelNotFoundError) as error:
        load_model(HUB_ID)

    message = str(error.value)
    assert str(ref) in message
    assert OTHER_COMMIT in message
    assert str(cache / "models--tiny-org--tiny-gpt2" / "snapshots" / OTHER_COMMIT) in message
    assert f"`hf download {HUB_ID}`" in message


def test_cache_without_refs_uses_newest_snapshot(tiny_gpt2, tmp_path, offline, caplog):
    cache = tmp_path / "hub-cache"
    snapshot = write_hub_cache(cache, tiny_gpt2().folder, COMMIT, ref=None)
    offline.setenv("HF_HUB_CACHE", str(cache))

    with caplog.at_level(logging.INFO, logger="genkit"):
        folder = resolve_checkpoint(HUB_ID)

    assert folder == snapshot
    notes = [r for r in caplog.records if "has no refs/ files" in r.getMessage()]
    assert len(notes) == 1
    assert notes[0].levelno == logging.INFO
    assert COMMIT in notes[0].getMessage()


# Errors.


@pytest.mark.parametrize(
    "name", ["/nonexistent/dir", "path/to/gpt2-folder", "./gpt2", "../gpt2", "~/no-such-genkit-folder"]
)
def test_missing_folder_says_folder_not_found(name, offline):
    with pytest.raises(ModelNotFoundError) as error:
        load_model(name)

    message = str(error.value)
    assert f"model folder {Path(name).expanduser().resolve()} not found" in message
    assert "download" not in message
    assert "Hugging Face cache" not in message


def test_unknown_path_says_where_it_looked(tmp_path):
    missing = tmp_path / "no" / "such" / "checkpoint"

    with pytest.raises(ModelNotFoundError) as error:
        load_model(missing)

    message = str(error.value)
    assert str(missing) in message
    assert "pass an existing checkpoint folder" in message


def test_file_instead_of_folder_raises(tiny_gpt2):
    with pytest.raises(ModelNotFoundError, match="is a file"):
        load_model(tiny_gpt2().folder / "config.json")


@pytest.mark.parametrize(
    "removed, message",
    [
        (["model.safetensors"], "no weights"),
        (["config.json"], "no config.json"),
        (["tokenizer.json", "tokenizer_config.json"], "no tokenizer"),
    ],
)
def test_incomplete_folder_raises(tiny_gpt2, tmp_path, removed, message):
    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    for name in removed:
        (folder / name).unlink()

    with pytest.raises(CheckpointError, match=message) as error:
        load_model(folder)

    assert str(folder) in str(error.value)


def test_missing_shard_raises(tiny_gpt2, tmp_path):
    folder = copy_checkpoint(tiny_gpt2(weights="sharded"), tmp_path)
    (folder / "model-00002-of-00007.safetensors").unlink()

    with pytest.raises(CheckpointError, match="model-00002-of-00007.safetensors"):
        load_model(folder)


@pytest.mark.parametrize("damage", ["random_bytes", "broken_header"])
def test_corrupted_safetensors_raises(tiny_gpt2, tmp_path, damage):
    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "random_bytes":
        data = random.Random(0).randbytes(len(data))
    else:
        data[8:40] = b"#" * 32  # the JSON header starts after an 8-byte length
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(folder)


@pytest.mark.parametrize("weights, file", [("safetensors", "model.safetensors"), ("bin", "pytorch_model.bin")])
def test_truncated_weights_raise(tiny_gpt2, tmp_path, weights, file):
    folder = copy_checkpoint(tiny_gpt2(weights=weights), tmp_path)
    path = folder / file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(CheckpointError, match=file):
        load_model(folder)


def test_invalid_config_json_raises(tiny_gpt2, tmp_path):
    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    (folder / "config.json").write_text('{"model_type": "gpt2",')

    with pytest.raises(CheckpointError, match="config.json"):
        load_model(folder)


def test_config_without_model_type_raises(tiny_gpt2, tmp_path):
    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    edit_config(folder, model_type=None)

    with pytest.raises(CheckpointError, match="no model_type"):
        load_model(folder)


@pytest.mark.parametrize("model_type", [["gpt2"], 2, True, {"name": "gpt2"}])
def test_model_type_of_wrong_type_raises(tiny_gpt2, tmp_path, model_type):
    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    edit_config(folder, model_type=model_type)

    with pytest.raises(CheckpointError) as error:
        load_model(folder)

    message = str(error.value)
    assert f"invalid model_type={model_type!r}" in message
    assert str(folder / "config.json") in message
    assert "expected a string such as 'gpt2'" in message


def test_unknown_model_type_lists_available(tiny_gpt2, tmp_path):
    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    edit_config(folder, model_type="mamba-9000")

    with pytest.raises(UnknownNameError) as error:
        load_model(folder)

    message = str(error.value)
    assert "mamba-9000" in message
    assert "gpt2" in message


def rewrite_weights(folder: Path, change) -> None:
    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_prefixed_and_bare_duplicate_raises(tiny_gpt2, tmp_path):
    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    rewrite_weights(folder, lambda state: state.update({"ln_f.bias": state["transformer.ln_f.bias"].clone()}))

    with pytest.raises(CheckpointError, match="ln_f.bias"):
        load_model(folder)


def test_missing_tensor_is_named(tiny_gpt2, tmp_path):
    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    rewrite_weights(folder, lambda state: state.pop("transformer.h.1.ln_2.weight"))

    with pytest.raises(CheckpointError, match=r"missing tensors: h\.1\.ln_2\.weight"):
        load_model(folder)


def test_unexpected_tensor_is_named(tiny_gpt2, tmp_path):
    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    rewrite_weights(folder, lambda state: state.update({"transformer.h.2.ln_1.weight": torch.ones(64)}))

    with pytest.raises(CheckpointError, match=r"unexpected tensors: h\.2\.ln_1\.weight"):
        load_model(folder)


def test_misshaped_tensor_is_named(tiny_gpt2, tmp_path):
    checkpoint = tiny_gpt2()
    folder = copy_checkpoint(checkpoint, tmp_path)
    edit_config(folder, vocab_size=checkpoint.vocab_size + 40)

    with pytest.raises(CheckpointError) as error:
        load_model(folder)

    expected = f"wte.weight is ({checkpoint.vocab_size}, 64), expected ({checkpoint.vocab_size + 40}, 64)"
    assert expected in str(error.value)


def test_huge_n_layer_fails_before_building(tiny_gpt2, tmp_path):
    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    edit_config(folder, n_layer=10**8)

    started = time.perf_counter()
    with pytest.raises(CheckpointError) as error:
        load_model(folder)
    elapsed = time.perf_counter() - started

    message = str(error.value)
    assert "n_layer=100000000" in message
    assert "the weights contain 2 blocks" in message
    assert "h.0.* to h.1.*" in message
    assert elapsed < 5.0  # building 10**8 blocks on the meta device took minutes


@pytest.mark.parametrize(
    "field, value, shape",
    [
        ("vocab_size", 10**30, "wte.weight"),
        ("n_positions", 2**62, "wpe.weight"),
        ("n_inner", 10**30, "h.0.mlp.c_fc.weight"),
    ],
)
def test_oversized_config_names_tensor(tiny_gpt2, tmp_path, field, value, shape):
    # Sizes past 2**62 overflow torch's size arithmetic even on the meta device.
    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    edit_config(folder, **{field: value})

    with pytest.raises(CheckpointError) as error:
        load_model(folder)

    assert f"wrong shapes: {shape} is" in str(error.value)


# Weights with NaN or infinity in an intact file.


def tensor_data_range(path: Path, name: str) -> tuple[int, int]:
    """Return the byte range of tensor ``name`` in a safetensors file, from its JSON header."""
    header_length = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8 : 8 + header_length])
    start, end = header[name]["data_offsets"]
    return 8 + header_length + start, 8 + header_length + end


FLOAT32_NAN = b"\xff\xff\xff\xff"
FLOAT32_INF = struct.pack("<f", float("inf"))


@pytest.mark.parametrize("pattern", [FLOAT32_NAN, FLOAT32_INF], ids=["nan", "inf"])
def test_overwritten_weight_bytes_raise(tiny_gpt2, tmp_path, pattern):
    folder = copy_checkpoint(tiny_gpt2(), tmp_path)
    path = folder / "model.safetensors"
    start, _ = tensor_data_range(path, "transformer.h.1.mlp.c_fc.weight")
    data = bytearray(path.read_bytes())
    data[start + 400 : start + 400 + 4 * 3] = pattern * 3
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError) as error:
        load_model(folder)

    message = str(error.value)
    assert "'transformer.h.1.mlp.c_fc.weight'" in message
    assert str(path) in message
    assert "3 NaN or infinite values" in message
    assert "corrupted" in message


def test_non_finite_shard_is_named(tiny_gpt2, tmp_path):
    folder = copy_checkpoint(tiny_gpt2(weights="sharded"), tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"]["transformer.ln_f.weight"]
    rewrite = load_file(str(shard))
    rewrite["transformer.ln_f.weight"][5] = float("nan")
    save_file(rewrite, str(shard), metadata={"format": "pt"})

    with pytest.raises(CheckpointError) as error:
        load_model(folder)

    assert "'transformer.ln_f.weight'" in str(error.value)
    assert str(shard) in str(error.value)


def test_non_finite_bin_weights_raise(tiny_gpt2, tmp_path):
    folder = copy_checkpoint(tiny_gpt2(weights="bin"), tmp_path)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["transformer.wpe.weight"][3, 7] = float("-inf")
    torch.save(state, folder / "pytorch_model.bin")

    with pytest.raises(CheckpointError, match=r"'transformer\.wpe\.weight' in weights file .*pytorch_model\.bin"):
        load_model(folder)


def test_fp16_overflowing_sum_still_loads(tiny_gpt2, tmp_path):
    # The finite check sums each tensor first. A sum above the fp16 maximum (65504)
    # is infinite although every value is finite, so such weights must still load.
    folder = copy_checkpoint(tiny_gpt2(dtype=torch.float16), tmp_path)
    rewrite_weights(folder, lambda state: state["transformer.wpe.weight"].fill_(60000.0))

    loaded = load_model(folder)

    assert torch.all(loaded.model.wpe.weight == 60000.0)


def test_bin_with_non_tensor_entry_raises(tiny_gpt2, tmp_path):
    folder = copy_checkpoint(tiny_gpt2(weights="bin"), tmp_path)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["step"] = 7
    torch.save(state, folder / "pytorch_model.bin")

    with pytest.raises(CheckpointError, match="entry .step. .* is of type int, not a tensor"):
        load_model(folder)


# The demo checkpoint script.


def test_example_script_writes_loadable_checkpoint(gpt2_tokenizer_dir, tmp_path):
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "examples" / "make_gpt2_checkpoint.py"
    spec = importlib.util.spec_from_file_location("make_gpt2_checkpoint", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path / "demo"

    arguments = ["--tokenizer-dir", str(gpt2_tokenizer_dir), "--layers", "1", "--embd", "32", "--heads", "2"]
    arguments += ["--positions", "64", "--max-shard-size", "2MB"]
    status = module.main([str(folder), *arguments])
    loaded = load_model(folder)

    assert status == 0
    assert (folder / "model.safetensors.index.json").is_file()
    assert loaded.shape.n_layers == 1
    assert loaded.shape.max_positions == 64
    assert loaded.tokenizer.encode("Hello world") == [15496, 995]

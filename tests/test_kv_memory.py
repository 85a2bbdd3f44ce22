"""`genkit kv-memory`: the KV cache formula, config reading, real-request agreement and errors.

Expected numbers are worked out by hand in each test, independently of the module:
2 (K and V) x layers x KV heads x head_dim x tokens x batch x bytes per element.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from genkit.cli import main
from genkit.engine import Generator
from genkit.errors import CheckpointError, ConfigError, GenkitError, ModelNotFoundError, UnknownNameError
from genkit.kvmemory import (
    KVCacheConfig,
    format_bytes,
    kv_cache_bytes,
    kv_memory_table,
    measure_kv_memory,
    read_model_config,
)
from genkit.registry import get_registry

GiB = 1024**3
MiB = 1024**2


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["kv-memory", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------- formula


def test_llama_7b_fp16_4k_is_2_gib():
    # 2 x 32 layers x 32 heads x 128 x 4096 tokens x 2 bytes = 2 GiB per sequence.
    assert kv_cache_bytes(read_model_config("llama-7b"), 1, 4096, "float16") == 2 * GiB


def test_llama_70b_gqa_fp16_4k():
    # 2 x 80 layers x 8 KV heads x 128 x 4096 x 2 bytes = 1.25 GiB; MHA would need 8x.
    config = read_model_config("llama-70b")
    assert config.num_key_value_heads == 8
    assert config.num_attention_heads == 64
    assert config.attention == "GQA"
    assert kv_cache_bytes(config, 1, 4096, "fp16") == int(1.25 * GiB)


def test_gpt2_preset_fp32():
    # GPT-2 124M: 2 x 12 layers x 768 (12 heads x 64) x 1024 tokens x 4 bytes = 72 MiB.
    config = read_model_config("gpt2")
    assert (config.num_hidden_layers, config.num_key_value_heads, config.head_dim) == (12, 12, 64)
    assert config.attention == "MHA"
    assert kv_cache_bytes(config, 1, 1024, "float32") == 72 * MiB


def test_bytes_scale_with_batch_and_dtype():
    config = read_model_config("llama-7b")
    one = kv_cache_bytes(config, 1, 1000, "float16")
    assert kv_cache_bytes(config, 3, 1000, "float16") == 3 * one
    assert kv_cache_bytes(config, 1, 1000, "float32") == 2 * one
    assert kv_cache_bytes(config, 1, 1000, "bfloat16") == one
    assert kv_cache_bytes(config, 1, 1000, "int8") == one // 2
    assert kv_cache_bytes(config, 1, 1000, torch.bfloat16) == one
    assert kv_cache_bytes(config, 1, 1000, "bf16") == one


def test_formula_accepts_dict_and_preset_name():
    fields = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1, "hidden_size": 64}
    # 2 x 2 layers x 1 KV head x 16 x 10 tokens x 4 bytes
    assert kv_cache_bytes(fields, 1, 10, "float32") == 2 * 2 * 1 * 16 * 10 * 4
    assert kv_cache_bytes("llama-7b", 1, 4096, "float16") == 2 * GiB


def test_default_table_values():
    rows = kv_memory_table(["gpt2", "llama-7b", "llama-70b"], [2048, 8192, 32768])
    by_name = {row["config"]["name"]: row for row in rows}
    assert [e["bytes"] for e in by_name["llama-7b"]["entries"]] == [1 * GiB, 4 * GiB, 16 * GiB]
    assert [e["bytes"] for e in by_name["llama-70b"]["entries"]] == [640 * MiB, int(2.5 * GiB), 10 * GiB]
    assert [e["bytes"] for e in by_name["gpt2"]["entries"]] == [72 * MiB, 288 * MiB, 1152 * MiB]
    assert by_name["llama-70b"]["bytes_per_token"] == 320 * 1024
    # GPT-2 has 1024 positions, so all three lengths are past its context window.
    assert [e["beyond_context"] for e in by_name["gpt2"]["entries"]] == [True, True, True]
    assert not any(e["beyond_context"] for e in by_name["llama-7b"]["entries"])


def test_format_bytes_binary_units():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(640 * MiB) == "640.00 MiB"
    assert format_bytes(int(1.25 * GiB)) == "1.25 GiB"
    assert format_bytes(3 * 1024 * GiB) == "3.00 TiB"


# ---------------------------------------------------------------------- config reading


@pytest.fixture(scope="module")
def llama_gqa_folder(tmp_path_factory):
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("llama-gqa")
    LlamaConfig(num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, hidden_size=256).save_pretrained(
        str(folder)
    )
    return folder


def test_gqa_from_saved_llama_config(llama_gqa_folder):
    for source in (llama_gqa_folder, llama_gqa_folder / "config.json", str(llama_gqa_folder)):
        config = read_model_config(source)
        assert config.num_hidden_layers == 4
        assert config.num_attention_heads == 8
        assert config.num_key_value_heads == 2
        assert config.head_dim == 32  # hidden_size / num_attention_heads
        assert config.attention == "GQA"
        # 2 x 4 layers x 2 KV heads x 32 x 100 tokens x 2 rows x 2 bytes
        assert kv_cache_bytes(config, 2, 100, "float16") == 2 * 4 * 2 * 32 * 100 * 2 * 2


def test_explicit_head_dim_wins():
    from transformers import LlamaConfig

    fields = LlamaConfig(
        num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4, hidden_size=256, head_dim=48
    ).to_dict()
    config = read_model_config(fields)
    assert config.head_dim == 48
    assert config.num_key_value_heads == 4
    assert config.max_position_embeddings == fields["max_position_embeddings"]


def test_transformers_config_objects():
    from transformers import GPT2Config, GPTBigCodeConfig

    gpt2 = read_model_config(GPT2Config(n_layer=3, n_head=4, n_embd=64))
    assert (gpt2.num_hidden_layers, gpt2.num_attention_heads, gpt2.num_key_value_heads, gpt2.head_dim) == (3, 4, 4, 16)
    assert gpt2.attention == "MHA"

    bigcode = read_model_config(GPTBigCodeConfig(n_layer=2, n_head=4, n_embd=64))
    assert bigcode.num_key_value_heads == 1
    assert bigcode.attention == "MQA"


def test_null_kv_heads_means_mha():
    config = read_model_config({"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": None,
                                "hidden_size": 64, "head_dim": None})
    assert config.num_key_value_heads == 4
    assert config.head_dim == 16


def test_nested_text_config():
    fields = {"model_type": "llava", "text_config": {"num_hidden_layers": 2, "num_attention_heads": 4,
                                                     "num_key_value_heads": 2, "hidden_size": 64}}
    config = read_model_config(fields)
    assert (config.num_hidden_layers, config.num_key_value_heads, config.head_dim) == (2, 2, 16)


def test_shipped_toy_config():
    from genkit.models.loading import PACKAGE_CHECKPOINTS

    config = read_model_config(PACKAGE_CHECKPOINTS / "toy-shakespeare")
    assert (config.num_hidden_layers, config.num_attention_heads, config.head_dim) == (2, 4, 32)
    assert config.max_position_embeddings == 128


# ---------------------------------------------------------------------- bad input (Python API)


def test_unknown_preset_names_choices():
    with pytest.raises(UnknownNameError) as info:
        read_model_config("llama-13b")
    assert "'llama-13b'" in str(info.value)
    assert "llama-70b" in str(info.value)


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nowhere" / "config.json"
    with pytest.raises(ModelNotFoundError) as info:
        read_model_config(missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ModelNotFoundError):
        read_model_config(tmp_path)  # a folder without config.json


def test_config_not_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError) as info:
        read_model_config(path)
    assert str(path) in str(info.value)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(CheckpointError, match="list"):
        read_model_config(path)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"num_attention_heads": 4, "hidden_size": 64}, "missing num_hidden_layers"),
        ({"num_hidden_layers": 2, "hidden_size": 64}, "missing num_attention_heads"),
        ({"num_hidden_layers": 2, "num_attention_heads": 4}, "missing hidden_size"),
        ({"num_hidden_layers": 0, "num_attention_heads": 4, "hidden_size": 64}, "num_hidden_layers=0"),
        ({"num_hidden_layers": 2, "num_attention_heads": "4", "hidden_size": 64}, "num_attention_heads='4'"),
        ({"num_hidden_layers": True, "num_attention_heads": 4, "hidden_size": 64}, "num_hidden_layers=True"),
        ({"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 3, "hidden_size": 64},
         "num_key_value_heads=3 must divide num_attention_heads=4"),
        ({"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 8, "hidden_size": 64},
         "num_key_value_heads=8"),
        ({"num_hidden_layers": 2, "num_attention_heads": 6, "hidden_size": 64}, "hidden_size=64 is not divisible"),
        ({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "head_dim": -1}, "head_dim=-1"),
        ({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "kv_lora_rank": 512},
         "multi-head latent attention"),
    ],
)
def test_invalid_config_fields(fields, expected):
    with pytest.raises(ConfigError) as info:
        read_model_config(fields)
    assert expected in str(info.value)


def test_invalid_sizes_and_dtype():
    config = read_model_config("gpt2")
    for batch in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="batch_size"):
            kv_cache_bytes(config, batch, 10)
    for length in (0, -4):
        with pytest.raises(ConfigError, match=f"seq_len={length}"):
            kv_cache_bytes(config, 1, length)
    with pytest.raises(ConfigError) as info:
        kv_cache_bytes(config, 1, 10, "float8")
    assert "'float8'" in str(info.value)
    assert "bfloat16" in str(info.value)


def test_invalid_source_type():
    with pytest.raises(ConfigError, match="preset"):
        read_model_config(42)


# ---------------------------------------------------------------------- real requests


@pytest.fixture(scope="module")
def toy_generator():
    return Generator.from_pretrained()


def test_static_matches_formula(toy_generator):
    m = measure_kv_memory(cache="static", prompt_length=40, max_new_tokens=24, batch_size=2,
                          generator=toy_generator)
    # Toy: 2 layers x 4 heads x 32 head_dim, float32; static allocates 2 rows x 64 positions.
    expected = 2 * 2 * 4 * 32 * 64 * 2 * 4
    assert m.formula_bytes == expected
    assert m.held_bytes == expected
    assert abs(m.ratio - 1) < 0.01
    assert m.allocated_slots == 2 * 64
    assert m.used_slots == 2 * 63  # the last generated token is never fed to the model
    assert m.generated_tokens == 24


def test_static_held_equals_engine_stats(toy_generator):
    m = measure_kv_memory(cache="static", prompt_length=30, max_new_tokens=10, generator=toy_generator)
    prompt = [(7 * i + 1) % toy_generator.loaded.shape.vocab_size for i in range(30)]
    result = toy_generator.generate(prompt, max_new_tokens=10, min_new_tokens=10, cache="static")
    assert result.stats.kv_cache_bytes == m.held_bytes
    assert result.stats.kv_cache_allocated_slots == m.allocated_slots


def test_concat_holds_fed_positions(toy_generator):
    m = measure_kv_memory(cache="concat", prompt_length=50, max_new_tokens=14, generator=toy_generator)
    # concat stores only what was fed: 50 + 14 - 1 positions.
    assert m.held_bytes == 2 * 2 * 4 * 32 * 63 * 4
    assert m.allocated_slots == 63
    assert m.allocated_ratio == 1.0
    assert m.ratio == pytest.approx(63 / 64)


def test_gpt2_checkpoint_float16(tiny_gpt2):
    checkpoint = tiny_gpt2(tokenizer="bytes")
    m = measure_kv_memory(checkpoint.folder, cache="static", prompt_length=20, max_new_tokens=12, batch_size=3,
                          dtype="float16")
    assert m.config_source == "config.json"
    assert m.dtype == "float16"
    # Tiny GPT-2: 2 layers, 64 = 4 heads x 16, float16, 3 rows x 32 positions.
    assert m.held_bytes == 2 * 2 * 64 * 32 * 3 * 2
    assert abs(m.ratio - 1) < 0.01


def test_unreadable_config_uses_model_shape(tiny_gpt2, tmp_path, caplog):
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_gpt2(tokenizer="bytes").folder, folder)
    generator = Generator.from_pretrained(folder)
    # The loader has read config.json already; a config the formula cannot parse
    # afterwards makes the formula fall back to the loaded model's shape.
    fields = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    fields["n_head"] = 3
    (folder / "config.json").write_text(json.dumps(fields), encoding="utf-8")
    with caplog.at_level("WARNING", logger="genkit"):
        m = measure_kv_memory(cache="static", prompt_length=8, max_new_tokens=8, generator=generator)
    assert m.config_source == "model"
    assert (m.config.num_hidden_layers, m.config.num_key_value_heads, m.config.head_dim) == (2, 4, 16)
    assert m.ratio == 1.0
    assert "n_embd=64 is not divisible by 3" in caplog.text


def test_real_request_rejects_bad_input(toy_generator):
    with pytest.raises(ConfigError, match="exceeds the 128 positions"):
        measure_kv_memory(cache="static", prompt_length=100, max_new_tokens=40, generator=toy_generator)
    with pytest.raises(UnknownNameError, match="'nosuch'"):
        measure_kv_memory(cache="nosuch", generator=toy_generator)
    with pytest.raises(ConfigError, match="int8"):
        measure_kv_memory(cache="static", dtype="int8", generator=toy_generator)
    with pytest.raises(ConfigError, match="prompt_length=0"):
        measure_kv_memory(cache="static", prompt_length=0, generator=toy_generator)


def _has_cache(name: str) -> bool:
    return name in get_registry().caches


@pytest.mark.skipif(not _has_cache("paged"), reason="the paged KV cache backend is not registered")
@pytest.mark.parametrize("block_size", [16, 8, 5])
def test_paged_matches_formula(toy_generator, block_size):
    m = measure_kv_memory(cache="paged", prompt_length=70, max_new_tokens=58, batch_size=2,
                          cache_options={"block_size": block_size}, generator=toy_generator)
    fed = 70 + 58 - 1
    blocks = -(-fed // block_size)
    assert m.allocated_slots == 2 * blocks * block_size
    assert m.used_slots == 2 * fed
    assert m.allocated_ratio == pytest.approx(1.0, abs=0.01)
    # Rounding up to whole blocks leaves under one block per row unwritten. When the
    # block size divides the 128 request positions, that is within 1% of the formula.
    assert m.allocated_slots - m.used_slots < 2 * block_size
    if 128 % block_size == 0:
        assert abs(m.ratio - 1) < 0.01
    assert m.held_bytes <= m.pool_bytes


@pytest.mark.skipif(not _has_cache("paged"), reason="the paged KV cache backend is not registered")
def test_paged_reserved_pool(toy_generator):
    m = measure_kv_memory(cache="paged", prompt_length=16, max_new_tokens=16,
                          cache_options={"block_size": 16, "num_blocks": 10}, generator=toy_generator)
    block_bytes = 2 * 2 * 4 * 32 * 16 * 4  # K and V, 2 layers, 4 heads x 32, 16 positions, float32
    assert m.held_bytes == 2 * block_bytes  # 31 positions fed: two blocks handed out
    assert m.pool_bytes == 10 * block_bytes
    assert m.ratio == pytest.approx(1.0)


@pytest.mark.skipif(not _has_cache("int8"), reason="the int8 KV cache backend is not registered")
def test_int8_counts_elements_and_scales(toy_generator):
    m = measure_kv_memory(cache="int8", prompt_length=64, max_new_tokens=64, generator=toy_generator)
    assert m.dtype == "int8"
    assert m.scale_bytes == 4
    # 2 x 2 layers x 4 heads x 128 positions x (32 one-byte elements + one 4-byte scale)
    assert m.formula_bytes == 2 * 2 * 4 * 128 * (32 + 4)
    assert m.held_bytes == m.formula_bytes
    assert abs(m.ratio - 1) < 0.01
    assert m.held_bytes < kv_cache_bytes(m.config, 1, 128, "float32") / 2


@pytest.mark.skipif(not _has_cache("sliding"), reason="the sliding KV cache backend is not registered")
def test_sliding_holds_its_window(toy_generator):
    m = measure_kv_memory(cache="sliding", prompt_length=100, max_new_tokens=100,
                          cache_options={"window": 32, "sinks": 4}, generator=toy_generator)
    # 200 positions run past the toy's 128, and the cache keeps 4 sinks + 32 recent positions.
    assert m.request_positions == 200
    assert m.allocated_slots == 36
    assert m.held_bytes == 2 * 2 * 4 * 32 * 36 * 4
    assert m.allocated_ratio == pytest.approx(1.0)
    assert m.ratio == pytest.approx(36 / 200)


def test_int8_scale_bytes_formula():
    config = read_model_config("llama-7b")
    plain = kv_cache_bytes(config, 1, 4096, "int8")
    assert plain == GiB
    # One 4-byte scale per 128 elements adds 1/32.
    assert kv_cache_bytes(config, 1, 4096, "int8", scale_bytes=4) == GiB + GiB // 32
    with pytest.raises(ConfigError, match="scale_bytes=-1"):
        kv_cache_bytes(config, 1, 4096, "int8", scale_bytes=-1)


# ---------------------------------------------------------------------- CLI


def test_cli_default_table(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "1.00 GiB" in lines["llama-7b"]
    assert "16.00 GiB" in lines["llama-7b"]
    assert "8 (GQA)" in lines["llama-70b"]
    assert "640.00 MiB" in lines["llama-70b"]
    assert "10.00 GiB" in lines["llama-70b"]
    assert "72.00 MiB" in lines["gpt2"]
    for label in ("2K", "8K", "32K"):
        assert label in lines["model"]
    assert "Binary units" in out


def test_cli_int8_table_shows_scales(capsys):
    code, out, _ = run_cli(capsys, "--dtype", "int8", "--config", "llama-7b", "--config", "gpt2", "--seq-len", "4K")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "with scales" in lines["model"]
    # llama-7b per token: 2 x 32 layers x 32 heads x 128 = 256 KiB of int8 elements,
    # plus 2 x 32 x 32 float32 scales = 8 KiB.
    assert lines["llama-7b"].split()[6:10] == ["256.00", "KiB", "264.00", "KiB"]
    # gpt2 per token: 2 x 12 x 12 x 64 = 18 KiB, plus 2 x 12 x 12 x 4 bytes = 1.125 KiB.
    assert lines["gpt2"].split()[6:10] == ["18.00", "KiB", "19.12", "KiB"]
    assert "genkit's `int8` backend also stores a float32 scale per token and KV head" in out
    assert "1 + 4 / head_dim" in out


def test_cli_int8_json_has_bytes_with_scales(capsys):
    code, out, _ = run_cli(capsys, "--dtype", "int8", "--config", "llama-7b", "--seq-len", "4K", "--json")
    assert code == 0
    (row,) = json.loads(out)["table"]
    (entry,) = row["entries"]
    assert row["bytes_per_token"] == 256 * 1024
    assert row["bytes_per_token_with_scales"] == 264 * 1024
    assert entry["bytes"] == GiB
    # One 4-byte scale per 128 one-byte elements adds 1/32.
    assert entry["bytes_with_scales"] == GiB + GiB // 32


def test_float_table_has_no_scale_fields(capsys):
    rows = kv_memory_table(["gpt2"], [1024], dtype="float16")
    assert "bytes_per_token_with_scales" not in rows[0]
    assert "bytes_with_scales" not in rows[0]["entries"][0]
    code, out, _ = run_cli(capsys, "--config", "gpt2", "--seq-len", "1K")
    assert code == 0
    assert "with scales" not in out
    assert "int8" not in out


def test_cli_json_custom_config(capsys, llama_gqa_folder):
    code, out, _ = run_cli(capsys, "--config", str(llama_gqa_folder), "--seq-len", "1k", "--seq-len", "300",
                           "--batch-size", "4", "--dtype", "bf16", "--json")
    assert code == 0
    payload = json.loads(out)
    assert "measurement" not in payload
    (row,) = payload["table"]
    assert row["config"]["num_key_value_heads"] == 2
    assert row["dtype"] == "bfloat16"
    # 2 x 4 layers x 2 KV heads x 32 x tokens x 4 rows x 2 bytes
    assert [e["bytes"] for e in row["entries"]] == [2 * 4 * 2 * 32 * n * 4 * 2 for n in (1024, 300)]


def test_cli_real_request(capsys):
    code, out, _ = run_cli(capsys, "--cache", "static", "--prompt-length", "32", "--max-new-tokens", "16",
                           "--batch-size", "2", "--json")
    assert code == 0
    payload = json.loads(out)
    assert "table" not in payload
    m = payload["measurement"]
    assert m["model"] == "toy-shakespeare"
    assert m["held_bytes"] == 2 * 2 * 4 * 32 * 48 * 2 * 4
    assert abs(m["ratio"] - 1) < 0.01

    code, out, _ = run_cli(capsys, "--cache", "concat", "--prompt-length", "32", "--max-new-tokens", "16")
    assert code == 0
    assert "held / formula at the request length: 0.9792" in out  # 47 of 48 positions fed
    assert "held by the cache at its peak" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config", "llama-13b"], "unknown model config 'llama-13b'"),
        (["--config", "/nonexistent/config.json"], "'/nonexistent/config.json' not found"),
        (["--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["--batch-size", "0"], "invalid --batch-size=0"),
        (["--cache", "nosuch"], "unknown KV cache 'nosuch'"),
        (["--cache", "static", "--prompt-length", "120", "--max-new-tokens", "20"], "exceeds the 128 positions"),
        (["--cache", "static", "--max-new-tokens", "0"], "max_new_tokens=0"),
    ],
)
def test_cli_errors(capsys, args, expected):
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert out == ""
    assert err.startswith("genkit: error: ")
    assert err.count("\n") == 1
    assert expected in err


def test_cli_not_json_config(capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_text("n_layer: 12\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "--config", str(path))
    assert code == 2
    assert f"failed to read {path} as JSON" in err


@pytest.mark.parametrize("value", ["0", "-2", "abc", "4M"])
def test_cli_invalid_seq_len(capsys, value):
    with pytest.raises(SystemExit) as info:
        main(["kv-memory", "--seq-len", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid length {value!r}" in err


def test_cli_process_exit_code():
    completed = subprocess.run([sys.executable, "-m", "genkit", "kv-memory", "--config", "nosuch"],
                               capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.strip().splitlines() == [
        "genkit: error: unknown model config 'nosuch': expected a preset (gpt2, llama-7b, llama-70b), "
        "a config.json path or a checkpoint folder"
    ]


def test_errors_are_genkit_errors():
    for call in (lambda: read_model_config("nosuch"), lambda: kv_cache_bytes("gpt2", 0, 1)):
        with pytest.raises(GenkitError):
            call()


def test_attention_kinds():
    assert KVCacheConfig("mha", 1, 4, 4, 8).attention == "MHA"
    assert KVCacheConfig("gqa", 1, 4, 2, 8).attention == "GQA"
    assert KVCacheConfig("mqa", 1, 4, 1, 8).attention == "MQA"


def test_local_folder_wins_over_preset(tmp_path, monkeypatch):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"n_layer": 1, "n_head": 2, "n_embd": 8}), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert read_model_config("gpt2").num_hidden_layers == 1
    monkeypatch.chdir(tmp_path / "gpt2")
    assert read_model_config("gpt2").num_hidden_layers == 12

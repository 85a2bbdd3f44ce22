"""Batched generation: every sequence of a left-padded batch equals its own run alone.

The models are the toy GPT and tiny GPT-2 checkpoints written by transformers, on
every registered KV cache backend whose ``exact`` attribute is True. Sequences stop
on their own (EOS, stop string, length) and finished rows leave the model's batch.
transformers' batched generate is the oracle for left padding. The CLI tests cover
batch inputs (arguments, a prompt file, standard input) and JSON Lines output.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch

from genkit.caches.base import KVCache
from genkit.cli import main as genkit_main
from genkit.engine import Generator
from genkit.registry import get_registry
from genkit.testing import tiny_generator

CACHE_NAMES = sorted(get_registry().caches)
TOY_PROMPTS = ["to be", "a", "question marks, and more", "or not", "xyz xyz xyz xyz xyz xyz"]
GPT2_PROMPTS = ["the", "hello there, the end", "abc", "a much longer prompt than the others, with more words in it"]


def require_exact(generator: Generator, cache: str) -> type[KVCache]:
    """Return the class of the ``cache`` backend; skip the calling test unless it declares itself exact."""
    state = generator.prefill("a", cache=cache, max_new_tokens=1)
    backend = type(state.plan.cache)
    state.plan.cache.release()
    if not backend.exact:
        pytest.skip(f"the {cache!r} KV cache is not exact (exact = False), so greedy output may differ")
    return backend


def generate_singles(generator: Generator, prompts: list[str], **kwargs) -> list:
    return [generator.generate(prompt, **kwargs) for prompt in prompts]


def assert_same_results(batch, singles) -> None:
    assert len(batch) == len(singles)
    for row, (together, alone) in enumerate(zip(batch, singles)):
        assert together.prompt_token_ids == alone.prompt_token_ids, row
        assert together.token_ids == alone.token_ids, row
        assert together.text == alone.text, row
        assert together.finish_reason == alone.finish_reason, row


@pytest.fixture(scope="module")
def toy():
    return tiny_generator(seed=1, max_positions=96)


@pytest.fixture(scope="module")
def byte_gpt2(tiny_gpt2):
    return Generator.from_pretrained(tiny_gpt2(tokenizer="bytes").folder)


def count_model_rows(generator: Generator) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """Record the batch size of every forward pass of the generator's model."""
    sizes: list[int] = []

    def record(module, args, kwargs):
        input_ids = args[0] if args else kwargs["input_ids"]
        sizes.append(input_ids.shape[0])

    return sizes, generator.model.register_forward_pre_hook(record, with_kwargs=True)


# ---------------------------------------------------------------- parity with one-by-one


@pytest.mark.parametrize("cache", CACHE_NAMES)
def test_toy_batch_equals_single(toy, cache):
    require_exact(toy, cache)
    kwargs = dict(max_new_tokens=14, do_sample=False, cache=cache)
    assert_same_results(toy.generate_batch(TOY_PROMPTS, **kwargs), generate_singles(toy, TOY_PROMPTS, **kwargs))


@pytest.mark.parametrize("cache", CACHE_NAMES)
def test_gpt2_batch_equals_single(byte_gpt2, cache):
    require_exact(byte_gpt2, cache)
    kwargs = dict(max_new_tokens=14, do_sample=False, cache=cache)
    batch = byte_gpt2.generate_batch(GPT2_PROMPTS, **kwargs)
    assert_same_results(batch, generate_singles(byte_gpt2, GPT2_PROMPTS, **kwargs))
    lengths = {len(r.prompt_token_ids) for r in batch}
    assert len(lengths) == len(GPT2_PROMPTS)  # every row has its own amount of padding


def test_real_gpt2_tokenizer_batch_equals_single(tiny_gpt2):
    generator = Generator.from_pretrained(tiny_gpt2(tokenizer="gpt2").folder)
    prompts = ["Hello", "The quick brown fox jumps over", "日本語 😀"]
    kwargs = dict(max_new_tokens=12, do_sample=False)
    assert_same_results(generator.generate_batch(prompts, **kwargs), generate_singles(generator, prompts, **kwargs))


def test_gpt2_batch_matches_transformers_left_padding(tiny_gpt2):
    # transformers' own batched greedy generate with left padding and an attention mask is the oracle.
    checkpoint = tiny_gpt2(tokenizer="bytes")
    generator = Generator.from_pretrained(checkpoint.folder)
    prompt_ids = [generator.tokenizer.encode(p) for p in GPT2_PROMPTS]
    pad = checkpoint.model.config.eos_token_id
    longest = max(len(ids) for ids in prompt_ids)
    input_ids = torch.tensor([[pad] * (longest - len(ids)) + ids for ids in prompt_ids])
    attention_mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in prompt_ids])
    with torch.no_grad():
        expected = checkpoint.model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=10,
                                             min_new_tokens=10, do_sample=False, pad_token_id=pad)
    batch = generator.generate_batch(prompt_ids, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    for row, result in enumerate(batch):
        assert result.token_ids == expected[row, longest:].tolist(), row


@pytest.mark.parametrize("cache", CACHE_NAMES)
def test_rows_finish_independently(toy, cache):
    require_exact(toy, cache)
    prompts = TOY_PROMPTS[:3]
    free = generate_singles(toy, prompts, max_new_tokens=16, do_sample=False)

    # EOS: a token row 0 produces early that the other rows never produce.
    others = set(free[1].token_ids) | set(free[2].token_ids)
    eos = next(t for t in free[0].token_ids[2:8] if t not in others and t not in free[0].token_ids[:2])
    # Stop string: two characters row 1 produces that rows 0 and 2 never produce.
    text = free[1].text
    stop = next(text[i : i + 2] for i in range(3, len(text) - 1)
                if text[i : i + 2] not in free[0].text and text[i : i + 2] not in free[2].text
                and text[i : i + 2] not in text[:i + 1])

    kwargs = dict(max_new_tokens=16, do_sample=False, cache=cache, eos_token_id=eos, stop_strings=[stop])
    batch = toy.generate_batch(prompts, **kwargs)
    assert_same_results(batch, generate_singles(toy, prompts, **kwargs))
    assert [r.finish_reason for r in batch] == ["eos", "stop", "length"]
    assert len(batch[0].token_ids) < 16
    assert batch[0].token_ids[-1] == eos
    assert len(batch[2].token_ids) == 16


# ---------------------------------------------------------------- finished rows stop costing compute


def expected_rows_per_forward(lengths: list[int]) -> list[int]:
    """Rows the model runs at prefill and at each decode step, when finished rows leave the batch.

    A sequence of n tokens is fed at the prefill and at decode steps 1 .. n-1.
    """
    return [len(lengths)] + [sum(n > step for n in lengths) for step in range(1, max(lengths))]


@pytest.mark.parametrize("cache", CACHE_NAMES)
def test_finished_rows_leave_model_batch(toy, cache):
    backend = require_exact(toy, cache)
    prompts = TOY_PROMPTS[:4]
    free = generate_singles(toy, prompts, max_new_tokens=20, do_sample=False)
    eos = free[1].token_ids[3]
    kwargs = dict(max_new_tokens=20, do_sample=False, cache=cache, eos_token_id=eos)
    singles = generate_singles(toy, prompts, **kwargs)
    lengths = [len(r.token_ids) for r in singles]
    assert min(lengths) < max(lengths)  # at least one row stops before the others

    sizes, handle = count_model_rows(toy)
    try:
        batch = toy.generate_batch(prompts, **kwargs)
    finally:
        handle.remove()

    assert_same_results(batch, singles)
    shrinking = expected_rows_per_forward(lengths)
    full = [len(prompts)] * len(shrinking)
    assert sum(shrinking) < sum(full)
    if backend.row_writer is not KVCache.row_writer:
        # The padded prompts are prefilled one at a time, one forward pass of one row each.
        assert len({len(p) for p in prompts}) > 1
        assert sizes[: len(prompts)] == [1] * len(prompts)
        sizes = [len(prompts)] + sizes[len(prompts) :]
    # A backend without its own select_rows keeps the whole batch running to the end.
    if backend.select_rows is KVCache.select_rows:
        assert sizes == full
    else:
        assert sizes == shrinking


def test_stream_batch_row_counts_shrink(byte_gpt2):
    prompts = GPT2_PROMPTS[:3]
    free = generate_singles(byte_gpt2, prompts, max_new_tokens=12, do_sample=False)
    eos = free[0].token_ids[2]
    # concat prefills the padded batch in one pass (static would prefill row by row).
    kwargs = dict(max_new_tokens=12, do_sample=False, eos_token_id=eos, cache="concat")
    lengths = [len(r.token_ids) for r in generate_singles(byte_gpt2, prompts, **kwargs)]
    sizes, handle = count_model_rows(byte_gpt2)
    try:
        stream = byte_gpt2.stream(prompts, **kwargs)
        events = list(stream)
    finally:
        handle.remove()
    assert sizes == expected_rows_per_forward(lengths)
    assert [sum(e.sequence == row for e in events) for row in range(3)] == lengths


# ---------------------------------------------------------------- CLI


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = genkit_main(["generate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prompt_file_one_json_per_prompt(capsys, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffROMEO:\r\n\nKING:\n \n".encode("utf-8"))
    code, out, err = run_cli(capsys, "to be", "--prompt-file", str(path), "--json", "--max-new-tokens", "5",
                             "--seed", "0")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    # Argument prompts first, then the file's lines; the empty line is skipped, the space-only line kept.
    assert [line["prompt"] for line in lines] == ["to be", "ROMEO:", "KING:", " "]
    assert [line["sequence"] for line in lines] == [0, 1, 2, 3]
    assert all(len(line["token_ids"]) == 5 for line in lines)
    assert all(line["model"] == "toy-shakespeare" for line in lines)


def test_cli_json_batch_equals_single(capsys):
    code, out, _ = run_cli(capsys, "ROMEO:", "KING:", "--json", "--max-new-tokens", "8", "--greedy")
    assert code == 0
    together = [json.loads(line) for line in out.splitlines()]
    for prompt, payload in zip(["ROMEO:", "KING:"], together):
        code, out, _ = run_cli(capsys, prompt, "--json", "--max-new-tokens", "8", "--greedy")
        assert code == 0
        assert json.loads(out)["token_ids"] == payload["token_ids"]


def test_cli_prompt_file_from_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ROMEO:\nKING:\n"), encoding="utf-8"))
    code, out, err = run_cli(capsys, "--prompt-file", "-", "--max-new-tokens", "4", "--seed", "0")
    assert code == 0, err
    assert out.startswith("ROMEO:")
    assert "\nKING:" in out
    assert "finish: length, length" in err


def test_cli_prompt_file_pipe():
    completed = subprocess.run(
        [sys.executable, "-m", "genkit", "generate", "--prompt-file", "-", "--json", "--max-new-tokens", "3"],
        input="ROMEO:\nKING:\n", capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert [json.loads(line)["prompt"] for line in completed.stdout.splitlines()] == ["ROMEO:", "KING:"]


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (None, r"prompt file .*missing\.txt not found"),
        ("dir", "is a directory"),
        (b"ROMEO:\nKI\xffNG:\n", r"not valid UTF-8 \(byte 0xff on line 2\)"),
        (b"\n\n", "contains no prompts"),
    ],
)
def test_cli_bad_prompt_file(capsys, tmp_path, content, pattern):
    import re

    path = tmp_path / "missing.txt"
    if content == "dir":
        path = tmp_path / "folder"
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    code, out, err = run_cli(capsys, "--prompt-file", str(path))
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert re.search(pattern, err), err


def test_cli_no_prompt_at_all(capsys):
    code, _, err = run_cli(capsys)
    assert code == 2
    assert "no prompt given" in err
    assert "--prompt-file" in err


def test_window_limit_is_per_row():
    generator = tiny_generator(seed=1, max_positions=32)
    prompts = ["a", "question marks and more words"]  # 1 and 29 tokens: the window allows 32 and 4 new tokens
    batch = generator.generate_batch(prompts, max_new_tokens=60)
    singles = generate_singles(generator, prompts, max_new_tokens=60)
    assert [len(r.token_ids) for r in singles] == [32, 4]
    assert_same_results(batch, singles)

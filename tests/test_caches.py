"""The KV cache backends: greedy equivalence, memory accounting, the sliding window, int8 error and bad input.

Exact backends (``concat``, ``static``, ``paged``) must give token-identical greedy
output on the shipped toy model and on a GPT-2 checkpoint written by transformers,
which also serves as the reference through ``generate(do_sample=False)``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from genkit.caches.base import CacheCapacityError
from genkit.caches.int8 import dequantize, quantize
from genkit.cli import main
from genkit.config import GenerationConfig
from genkit.engine import Generator
from genkit.errors import ConfigError
from genkit.models.base import ModelShape
from genkit.registry import get_registry
from genkit.specs import RequestContext

PROMPT_LENGTHS = (1, 3, 4, 5, 8, 9, 17, 64)
NEW_TOKENS = 24
# Block size 7 divides none of the prompt lengths, so prompts end inside a block.
EXACT_CACHES = [
    ("concat", {}),
    ("static", {}),
    ("paged", {"block_size": 1}),
    ("paged", {"block_size": 16}),
    ("paged", {"block_size": 7}),
]
CACHE_IDS = [f"{name}-{options.get('block_size', '')}".rstrip("-") for name, options in EXACT_CACHES]

# A sonnet line: every character is in the toy model's vocabulary.
TOY_TEXT = "When I do count the clock that tells the time, And see the brave day sunk in hideous night;"


@pytest.fixture(scope="module")
def toy() -> Generator:
    return Generator.from_pretrained()


@pytest.fixture(scope="module")
def gpt2_checkpoint(tiny_gpt2):
    return tiny_gpt2()


@pytest.fixture(scope="module")
def gpt2(gpt2_checkpoint) -> Generator:
    return Generator.from_pretrained(gpt2_checkpoint.folder)


def toy_prompt(length: int) -> str:
    return (TOY_TEXT * 2)[:length]


def gpt2_prompt(vocab_size: int, length: int) -> list[int]:
    generator = torch.Generator().manual_seed(length)
    return torch.randint(0, vocab_size - 1, (length,), generator=generator).tolist()


def make_cache(name: str, shape: ModelShape, batch_size: int = 1, max_length: int = 64, dtype=torch.float32,
               padding_lengths: tuple[int, ...] = (), **options):
    """Build a cache through its registered spec, as the planner does."""
    context = RequestContext(
        config=GenerationConfig(cache=name, cache_options=options),
        tokenizer=None,
        shape=shape,
        batch_size=batch_size,
        prompt_length=max_length,
        max_length=max_length,
        device=torch.device("cpu"),
        dtype=dtype,
        eos_token_ids=(),
        pad_token_id=0,
        padding_lengths=padding_lengths,
    )
    return get_registry().caches[name].spec.build(context, **options)


GPT2_SHAPE = ModelShape(n_layers=12, n_heads=12, head_dim=64, vocab_size=50257, max_positions=1024)
SMALL_SHAPE = ModelShape(n_layers=1, n_heads=2, head_dim=8, vocab_size=10, max_positions=256)


# Greedy equivalence.


@pytest.mark.parametrize("length", PROMPT_LENGTHS)
def test_toy_greedy_same_for_exact_caches(toy, length):
    prompt = toy_prompt(length)
    outputs = {}
    for (name, options), cache_id in zip(EXACT_CACHES, CACHE_IDS):
        result = toy.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, cache=name, cache_options=options)
        outputs[cache_id] = result.token_ids

    assert len(outputs["concat"]) == NEW_TOKENS
    for cache_id, token_ids in outputs.items():
        assert token_ids == outputs["concat"], cache_id


@pytest.mark.parametrize("length", PROMPT_LENGTHS)
def test_gpt2_greedy_matches_transformers(gpt2_checkpoint, gpt2, length):
    prompt = gpt2_prompt(gpt2_checkpoint.vocab_size, length)
    with torch.no_grad():
        expected = gpt2_checkpoint.model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
            attention_mask=torch.ones(1, length, dtype=torch.long), pad_token_id=0,
        )[0, length:].tolist()

    for (name, options), cache_id in zip(EXACT_CACHES, CACHE_IDS):
        result = gpt2.generate(
            prompt, max_new_tokens=NEW_TOKENS, do_sample=False, cache=name, cache_options=options,
            eos_token_id=[], suppress_tokens=None,
        )
        assert result.token_ids == expected, cache_id


def early_eos(token_lists: list[list[int]], row: int) -> int:
    """Return a token that ``row`` generates early and some other row never generates, to use as EOS."""
    for token in token_lists[row][1:]:
        if any(token not in ids for ids in token_lists):
            return token
    raise AssertionError(f"every token of row {row} appears in every row; use other prompts")


@pytest.mark.parametrize("model", ["toy", "gpt2"])
def test_batched_greedy_with_early_eos(request, model):
    generator = request.getfixturevalue(model)
    if model == "toy":
        prompts = [toy_prompt(length) for length in (9, 17, 3, 64)]
    else:
        prompts = [gpt2_prompt(generator.loaded.shape.vocab_size, length) for length in (9, 17, 3, 64)]
    first = generator.generate_batch(prompts, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=[])
    eos = early_eos([r.token_ids for r in first], row=2)
    settings = dict(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos)

    alone = [generator.generate(prompt, **settings).token_ids for prompt in prompts]
    assert any(len(ids) < NEW_TOKENS for ids in alone), "no row finished early; pick another EOS"
    assert any(len(ids) == NEW_TOKENS for ids in alone), "every row finished early; pick another EOS"
    for (name, options), cache_id in zip(EXACT_CACHES, CACHE_IDS):
        batched = generator.generate_batch(prompts, cache=name, cache_options=options, **settings)
        assert [r.token_ids for r in batched] == alone, cache_id


# Paged: blocks, usage and release.


def test_paged_waste_under_one_block():
    cache = make_cache("paged", GPT2_SHAPE, max_length=200, block_size=16)
    shape = (1, GPT2_SHAPE.n_heads, 200, GPT2_SHAPE.head_dim)
    for layer in range(GPT2_SHAPE.n_layers):
        cache.update(layer, torch.randn(shape), torch.randn(shape))

    usage = cache.usage()
    block_bytes = 2 * GPT2_SHAPE.n_layers * GPT2_SHAPE.n_heads * 16 * GPT2_SHAPE.head_dim * 4
    assert usage.allocated_slots == 13 * 16
    assert usage.used_slots == 200
    assert usage.waste < 0.04
    assert usage.bytes == 13 * block_bytes
    assert usage.pool_bytes == 13 * block_bytes  # the default pool fits one 200-position sequence


def test_paged_stores_no_padding():
    padding = (0, 5, 9)
    cache = make_cache("paged", SMALL_SHAPE, batch_size=3, max_length=16, padding_lengths=padding, block_size=4)
    shape = (3, SMALL_SHAPE.n_heads, 12, SMALL_SHAPE.head_dim)
    cache.update(0, torch.randn(shape), torch.randn(shape))

    usage = cache.usage()
    assert usage.used_slots == 12 + 7 + 3
    assert usage.allocated_slots == (3 + 2 + 1) * 4


def test_paged_returns_blocks_to_pool():
    cache = make_cache("paged", SMALL_SHAPE, batch_size=2, max_length=40, block_size=4)
    pool = cache.pool
    prompt = torch.randn(2, SMALL_SHAPE.n_heads, 9, SMALL_SHAPE.head_dim)
    cache.update(0, prompt, prompt)
    assert pool.blocks_in_use == 2 * 3

    assert cache.select_rows(torch.tensor([1]))
    assert pool.blocks_in_use == 3
    for _ in range(8):
        step = torch.randn(1, SMALL_SHAPE.n_heads, 1, SMALL_SHAPE.head_dim)
        cache.update(0, step, step)
    assert pool.blocks_in_use == math.ceil((9 + 8) / 4)
    assert cache.usage().used_slots == 9 + 8

    cache.release()
    assert pool.blocks_in_use == 0
    assert cache.usage().bytes == 0


def test_paged_pool_exhausted_error(toy):
    with pytest.raises(CacheCapacityError) as caught:
        toy.generate("ROMEO:", max_new_tokens=30, cache="paged", cache_options={"block_size": 4, "num_blocks": 3})

    message = str(caught.value)
    assert "all 3 block(s) of 4 positions" in message
    assert "num_blocks" in message


def test_static_overflow_error(toy):
    with pytest.raises(CacheCapacityError) as caught:
        toy.generate("ROMEO:", max_new_tokens=30, cache="static", cache_options={"max_length": 12})

    message = str(caught.value)
    assert "needs 13 positions but 12 are allocated" in message
    assert "max_length" in message


def test_cli_paged_block_size(toy, capsys):
    status = main(["generate", "ROMEO:", "--max-new-tokens", "20", "--json", "--greedy", "--cache", "paged",
                   "--cache-options", '{"block_size": 8}'])
    paged = json.loads(capsys.readouterr().out)

    assert status == 0
    reference = toy.generate("ROMEO:", max_new_tokens=20, do_sample=False)
    assert paged["token_ids"] == reference.token_ids
    assert paged["stats"]["kv_cache_allocated_slots"] == 8 * math.ceil((6 + 19) / 8)


def test_cli_pool_exhausted_one_line(capsys):
    status = main(["generate", "ROMEO:", "--max-new-tokens", "30", "--json", "--cache", "paged",
                   "--cache-options", '{"block_size": 4, "num_blocks": 2}'])
    captured = capsys.readouterr()

    assert status == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("genkit: error: paged KV cache pool exhausted")


# Bad options.


@pytest.mark.parametrize(
    ("cache", "options", "pattern"),
    [
        ("paged", {"block_size": 0}, "block_size=0"),
        ("paged", {"block_size": "16"}, "block_size='16'"),
        ("paged", {"block_size": 2.5}, "block_size=2.5"),
        ("paged", {"block_size": True}, "block_size=True"),
        ("paged", {"num_blocks": -1}, "num_blocks=-1"),
        ("paged", {"blocksize": 8}, "unknown cache_options \\['blocksize'\\].*block_size, num_blocks"),
        ("sliding", {"window": -4}, "window=-4"),
        ("sliding", {"window": 0}, "window=0"),
        ("sliding", {"sinks": -1}, "sinks=-1"),
        ("sliding", {"window": "64"}, "window='64'"),
        ("sliding", {"window": 126, "sinks": 4}, "window \\+ sinks is 130 but the model has 128 positions"),
        ("int8", {"max_length": 0}, "max_length=0"),
        ("static", {"max_length": None}, "max_length=None"),
        ("concat", {"block_size": 16}, "unknown cache_options \\['block_size'\\].*accepts: none"),
    ],
)
def test_bad_cache_options(toy, cache, options, pattern):
    with pytest.raises(ConfigError, match=pattern):
        toy.generate("ROMEO:", max_new_tokens=2, cache=cache, cache_options=options)


# int8.


def test_int8_round_trip_error_within_half_step():
    x = torch.randn(3, 4, 10, 64) * torch.logspace(-3, 2, 10)[None, None, :, None]
    q, scale = quantize(x)
    error = (dequantize(q, scale, torch.float32) - x).abs()

    assert q.dtype == torch.int8
    assert bool((error <= scale / 2 + 1e-6 * scale).all())
    assert torch.equal(quantize(torch.zeros(1, 1, 1, 8))[0], torch.zeros(1, 1, 1, 8, dtype=torch.int8))


@pytest.mark.parametrize(("dtype", "ratio"), [(torch.float32, (64 + 4) / (4 * 64)), (torch.float16, (64 + 4) / (2 * 64))])
def test_int8_bytes_against_static(dtype, ratio):
    int8 = make_cache("int8", GPT2_SHAPE, max_length=256, dtype=dtype)
    static = make_cache("static", GPT2_SHAPE, max_length=256, dtype=dtype)

    assert int8.usage().bytes == pytest.approx(static.usage().bytes * ratio, rel=1e-9)
    assert int8.usage().allocated_slots == static.usage().allocated_slots


def test_int8_close_to_static_on_toy(toy):
    prompt = toy_prompt(17)
    static = toy.generate(prompt, max_new_tokens=100, do_sample=False, cache="static")
    int8 = toy.generate(prompt, max_new_tokens=100, do_sample=False, cache="int8")

    # Greedy outputs agree up to the first step where int8 rounding flips the argmax.
    agreed = next((i for i, (a, b) in enumerate(zip(static.token_ids, int8.token_ids)) if a != b), 100)
    assert agreed >= 20
    assert int8.stats.kv_cache_bytes < static.stats.kv_cache_bytes * 0.3


@torch.inference_mode()
def test_int8_logits_error_small(toy):
    ids = torch.tensor([toy.tokenizer.encode(TOY_TEXT)])
    length = ids.shape[1]
    logits = {}
    for name in ("static", "int8"):
        cache = make_cache(name, toy.loaded.shape, max_length=length)
        steps = [toy.model(ids[:, :8], torch.arange(8)[None, :], cache)]
        for t in range(8, length):
            steps.append(toy.model(ids[:, t : t + 1], torch.tensor([[t]]), cache))
        logits[name] = torch.cat(steps, dim=1)

    error = (logits["int8"] - logits["static"]).abs()
    assert float(error[:, :8].max()) == 0.0  # prefill attends over the unquantized prompt
    assert float(error.max()) < 0.5
    assert float(error.mean()) < 0.05


# Sliding window.


def reference_window_attention(query, keys, values, sinks, window, padding):
    """Return attention of the last query over sinks + last ``window`` positions, from full keys and values."""
    B, _, L, _ = keys.shape
    mask = torch.zeros(B, 1, 1, L, dtype=torch.bool)
    for row in range(B):
        real = list(range(padding[row], L))
        kept = set(real[:sinks]) | set(real[-window:])
        mask[row, 0, 0, sorted(kept)] = True
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)


@pytest.mark.parametrize("padding", [(0, 0), (0, 7)])
def test_sliding_attends_sinks_and_window(padding):
    torch.manual_seed(0)
    sinks, window, prompt, steps = 2, 5, 12, 20
    B, nh, hs = 2, SMALL_SHAPE.n_heads, SMALL_SHAPE.head_dim
    cache = make_cache("sliding", SMALL_SHAPE, batch_size=B, max_length=prompt + steps, padding_lengths=padding,
                       window=window, sinks=sinks)
    keys, values = torch.randn(B, nh, prompt + steps, hs), torch.randn(B, nh, prompt + steps, hs)
    queries = torch.randn(B, nh, prompt + steps, hs)
    padding_mask = torch.ones(B, prompt + steps, dtype=torch.long)
    for row, pad in enumerate(padding):
        padding_mask[row, :pad] = 0
    any_padding = any(padding)

    # Prefill longer than sinks + window: exact causal attention over the prompt.
    mask = cache.attention_mask(padding_mask[:, :prompt] if any_padding else None, prompt, torch.device("cpu"))
    output = cache.attend(0, queries[:, :, :prompt], keys[:, :, :prompt], values[:, :, :prompt], mask)
    full = F.scaled_dot_product_attention(
        queries[:, :, :prompt], keys[:, :, :prompt], values[:, :, :prompt], attn_mask=mask, is_causal=mask is None
    )
    for row, pad in enumerate(padding):
        torch.testing.assert_close(output[row, :, pad:], full[row, :, pad:])
    assert cache.usage().used_slots == sum(min(prompt - pad, sinks + window) for pad in padding)

    for t in range(prompt, prompt + steps):
        mask = cache.attention_mask(padding_mask[:, : t + 1] if any_padding else None, 1, torch.device("cpu"))
        output = cache.attend(0, queries[:, :, t : t + 1], keys[:, :, t : t + 1], values[:, :, t : t + 1], mask)
        expected = reference_window_attention(
            queries[:, :, t : t + 1], keys[:, :, : t + 1], values[:, :, : t + 1], sinks, window, padding
        )
        torch.testing.assert_close(output, expected)
    assert cache.usage().allocated_slots == B * (sinks + window)


def test_sliding_generates_past_max_positions(toy):
    max_positions = toy.loaded.shape.max_positions
    result = toy.generate("ROMEO:", max_new_tokens=300, do_sample=False, cache="sliding")

    assert 6 + 300 > max_positions
    assert len(result.token_ids) == 300
    assert result.finish_reason == "length"
    assert result.stats.kv_cache_allocated_slots == max_positions
    within = toy.generate("ROMEO:", max_new_tokens=100, do_sample=False, cache="concat")
    assert result.token_ids[:100] == within.token_ids  # exact while everything fits in the window


def test_sliding_batch_matches_single_rows(toy):
    prompts = [toy_prompt(9), toy_prompt(40), toy_prompt(3)]
    settings = dict(max_new_tokens=60, do_sample=False, cache="sliding", cache_options={"window": 12, "sinks": 4})
    first = toy.generate_batch(prompts, **settings)
    eos = early_eos([r.token_ids for r in first], row=2)

    alone = [toy.generate(prompt, eos_token_id=eos, **settings).token_ids for prompt in prompts]
    batched = toy.generate_batch(prompts, eos_token_id=eos, **settings)

    assert any(len(ids) < 60 for ids in alone)
    assert [r.token_ids for r in batched] == alone


def test_sliding_clamps_position_ids():
    cache = make_cache("sliding", SMALL_SHAPE, max_length=400, window=8)
    positions = torch.tensor([[3], [255], [256], [1000]])

    assert cache.position_ids(positions, 256).flatten().tolist() == [3, 255, 255, 255]
    assert cache.extends_context
    assert get_registry().caches["sliding"].spec.extends_context


def test_static_max_length_bounds():
    from genkit.engine import Generator

    gen = Generator.from_pretrained()
    state = gen.prefill(["ROMEO:"], max_new_tokens=5, cache="static", cache_options={"max_length": 100})
    assert state.plan.cache.max_length == 100  # more than this request needs is allowed
    with pytest.raises(ConfigError, match=r"max_length=10000000000 .* expected at most 135"):
        gen.generate("ROMEO:", max_new_tokens=5, cache="static", cache_options={"max_length": 10**10})


def test_paged_pool_too_large_names_options():
    from genkit.engine import Generator
    from genkit.errors import GenerationError

    gen = Generator.from_pretrained()
    with pytest.raises(GenerationError, match=r"could not allocate .*num_blocks.*lower max_new_tokens"):
        gen.generate("ROMEO:", max_new_tokens=5, cache="paged", cache_options={"num_blocks": 10**14})

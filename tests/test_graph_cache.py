"""The graph KV cache and the compiled decode path (Generator(compile=True)).

The graph cache keeps every shape of the decode step fixed, so that torch.compile
compiles the step once. Its output must equal the static cache's token for token;
the compiled path must equal the eager one.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from genkit.caches.graph import GraphKVCache
from genkit.engine import Generator
from genkit.errors import ConfigError


def greedy(gen: Generator, prompts, **kwargs):
    return [r.token_ids for r in gen.generate_batch(prompts, do_sample=False, **kwargs)]


@pytest.fixture(scope="module")
def toy() -> Generator:
    return Generator.from_pretrained()


@pytest.mark.parametrize("prompts", [["ROMEO:"], ["ROMEO:", "But soft, what light", "O"]])
def test_graph_matches_static_on_the_toy_model(toy, prompts):
    expected = greedy(toy, prompts, max_new_tokens=40, cache="static")
    assert greedy(toy, prompts, max_new_tokens=40, cache="graph") == expected


def test_graph_matches_transformers_on_gpt2(tiny_gpt2):
    checkpoint = tiny_gpt2()
    gen = Generator.from_pretrained(checkpoint.folder)
    prompts = [[5, 17, 99, 3, 42, 7, 8], [11, 12], [200, 100, 50, 25]]
    ours = greedy(gen, prompts, max_new_tokens=24, min_new_tokens=24, cache="graph")
    for prompt, tokens in zip(prompts, ours):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = checkpoint.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, min_new_tokens=24, do_sample=False,
                pad_token_id=checkpoint.model.config.eos_token_id,
            )
        assert tokens == out[0, len(prompt):].tolist()


def test_graph_cache_decode_step_keeps_shapes_fixed(toy):
    """Every decode step gets tensors of the same shapes: the property torch.compile needs."""
    state = toy.prefill(["ROMEO:"], max_new_tokens=20, do_sample=False, cache="graph")
    cache = state.plan.cache
    assert isinstance(cache, GraphKVCache)
    shapes = {tuple(cache.keys[0].shape)}
    for _ in range(10):
        toy.decode_step(state)
        shapes.add(tuple(cache.keys[0].shape))
    assert len(shapes) == 1
    assert cache.length() == len("ROMEO:") + 10
    usage = cache.usage()
    assert usage.allocated_slots == cache.capacity
    assert usage.used_slots == cache.length()


def test_graph_cache_takes_chunks_like_static(toy):
    """Several tokens after the prompt (chunked prefill) run on the eager path with exact attention."""
    ids = torch.tensor([toy.tokenizer.encode("ROMEO: But soft")])
    positions = torch.arange(ids.shape[1])[None]
    shape = toy.loaded.shape
    with torch.inference_mode():
        whole = toy.model(ids, positions, GraphKVCache(shape.n_layers, 1, shape.n_heads, shape.head_dim, 64,
                                                       torch.float32, torch.device("cpu")))
        cache = GraphKVCache(shape.n_layers, 1, shape.n_heads, shape.head_dim, 64, torch.float32, torch.device("cpu"))
        first = toy.model(ids[:, :6], positions[:, :6], cache)
        rest = toy.model(ids[:, 6:], positions[:, 6:], cache)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), whole, atol=1e-5, rtol=0)


def test_graph_cache_rejects_bad_options(toy):
    with pytest.raises(ConfigError, match="round_to=0"):
        toy.generate("ROMEO:", cache="graph", cache_options={"round_to": 0})
    with pytest.raises(ConfigError, match="unknown cache_options"):
        toy.generate("ROMEO:", cache="graph", cache_options={"block_size": 4})


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="torch.compile on CPU needs a C compiler")
def test_compiled_decode_matches_eager(toy):
    compiled = Generator(toy.loaded, toy.registry, compile=True)
    prompts = ["ROMEO:", "But soft"]
    expected = greedy(toy, prompts, max_new_tokens=30, cache="static")
    assert greedy(compiled, prompts, max_new_tokens=30) == expected  # compile=True defaults to the graph cache
    # A second request of the same shape reuses the compiled step and still agrees.
    assert greedy(compiled, prompts, max_new_tokens=30) == expected
    # A cache that is not graph-safe runs eagerly under compile=True.
    assert greedy(compiled, prompts, max_new_tokens=30, cache="concat") == expected


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="torch.compile on CPU needs a C compiler")
def test_cli_compile_flag_matches_eager(capsys):
    from genkit.cli import main

    args = ["generate", "ROMEO:", "--max-new-tokens", "12", "--do-sample", "--seed", "3", "--json"]
    assert main(args) == 0
    eager = json.loads(capsys.readouterr().out)
    assert main([*args, "--compile"]) == 0
    compiled = json.loads(capsys.readouterr().out)
    assert compiled["token_ids"] == eager["token_ids"]
    assert compiled["text"] == eager["text"]


def test_graph_round_to_may_exceed_request(toy):
    """A capacity above what one request needs is allowed: it lets requests of other lengths share a shape."""
    state = toy.prefill(["ROMEO:"], max_new_tokens=5, do_sample=False, cache="graph", cache_options={"round_to": 128})
    assert state.plan.cache.capacity == 128


def test_graph_round_to_beyond_any_sequence_rejected(toy):
    with pytest.raises(ConfigError, match=r"round_to=1000000000 .* expected at most"):
        toy.generate("ROMEO:", max_new_tokens=5, cache="graph", cache_options={"round_to": 10**9})

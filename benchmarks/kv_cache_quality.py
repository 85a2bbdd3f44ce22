"""Measure what the inexact KV caches cost in quality, and what paged and int8 save in memory.

Run from the repository root (about 11 minutes on a shared 2-core CPU, 4 with --toy-only):

    python benchmarks/kv_cache_quality.py [--json results.json]

Parts:

1. int8 against static: greedy token agreement over 256 generated tokens, and the
   logit error when both caches are fed the same tokens (static's greedy output).
   Run on the shipped toy model (trained weights) and on a GPT-2-shaped checkpoint
   (124M parameters, 12 layers, 768 wide) built with transformers'
   ``save_pretrained`` from random weights, because no real GPT-2 weights are
   available offline. A random GPT-2's logits are nearly flat, so its greedy
   agreement says little about a trained GPT-2.
2. Memory: int8 bytes against static in float32 and float16, and paged waste for
   a 200-position sequence at block size 16.
3. sliding: perplexity of text fed token by token through the sliding cache,
   against a reference that recomputes each token from its last
   ``max_positions`` tokens (the model's full context, no cache). The text is the
   toy's own sonnets, which it was trained on, and a passage of a play, which it
   was not. The toy has memorised its 11 kB of sonnets, so text it has not seen
   gets a perplexity above its 59-token vocabulary: only the change against the
   reference means something there.

The GPT-2 part needs the GPT-2 tokenizer files in ../shared/data/gpt2-tokenizer and
the held-out text ../shared/data/corpus/tinyshakespeare.txt; without them, the
toy model and the toy's own sonnets text are used alone.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from genkit.caches.sliding import SlidingWindowKVCache
from genkit.config import GenerationConfig
from genkit.engine import Generator
from genkit.registry import get_registry
from genkit.specs import RequestContext

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TOKENIZER_DIR = SHARED_DATA / "gpt2-tokenizer"
CORPUS = SHARED_DATA / "corpus" / "tinyshakespeare.txt"
SONNETS = Path(__file__).resolve().parents[1] / "genkit" / "data" / "shakespeare_sonnets.txt"

NEW_TOKENS = 256
TEXT_CHARACTERS = 700


def build_cache(generator: Generator, name: str, max_length: int, dtype: torch.dtype | None = None, **options):
    """Build one cache for a single sequence through its registered spec."""
    context = RequestContext(
        config=GenerationConfig(cache=name, cache_options=options),
        tokenizer=generator.tokenizer,
        shape=generator.loaded.shape,
        batch_size=1,
        prompt_length=1,
        max_length=max_length,
        device=generator.device,
        dtype=dtype or generator.loaded.dtype,
        eos_token_ids=(),
        pad_token_id=0,
    )
    return get_registry().caches[name].spec.build(context, **options)


@torch.inference_mode()
def teacher_forced_logits(generator: Generator, ids: list[int], prompt_length: int, cache) -> torch.Tensor:
    """Prefill ``ids[:prompt_length]``, then feed the rest one token at a time; return logits (len(ids), V)."""
    model = generator.model
    tokens = torch.tensor([ids], device=generator.device)
    steps = [model(tokens[:, :prompt_length], torch.arange(prompt_length)[None, :], cache)[0]]
    for t in range(prompt_length, len(ids)):
        steps.append(model(tokens[:, t : t + 1], torch.tensor([[t]]), cache)[0])
    return torch.cat(steps)


def int8_quality(generator: Generator, prompt: list[int], label: str) -> dict:
    settings = dict(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=[], suppress_tokens=None)
    static = generator.generate(prompt, cache="static", **settings)
    int8 = generator.generate(prompt, cache="int8", **settings)
    same = [a == b for a, b in zip(static.token_ids, int8.token_ids)]
    first_difference = same.index(False) if False in same else len(same)

    # Feed static's sequence through both caches: the logits then differ by the cache alone.
    ids = prompt + static.token_ids[:-1]
    reference = teacher_forced_logits(generator, ids, len(prompt), build_cache(generator, "static", len(ids)))
    quantized = teacher_forced_logits(generator, ids, len(prompt), build_cache(generator, "int8", len(ids)))
    decoded = slice(len(prompt) - 1, len(ids))  # logits that predict the generated tokens
    error = (quantized[decoded] - reference[decoded]).abs()
    top1 = (quantized[decoded].argmax(-1) == reference[decoded].argmax(-1)).float().mean()
    return {
        "model": label,
        "prompt_tokens": len(prompt),
        "generated_tokens": len(static.token_ids),
        "greedy_identical_fraction": sum(same) / len(same),
        "greedy_first_difference": first_difference,
        "teacher_forced_top1_agreement": float(top1),
        "logit_max_abs_error": float(error.max()),
        "logit_mean_abs_error": float(error.mean()),
        "logit_std_reference": float(reference[decoded].std()),
        "static_bytes": static.stats.kv_cache_bytes,
        "int8_bytes": int8.stats.kv_cache_bytes,
    }


def memory_numbers(generator: Generator) -> dict:
    shape = generator.loaded.shape
    length = 1024
    result = {"shape": f"{shape.n_layers} layers, {shape.n_heads} heads, head_dim {shape.head_dim}", "positions": length}
    for dtype in (torch.float32, torch.float16):
        static = build_cache(generator, "static", length, dtype=dtype).usage().bytes
        int8 = build_cache(generator, "int8", length, dtype=dtype).usage().bytes
        result[f"static_{str(dtype).removeprefix('torch.')}_bytes"] = static
        result[f"int8_over_static_{str(dtype).removeprefix('torch.')}"] = int8 / static
    result["int8_bytes"] = int8

    # A 200-position sequence in blocks of 16: prompt of 8 tokens, 193 new (the last one is never fed).
    prompt = list(range(8))
    paged = generator.generate(prompt, max_new_tokens=193, do_sample=False, eos_token_id=[], cache="paged",
                               cache_options={"block_size": 16})
    stats = paged.stats
    result["paged_used_slots"] = stats.kv_cache_used_slots
    result["paged_allocated_slots"] = stats.kv_cache_allocated_slots
    result["paged_waste"] = 1 - stats.kv_cache_used_slots / stats.kv_cache_allocated_slots
    result["paged_bytes"] = stats.kv_cache_bytes
    return result


class WrappedPositionsCache(SlidingWindowKVCache):
    """The sliding cache with position ids that wrap around instead of clamping, for comparison."""

    def position_ids(self, position_ids: torch.Tensor, max_positions: int) -> torch.Tensor:
        start = self.sinks
        span = max_positions - start
        wrapped = start + (position_ids - start) % span
        return torch.where(position_ids < max_positions, position_ids, wrapped)


@torch.inference_mode()
def streamed_nll(generator: Generator, ids: list[int], cache) -> torch.Tensor:
    """Feed ``ids`` one token at a time through ``cache``; return the NLL of each next token (len(ids) - 1,)."""
    model = generator.model
    max_positions = generator.loaded.shape.max_positions
    losses = []
    for t in range(len(ids) - 1):
        positions = torch.tensor([[t]])
        if t >= max_positions:
            positions = cache.position_ids(positions, max_positions)
        logits = model(torch.tensor([[ids[t]]]), positions, cache)[0, -1]
        losses.append(F.cross_entropy(logits[None, :], torch.tensor([ids[t + 1]])))
    return torch.stack(losses)


@torch.inference_mode()
def recomputed_nll(generator: Generator, ids: list[int]) -> torch.Tensor:
    """Return the NLL of each next token predicted from its last ``max_positions`` tokens, with no cache reuse."""
    model = generator.model
    context = generator.loaded.shape.max_positions
    losses = []
    for t in range(len(ids) - 1):
        start = max(0, t + 1 - context)
        window = torch.tensor([ids[start : t + 1]])
        cache = build_cache(generator, "concat", window.shape[1])
        logits = model(window, torch.arange(window.shape[1])[None, :], cache, last_only=True)[0, -1]
        losses.append(F.cross_entropy(logits[None, :], torch.tensor([ids[t + 1]])))
    return torch.stack(losses)


def text_ids(generator: Generator, path: Path, start: int) -> list[int]:
    """Return the token ids of ``TEXT_CHARACTERS`` characters of ``path`` from ``start``, unknown characters dropped."""
    vocabulary = set(generator.tokenizer.decode(list(range(generator.tokenizer.vocab_size))))
    text = path.read_text(encoding="utf-8")[start:]
    return generator.tokenizer.encode("".join(character for character in text if character in vocabulary)[:TEXT_CHARACTERS])


def sliding_quality(generator: Generator, path: Path, start: int = 0) -> dict:
    ids = text_ids(generator, path, start)
    max_positions = generator.loaded.shape.max_positions
    shape = generator.loaded.shape
    beyond = slice(max_positions, None)  # predictions made after the context window filled

    reference = recomputed_nll(generator, ids)
    rows = [{"cache": "recomputed last max_positions tokens (reference)", "nll": reference}]
    for window, sinks in ((max_positions - 4, 4), (max_positions, 0), (60, 4), (64, 0)):
        cache = build_cache(generator, "sliding", len(ids), window=window, sinks=sinks)
        rows.append({"cache": f"sliding window={window} sinks={sinks}, clamped positions",
                     "nll": streamed_nll(generator, ids, cache)})
    wrapped = WrappedPositionsCache(shape.n_layers, 1, shape.n_heads, shape.head_dim, window=max_positions - 4, sinks=4,
                                    max_length=len(ids), dtype=generator.loaded.dtype, device=generator.device)
    rows.append({"cache": f"sliding window={max_positions - 4} sinks=4, wrapped positions",
                 "nll": streamed_nll(generator, ids, wrapped)})

    table = []
    for row in rows:
        nll = row["nll"]
        table.append({
            "cache": row["cache"],
            "perplexity_all": math.exp(float(nll.mean())),
            "perplexity_first_window": math.exp(float(nll[: max_positions - 1].mean())),
            "perplexity_beyond_window": math.exp(float(nll[beyond].mean())),
        })
    return {"text": f"{path.name} from character {start}", "tokens": len(ids), "max_positions": max_positions,
            "rows": table}


def gpt2_generator(folder: Path) -> Generator | None:
    """Save a randomly initialised GPT-2 small with transformers and load it, or return None without tokenizer files."""
    if not (TOKENIZER_DIR / "vocab.json").is_file():
        return None
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())  # transformers' defaults: the GPT-2 small shape
    model.save_pretrained(str(folder))
    shutil.copy(TOKENIZER_DIR / "vocab.json", folder / "vocab.json")
    shutil.copy(TOKENIZER_DIR / "merges.txt", folder / "merges.txt")
    return Generator.from_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--toy-only", action="store_true", help="skip the GPT-2-shaped checkpoint (the slow part)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    results: dict = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"}

    toy = Generator.from_pretrained()
    # A short prompt leaves room for NEW_TOKENS within the toy's 128 positions, or nearly.
    results["int8"] = [int8_quality(toy, toy.tokenizer.encode("ROMEO:\n"), "toy-shakespeare (trained)")]
    results["sliding"] = [sliding_quality(toy, SONNETS)]
    if CORPUS.is_file():
        results["sliding"].append(sliding_quality(toy, CORPUS, start=200_000))

    with tempfile.TemporaryDirectory() as scratch:
        gpt2 = None if args.toy_only else gpt2_generator(Path(scratch) / "gpt2-random")
        if gpt2 is not None:
            prompt = gpt2.tokenizer.encode("The quick brown fox jumps over the lazy dog. It was a bright cold day")
            results["int8"].append(int8_quality(gpt2, prompt, "GPT-2 small shape, random weights"))
            results["memory"] = memory_numbers(gpt2)
    results["seconds"] = time.perf_counter() - started

    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

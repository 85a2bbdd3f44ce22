"""Time batched generation against generating the same prompts one by one.

Usage: python benchmarks/bench_batching.py [--prompts 16] [--min-prompt-tokens 8]
       [--max-prompt-tokens 128] [--new-tokens 64] [--cache concat] [--repeats 1]
       [--layers 12 --embd 768 --heads 12] [--dtype bfloat16] [--threads N]

Builds a randomly initialised GPT-2 (GPT-2 small's shape by default) with
transformers, saves it with save_pretrained and loads it into genkit with a
word-level tokenizer. The prompts are random token ids with lengths spread evenly
between the two bounds, in shuffled order. Every sequence generates exactly
``--new-tokens`` tokens (EOS is masked until then), greedily, so both runs do the
same work. Random weights change no timing.

Prints the load average first: the numbers mean little on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time

import torch
from tokenizers import Tokenizer, models
from transformers import GPT2Config, GPT2LMHeadModel

from genkit import Generator


def build_generator(layers: int, embd: int, heads: int, vocab: int, dtype: torch.dtype | None = None) -> Generator:
    """Save a random GPT-2 of this shape with save_pretrained and load it into genkit."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_embd=embd, n_head=heads, vocab_size=vocab, n_positions=1024,
                        bos_token_id=vocab - 1, eos_token_id=vocab - 1)
    folder = tempfile.mkdtemp(prefix="genkit-bench-batching-")
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    words = {f"t{i}": i for i in range(vocab)}
    Tokenizer(models.WordLevel(words, unk_token="t0")).save(f"{folder}/tokenizer.json")
    return Generator.from_pretrained(folder, dtype=dtype)


def make_prompts(count: int, shortest: int, longest: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Return ``count`` prompts of random ids, lengths spread evenly over [shortest, longest], shuffled."""
    rng = random.Random(seed)
    if count == 1:
        lengths = [longest]
    else:
        lengths = [round(shortest + (longest - shortest) * i / (count - 1)) for i in range(count)]
    rng.shuffle(lengths)
    return [[rng.randrange(vocab - 1) for _ in range(length)] for length in lengths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16, help="number of prompts")
    parser.add_argument("--min-prompt-tokens", type=int, default=8)
    parser.add_argument("--max-prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--cache", default="concat", help="KV cache backend name")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each mode; the median is printed")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--embd", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="compute dtype (default: the checkpoint's, float32)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load = os.getloadavg()
    print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    generator = build_generator(args.layers, args.embd, args.heads, args.vocab, dtype)
    prompts = make_prompts(args.prompts, args.min_prompt_tokens, args.max_prompt_tokens, args.vocab)
    options = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, cache=args.cache)

    # One untimed run of each mode, so first-call set-up (allocator, kernel selection) is not measured.
    generator.generate(prompts[0], max_new_tokens=2, cache=args.cache)
    generator.generate_batch(prompts[:2], max_new_tokens=2, cache=args.cache)

    one_by_one_s, batched_s, batch_results = [], [], None
    single_results = None
    for _ in range(args.repeats):
        start = time.perf_counter()
        single_results = [generator.generate(prompt, **options) for prompt in prompts]
        one_by_one_s.append(time.perf_counter() - start)

        start = time.perf_counter()
        batch_results = generator.generate_batch(prompts, **options)
        batched_s.append(time.perf_counter() - start)

    tokens = sum(len(r.token_ids) for r in batch_results)
    same = sum(a.token_ids == b.token_ids for a, b in zip(single_results, batch_results))
    single_time = statistics.median(one_by_one_s)
    batch_time = statistics.median(batched_s)
    stats = batch_results[0].stats
    lengths = [len(p) for p in prompts]
    padding = len(prompts) * max(lengths) - sum(lengths)

    print(f"GPT-2 {args.layers} layers x {args.embd}, {args.prompts} prompts of {min(lengths)} to {max(lengths)} "
          f"tokens, {args.new_tokens} new tokens each, greedy, {args.cache} cache, {generator.loaded.dtype}, "
          f"median of {args.repeats}")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}\n")
    print("| mode | total (s) | generated tokens/s |")
    print("|---|---|---|")
    print(f"| one by one | {single_time:.2f} | {tokens / single_time:.1f} |")
    print(f"| batched | {batch_time:.2f} | {tokens / batch_time:.1f} |")
    print(f"\nspeed-up: {single_time / batch_time:.2f}x")
    single_prefill = sum(r.stats.prefill_s for r in single_results)
    single_decode = sum(r.stats.decode_s for r in single_results)
    print(f"one by one (last run): prefill {single_prefill:.2f} s in all, decode {single_decode:.2f} s in all "
          f"({single_decode / (tokens - len(prompts)) * 1000:.1f} ms per decode step)")
    print(f"batched (last run): prefill {stats.prefill_s:.2f} s ({padding} of {len(prompts) * max(lengths)} prompt "
          f"positions are padding), decode {stats.decode_s:.2f} s over {len(stats.inter_token_latencies_s)} steps "
          f"({stats.decode_s / max(len(stats.inter_token_latencies_s), 1) * 1000:.1f} ms per step)")
    print(f"sequences with the same tokens batched and alone: {same} of {len(prompts)}")
    load = os.getloadavg()
    print(f"load average after the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()

"""Time genkit against transformers on the same GPT-2 checkpoint, in one process.

Usage: python benchmarks/bench_vs_transformers.py [--layers 12 --embd 768 --heads 12]
       [--prompt-tokens 128] [--new-tokens 128] [--repeats 3] [--threads N]

Builds a randomly initialised GPT-2 (GPT-2 small's shape by default) with
transformers, saves it with save_pretrained, loads it into genkit, and times greedy
generation of the same prompt ids with both. Random weights change no timing, and
greedy output must agree token for token (the script checks it). Prints a Markdown
table of medians.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch
from tokenizers import Tokenizer, models
from transformers import GPT2Config, GPT2LMHeadModel

from genkit import Generator


def time_transformers(model, ids: torch.Tensor, new_tokens: int) -> tuple[float, float, list[int]]:
    """Return (time to first token, total seconds, generated ids) for transformers greedy generate."""
    with torch.inference_mode():
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        total = time.perf_counter() - start
    return ttft, total, out[0, ids.shape[1] :].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--embd", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_embd=args.embd, n_head=args.heads, vocab_size=args.vocab,
                        n_positions=1024, bos_token_id=args.vocab - 1, eos_token_id=args.vocab - 1)
    hf_model = GPT2LMHeadModel(config).eval()
    folder = tempfile.mkdtemp(prefix="genkit-bench-")
    hf_model.save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(args.vocab)}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(f"{folder}/tokenizer.json")
    generator = Generator.from_pretrained(folder)

    ids = torch.randint(0, args.vocab - 1, (1, args.prompt_tokens))
    rows: dict[str, dict[str, list[float]]] = {}

    def record(name: str, ttft: float, tokens_per_s: float, total: float) -> None:
        entry = rows.setdefault(name, {"ttft": [], "tps": [], "total": []})
        entry["ttft"].append(ttft)
        entry["tps"].append(tokens_per_s)
        entry["total"].append(total)

    # One untimed run of each, so first-call set-up (allocator, kernel selection) is not measured.
    time_transformers(hf_model, ids, 4)
    generator.generate(ids[0].tolist(), max_new_tokens=4)

    for _ in range(args.repeats):
        ttft, total, tokens = time_transformers(hf_model, ids, args.new_tokens)
        # transformers reports no phases: its decode rate is estimated from a separate 1-token run.
        record("transformers generate()", ttft, (args.new_tokens - 1) / max(total - ttft, 1e-9), total)
        for cache in ("concat", "static"):
            result = generator.generate(ids[0].tolist(), max_new_tokens=args.new_tokens, do_sample=False,
                                        min_new_tokens=args.new_tokens, cache=cache)
            if result.token_ids != tokens:
                raise SystemExit(f"genkit ({cache}) output differs from transformers")
            stats = result.stats
            record(f"genkit, {cache} cache", stats.ttft_s, stats.decode_tokens_per_s, stats.total_s)

    base = statistics.median(rows["transformers generate()"]["total"])
    print(f"GPT-2 {args.layers} layers x {args.embd}, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, greedy, median of {args.repeats}")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}\n")
    print("| implementation | TTFT (ms) | decode tokens/s | total (s) | speed vs transformers (total time ratio) |")
    print("|---|---|---|---|---|")
    for name, entry in rows.items():
        total = statistics.median(entry["total"])
        print(f"| {name} | {statistics.median(entry['ttft']) * 1000:.1f} | {statistics.median(entry['tps']):.1f} | "
              f"{total:.2f} | {base / total:.2f}x |")


if __name__ == "__main__":
    main()

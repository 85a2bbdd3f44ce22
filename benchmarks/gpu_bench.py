"""Time genkit against transformers on a CUDA GPU, eager and compiled, with GPT-2 small's shape.

Usage: python benchmarks/gpu_bench.py [--layers 12 --embd 768 --heads 12] [--prompt-tokens 256]
       [--new-tokens 128] [--repeats 3] [--dtype bfloat16] [--out gpu-bench]

Builds a randomly initialised GPT-2, saves it with save_pretrained and runs greedy
generation of the same prompt ids with:

- genkit, eager, with the concat and the static KV cache;
- genkit with a compiled decode step, when ``Generator.from_pretrained`` accepts
  ``compile=True`` (skipped with a note otherwise);
- transformers ``generate()``, eager with its dynamic cache;
- transformers ``generate()`` with its static cache and ``torch.compile`` in
  ``mode="reduce-overhead"``, which replays the decode step as a CUDA graph.

It reports TTFT, decode tokens/s, inter-token latency p50/p99, the share of the
measured GPU memory bandwidth that decode reaches, and whether greedy tokens match
the eager transformers run. With the defaults it should finish well under five
minutes on a recent GPU, most of it torch.compile's warm-up.
NOTE: no run of this script is recorded yet: the machine it was written on has no GPU.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def require_cuda() -> torch.device:
    """Return the CUDA device, or exit with a message saying why this script cannot run here."""
    if not torch.cuda.is_available():
        built_for = torch.version.cuda or "no CUDA (a CPU-only build)"
        raise SystemExit(
            f"gpu_bench.py needs a CUDA GPU, but torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"built for {built_for}). Run it on a machine with an NVIDIA GPU and a CUDA build of torch, "
            "or use `genkit bench --compare transformers` on the CPU."
        )
    return torch.device("cuda")


def build_checkpoint(folder: Path, layers: int, embd: int, heads: int, seed: int) -> None:
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab_size = 50257
    config = GPT2Config(n_layer=layers, n_embd=embd, n_head=heads, vocab_size=vocab_size, n_positions=1024,
                        bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    vocab = {f"t{i}": i for i in range(vocab_size)}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(folder / "tokenizer.json"))


def load_compiled_transformers(folder: Path, dtype: torch.dtype, device: torch.device):
    """Load GPT2LMHeadModel with a static cache and a forward compiled into CUDA graphs."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(str(folder), dtype=dtype).to(device).eval()
    model.generation_config.cache_implementation = "static"
    model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    return model


def time_implementation(name: str, run, repeats: int, warmup: int, prompt: int, new: int) -> tuple[dict, list]:
    from genkit.benchmark import summarize

    for _ in range(warmup):
        run()
    samples = [run() for _ in range(repeats)]
    row = summarize(name, prompt, new, 1, samples)
    return row, samples[0].token_ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--embd", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per implementation (compiled paths "
                        "compile during these)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="gpu-bench", help="folder for gpu_bench.json")
    args = parser.parse_args()
    if args.prompt_tokens + args.new_tokens > 1025:
        parser.error("--prompt-tokens + --new-tokens must be at most 1025 (GPT-2 has 1024 positions)")

    device = require_cuda()
    dtype = getattr(torch, args.dtype)

    from transformers import GPT2LMHeadModel

    from genkit import Generator
    from genkit.benchmark import run_genkit, run_transformers, token_agreement
    from genkit.hardware import decode_bytes_per_step, measure_memory_bandwidth

    started = time.perf_counter()
    bandwidth = measure_memory_bandwidth(1 << 30, repeats=10, device=device)
    rows, tokens, notes = [], {}, []
    with tempfile.TemporaryDirectory(prefix="genkit-gpu-bench-") as scratch:
        folder = Path(scratch)
        build_checkpoint(folder, args.layers, args.embd, args.heads, args.seed)
        rng = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(0, 50256, (1, args.prompt_tokens), generator=rng).tolist()
        new, prompt = args.new_tokens, args.prompt_tokens

        generator = Generator.from_pretrained(folder, device=device, dtype=dtype)
        for cache in ("concat", "static"):
            row, tokens[f"genkit {cache}"] = time_implementation(
                f"genkit, {cache} cache", lambda: run_genkit(generator, ids, new, cache), args.repeats, args.warmup,
                prompt, new)
            rows.append(row)

        if "compile" in inspect.signature(Generator.from_pretrained).parameters:
            compiled = Generator.from_pretrained(folder, device=device, dtype=dtype, compile=True)
            row, tokens["genkit compiled"] = time_implementation(
                "genkit, compiled decode", lambda: run_genkit(compiled, ids, new, "static"), args.repeats,
                args.warmup, prompt, new)
            rows.append(row)
        else:
            notes.append("genkit has no compiled decode path yet (Generator.from_pretrained takes no compile=)")

        eager = GPT2LMHeadModel.from_pretrained(str(folder), dtype=dtype).to(device).eval()
        row, tokens["transformers eager"] = time_implementation(
            "transformers generate(), eager", lambda: run_transformers(eager, ids, new, device), args.repeats,
            args.warmup, prompt, new)
        rows.append(row)

        graphed = load_compiled_transformers(folder, dtype, device)
        row, tokens["transformers compiled"] = time_implementation(
            "transformers generate(), static cache + torch.compile", lambda: run_transformers(graphed, ids, new, device),
            args.repeats, args.warmup, prompt, new)
        rows.append(row)

        traffic = decode_bytes_per_step(generator.model, generator.loaded.shape, dtype, 1, prompt, new)

    reference = tokens["transformers eager"]
    for row, name in zip(rows, tokens):
        row["bandwidth_fraction"] = traffic["total_bytes"] * row["decode_tokens_per_s"] / bandwidth.bytes_per_s
        row["agreement_with_transformers_eager"] = token_agreement(reference, tokens[name])

    print(f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, {args.dtype}, "
          f"GPT-2 {args.layers}x{args.embd}, prompt {prompt}, {new} new tokens, median of {args.repeats}")
    print(f"memory bandwidth (torch.sum over 1 GiB, best of 10): {bandwidth.bytes_per_s / 1e9:.0f} GB/s; "
          f"a decode step reads about {traffic['total_bytes'] / 1e6:.0f} MB\n")
    print("| implementation | TTFT ms | decode tokens/s | ITL p50 ms | ITL p99 ms | total s | bandwidth used "
          "| tokens identical to transformers eager |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        agreement = row["agreement_with_transformers_eager"]["fraction_identical"]
        print(f"| {row['implementation']} | {row['ttft_s'] * 1000:.1f} | {row['decode_tokens_per_s']:.0f} "
              f"| {row['itl_p50_s'] * 1000:.2f} | {row['itl_p99_s'] * 1000:.2f} | {row['total_s']:.3f} "
              f"| {row['bandwidth_fraction']:.0%} | {agreement:.0%} |")
    for note in notes:
        print(f"note: {note}")
    print(f"\nfinished in {time.perf_counter() - started:.0f} s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"settings": vars(args), "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "bandwidth": bandwidth.to_dict(), "bytes_per_decode_step": traffic, "runs": rows, "notes": notes}
    (out / "gpu_bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

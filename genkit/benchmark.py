"""`genkit bench`: sweep prompt and generation lengths, optionally against transformers.

Each cell of the sweep (one prompt length, one generation length) runs ``--warmup``
untimed requests and then ``--repeats`` timed ones per implementation, greedy, with
``min_new_tokens = max_new_tokens`` so that every run generates the same number of
tokens. Prompts are random token ids drawn with ``--seed``. genkit's timings are the
request's own :class:`~genkit.engine.GenerationStats`; transformers' come from a
streamer that records the time at which each token is handed to it.

The report (``bench.json``) contains one entry per implementation and cell with the
medians over the repeats, the ratios genkit/transformers, the bytes a decode step
reads and the fraction of the measured memory bandwidth this achieves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from genkit.errors import ConfigError

DEFAULT_PROMPT_LENGTHS = (16, 32, 64, 128, 256)
DEFAULT_GEN_LENGTHS = (25, 50, 100, 200)
GPT2_VOCAB_SIZE = 50257
GPT2_POSITIONS = 1024
SCHEMA = "genkit-bench/1"


def parse_lengths(text: str) -> list[int]:
    """Parse a comma-separated list of token counts, e.g. ``16,32,64``."""
    values = []
    for item in text.split(","):
        item = item.strip()
        try:
            value = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid length {item!r} in {text!r}: expected comma-separated integers >= 1, e.g. 16,32,64"
            ) from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"invalid length {value} in {text!r}: every length must be >= 1")
        values.append(value)
    return sorted(set(values))


def parse_shape(text: str) -> tuple[int, int, int]:
    """Parse ``LAYERS,EMBD,HEADS``, e.g. ``4,128,4``."""
    parts = text.split(",")
    try:
        layers, embd, heads = (int(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid shape {text!r}: expected three integers LAYERS,EMBD,HEADS, e.g. 4,128,4"
        ) from None
    if min(layers, embd, heads) < 1 or embd % heads:
        raise argparse.ArgumentTypeError(
            f"invalid shape {text!r}: every size must be >= 1 and EMBD a multiple of HEADS"
        )
    return layers, embd, heads


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {value}: expected an integer >= 1")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {value}: expected an integer >= 0")
    return value


def parse_cache_options(text: str) -> dict[str, Any]:
    """Parse ``--cache-options``: a JSON object of keyword arguments for the KV cache's build function."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"invalid JSON {text!r} ({exc}); expected a JSON object, e.g. '{{\"block_size\": 16}}'"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected a JSON object, e.g. '{{\"block_size\": 16}}'"
        )
    return value


def add_model_arguments(parser: argparse.ArgumentParser, compile_help: str | None = None) -> None:
    """Add the model choice, dtype, device, thread and cache flags that `bench` and `profile` share."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help="checkpoint folder, shipped name or cached hub id "
                        "(default: the shipped toy-shakespeare model)")
    source.add_argument("--toy-shape", type=parse_shape, default=None, metavar="LAYERS,EMBD,HEADS",
                        help="a toy GPT of this shape with random weights and the shipped character tokenizer")
    source.add_argument("--gpt2-shape", type=parse_shape, default=None, metavar="LAYERS,EMBD,HEADS",
                        help="a GPT-2 of this shape with random weights, GPT-2's vocabulary size and 1024 positions "
                        "(12,768,12 is GPT-2 small)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="compute dtype (default: float32)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--cache", default=None,
                        help="KV cache backend name (default: static, or graph with --compile)")
    parser.add_argument("--cache-options", type=parse_cache_options, default=None, metavar="JSON",
                        help="options for the KV cache's build function, as a JSON object, "
                        "e.g. '{\"block_size\": 16}' for --cache paged (default: none)")
    parser.add_argument("--compile", action="store_true",
                        help=compile_help or "run decode steps through torch.compile with the graph KV cache; "
                        "with --warmup 0 the first run of each new shape includes the compilation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and prompts (default: 0)")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--prompt-lengths", type=parse_lengths, default=None, metavar="N,N,...",
                        help="prompt lengths in tokens (default: 16,32,64,128,256; cells that do not fit the "
                        "model's positions are skipped)")
    parser.add_argument("--gen-lengths", type=parse_lengths, default=None, metavar="N,N,...",
                        help="generated tokens per request (default: 25,50,100,200)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="prompts per request (default: 1)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs per cell (default: 3)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed runs per cell (default: 1)")
    parser.add_argument("--compare", choices=["transformers"], default=None,
                        help="also run transformers generate() on the same weights and print the ratios")
    parser.add_argument("--out", default="genkit-bench", help="folder for bench.json and the plots "
                        "(default: ./genkit-bench)")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument("--bandwidth-mib", type=non_negative_int, default=1024,
                        help="size of the tensor read to measure memory bandwidth, in MiB; 0 skips it "
                        "(default: 1024)")


# ---------------------------------------------------------------- model set-up


@dataclass
class BenchModel:
    """The genkit generator under test and what transformers needs to run the same model."""

    generator: Any  # genkit.engine.Generator
    folder: Path
    description: str
    hf_folder: Path | None  # a GPT-2 checkpoint transformers can load with the same weights
    notes: list[str] = field(default_factory=list)


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _save_random_toy(shape: tuple[int, int, int], positions: int, seed: int, folder: Path) -> None:
    from genkit.models.tokenizer import CharTokenizer
    from genkit.models.toy import ToyConfig, ToyGPT, save_toy

    tokenizer = CharTokenizer.from_file(Path(__file__).parent / "checkpoints" / "toy-shakespeare" / "char_tokenizer.json")
    layers, embd, heads = shape
    config = ToyConfig(vocab_size=tokenizer.vocab_size, n_positions=positions, n_layer=layers, n_head=heads,
                       n_embd=embd)
    torch.manual_seed(seed)
    save_toy(ToyGPT(config), tokenizer, folder)


def _save_random_gpt2(shape: tuple[int, int, int], seed: int, folder: Path) -> None:
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel

    layers, embd, heads = shape
    eos = GPT2_VOCAB_SIZE - 1
    config = GPT2Config(n_layer=layers, n_embd=embd, n_head=heads, vocab_size=GPT2_VOCAB_SIZE,
                        n_positions=GPT2_POSITIONS, bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    # Prompts are token ids, so a word-level vocabulary of the right size is enough.
    vocab = {f"t{i}": i for i in range(GPT2_VOCAB_SIZE)}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(folder / "tokenizer.json"))


def load_bench_model(args: argparse.Namespace, scratch: Path, min_positions: int) -> BenchModel:
    """Load ``--model``, or build and save a random model for ``--toy-shape`` / ``--gpt2-shape``."""
    from genkit.engine import Generator

    if args.cache is None:
        args.cache = "graph" if args.compile else "static"

    dtype = _torch_dtype(args.dtype)
    if args.toy_shape is not None:
        folder = scratch / "toy"
        positions = max(128, min_positions)
        _save_random_toy(args.toy_shape, positions, args.seed, folder)
        layers, embd, heads = args.toy_shape
        description = f"toy GPT {layers} layers x {embd} wide, {heads} heads, random weights (seed {args.seed})"
        generator = Generator.from_pretrained(folder, device=args.device, dtype=dtype, compile=args.compile)
        return BenchModel(generator, folder, description, None)
    if args.gpt2_shape is not None:
        folder = scratch / "gpt2"
        _save_random_gpt2(args.gpt2_shape, args.seed, folder)
        layers, embd, heads = args.gpt2_shape
        description = f"GPT-2 {layers} layers x {embd} wide, {heads} heads, random weights (seed {args.seed})"
        generator = Generator.from_pretrained(folder, device=args.device, dtype=dtype, compile=args.compile)
        return BenchModel(generator, folder, description, folder)

    generator = Generator.from_pretrained(args.model, device=args.device, dtype=dtype, compile=args.compile)
    loaded = generator.loaded
    hf_folder = loaded.path if loaded.model_type == "gpt2" else None
    return BenchModel(generator, loaded.path, f"{loaded.name} ({loaded.model_type})", hf_folder)


def load_transformers_model(bench: BenchModel, dtype: torch.dtype, device: torch.device) -> tuple[Any, bool, str]:
    """Return (GPT2LMHeadModel, shares genkit's weights, description) for ``--compare transformers``.

    A GPT-2 checkpoint is loaded from its folder. A toy model has no transformers
    class, so a GPT2LMHeadModel of the same shape gets random weights: its timings
    compare, its tokens do not.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if bench.hf_folder is not None:
        model = GPT2LMHeadModel.from_pretrained(str(bench.hf_folder), dtype=dtype)
        return model.to(device).eval(), True, "GPT2LMHeadModel.from_pretrained on the same folder"

    if bench.generator.loaded.model_type != "genkit-toy":
        raise ConfigError(
            f"--compare transformers supports GPT-2 and toy checkpoints, not model type "
            f"{bench.generator.loaded.model_type!r}; drop --compare"
        )
    toy = bench.generator.model.config
    config = GPT2Config(n_layer=toy.n_layer, n_embd=toy.n_embd, n_head=toy.n_head, vocab_size=toy.vocab_size,
                        n_positions=toy.n_positions, tie_word_embeddings=False,
                        bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(config).to(device=device, dtype=dtype).eval()
    description = ("GPT2LMHeadModel of the toy's shape with RANDOM weights (transformers has no toy class): "
                   "timings compare, tokens are not checked")
    return model, False, description


# ---------------------------------------------------------------- cells


def plan_cells(
    prompt_lengths: list[int], gen_lengths: list[int], max_positions: int, explicit: bool
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Return (cells to run, cells skipped) of the sweep for a model with ``max_positions``.

    A request fits when prompt + generated tokens <= max_positions + 1, because the
    last token is never fed to the model. With lengths the user gave (``explicit``)
    a cell that does not fit is an error; with the defaults it is skipped.
    """
    cells, skipped = [], []
    for prompt in prompt_lengths:
        for gen in gen_lengths:
            (cells if prompt + gen <= max_positions + 1 else skipped).append((prompt, gen))
    if skipped and explicit:
        prompt, gen = skipped[0]
        raise ConfigError(
            f"prompt length {prompt} + generation length {gen} exceeds the model's {max_positions} positions "
            f"({len(skipped)} cell(s) do not fit); use lengths whose sum is at most {max_positions + 1}"
        )
    if not cells:
        raise ConfigError(
            f"no cell of the sweep fits the model's {max_positions} positions; pass --prompt-lengths and "
            f"--gen-lengths whose sum is at most {max_positions + 1}"
        )
    return cells, skipped


def percentile(values: list[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100) with linear interpolation, as numpy's default."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Sample:
    """The timings of one request."""

    ttft_s: float
    prefill_s: float
    decode_s: float
    total_s: float
    inter_token_latencies_s: list[float]
    kv_cache_bytes: int | None
    token_ids: list[list[int]]


def run_genkit(generator, prompts: list[list[int]], gen_length: int, cache: str,
               cache_options: dict[str, Any] | None = None) -> Sample:
    results = generator.generate_batch(prompts, max_new_tokens=gen_length, min_new_tokens=gen_length,
                                       do_sample=False, cache=cache, cache_options=cache_options or {})
    stats = results[0].stats
    return Sample(stats.ttft_s, stats.prefill_s, stats.decode_s, stats.total_s, list(stats.inter_token_latencies_s),
                  stats.kv_cache_bytes, [r.token_ids for r in results])


class _TokenClock:
    """A transformers streamer that records when the prompt and each new token arrive."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def run_transformers(model, prompts: list[list[int]], gen_length: int, device: torch.device) -> Sample:
    """Time transformers ``generate()``: greedy, exactly ``gen_length`` new tokens.

    generate() hands the prompt, then each new token (moved to the CPU, which
    waits for the device) to the streamer, so the streamer's clock gives the time
    to first token and the inter-token latencies of one run.
    """
    ids = torch.tensor(prompts, dtype=torch.long, device=device)
    clock = _TokenClock()
    with torch.inference_mode():
        start = time.perf_counter()
        output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=gen_length,
                                min_new_tokens=gen_length, do_sample=False, pad_token_id=0, streamer=clock)
        end = time.perf_counter()
    token_times = clock.times[1:]  # times[0] is the prompt
    ttft = token_times[0] - start
    itl = [later - earlier for earlier, later in zip(token_times, token_times[1:])]
    total = end - start
    tokens = output[:, ids.shape[1]:].tolist()
    return Sample(ttft, ttft, total - ttft, total, itl, None, tokens)


def summarize(implementation: str, prompt: int, gen: int, batch: int, samples: list[Sample]) -> dict[str, Any]:
    """Return the medians over ``samples`` and the inter-token latency percentiles over all of them."""
    median = statistics.median
    ttft = median(s.ttft_s for s in samples)
    prefill = median(s.prefill_s for s in samples)
    decode = median(s.decode_s for s in samples)
    total = median(s.total_s for s in samples)
    itl = [value for s in samples for value in s.inter_token_latencies_s]
    decode_tokens = batch * (gen - 1)
    kv = [s.kv_cache_bytes for s in samples if s.kv_cache_bytes is not None]
    return {
        "implementation": implementation,
        "prompt_length": prompt,
        "gen_length": gen,
        "batch_size": batch,
        "ttft_s": ttft,
        "prefill_s": prefill,
        "prefill_tokens_per_s": batch * prompt / prefill,
        "decode_s": decode,
        "decode_tokens_per_s": decode_tokens / decode if decode > 0 else 0.0,
        "itl_p50_s": percentile(itl, 50),
        "itl_p99_s": percentile(itl, 99),
        "total_s": total,
        # Time outside TTFT and the decode steps: gaps between steps (the OS may
        # schedule other work there) and collecting the results.
        "other_s": max(total - ttft - decode, 0.0),
        "decode_fraction": decode / total,
        "kv_cache_bytes": max(kv) if kv else None,
        "total_s_samples": [s.total_s for s in samples],
    }


def token_agreement(reference: list[list[int]], other: list[list[int]]) -> dict[str, Any]:
    """Return the fraction of positions where two greedy outputs agree and the first position where they differ."""
    same = total = 0
    first_difference = None
    for row_ref, row_other in zip(reference, other):
        for index, (a, b) in enumerate(zip(row_ref, row_other)):
            total += 1
            same += a == b
            if a != b and (first_difference is None or index < first_difference):
                first_difference = index
    return {"fraction_identical": same / total if total else 1.0, "first_difference": first_difference}


# ---------------------------------------------------------------- the run


def machine_info(device: torch.device) -> dict[str, Any]:
    import transformers

    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = os.getloadavg()[0]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


@contextlib.contextmanager
def output_folder(out: str, contents: str) -> Iterator[Path]:
    """Create the ``--out`` folder before any measurement and check that a file can be written there.

    A path that cannot be a folder or is not writable raises ConfigError before the
    run starts, instead of losing its results at the end. When the run raises, the
    folders created here are removed again if they are still empty.
    """
    if not out.strip():
        raise ConfigError(f"invalid --out {out!r}: pass a folder path for {contents}, e.g. --out results")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {out!r} is a file; pass a folder path for {contents}")
    created = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        _remove_empty(created)
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot create or write to the --out folder {out!r}: {reason}; "
            f"pass a writable folder path for {contents}"
        ) from exc
    try:
        yield folder
    except BaseException:
        _remove_empty(created)
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first, as output_folder lists them) while they are empty."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            return


def time_cell(generator, hf_model, ids: list[list[int]], gen: int, args: argparse.Namespace,
              progress) -> tuple[list[Sample], list[Sample]]:
    """Run the warm-up and timed requests of one cell; return (genkit samples, transformers samples).

    The implementations alternate run by run, so that a change in machine load
    during the cell affects both alike.
    """
    ours, theirs = [], []
    for index in range(args.warmup + args.repeats):
        timed = index >= args.warmup
        sample = run_genkit(generator, ids, gen, args.cache, args.cache_options)
        progress.update()
        if timed:
            ours.append(sample)
        if hf_model is not None:
            sample = run_transformers(hf_model, ids, gen, generator.device)
            progress.update()
            if timed:
                theirs.append(sample)
    return ours, theirs


def run_bench(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_plots:
        from genkit.plots import require_matplotlib

        require_matplotlib()  # report a missing matplotlib before the sweep, not after it
    with output_folder(args.out, "bench.json and the plots") as out_dir:
        return _run_bench(args, out_dir)


def compile_warmup_note(args: argparse.Namespace) -> str | None:
    """Return the warning for ``--compile`` without warm-up runs, or None when it does not apply."""
    if not args.compile or args.warmup > 0:
        return None
    return ("--compile with --warmup 0: the first run of each new shape includes the torch.compile "
            "compilation, so its timings are not steady-state; pass --warmup 1 or more")


def _run_bench(args: argparse.Namespace, out_dir: Path) -> int:
    from tqdm import tqdm

    from genkit.hardware import decode_bytes_per_step, measure_memory_bandwidth

    compile_note = compile_warmup_note(args)
    if compile_note:
        print(f"genkit: warning: {compile_note}", file=sys.stderr)
    explicit = args.prompt_lengths is not None or args.gen_lengths is not None
    prompt_lengths = args.prompt_lengths or list(DEFAULT_PROMPT_LENGTHS)
    gen_lengths = args.gen_lengths or list(DEFAULT_GEN_LENGTHS)
    dtype = _torch_dtype(args.dtype)

    with tempfile.TemporaryDirectory(prefix="genkit-bench-") as scratch:
        bench = load_bench_model(args, Path(scratch), max(prompt_lengths) + max(gen_lengths) - 1)
        generator = bench.generator
        generator.registry.lookup("caches", args.cache)  # an unknown name fails before any timing
        shape = generator.loaded.shape
        cells, skipped = plan_cells(prompt_lengths, gen_lengths, shape.max_positions, explicit)
        device = generator.device

        report: dict[str, Any] = {
            "schema": SCHEMA,
            "model": {
                "description": bench.description,
                "model_type": generator.loaded.model_type,
                "n_layers": shape.n_layers,
                "n_heads": shape.n_heads,
                "head_dim": shape.head_dim,
                "vocab_size": shape.vocab_size,
                "max_positions": shape.max_positions,
                "parameters": sum(p.numel() for p in generator.model.parameters()),
                "dtype": args.dtype,
            },
            "settings": {
                "prompt_lengths": prompt_lengths,
                "gen_lengths": gen_lengths,
                "batch_size": args.batch_size,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "cache": args.cache,
                "cache_options": args.cache_options or {},
                "compile": args.compile,
                "seed": args.seed,
                "compare": args.compare,
                "decoding": "greedy, min_new_tokens = max_new_tokens",
                "skipped_cells": [list(cell) for cell in skipped],
            },
            "machine": machine_info(device),
            "notes": list(bench.notes) + ([compile_note] if compile_note else []),
        }
        if skipped:
            print(f"skipped {len(skipped)} of {len(skipped) + len(cells)} cells: prompt + generated tokens "
                  f"exceed the model's {shape.max_positions} positions", file=sys.stderr)

        hf_model = None
        shares_weights = False
        if args.compare == "transformers":
            hf_model, shares_weights, hf_description = load_transformers_model(bench, dtype, device)
            report["notes"].append(f"transformers: {hf_description}")
            print(f"transformers model: {hf_description}", file=sys.stderr)
        reference = None
        if dtype != torch.float32:
            from genkit.engine import Generator

            reference = Generator.from_pretrained(bench.folder, device=device, dtype=torch.float32)

        rng = torch.Generator().manual_seed(args.seed)
        prompts = {length: torch.randint(0, shape.vocab_size, (args.batch_size, length), generator=rng).tolist()
                   for length in prompt_lengths}

        implementations = 1 + (hf_model is not None)
        runs, comparison, agreement = [], [], []
        progress = tqdm(total=len(cells) * (args.warmup + args.repeats) * implementations, desc="genkit bench",
                        unit="run", file=sys.stderr, mininterval=0.5)
        with progress:
            for prompt, gen in cells:
                ids = prompts[prompt]
                ours, theirs = time_cell(generator, hf_model, ids, gen, args, progress)

                row = summarize("genkit", prompt, gen, args.batch_size, ours)
                traffic = decode_bytes_per_step(generator.model, shape, generator.loaded.dtype, args.batch_size,
                                                prompt, gen)
                row["bytes_per_decode_step"] = traffic
                runs.append(row)

                if hf_model is not None:
                    hf_row = summarize("transformers", prompt, gen, args.batch_size, theirs)
                    hf_row["bytes_per_decode_step"] = traffic
                    runs.append(hf_row)
                    comparison.append(_compare(row, hf_row, ours[0].token_ids, theirs[0].token_ids, shares_weights))

                if reference is not None:
                    fp32 = run_genkit(reference, ids, gen, args.cache, args.cache_options)
                    agreement.append({"prompt_length": prompt, "gen_length": gen,
                                      **token_agreement(fp32.token_ids, ours[0].token_ids)})

        # After the sweep: reading a large tensor first made later allocations fault
        # and stall single decode steps by hundreds of milliseconds on the development VM.
        bandwidth = None
        if args.bandwidth_mib:
            bandwidth = measure_memory_bandwidth(args.bandwidth_mib << 20, device=device)
        report["bandwidth"] = bandwidth.to_dict() if bandwidth else None
        for run in runs:
            run["bandwidth_fraction"] = _bandwidth_fraction(run["bytes_per_decode_step"], run, bandwidth)

        report["runs"] = runs
        report["comparison"] = comparison
        report["dtype_agreement"] = agreement

    print_report(report)
    json_path = out_dir / "bench.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    written = [json_path]
    if not args.no_plots:
        from genkit.plots import plot_bench

        written += plot_bench(report, out_dir)
    print("wrote " + ", ".join(str(path) for path in written), file=sys.stderr)
    return 0


def _bandwidth_fraction(traffic: dict[str, float], row: dict[str, Any], bandwidth) -> float | None:
    """Return the achieved decode read rate over the measured bandwidth (None when not measured)."""
    if bandwidth is None or row["decode_tokens_per_s"] <= 0:
        return None
    steps_per_s = row["decode_tokens_per_s"] / row["batch_size"]
    return traffic["total_bytes"] * steps_per_s / bandwidth.bytes_per_s


def _compare(ours: dict, theirs: dict, our_tokens: list, their_tokens: list, shares_weights: bool) -> dict[str, Any]:
    entry = {
        "prompt_length": ours["prompt_length"],
        "gen_length": ours["gen_length"],
        # Above 1.0 genkit is faster.
        "ttft_speedup": theirs["ttft_s"] / ours["ttft_s"],
        "decode_tokens_per_s_ratio": ours["decode_tokens_per_s"] / theirs["decode_tokens_per_s"],
        "total_speedup": theirs["total_s"] / ours["total_s"],
        "tokens_checked": shares_weights,
    }
    if shares_weights:
        entry.update(token_agreement(their_tokens, our_tokens))
    return entry


def print_report(report: dict[str, Any]) -> None:
    """Print the model, the machine and the tables of runs, ratios and dtype agreement as Markdown."""
    model = report["model"]
    machine = report["machine"]
    print(f"model: {model['description']}, {model['parameters']:,} parameters, {model['dtype']}")
    load = machine.get("load_average_1min")
    print(f"machine: {machine['machine']}, {machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads, "
          f"device {machine['device']}, torch {machine['torch']}"
          + (f", load average {load:.2f}" if load is not None else ""))
    bandwidth = report["bandwidth"]
    if bandwidth:
        print(f"memory bandwidth: {bandwidth['bytes_per_s'] / 1e9:.2f} GB/s "
              f"(torch.sum over {bandwidth['size_bytes'] >> 20} MiB, best of {bandwidth['repeats']})")

    _print_runs(report["runs"])
    if report["comparison"]:
        _print_comparison(report["comparison"])
    if report["dtype_agreement"]:
        _print_agreement(report["dtype_agreement"], model["dtype"])
    for note in report["notes"]:
        print(f"note: {note}")
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()


def _print_runs(runs: list[dict[str, Any]]) -> None:
    print("\n| implementation | prompt | new | TTFT ms | prefill tok/s | decode tok/s | ITL p50 ms | ITL p99 ms "
          "| total ms | KV cache KiB | bandwidth used |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        kv = f"{run['kv_cache_bytes'] / 1024:.0f}" if run["kv_cache_bytes"] is not None else "-"
        fraction = run.get("bandwidth_fraction")
        used = f"{fraction:.1%}" if fraction is not None else "-"
        print(f"| {run['implementation']} | {run['prompt_length']} | {run['gen_length']} "
              f"| {run['ttft_s'] * 1000:.1f} | {run['prefill_tokens_per_s']:.0f} | {run['decode_tokens_per_s']:.1f} "
              f"| {run['itl_p50_s'] * 1000:.2f} | {run['itl_p99_s'] * 1000:.2f} | {run['total_s'] * 1000:.1f} "
              f"| {kv} | {used} |")


def _print_comparison(comparison: list[dict[str, Any]]) -> None:
    print("\ngenkit vs transformers (above 1.00x genkit is faster)")
    print("| prompt | new | TTFT speedup | decode tok/s ratio | total speedup | identical tokens |")
    print("|---|---|---|---|---|---|")
    for entry in comparison:
        same = f"{entry['fraction_identical']:.1%}" if entry["tokens_checked"] else "not checked"
        print(f"| {entry['prompt_length']} | {entry['gen_length']} | {entry['ttft_speedup']:.2f}x "
              f"| {entry['decode_tokens_per_s_ratio']:.2f}x | {entry['total_speedup']:.2f}x | {same} |")


def _print_agreement(agreement: list[dict[str, Any]], dtype: str) -> None:
    print(f"\ngreedy agreement of {dtype} with float32")
    print("| prompt | new | identical tokens | first difference at |")
    print("|---|---|---|---|")
    for entry in agreement:
        first = entry["first_difference"]
        print(f"| {entry['prompt_length']} | {entry['gen_length']} | {entry['fraction_identical']:.1%} "
              f"| {'-' if first is None else first} |")

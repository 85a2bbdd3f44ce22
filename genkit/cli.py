"""The ``genkit`` command line: generate, plugins, train-toy, kv-memory, bench, profile."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable, NoReturn

from genkit.errors import ConfigError, GenkitError, PromptError

logger = logging.getLogger("genkit")


def _json_value(name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name} must be JSON ({exc}), e.g. {JSON_EXAMPLES[name]}") from exc

    return parse


JSON_EXAMPLES = {
    "bad_words_ids": "'[[464, 3290], [50256]]'",
    "sequence_bias": "'[[[464], -2.0], [[3290, 11], 1.5]]'",
    "suppress_tokens": "'[198, 628]'",
    "logit_bias": "'{\"50256\": -100}'",
    "dry_sequence_breakers": "'[\"\\\\n\", \":\"]'",
    "sampler_options": "'{\"tau\": 0.5}'",
    "cache_options": "'{}'",
}

# (field, type, help). Every flag is the GenerationConfig field with dashes.
GENERATION_FLAGS: list[tuple[str, Callable[[str], Any], str]] = [
    ("max_new_tokens", int, "maximum number of tokens to generate (default: the model's generation_config, else 20)"),
    ("max_length", int, "maximum total length, prompt included (max_new_tokens wins when both are set)"),
    ("min_length", int, "mask EOS until the sequence, prompt included, has this many tokens"),
    ("min_new_tokens", int, "mask EOS until this many tokens are generated"),
    ("max_time", float, "stop after this many seconds"),
    ("temperature", float, "divide logits by this value before sampling (> 0)"),
    ("top_k", int, "keep the k most likely tokens when sampling (0 turns it off; transformers default 50)"),
    ("top_p", float, "nucleus sampling: keep the top tokens holding this probability mass, in [0, 1]"),
    ("min_p", float, "drop tokens below min_p times the top token's probability, in [0, 1]"),
    ("typical_p", float, "locally typical sampling mass, in (0, 1]"),
    ("epsilon_cutoff", float, "drop tokens with probability below this value, in [0, 1)"),
    ("eta_cutoff", float, "eta sampling cutoff, in [0, 1)"),
    ("repetition_penalty", float, "penalise tokens already in the prompt or output (> 0; 1 turns it off)"),
    ("no_repeat_ngram_size", int, "forbid repeating any n-gram of this size"),
    ("bad_words_ids", _json_value("bad_words_ids"), "token id sequences never to generate, as JSON"),
    ("sequence_bias", _json_value("sequence_bias"), "biases for token sequences, as JSON"),
    ("suppress_tokens", _json_value("suppress_tokens"), "token ids never to generate, as JSON"),
    ("presence_penalty", float, "OpenAI presence penalty over generated tokens, in [-2, 2]"),
    ("frequency_penalty", float, "OpenAI frequency penalty over generated tokens, in [-2, 2]"),
    ("logit_bias", _json_value("logit_bias"), "bias added to given token ids' logits, as JSON"),
    ("mirostat", int, "2 selects the mirostat v2 sampler, 0 turns it off"),
    ("mirostat_tau", float, "mirostat target surprise in bits"),
    ("mirostat_eta", float, "mirostat learning rate"),
    ("dry_multiplier", float, "DRY repetition penalty strength (0 turns it off)"),
    ("dry_base", float, "DRY penalty growth base (> 1)"),
    ("dry_allowed_length", int, "longest repeat DRY leaves unpenalised"),
    ("dry_penalty_last_n", int, "how many recent tokens DRY scans (-1: all)"),
    ("dry_sequence_breakers", _json_value("dry_sequence_breakers"), "strings that end DRY matches, as JSON"),
    ("pad_token_id", int, "token id used to pad finished sequences in a batch"),
    ("seed", int, "seed of the sampling RNG, for reproducible output"),
    ("sampler", str, "sampler name (default: greedy, or multinomial with --do-sample); see `genkit plugins`"),
    ("cache", str, "KV cache backend name (default: static); see `genkit plugins`"),
]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_generate_parser(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate text from one or more prompts")
    parser.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompt text; several prompts run as one batch")
    parser.add_argument("--prompt-file", dest="prompt_files", action="append", default=None, metavar="PATH",
                        help="read more prompts from this UTF-8 file, one per line (empty lines are skipped); "
                        "'-' reads standard input; repeat for several files")
    parser.add_argument("--model", default=None, help="checkpoint folder, shipped name or cached hub id "
                        "(default: the shipped toy-shakespeare model)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="compute dtype (default: the checkpoint's)")
    parser.add_argument("--compile", action="store_true",
                        help="run decode steps through torch.compile (the first request compiles for seconds); "
                        "the cache defaults to 'graph'")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice, one per core); 1 is often faster "
                        "for small models on a busy machine")

    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--do-sample", dest="do_sample", action="store_true", default=None,
                          help="sample from the processed distribution")
    sampling.add_argument("--greedy", dest="do_sample", action="store_false", help="take the argmax (do_sample=False)")
    for name, kind, help_text in GENERATION_FLAGS:
        parser.add_argument(_flag(name), dest=name, type=kind, default=None, help=help_text)

    parser.add_argument("--eos-token-id", dest="eos_token_id", type=int, action="append", default=None,
                        help="EOS token id; repeat for several (default: the model's)")
    parser.add_argument("--stop", "--stop-strings", dest="stop_strings", action="append", default=None,
                        help="stop when the output contains this string; repeat for several")
    parser.add_argument("--include-stop-str-in-output", dest="include_stop_str_in_output", action="store_true",
                        default=None, help="keep the matched stop string in the returned text")

    parser.add_argument("--logits-processor", dest="logits_processors", action="append", default=None,
                        metavar="NAME", help="add a registered logits processor by name; repeat for several")
    parser.add_argument("--stopping-criterion", dest="stopping_criteria", action="append", default=None,
                        metavar="NAME", help="add a registered stopping criterion by name; repeat for several")
    parser.add_argument("--sampler-options", dest="sampler_options", type=_json_value("sampler_options"),
                        default=None, help="options for the sampler's build function, as a JSON object")
    parser.add_argument("--cache-options", dest="cache_options", type=_json_value("cache_options"),
                        default=None, help="options for the KV cache's build function, as a JSON object")

    parser.add_argument("--stream", action="store_true",
                        help="print text as it is generated; Ctrl-C stops and prints the statistics so far")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per line: one per prompt, or with --stream one per token "
                        "(with its time in seconds) and then one per prompt")

    parser.set_defaults(handler=run_generate)


def generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Collect the generation fields set on the command line (unset flags stay None)."""
    names = [name for name, _, _ in GENERATION_FLAGS] + [
        "do_sample", "eos_token_id", "stop_strings", "include_stop_str_in_output",
        "logits_processors", "stopping_criteria", "sampler_options", "cache_options",
    ]
    kwargs = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    for name in ("sampler_options", "cache_options"):
        if name in kwargs and not isinstance(kwargs[name], dict):
            raise ConfigError(f"invalid {name}={kwargs[name]!r}: expected a JSON object, e.g. {JSON_EXAMPLES[name]}")
    if isinstance(kwargs.get("eos_token_id"), list) and len(kwargs["eos_token_id"]) == 1:
        kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
    if "logit_bias" in kwargs:
        bias = kwargs["logit_bias"]
        if not isinstance(bias, dict):
            raise ConfigError(f"invalid logit_bias={bias!r}: expected a JSON object, e.g. {JSON_EXAMPLES['logit_bias']}")
        try:
            kwargs["logit_bias"] = {int(k): v for k, v in bias.items()}
        except ValueError as exc:
            raise ConfigError(f"invalid logit_bias key: {exc}; keys must be token ids") from exc
    return kwargs


def read_prompts(args: argparse.Namespace) -> list[str]:
    """Return the prompts given as arguments, then those of ``--prompt-file``, in order."""
    prompts = list(args.prompts)
    for path in args.prompt_files or ():
        prompts += read_prompt_file(path)
    if not prompts:
        raise PromptError("no prompt given: pass PROMPT arguments or --prompt-file PATH ('-' for standard input)")
    return prompts


def read_prompt_file(path: str) -> list[str]:
    """Read one prompt per line from a UTF-8 file or, for ``-``, standard input.

    Line endings (``\\n`` or ``\\r\\n``) and a leading byte order mark are removed,
    and empty lines are skipped. Every other line is a prompt exactly as written,
    spaces included.
    """
    name = "standard input" if path == "-" else f"prompt file {path}"
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as handle:
                data = handle.read()
    except FileNotFoundError:
        raise PromptError(f"{name} not found; check the path, or pass '-' to read standard input") from None
    except IsADirectoryError:
        raise PromptError(f"{name} is a directory; pass a text file with one prompt per line") from None
    except OSError as exc:
        raise PromptError(f"failed to read {name}: {exc.strerror}; check that it is a readable file") from None

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PromptError(
            f"{name} is not valid UTF-8 (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    lines = text.removeprefix("\ufeff").split("\n")
    prompts = [line.removesuffix("\r") for line in lines]
    prompts = [prompt for prompt in prompts if prompt]
    if not prompts:
        raise PromptError(f"{name} contains no prompts: write one prompt per line")
    return prompts


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from genkit.engine import Generator

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"invalid --threads {args.threads}: expected an integer >= 1")
        cores = os.cpu_count() or 1
        if args.threads > cores:
            logger.warning("--threads %d is more than the %d CPU cores; threads will wait for each other",
                           args.threads, cores)
        torch.set_num_threads(args.threads)
    prompts = read_prompts(args)
    kwargs = generation_kwargs(args)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    generator = Generator.from_pretrained(args.model, device=args.device, dtype=dtype, compile=args.compile)
    if args.stream:
        return _stream(generator, prompts, kwargs, args.json)

    results = generator.generate_batch(prompts, **kwargs)
    if args.json:
        for index, (prompt, result) in enumerate(zip(prompts, results)):
            print(json.dumps(_result_payload(index, prompt, result), ensure_ascii=False))
        return 0
    for index, (prompt, result) in enumerate(zip(prompts, results)):
        if index:
            print("\n" + "-" * 40)
        print(prompt + result.text)
    _print_stats(results)
    return 0


def _result_payload(index: int, prompt: str, result) -> dict[str, Any]:
    # "sequence" is the prompt's index, as in the token events of --stream --json.
    return {"sequence": index, "prompt": prompt, **result.to_dict()}


def _stream(generator, prompts: list[str], kwargs: dict, as_json: bool) -> int:
    """Print events as the worker thread generates them; Ctrl-C cancels and prints the partial statistics.

    Generation runs in a worker thread, so Ctrl-C interrupts this thread's wait for
    the next event and never a forward pass: the worker stops between decode steps
    and the results stay consistent.
    """
    from genkit.streaming import ThreadedStream

    stream = ThreadedStream(generator, prompts, **kwargs)
    single = len(prompts) == 1
    interrupted = False
    echoed_prompt = False  # written with the first token, so that a failed request prints nothing to stdout
    try:
        for event in stream:
            if as_json:
                print(json.dumps({"event": "token", "sequence": event.sequence, "token_id": event.token_id,
                                  "text": event.text, "index": event.index, "time_s": event.time_s,
                                  "finish_reason": event.finish_reason}, ensure_ascii=False), flush=True)
            elif single:
                if not echoed_prompt:
                    sys.stdout.write(prompts[0])
                    echoed_prompt = True
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif event.text:
                print(f"[{event.sequence}] {event.text!r}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        stream.cancel()

    results = stream.results
    if as_json:
        for index, (prompt, result) in enumerate(zip(prompts, results)):
            print(json.dumps({"event": "done", **_result_payload(index, prompt, result)}, ensure_ascii=False))
    elif single and echoed_prompt:
        sys.stdout.write("\n")
    sys.stdout.flush()
    if results and (interrupted or not as_json):
        _print_stats(results, interrupted)
    elif interrupted:
        print("genkit: interrupted before the first token", file=sys.stderr)
    return 130 if interrupted else 0


def _print_stats(results, interrupted: bool = False) -> None:
    """Print one line of statistics for the request to standard error."""
    stats = results[0].stats  # request-wide timings are the same in every result
    reasons = ", ".join(r.finish_reason for r in results)
    prefix = "interrupted: " if interrupted else ""
    print(
        f"[{prefix}{sum(r.stats.generated_tokens for r in results)} tokens, finish: {reasons}, "
        f"TTFT {stats.ttft_s * 1000:.1f} ms, decode {stats.decode_tokens_per_s:.1f} tokens/s]",
        file=sys.stderr,
    )


def add_plugins_parser(subparsers) -> None:
    parser = subparsers.add_parser("plugins", help="list installed plugins and what they register")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run_plugins)


def run_plugins(args: argparse.Namespace) -> int:
    from genkit.registry import get_registry

    registry = get_registry()
    if args.json:
        payload = {
            "plugins": [
                {
                    "name": p.name,
                    "distribution": p.distribution,
                    "version": p.version,
                    "registered": p.registered,
                    "descriptions": {
                        kind: {name: getattr(registry, kind)[name].spec.description for name in names}
                        for kind, names in p.registered.items()
                    },
                }
                for p in registry.plugins
            ],
            "failures": [
                {"entry_point": f.entry_point, "distribution": f.distribution, "error": f.error}
                for f in registry.failures
            ],
        }
        print(json.dumps(payload, indent=2))
        return 0
    for plugin in registry.plugins:
        origin = f"{plugin.distribution} {plugin.version}" if plugin.distribution else "added in code"
        print(f"{plugin.name} ({origin})")
        for kind, names in plugin.registered.items():
            print(f"  {kind}:")
            table = getattr(registry, kind)
            for name in names:
                description = table[name].spec.description
                print(f"    {name}" + (f": {description}" if description else ""))
    for failure in registry.failures:
        print(f"FAILED {failure.entry_point} ({failure.distribution}): {failure.error}")
    return 0


def add_train_toy_parser(subparsers) -> None:
    from genkit.training import add_train_toy_arguments, run_train_toy

    parser = subparsers.add_parser("train-toy", help="train the toy GPT on a text file")
    add_train_toy_arguments(parser)
    parser.set_defaults(handler=run_train_toy)


def add_kv_memory_parser(subparsers) -> None:
    from genkit.kvmemory import add_kv_memory_arguments, run_kv_memory

    parser = subparsers.add_parser("kv-memory", help="KV cache bytes for a model config, dtype, batch and length")
    add_kv_memory_arguments(parser)
    parser.set_defaults(handler=run_kv_memory)


def add_bench_parser(subparsers) -> None:
    from genkit.benchmark import add_bench_arguments, run_bench

    parser = subparsers.add_parser("bench", help="sweep prompt and generation lengths; timings, JSON and plots")
    add_bench_arguments(parser)
    parser.set_defaults(handler=run_bench)


def add_profile_parser(subparsers) -> None:
    from genkit.profiling import add_profile_arguments, run_profile

    parser = subparsers.add_parser("profile", help="split one request's decode step into its parts")
    add_profile_arguments(parser)
    parser.set_defaults(handler=run_profile)


class _Parser(argparse.ArgumentParser):
    """An argument parser that reports a usage error as one ``genkit: error:`` line, like main() reports the rest."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"genkit: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="genkit", description="Plugin-based text generation with PyTorch")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_generate_parser(subparsers)
    add_plugins_parser(subparsers)
    add_train_toy_parser(subparsers)
    add_kv_memory_parser(subparsers)
    add_bench_parser(subparsers)
    add_profile_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # during start-up, before a command's own handling
        print("genkit: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops collecting `generate` prompts at the first option, so prompts
    # after options arrive here; anything that looks like an option is still an error.
    # After "--" every argument is a prompt, even one that starts with "-".
    before, after = (extra[: extra.index("--")], extra[extra.index("--") + 1 :]) if "--" in extra else (extra, [])
    if extra and args.command == "generate" and not any(item.startswith("-") for item in before):
        args.prompts = [*args.prompts, *before, *after]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="genkit: %(levelname)s: %(message)s")
    try:
        return args.handler(args)
    except GenkitError as exc:
        print(f"genkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `head`) closed stdout; silence the flush at interpreter exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())

"""`genkit profile`: split the decode steps of one real request into their parts.

After ``Generator.prefill`` has built the request's plan, each component of the plan
is replaced by a timing wrapper: every logits processor, the sampler, every stopping
criterion, and the KV cache (each method call is timed). Forward hooks on the model
time its forward pass. Cache calls made inside the forward pass (``attend``,
``length``) are subtracted from it, so "model forward" is the network without the
cache. Whatever the measured ``decode_step`` took beyond the timed parts is
"Python overhead": building the inputs, appending tokens, the detokenizer and the
stream events.

The wrappers add a few Python calls per component call, and their cost lands in
the overhead. The report therefore also gives the mean step time of an
uninstrumented run of the same request.
On CUDA every timed part starts and ends with a device synchronisation, which
serialises work that would otherwise overlap.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from genkit.benchmark import (
    add_model_arguments,
    load_bench_model,
    non_negative_int,
    output_folder,
    positive_int,
)
from genkit.engine import synchronize
from genkit.errors import ConfigError

PARTS = ("model forward", "logits processing", "sampling", "stopping checks", "cache management", "Python overhead")


class PartClock:
    """Accumulated seconds per part of the decode step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.forward_s = 0.0
        self.cache_in_forward_s = 0.0
        self.in_forward = False
        self.forward_start = 0.0

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] += seconds
        if part == "cache management" and self.in_forward:
            self.cache_in_forward_s += seconds

    def timed(self, part: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """Return ``function`` wrapped so that its calls count towards ``part``."""
        device = self.device

        def call(*args: Any, **kwargs: Any) -> Any:
            synchronize(device)
            start = time.perf_counter()
            result = function(*args, **kwargs)
            synchronize(device)
            self.add(part, time.perf_counter() - start)
            return result

        return call


class TimedComponent:
    """A logits processor, sampler or stopping criterion whose calls are timed; other attributes pass through."""

    def __init__(self, component: Any, part: str, clock: PartClock):
        self._component = component
        self._call = clock.timed(part, component)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._component, name)


class TimedCache:
    """A KV cache proxy: each method call counts as cache management, attributes pass through unchanged."""

    def __init__(self, cache: Any, clock: PartClock):
        self._cache = cache
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._cache, name)
        if not callable(value):
            return value
        wrapped = self._clock.timed("cache management", value)
        setattr(self, name, wrapped)  # later lookups find it without __getattr__
        return wrapped


def instrument(state, model: torch.nn.Module, clock: PartClock) -> Callable[[], None]:
    """Wrap the components of ``state.plan`` and hook ``model``; return a function that removes the hooks."""
    plan = state.plan
    plan.processors = [TimedComponent(p, "logits processing", clock) for p in plan.processors]
    plan.sampler = TimedComponent(plan.sampler, "sampling", clock)
    plan.stopping = [(reason, TimedComponent(c, "stopping checks", clock)) for reason, c in plan.stopping]
    plan.cache = TimedCache(plan.cache, clock)

    def before_forward(module, inputs):
        synchronize(clock.device)
        clock.in_forward = True
        clock.forward_start = time.perf_counter()

    def after_forward(module, inputs, output):
        synchronize(clock.device)
        clock.forward_s += time.perf_counter() - clock.forward_start
        clock.in_forward = False

    handles = [model.register_forward_pre_hook(before_forward), model.register_forward_hook(after_forward)]

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove


def profile_request(generator, prompts: list[list[int]], **kwargs: Any) -> dict[str, Any]:
    """Run one request with its decode steps instrumented; return the parts, step times and generated tokens."""
    device = generator.device
    state = generator.prefill(prompts, **kwargs)
    tokens: list[list[int]] = [[] for _ in prompts]
    for event in state.last_events:
        tokens[event.sequence].append(event.token_id)

    cache = state.plan.cache
    clock = PartClock(device)
    remove_hooks = instrument(state, generator.model, clock)
    steps = 0
    step_s = 0.0
    try:
        while not state.done:
            synchronize(device)
            start = time.perf_counter()
            events = generator.decode_step(state)
            synchronize(device)
            step_s += time.perf_counter() - start
            steps += 1
            for event in events:
                tokens[event.sequence].append(event.token_id)
    finally:
        remove_hooks()
        cache.release()

    seconds = dict(clock.seconds)
    seconds["model forward"] = clock.forward_s - clock.cache_in_forward_s
    timed = sum(value for part, value in seconds.items() if part != "Python overhead")
    seconds["Python overhead"] = step_s - timed
    return {"steps": steps, "step_s": step_s, "seconds": seconds, "token_ids": tokens}


def plain_step_seconds(generator, prompts: list[list[int]], **kwargs: Any) -> float:
    """Return the mean decode step time of the same request without instrumentation."""
    results = generator.generate_batch(prompts, **kwargs)
    stats = results[0].stats
    steps = len(stats.inter_token_latencies_s)
    return stats.decode_s / steps if steps else 0.0


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    from genkit.cli import GENERATION_FLAGS, _flag

    add_model_arguments(parser, compile_help="not supported: the timing wrappers and hooks cannot run inside "
                        "torch.compile; time a compiled model with `genkit bench --compile`")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=None, help="prompt text (default: random token ids)")
    prompt.add_argument("--prompt-length", type=positive_int, default=16,
                        help="length of the random prompt in tokens (default: 16)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="copies of the prompt per request "
                        "(default: 1)")
    parser.add_argument("--warmup", type=non_negative_int, default=1,
                        help="untimed requests before the profiled one (default: 1)")
    parser.add_argument("--do-sample", dest="do_sample", action="store_true", default=None,
                        help="sample from the processed distribution (default: greedy)")
    defined_above = {"cache", "seed", "max_new_tokens"}
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=positive_int, default=100,
                        help="tokens to generate (default: 100)")
    for name, kind, help_text in GENERATION_FLAGS:
        if name not in defined_above:
            parser.add_argument(_flag(name), dest=name, type=kind, default=None, help=help_text)
    parser.add_argument("--out", default="genkit-profile", help="folder for profile.json and profile.png "
                        "(default: ./genkit-profile)")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plot")


def _generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from genkit.cli import GENERATION_FLAGS

    kwargs = {name: getattr(args, name) for name, _, _ in GENERATION_FLAGS
              if getattr(args, name, None) is not None and name not in ("cache", "seed")}
    # Greedy unless --do-sample, even when the checkpoint's generation_config samples.
    kwargs.update(max_new_tokens=args.max_new_tokens, cache=args.cache, seed=args.seed,
                  cache_options=args.cache_options or {}, do_sample=bool(args.do_sample))
    return kwargs


def build_report(profile: dict[str, Any], plain_step_s: float) -> dict[str, Any]:
    """Turn the raw seconds of :func:`profile_request` into per-step parts with shares of the step time."""
    steps = max(profile["steps"], 1)
    step_s = profile["step_s"]
    parts = [
        {
            "name": name,
            "total_s": profile["seconds"][name],
            "mean_us": profile["seconds"][name] / steps * 1e6,
            "share": profile["seconds"][name] / step_s if step_s > 0 else 0.0,
        }
        for name in PARTS
    ]
    return {
        "steps": profile["steps"],
        "step_total_s": step_s,
        "step_mean_us": step_s / steps * 1e6,
        "uninstrumented_step_mean_us": plain_step_s * 1e6,
        "parts": parts,
        "token_ids": profile["token_ids"],
    }


def print_profile(report: dict[str, Any]) -> None:
    print(f"{report['steps']} decode steps, mean {report['step_mean_us']:.1f} us per step "
          f"(without instrumentation: {report['uninstrumented_step_mean_us']:.1f} us)\n")
    print("| part | total ms | per step us | share of step |")
    print("|---|---|---|---|")
    for part in report["parts"]:
        print(f"| {part['name']} | {part['total_s'] * 1000:.2f} | {part['mean_us']:.1f} | {part['share']:.1%} |")
    print(f"| decode step (measured) | {report['step_total_s'] * 1000:.2f} | {report['step_mean_us']:.1f} | 100.0% |")


def run_profile(args: argparse.Namespace) -> int:
    if args.compile:
        # torch.compile traces the decode step, and dynamo cannot trace time.perf_counter
        # in the wrappers and hooks, so the profiled request would fail.
        raise ConfigError(
            "genkit profile does not support --compile: it times the parts of the decode step with Python "
            "wrappers and hooks, which torch.compile cannot trace; drop --compile, or time a compiled model "
            "with `genkit bench --compile`"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_plots:
        from genkit.plots import require_matplotlib

        require_matplotlib()
    with output_folder(args.out, "profile.json and profile.png") as out_dir:
        return _run_profile(args, out_dir)


def _run_profile(args: argparse.Namespace, out_dir: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="genkit-profile-") as scratch:
        min_positions = (args.prompt_length if args.prompt is None else 1) + args.max_new_tokens - 1
        generator = load_bench_model(args, Path(scratch), min_positions).generator
        kwargs = _generation_kwargs(args)  # after load_bench_model, which picks the default --cache
        shape = generator.loaded.shape
        if args.prompt is not None:
            prompt_ids = generator.encode_prompt(args.prompt)
        else:
            rng = torch.Generator().manual_seed(args.seed)
            prompt_ids = torch.randint(0, shape.vocab_size, (args.prompt_length,), generator=rng).tolist()
        if len(prompt_ids) + args.max_new_tokens > shape.max_positions + 1:
            raise ConfigError(
                f"prompt ({len(prompt_ids)} tokens) + --max-new-tokens {args.max_new_tokens} exceeds the model's "
                f"{shape.max_positions} positions; shorten the prompt or lower --max-new-tokens"
            )
        prompts = [prompt_ids] * args.batch_size

        for _ in range(args.warmup):
            generator.generate_batch(prompts, **kwargs)
        plain = plain_step_seconds(generator, prompts, **kwargs)
        report = build_report(profile_request(generator, prompts, **kwargs), plain)

    report["model"] = generator.loaded.name
    report["settings"] = {"prompt_tokens": len(prompt_ids), "batch_size": args.batch_size, "dtype": args.dtype,
                          "device": str(generator.device), "torch_threads": torch.get_num_threads(),
                          "warmup": args.warmup,
                          "generation": {k: v for k, v in kwargs.items()
                                         if isinstance(v, (int, float, str, bool)) or k == "cache_options"}}
    print_profile(report)
    json_path = out_dir / "profile.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    written = [json_path]
    if not args.no_plots:
        from genkit.plots import plot_profile

        written.append(plot_profile(report, out_dir / "profile.png"))
    print("wrote " + ", ".join(str(path) for path in written), file=sys.stderr)
    return 0

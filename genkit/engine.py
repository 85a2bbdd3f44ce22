"""The generation loop: prefill, then decode steps, with per-phase timing.

``Generator.prefill`` runs the prompt through the model in one forward pass and
picks the first token. ``Generator.decode_step`` feeds the last token of every
sequence and picks the next. ``generate``, ``generate_batch`` and ``stream`` are
thin loops over those two phases.
"""

from __future__ import annotations

import logging
import numbers
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import torch

from genkit.caches.base import CacheUsage
from genkit.config import GenerationConfig
from genkit.detokenizer import IncrementalDetokenizer
from genkit.devices import resolve_device
from genkit.errors import ConfigError, GenerationError, PromptError
from genkit.models.base import LoadedModel
from genkit.plan import Plan, build_plan
from genkit.registry import Registry, get_registry
from genkit.specs import RequestContext

logger = logging.getLogger("genkit")

# Used when neither the request nor generation_config.json sets a length.
# NOTE: transformers' default is max_length=20 with the prompt counted; genkit
# counts 20 new tokens so that a long prompt still gets an answer.
DEFAULT_MAX_NEW_TOKENS = 20

Prompt = str | Sequence[int] | torch.Tensor


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so that a clock read measures finished work."""
    if device.type == "cpu":
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass
class GenerationStats:
    """Timings and counts of one request. Times are seconds, measured after a device sync.

    ``ttft_s`` runs from the call to the first token (tokenization and planning
    included); ``prefill_s`` is the prompt forward plus the first token's selection.
    ``decode_tokens_per_s`` counts tokens produced by decode steps over ``decode_s``.
    """

    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    total_s: float = 0.0
    inter_token_latencies_s: list[float] = field(default_factory=list)
    # KV cache figures are for the whole request: a batch shares one cache.
    kv_cache_bytes: int = 0  # peak bytes of key/value storage held during the request
    kv_cache_pool_bytes: int = 0  # at that peak: bytes reserved up front (a paged pool), >= kv_cache_bytes
    kv_cache_allocated_slots: int = 0  # at that peak: token positions reserved (rows x positions)
    kv_cache_used_slots: int = 0  # at that peak: token positions written

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StreamEvent:
    """One generated token of one sequence, with the text it completed (possibly empty)."""

    sequence: int
    token_id: int
    text: str
    index: int  # 0 for the first generated token of the sequence
    time_s: float  # since the request started
    finish_reason: str | None = None


@dataclass
class GenerationResult:
    """The output of one prompt: generated ids and text only (the prompt is not repeated)."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    stats: GenerationStats
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt_token_ids": self.prompt_token_ids,
            "token_ids": self.token_ids,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "stats": self.stats.to_dict(),
        }


@dataclass
class GenerationState:
    """Everything the decode loop carries from one step to the next."""

    plan: Plan
    config: GenerationConfig
    input_ids: torch.Tensor  # (B, S): left-padded prompts, then generated tokens
    padding_mask: torch.Tensor | None  # (R, S) for the R rows the model still runs, 0 at left padding; None: no padding
    next_positions: torch.Tensor  # (R, 1) position id of the next token fed
    finished: torch.Tensor  # (B,) bool
    finish_reasons: list[str | None]
    prompt_ids: list[list[int]]
    detokenizers: list[IncrementalDetokenizer]
    generator: torch.Generator | None
    start_time: float
    stats: GenerationStats
    last_events: list[StreamEvent] = field(default_factory=list)
    last_token_time: float = 0.0
    decode_tokens: int = 0
    emitted_chars: list[int] = field(default_factory=list)  # streamed text length per row
    stop_strings: list[str] = field(default_factory=list)
    criteria_by_reason: dict[str, Any] = field(default_factory=dict)
    # Rows of the full batch that the model still runs (R of them), or None for all B.
    # Finished rows leave the model's batch when the cache supports select_rows.
    model_rows: torch.Tensor | None = None
    finished_count: int = 0  # rows finished so far; kept in Python so the loop needs no device read
    clamp_positions: bool = False  # rows of a batch reach the context window at different steps
    peak_usage: CacheUsage | None = None

    @property
    def done(self) -> bool:
        return self.finished_count == len(self.finish_reasons)

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]


def _pending_stop_prefix(text: str, stop_strings: list[str]) -> int:
    """Return the length of the longest tail of ``text`` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stop_strings:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class Generator:
    """Generate text with one loaded model.

    >>> gen = Generator.from_pretrained()            # the shipped toy model
    >>> gen.generate("ROMEO:", max_new_tokens=40).text
    """

    def __init__(self, loaded: LoadedModel, registry: Registry | None = None, compile: bool = False):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.registry = registry or get_registry()
        # With compile=True, requests default to the graph cache and its decode steps
        # run through torch.compile (compiled on first use, once per batch size and capacity).
        self.compile = compile
        self._compiled_model: Any = None
        self._warned_eager_cache = False
        # Read once: looking the device up from the parameters costs microseconds per token.
        self._device = loaded.device

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        registry: Registry | None = None,
        compile: bool = False,
    ) -> Generator:
        """Load a checkpoint (path, shipped name or cached hub id; None for the default toy model).

        ``compile=True`` turns on the compiled decode path (see :class:`Generator`).
        """
        from genkit.models.loading import load_model

        registry = registry or get_registry()
        device = resolve_device(device)
        return cls(load_model(name_or_path, device=device, dtype=dtype, registry=registry), registry, compile)

    @property
    def device(self) -> torch.device:
        return self._device

    # ------------------------------------------------------------------ request

    def make_config(self, config: Any = None, **kwargs: Any) -> GenerationConfig:
        """Merge the checkpoint's generation defaults, ``config`` and keyword overrides."""
        defaults = self.loaded.generation_defaults
        if self.compile and "cache" not in defaults:
            defaults = {**defaults, "cache": "graph"}
        return GenerationConfig.build(defaults, config, **kwargs)

    def encode_prompt(self, prompt: Prompt, label: str = "prompt") -> list[int]:
        """Turn text or token ids into a checked list of token ids; ``label`` names the prompt in errors."""
        if isinstance(prompt, str):
            if not prompt:
                raise PromptError(f"empty {label}: pass at least one character of text")
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise PromptError(
                    f"{label} is not valid UTF-8 text (undecodable byte at position {exc.start}); "
                    "pass UTF-8 encoded text"
                ) from exc
            try:
                ids = self.tokenizer.encode(prompt)
            except PromptError as exc:
                if label == "prompt":
                    raise
                message = str(exc)
                if message.startswith("prompt "):
                    message = message[len("prompt ") :]  # "prompt 1 contains ..." rather than "prompt 1: prompt ..."
                raise PromptError(f"{label} {message}") from exc
        elif isinstance(prompt, torch.Tensor):
            if prompt.dim() != 1:
                raise PromptError(
                    f"{label} tensor has shape {tuple(prompt.shape)}; expected one dimension of token ids"
                )
            ids = prompt.tolist()
        else:
            ids = list(prompt)
        if not ids:
            raise PromptError(f"empty {label}: it encodes to no tokens; pass non-empty text or token ids")

        vocab_size = self.loaded.shape.vocab_size
        checked = []
        for token in ids:
            if isinstance(token, bool) or not isinstance(token, numbers.Integral):
                raise PromptError(f"{label} token id {token!r} is not an integer; pass integer token ids")
            if not 0 <= token < vocab_size:
                raise PromptError(f"{label} token id {token!r} is outside the vocabulary [0, {vocab_size})")
            checked.append(int(token))
        return checked

    def _context(self, config: GenerationConfig, prompt_ids: list[list[int]]) -> RequestContext:
        shape = self.loaded.shape
        longest = max(len(ids) for ids in prompt_ids)
        if longest > shape.max_positions:
            raise PromptError(
                f"prompt is {longest} tokens but the model's maximum is {shape.max_positions} positions; "
                "shorten the prompt"
            )

        if config.max_new_tokens is not None:
            max_new_tokens = config.max_new_tokens
        elif config.max_length is not None:
            max_new_tokens = config.max_length - longest
            if max_new_tokens < 1:
                raise ConfigError(
                    f"invalid max_length={config.max_length}: the prompt already has {longest} tokens; "
                    "set max_new_tokens instead"
                )
        else:
            max_new_tokens = DEFAULT_MAX_NEW_TOKENS

        # The last generated token is never fed to the model, so a full context
        # window of max_positions tokens still yields one more token.
        window = shape.max_positions + 1
        max_length = longest + max_new_tokens
        row_max_lengths = ()
        if max_length > window and not self._extends_context(config.cache):
            logger.warning(
                "%s (%d tokens) + max_new_tokens (%d) exceeds the context window of %d positions; "
                "it stops with finish reason 'length' after %d tokens",
                "prompt" if len(prompt_ids) == 1 else "the longest prompt",
                longest, max_new_tokens, shape.max_positions, window - longest,
            )
            # A row of n tokens sits behind (longest - n) padding positions that use no
            # position ids, so it reaches the window later than the longest row.
            row_max_lengths = tuple(longest - len(ids) + min(len(ids) + max_new_tokens, window) for ids in prompt_ids)
            max_length = max(row_max_lengths)

        eos = config.eos_token_ids()
        if not eos and self.tokenizer.eos_token_id is not None:
            eos = (self.tokenizer.eos_token_id,)
        for token in eos:
            if token >= shape.vocab_size:
                raise ConfigError(f"invalid eos_token_id={token}: the vocabulary has {shape.vocab_size} tokens")
        if config.pad_token_id is not None:
            pad = config.pad_token_id
        elif eos:
            pad = eos[0]
        else:
            pad = 0
        if pad >= shape.vocab_size:
            raise ConfigError(f"invalid pad_token_id={pad}: the vocabulary has {shape.vocab_size} tokens")

        return RequestContext(
            config=config,
            tokenizer=self.tokenizer,
            shape=shape,
            batch_size=len(prompt_ids),
            prompt_length=longest,
            max_length=max_length,
            device=self.device,
            dtype=self.loaded.dtype,
            eos_token_ids=tuple(eos),
            pad_token_id=pad,
            padding_lengths=tuple(longest - len(ids) for ids in prompt_ids),
            row_max_lengths=row_max_lengths,
        )

    def _extends_context(self, cache_name: str) -> bool:
        """Return True when the named cache backend lets a request run past the model's positions."""
        try:
            return bool(self.registry.lookup("caches", cache_name).spec.extends_context)
        except KeyError:
            return False  # the planner reports the unknown name

    # ------------------------------------------------------------------ phases

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Prompt], config: Any = None, **kwargs: Any) -> GenerationState:
        """Plan the request, run the prompts through the model in one forward pass and pick the first tokens."""
        start_time = time.perf_counter()
        if isinstance(prompts, (str, torch.Tensor)) or (len(prompts) > 0 and isinstance(prompts[0], int)):
            prompts = [prompts]
        if len(prompts) == 0:
            raise PromptError("no prompts given: pass at least one prompt")
        config = self.make_config(config, **kwargs)
        if len(prompts) == 1:
            prompt_ids = [self.encode_prompt(prompts[0])]
        else:
            prompt_ids = [self.encode_prompt(p, f"prompt {i}") for i, p in enumerate(prompts)]
        ctx = self._context(config, prompt_ids)
        plan = build_plan(self.registry, ctx)
        plan.reset()

        # Left-pad to a rectangle so every row's next token sits in the last column.
        device = self.device
        longest = ctx.prompt_length
        rows = [[ctx.pad_token_id] * (longest - len(ids)) + ids for ids in prompt_ids]
        input_ids = torch.tensor(rows, dtype=torch.long, device=device)  # (B, T)
        padded = any(len(ids) != longest for ids in prompt_ids)
        if padded:
            padding_mask = torch.tensor(
                [[0] * (longest - len(ids)) + [1] * len(ids) for ids in prompt_ids], dtype=torch.long, device=device
            )
            position_ids = (padding_mask.cumsum(-1) - 1).clamp(min=0)
        else:
            padding_mask = None
            position_ids = torch.arange(longest, device=device).expand(len(rows), longest)
        next_positions = position_ids[:, -1:] + 1  # (B, 1)

        generator = None
        if config.seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(config.seed)

        batch = len(rows)
        state = GenerationState(
            plan=plan,
            config=config,
            input_ids=input_ids,
            padding_mask=padding_mask,
            next_positions=next_positions,
            finished=torch.zeros(batch, dtype=torch.bool, device=device),
            finish_reasons=[None] * batch,
            prompt_ids=prompt_ids,
            detokenizers=[IncrementalDetokenizer(self.tokenizer) for _ in range(batch)],
            generator=generator,
            start_time=start_time,
            stats=GenerationStats(prompt_tokens=sum(len(ids) for ids in prompt_ids)),
            emitted_chars=[0] * batch,
            stop_strings=config.stop_string_list(),
            criteria_by_reason=dict(plan.stopping),
            clamp_positions=bool(ctx.row_max_lengths),
        )
        if self.compile and not getattr(plan.cache, "graph_safe", False) and not self._warned_eager_cache:
            self._warned_eager_cache = True  # once per Generator, not per request
            logger.warning("compile=True, but the %r KV cache is not graph-safe: decode steps run eagerly; "
                           "use the 'graph' cache for compiled steps", config.cache)

        synchronize(device)
        prefill_start = time.perf_counter()
        logits = self._prefill_forward(plan.cache, prompt_ids, input_ids, position_ids, padding_mask)  # (B, 1, V)
        state.last_events = self._select_next(state, logits[:, -1, :])
        self._drop_finished_rows(state)
        synchronize(device)
        now = time.perf_counter()
        state.stats.prefill_s = now - prefill_start
        state.stats.ttft_s = now - start_time
        state.last_token_time = now
        return state

    def _prefill_forward(
        self,
        cache: Any,
        prompt_ids: list[list[int]],
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Run the prompts through the model and return the last position's logits (B, 1, V).

        When the batch is padded and the cache can write one row at a time, each
        prompt runs alone, so no compute goes to padding. Otherwise the padded batch
        runs in one forward pass.
        """
        longest = input_ids.shape[1]
        writers = None
        if padding_mask is not None:
            writers = [cache.row_writer(row, longest - len(ids)) for row, ids in enumerate(prompt_ids)]
            if any(writer is None for writer in writers):
                writers = None
        if writers is None:
            return self.model(input_ids, position_ids, cache, padding_mask, last_only=True)
        rows = []
        for row, (ids, writer) in enumerate(zip(prompt_ids, writers)):
            start = longest - len(ids)
            rows.append(self.model(input_ids[row : row + 1, start:], position_ids[row : row + 1, start:], writer,
                                   None, last_only=True))
        return torch.cat(rows, dim=0)

    @torch.inference_mode()
    def decode_step(self, state: GenerationState) -> list[StreamEvent]:
        """Feed the last token of every sequence and pick the next one; return the new events."""
        if state.done:
            return []
        device = self._device
        synchronize(device)
        step_start = time.perf_counter()
        cache = state.plan.cache
        rows = state.model_rows
        last = state.input_ids[:, -1:] if rows is None else state.input_ids[rows, -1:]  # (R, 1)
        if state.padding_mask is not None:
            state.padding_mask = torch.cat([state.padding_mask, torch.ones_like(last)], dim=-1)
        positions = state.next_positions
        if cache.extends_context:
            positions = cache.position_ids(positions, self.loaded.shape.max_positions)
        elif state.clamp_positions:
            # Rows that stopped at the context window keep being fed (their output is
            # discarded) when the cache cannot drop them; keep their ids in range.
            positions = positions.clamp(max=self.loaded.shape.max_positions - 1)
        model, padding_mask = self.model, state.padding_mask
        if self.compile and getattr(cache, "graph_safe", False):
            # Fixed shapes and strides, so the step compiles once: the graph cache
            # tracks padding itself, and the growing padding mask stays out.
            model, padding_mask = self._compiled(), None
            last = last.clone(memory_format=torch.contiguous_format)
        logits = model(last, positions, cache, padding_mask)[:, -1, :]  # (R, V)
        state.next_positions = state.next_positions + 1
        if rows is not None:
            # Finished rows get zero logits; their token is replaced by the pad token anyway.
            full = logits.new_zeros((state.batch_size, logits.shape[-1]))
            full[rows] = logits
            logits = full
        events = self._select_next(state, logits)
        if any(event.finish_reason is not None for event in events):
            self._drop_finished_rows(state)
        synchronize(device)
        now = time.perf_counter()

        state.stats.decode_s += now - step_start
        state.stats.inter_token_latencies_s.append(now - state.last_token_time)
        state.last_token_time = now
        state.decode_tokens += len(events)
        state.last_events = events
        return events

    def _select_next(self, state: GenerationState, logits: torch.Tensor) -> list[StreamEvent]:
        """Apply the chain, sample, append and check stopping, for the first token and every later one."""
        plan = state.plan
        scores = logits.float()  # (B, V)
        for processor in plan.processors:
            scores = processor(state.input_ids, scores)
        try:
            tokens = plan.sampler(state.input_ids, scores, state.generator)  # (B,)
        except RuntimeError as exc:
            # torch.multinomial rejects rows whose probabilities are all zero or NaN.
            raise GenerationError(
                f"sampler failed: {exc}. Every token may be masked: relax suppress_tokens, bad_words_ids, "
                "min_p/top_p/typical_p or the biases"
            ) from exc

        # Finished rows keep receiving the pad token, as in transformers, so the batch stays rectangular.
        if state.finished_count:
            skip = state.finished.tolist()
            tokens = torch.where(state.finished, torch.full_like(tokens, plan.context.pad_token_id), tokens)
        else:
            skip = [False] * len(state.detokenizers)
        state.input_ids = torch.cat([state.input_ids, tokens[:, None]], dim=-1)

        token_list = tokens.tolist()
        for row, token in enumerate(token_list):
            if not skip[row]:
                state.detokenizers[row].add(token)
        texts = [d.text for d in state.detokenizers]

        for reason, criterion in plan.stopping:
            hit = criterion(state.input_ids, scores, texts=texts, detokenizers=state.detokenizers)
            if isinstance(hit, torch.Tensor):
                newly = hit.to(state.finished.device) & ~state.finished
                if not newly.any():
                    continue
            elif hit:
                newly = ~state.finished
            else:
                continue
            for row in newly.nonzero().flatten().tolist():
                if state.finish_reasons[row] is None:
                    state.finish_reasons[row] = reason
                    state.finished_count += 1
            state.finished |= newly

        now = time.perf_counter() - state.start_time
        events = []
        for row, token in enumerate(token_list):
            if skip[row]:
                continue
            reason = state.finish_reasons[row]
            if reason is not None:
                state.detokenizers[row].flush()
            visible = self._visible_text(state, row)
            delta = visible[state.emitted_chars[row] :]
            state.emitted_chars[row] = len(visible)
            index = len(state.detokenizers[row].token_ids) - 1
            events.append(StreamEvent(row, token, delta, index, now, reason))
        return events

    def _compiled(self) -> Any:
        """Return the model wrapped by torch.compile for fixed-shape decode steps (built once)."""
        if self._compiled_model is None:
            if self._device.type == "cuda":
                # CUDA graphs replay the whole step with one launch.
                self._compiled_model = torch.compile(self.model, mode="reduce-overhead", fullgraph=True, dynamic=False)
            else:
                # Measured on the 2-core CPU (docs/benchmarks.md): a C++ wrapper around the
                # generated kernels and weights frozen as constants cut the step further.
                # NOTE: frozen weights mean a model changed after the first compiled step
                # needs a new Generator.
                options = {"cpp_wrapper": True, "freezing": True}
                self._compiled_model = torch.compile(self.model, fullgraph=True, dynamic=False, options=options)
        return self._compiled_model

    def _record_usage(self, state: GenerationState) -> None:
        usage = state.plan.cache.usage()
        if state.peak_usage is None or usage.bytes >= state.peak_usage.bytes:
            state.peak_usage = usage

    def _drop_finished_rows(self, state: GenerationState) -> None:
        """Take finished rows out of the model's batch when the cache can select rows."""
        if state.done or state.finished_count == 0:
            return
        current = state.model_rows
        if current is None:
            current = torch.arange(state.batch_size, device=state.finished.device)
        keep = (~state.finished[current]).nonzero().flatten()  # indices into the current model batch
        if keep.numel() == current.numel():
            return
        self._record_usage(state)
        if not state.plan.cache.select_rows(keep):
            return
        state.model_rows = current[keep]
        state.next_positions = state.next_positions[keep]
        if state.padding_mask is not None:
            state.padding_mask = state.padding_mask[keep]

    def _visible_text(self, state: GenerationState, row: int) -> str:
        """Return the text of ``row`` that may be shown now.

        A finished row shows its final text, trimmed by the criterion that stopped
        it (a stop string is cut off). A running row holds back a tail that could
        still grow into a stop string.
        """
        text = state.detokenizers[row].text
        reason = state.finish_reasons[row]
        if reason is not None:
            trim = getattr(state.criteria_by_reason.get(reason), "output_text", None)
            return trim(row, text) if callable(trim) else text
        return text[: len(text) - _pending_stop_prefix(text, state.stop_strings)]

    # ------------------------------------------------------------------ loops

    def _run(self, prompts: Sequence[Prompt], config: Any, kwargs: dict) -> GenerationState:
        state = self.prefill(prompts, config, **kwargs)
        while not state.done:
            self.decode_step(state)
        return state

    def _finish(self, state: GenerationState) -> list[GenerationResult]:
        stats = state.stats
        stats.total_s = time.perf_counter() - state.start_time
        stats.decode_tokens_per_s = state.decode_tokens / stats.decode_s if stats.decode_s > 0 else 0.0
        self._record_usage(state)
        peak = state.peak_usage
        stats.kv_cache_bytes = peak.bytes
        stats.kv_cache_pool_bytes = max(peak.pool_bytes, peak.bytes)
        stats.kv_cache_allocated_slots = peak.allocated_slots
        stats.kv_cache_used_slots = peak.used_slots
        state.plan.cache.release()
        results = []
        for row, detokenizer in enumerate(state.detokenizers):
            if state.finish_reasons[row] is None:
                state.finish_reasons[row] = "length"
            text = self._visible_text(state, row)
            row_stats = GenerationStats(**{**stats.to_dict(), "prompt_tokens": len(state.prompt_ids[row])})
            row_stats.generated_tokens = len(detokenizer.token_ids)
            results.append(
                GenerationResult(
                    prompt_token_ids=state.prompt_ids[row],
                    token_ids=list(detokenizer.token_ids),
                    text=text,
                    finish_reason=state.finish_reasons[row],
                    stats=row_stats,
                    model=self.loaded.name,
                )
            )
        return results

    def generate(self, prompt: Prompt, config: Any = None, **kwargs: Any) -> GenerationResult:
        """Generate from one prompt (text or token ids) and return ids, text, finish reason and stats."""
        return self._finish(self._run([prompt], config, kwargs))[0]

    def generate_batch(self, prompts: Sequence[Prompt], config: Any = None, **kwargs: Any) -> list[GenerationResult]:
        """Generate from several prompts at once (left-padded batch); one result per prompt."""
        if isinstance(prompts, str):
            raise PromptError("generate_batch expects a list of prompts; use generate() for a single string")
        return self._finish(self._run(list(prompts), config, kwargs))

    def astream(self, prompt: Prompt | Sequence[Prompt], config: Any = None, *, timeout: float | None = None,
                **kwargs: Any):
        """Return an async iterator of :class:`StreamEvent`; generation runs in a worker thread.

        ``async for event in gen.astream("ROMEO:")``. See :mod:`genkit.streaming`.
        """
        from genkit.streaming import astream

        return astream(self, prompt, config, timeout=timeout, **kwargs)

    def stream(self, prompt: Prompt | Sequence[Prompt], config: Any = None, **kwargs: Any) -> GenerationStream:
        """Return an iterator of :class:`StreamEvent`, one per generated token, as soon as it is picked.

        Pass a list of prompts to stream a batch; ``event.sequence`` is the index of
        the prompt a token belongs to. Once the iterator is exhausted, ``.results``
        contains the same results as ``generate_batch`` returns. Text that may still be the start of a
        stop string is held back until it is known not to be.
        """
        return GenerationStream(self, prompt, config, kwargs)


class GenerationStream:
    """Iterator over the events of one streamed request; ``results`` is filled when it ends.

    :meth:`cancel` stops the request early (Ctrl-C in the CLI): sequences still
    running get finish reason ``"cancelled"`` and the results keep what was generated.
    """

    def __init__(self, generator: Generator, prompts: Any, config: Any, kwargs: dict):
        self._generator = generator
        self._state: GenerationState | None = None
        self._events = self._iterate(generator, prompts, config, kwargs)
        self.results: list[GenerationResult] = []

    def _iterate(self, generator: Generator, prompts: Any, config: Any, kwargs: dict) -> Iterator[StreamEvent]:
        state = self._state = generator.prefill(prompts, config, **kwargs)
        yield from state.last_events
        while not state.done:
            yield from generator.decode_step(state)
        self.results = generator._finish(state)

    def __iter__(self) -> Iterator[StreamEvent]:
        return self._events

    def __next__(self) -> StreamEvent:
        return next(self._events)

    def cancel(self) -> list[GenerationResult]:
        """Stop now and return the results so far; running sequences finish with reason ``"cancelled"``.

        Returns an empty list when the prompt was not prefilled yet, and the
        normal results when the request had already ended.
        """
        self._events.close()
        if self.results or self._state is None:
            return self.results
        state = self._state
        for row, reason in enumerate(state.finish_reasons):
            if reason is None:
                state.finish_reasons[row] = "cancelled"
                state.detokenizers[row].flush()
        state.finished = torch.ones_like(state.finished)  # a new tensor: the old one is an inference tensor
        state.finished_count = len(state.finish_reasons)
        self.results = self._generator._finish(state)
        return self.results

    @property
    def result(self) -> GenerationResult:
        """The result of the first (or only) prompt; available once the stream is exhausted."""
        if not self.results:
            raise RuntimeError("the stream has not finished yet; iterate it to the end first")
        return self.results[0]

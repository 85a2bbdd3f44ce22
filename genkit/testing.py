"""Helpers for testing genkit plugins with real components.

>>> from genkit.testing import plugin_registered, run_processor, run_sampler, tiny_generator
>>> with plugin_registered(my_plugin_module) as registry:
...     gen = tiny_generator(registry=registry)
...     gen.generate("ab", logits_processors=["my_processor"], max_new_tokens=5)

docs/plugins.md shows each helper at work.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch

from genkit.config import GenerationConfig
from genkit.engine import Generator
from genkit.models.base import LoadedModel, ModelShape
from genkit.models.tokenizer import CharTokenizer
from genkit.registry import Registry, set_registry
from genkit.specs import RequestContext

TINY_ALPHABET = "\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@contextlib.contextmanager
def plugin_registered(plugin: Any, name: str = "test_plugin", builtins: bool = True) -> Iterator[Registry]:
    """Make ``plugin`` (a module or object with hook implementations) active for the ``with`` block.

    The yielded registry holds the installed plugins (when ``builtins``) plus
    ``plugin``; it is also the process-wide default until the block ends. When
    ``plugin`` is a module that an installed entry point already loaded (the
    plugin under test is pip-installed), it is kept once, under its entry-point
    name, instead of failing as a second registration.
    """
    registry = Registry.load(entry_points=builtins, strict=True)
    if not registry.pm.is_registered(plugin):
        registry.add_plugin(plugin, name=name)
    previous = set_registry(registry)
    try:
        yield registry
    finally:
        set_registry(previous)


def tiny_generator(
    seed: int = 0,
    alphabet: str = TINY_ALPHABET,
    max_positions: int = 128,
    registry: Registry | None = None,
    eos_token: str | None = None,
) -> Generator:
    """Build a Generator over a small randomly initialised toy GPT with a character tokenizer.

    The model is real (every forward pass runs), only untrained; same ``seed``,
    same weights. ``eos_token`` makes one character of the alphabet the EOS token.
    """
    from genkit.models.toy import ToyConfig, ToyGPT

    tokenizer = CharTokenizer(list(alphabet))
    if eos_token is not None:
        tokenizer.eos_token_id = tokenizer.stoi[eos_token]
    generator = torch.Generator().manual_seed(seed)
    config = ToyConfig(vocab_size=tokenizer.vocab_size, n_positions=max_positions, n_layer=2, n_head=2, n_embd=32)
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        model = ToyGPT(config).eval()
    loaded = LoadedModel(name=f"tiny-toy-{seed}", model_type="genkit-toy", model=model, tokenizer=tokenizer)
    return Generator(loaded, registry)


def request_context(
    vocab_size: int = 100,
    batch_size: int = 1,
    prompt_length: int = 1,
    tokenizer: Any = None,
    eos_token_ids: tuple[int, ...] = (),
    **config: Any,
) -> RequestContext:
    """Build a RequestContext for calling a plugin's ``build`` function directly."""
    generation_config = GenerationConfig.build(None, None, **config)
    return RequestContext(
        config=generation_config,
        tokenizer=tokenizer or CharTokenizer([chr(0x100 + i) for i in range(vocab_size)]),
        shape=ModelShape(n_layers=1, n_heads=1, head_dim=1, vocab_size=vocab_size, max_positions=1024),
        batch_size=batch_size,
        prompt_length=prompt_length,
        max_length=prompt_length + (generation_config.max_new_tokens or 20),
        device=torch.device("cpu"),
        dtype=torch.float32,
        eos_token_ids=eos_token_ids,
        pad_token_id=eos_token_ids[0] if eos_token_ids else 0,
    )


def run_processor(
    processor: Any,
    scores: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    registry: Registry | None = None,
    processor_options: dict[str, Any] | None = None,
    **options: Any,
) -> torch.Tensor:
    """Apply a logits processor to ``scores`` (``(batch, vocab)``) and return the result.

    ``processor`` is a processor object or a registered name (looked up in
    ``registry``, default: the process-wide one). A name is built through its
    plugin's ``build`` as the planner builds it: ``options`` become generation
    config fields and ``processor_options`` the keyword arguments of ``build``,
    as in a ``("name", {...})`` entry of ``logits_processors``. ``input_ids``
    defaults to one token (id 0) per row. ``scores`` is copied first, so a
    processor that writes in place leaves the caller's tensor unchanged.
    """
    scores = scores.float()
    batch, vocab = scores.shape
    if input_ids is None:
        input_ids = torch.zeros(batch, 1, dtype=torch.long, device=scores.device)
    if isinstance(processor, str):
        from genkit.registry import get_registry

        spec = (registry or get_registry()).lookup("processors", processor).spec
        ctx = request_context(vocab_size=vocab, batch_size=batch, prompt_length=input_ids.shape[1], **options)
        built = spec.build(ctx, **(processor_options or {}))
        if built is None:
            raise ValueError(
                f"processor {processor!r} is off for options {options} and processor_options {processor_options}; "
                "set the parameter that turns it on"
            )
        processor = built
    elif options or processor_options:
        raise TypeError(
            f"run_processor got options {sorted({**options, **(processor_options or {})})} with a processor object; "
            "options only apply when the processor is given by name, so configure the object instead"
        )
    return processor(input_ids, scores.clone())


def run_sampler(
    sampler: Any,
    scores: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    seed: int | None = None,
    registry: Registry | None = None,
    **options: Any,
) -> torch.Tensor:
    """Draw one token per row of ``scores`` (``(batch, vocab)``) with a sampler and return the ``(batch,)`` tokens.

    ``sampler`` is a sampler object or a registered name (looked up in
    ``registry``, default: the process-wide one). A name is built as the planner
    builds it, ``build(ctx, **sampler_options)`` with ``options`` as generation
    config fields (``sampler_options={...}`` among them), and then reset. A
    sampler object is called as it is, without a reset. ``seed`` seeds a fresh
    ``torch.Generator`` on the device of ``scores``; None passes no generator,
    so the sampler uses the global RNG. ``input_ids`` defaults to one token
    (id 0) per row.
    """
    scores = scores.float()
    batch, vocab = scores.shape
    if input_ids is None:
        input_ids = torch.zeros(batch, 1, dtype=torch.long, device=scores.device)
    if isinstance(sampler, str):
        from genkit.registry import get_registry

        spec = (registry or get_registry()).lookup("samplers", sampler).spec
        ctx = request_context(vocab_size=vocab, batch_size=batch, prompt_length=input_ids.shape[1], **options)
        sampler = spec.build(ctx, **ctx.config.sampler_options)
        reset = getattr(sampler, "reset", None)
        if callable(reset):
            reset()
    elif options:
        raise TypeError(
            f"run_sampler got generation options {sorted(options)} with a sampler object; "
            "options only apply when the sampler is given by name, so configure the object instead"
        )

    generator = None
    if seed is not None:
        generator = torch.Generator(device=scores.device).manual_seed(seed)
    return sampler(input_ids, scores.clone(), generator)


def write_distribution(folder: Path, name: str, version: str, entry_point: str, module: str, source: str) -> Path:
    """Write a minimal installed distribution into ``folder`` with the ``genkit`` entry point ``entry_point = module``.

    The distribution's ``.dist-info`` folder and ``module.py`` (containing ``source``)
    are real files, so with ``folder`` on ``sys.path`` the registry finds the entry
    point through ``importlib.metadata`` exactly as it finds a pip-installed plugin.
    Returns ``folder``.
    """
    folder = Path(folder)
    dist_info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist_info / "entry_points.txt").write_text(f"[genkit]\n{entry_point} = {module}\n")
    (folder / f"{module}.py").write_text(source)
    return folder

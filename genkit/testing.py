"""Helpers for testing genkit plugins with real components.

>>> from genkit.testing import plugin_registered, run_processor, tiny_generator
>>> with plugin_registered(my_plugin_module) as registry:
...     gen = tiny_generator(registry=registry)
...     gen.generate("ab", logits_processors=["my_processor"], max_new_tokens=5)
"""

from __future__ import annotations

import contextlib
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
    ``plugin``; it is also the process-wide default until the block ends.
    """
    registry = Registry.load(entry_points=builtins, plugins=[(name, plugin)], strict=True)
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
    **options: Any,
) -> torch.Tensor:
    """Apply a logits processor to ``scores`` (``(batch, vocab)``) and return the result.

    ``processor`` is a processor object or a registered name; a name is built
    through its plugin's ``build`` with ``options`` as generation config fields.
    ``input_ids`` defaults to one token (id 0) per row.
    """
    scores = scores.float()
    batch, vocab = scores.shape
    if input_ids is None:
        input_ids = torch.zeros(batch, 1, dtype=torch.long)
    if isinstance(processor, str):
        from genkit.registry import get_registry

        spec = (registry or get_registry()).lookup("processors", processor).spec
        ctx = request_context(vocab_size=vocab, batch_size=batch, prompt_length=input_ids.shape[1], **options)
        built = spec.build(ctx)
        if built is None:
            raise ValueError(f"processor {processor!r} is off for options {options}; set its parameter")
        processor = built
    return processor(input_ids, scores.clone())

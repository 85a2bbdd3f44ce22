"""Built-in model loaders: native GPT-2 (Hugging Face format) and the toy GPT."""

from __future__ import annotations

from genkit.hookspecs import hookimpl
from genkit.specs import ModelSpec


def load_gpt2(folder, config, device, dtype):
    from genkit.models.gpt2 import load_gpt2 as load

    return load(folder=folder, config=config, device=device, dtype=dtype)


def load_toy(folder, config, device, dtype):
    from genkit.models.toy import load_toy as load

    return load(folder=folder, config=config, device=device, dtype=dtype)


@hookimpl
def register_models(register):
    register(ModelSpec("gpt2", load_gpt2, "GPT-2 checkpoints in Hugging Face format, run by genkit's own GPT-2"))
    register(ModelSpec("genkit-toy", load_toy, "the from-scratch teaching GPT with a character tokenizer"))

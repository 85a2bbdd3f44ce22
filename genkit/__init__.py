"""genkit: a plugin-based, Hugging Face-compatible text generation framework.

>>> from genkit import Generator
>>> gen = Generator.from_pretrained()          # the shipped toy model
>>> print(gen.generate("ROMEO:", max_new_tokens=40).text)
"""

from typing import Any

from genkit.errors import (
    CheckpointError,
    ConfigError,
    GenkitError,
    ModelNotFoundError,
    PluginError,
    PromptError,
    UnknownNameError,
)
__version__ = "0.1.0"

# Imported on first use, so that `import genkit` (and the CLI's start, where Ctrl-C
# may arrive) does not wait for torch and transformers.
_LAZY = {
    "GenerationConfig": "genkit.config",
    "GenerationResult": "genkit.engine",
    "GenerationStats": "genkit.engine",
    "Generator": "genkit.engine",
    "StreamEvent": "genkit.engine",
    "hookimpl": "genkit.hookspecs",
    "load_model": "genkit.models.loading",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'genkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "CheckpointError",
    "ConfigError",
    "GenerationConfig",
    "GenerationResult",
    "GenerationStats",
    "Generator",
    "GenkitError",
    "ModelNotFoundError",
    "PluginError",
    "PromptError",
    "StreamEvent",
    "UnknownNameError",
    "__version__",
    "hookimpl",
    "load_model",
]

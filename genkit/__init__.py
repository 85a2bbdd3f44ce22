"""genkit: a plugin-based, Hugging Face-compatible text generation framework.

>>> from genkit import Generator
>>> gen = Generator.from_pretrained()          # the shipped toy model
>>> print(gen.generate("ROMEO:", max_new_tokens=40).text)
"""

from genkit.config import GenerationConfig
from genkit.engine import GenerationResult, GenerationStats, Generator, StreamEvent
from genkit.errors import (
    CheckpointError,
    ConfigError,
    GenkitError,
    ModelNotFoundError,
    PluginError,
    PromptError,
    UnknownNameError,
)
from genkit.hookspecs import hookimpl
from genkit.models.loading import load_model

__version__ = "0.1.0"

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

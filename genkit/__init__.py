"""genkit: a plugin-based, Hugging Face-compatible text generation framework."""

from genkit.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["hookimpl", "__version__"]

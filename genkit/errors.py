"""Exceptions raised by genkit.

Every error that a user can cause derives from :class:`GenkitError`, so the CLI
can print it as one line, and each also derives from the built-in exception a
Python caller would expect (``ValueError``, ``FileNotFoundError``, ``KeyError``).
"""

from __future__ import annotations


class GenkitError(Exception):
    """Base class of every error genkit raises on bad input or a broken plugin."""


class ConfigError(GenkitError, ValueError):
    """A generation or training parameter is invalid: the message names the field, value and allowed range."""


class PromptError(ConfigError):
    """A prompt is empty or does not fit the model's context window."""


class ModelNotFoundError(GenkitError, FileNotFoundError):
    """A model path or hub id could not be resolved to a checkpoint folder."""


class CorpusNotFoundError(GenkitError, FileNotFoundError):
    """The text file given to train the toy model does not exist."""


class CheckpointError(GenkitError, ValueError):
    """A checkpoint folder is incomplete or one of its files is unreadable."""


class UnknownNameError(GenkitError, KeyError):
    """A processor, sampler, stopping criterion, cache or model type is not registered."""

    def __str__(self) -> str:
        # KeyError quotes its message; a plain message reads better on the CLI.
        return str(self.args[0]) if self.args else ""


class PluginError(GenkitError, RuntimeError):
    """A plugin failed to load, registered a name twice, or raised while building a component."""


class DuplicateNameError(PluginError):
    """Two plugins registered a component under the same name."""


class GenerationError(GenkitError, RuntimeError):
    """Generation could not continue, e.g. every token was masked before sampling."""

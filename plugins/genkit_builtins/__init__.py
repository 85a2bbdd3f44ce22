"""genkit's first-party plugins.

They are an ordinary plugin package: each module below is announced in the
``genkit`` entry-point group of genkit's ``pyproject.toml`` and registers its
components through the same hooks a third-party package implements.
"""

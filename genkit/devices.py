"""Check a requested torch device before any weights are moved to it."""

from __future__ import annotations

import torch

from genkit.errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return ``device`` as a ``torch.device`` that this machine can run, CPU when None.

    Raises :class:`ConfigError` for a malformed name, for CUDA or MPS where that
    backend is not available, and for devices that cannot hold real weights (meta).
    """
    if device is None:
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid device {device!r}: expected e.g. 'cpu', 'cuda' or 'cuda:1'") from exc

    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return resolved
    if resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {device!r} requested but MPS is not available here; use --device cpu")
        return resolved
    raise ConfigError(f"device {device!r} is not supported for generation; use 'cpu', 'cuda' or 'mps'")

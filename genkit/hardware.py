"""The physical limit of decoding: bytes read per decode step and the machine's memory bandwidth.

A decode step of batch size B reads every weight matrix once and the whole KV
cache once, while it computes only about two multiply-adds per weight and row.
For small batches it is therefore bound by memory bandwidth, and
``bytes read per step x steps per second`` divided by the measured bandwidth shows
how close an implementation gets to that bound.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

from genkit.errors import ConfigError
from genkit.models.base import ModelShape

DEFAULT_BANDWIDTH_BYTES = 1 << 30  # 1 GiB: far larger than any CPU cache
DEFAULT_BANDWIDTH_REPEATS = 5


@dataclass
class BandwidthResult:
    """Memory read bandwidth from the best of ``repeats`` reductions over a ``size_bytes`` float32 tensor."""

    bytes_per_s: float
    size_bytes: int
    repeats: int
    best_s: float
    device: str
    method: str = "torch.sum over one float32 tensor, best of repeats"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_memory_bandwidth(
    size_bytes: int = DEFAULT_BANDWIDTH_BYTES,
    repeats: int = DEFAULT_BANDWIDTH_REPEATS,
    device: str | torch.device = "cpu",
) -> BandwidthResult:
    """Measure read bandwidth as ``size_bytes / t`` for the fastest of ``repeats`` ``torch.sum`` calls.

    The reduction reads every element once and writes one number, so its time is
    the time to stream the tensor from memory. The best run is kept because
    slower runs measure interference (other processes, page faults on first
    touch), not the memory. The result uses the threads torch is set to use.
    """
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes < 4096:
        raise ConfigError(f"invalid bandwidth tensor size {size_bytes!r} bytes: expected an integer >= 4096")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"invalid bandwidth repeats {repeats!r}: expected an integer >= 1")
    device = torch.device(device)

    data = torch.ones(size_bytes // 4, dtype=torch.float32, device=device)  # also touches every page once
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        data.sum()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    measured = data.numel() * data.element_size()
    del data
    return BandwidthResult(measured / best, measured, repeats, best, str(device))


def weight_bytes_per_step(model: nn.Module, batch_size: int) -> int:
    """Return the bytes of parameters one decode step of ``batch_size`` rows reads.

    Every parameter is read once, except an embedding table that no other module
    shares: a step reads only one row of it per batch row. A table tied to the
    output head (GPT-2) is read in full by the head.
    """
    # Parameters are keyed by storage address so that a tied matrix counts once.
    embeddings = {
        module.weight.data_ptr(): module.weight for module in model.modules() if isinstance(module, nn.Embedding)
    }
    used_elsewhere = {
        param.data_ptr()
        for module in model.modules()
        if not isinstance(module, nn.Embedding)
        for param in module.parameters(recurse=False)
    }
    total = 0
    seen = set()
    for param in model.parameters():
        address = param.data_ptr()
        if address in seen:
            continue
        seen.add(address)
        if address in embeddings and address not in used_elsewhere:
            total += min(batch_size, param.shape[0]) * param.shape[1] * param.element_size()
        else:
            total += param.numel() * param.element_size()
    return total


def kv_bytes_per_position(shape: ModelShape, dtype: torch.dtype) -> int:
    """Return the bytes of keys and values that one token position of one row stores over all layers."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * shape.n_layers * shape.n_heads * shape.head_dim * element


def decode_bytes_per_step(
    model: nn.Module, shape: ModelShape, dtype: torch.dtype, batch_size: int, prompt_length: int, new_tokens: int
) -> dict[str, float]:
    """Estimate the bytes one decode step reads, averaged over the decode steps of one request.

    The step that produces token ``i`` (``i`` = 2 .. new_tokens) reads the keys and
    values of ``prompt_length + i - 1`` positions, so the average context is
    ``prompt_length + new_tokens / 2``. This is a lower bound: activations, the
    logits, and the copy a concatenating cache makes when it grows are not counted.
    """
    weights = weight_bytes_per_step(model, batch_size)
    average_context = prompt_length + new_tokens / 2
    kv = batch_size * average_context * kv_bytes_per_position(shape, dtype)
    return {"weight_bytes": float(weights), "kv_cache_bytes": float(kv), "total_bytes": float(weights + kv)}

"""The int8 KV cache: keys and values stored as symmetric int8 with one float32 scale per token and head.

Each stored vector ``x`` (one position of one head, ``head_dim`` values) becomes
``q = round(x / s)`` with ``s = max|x| / 127``, and reads back as ``q * s``.
The scale is per token (per position and head) rather than per channel, because
a decode step writes one token at a time. A token's scale is then fixed when it
is written and never revised. A per-channel scale fixed at prefill would clip
any later token that exceeds the prefill's range. The scales are float32 for their
range and precision, at 4 bytes per ``head_dim`` values (6% of the int8 data at
``head_dim`` 64).
"""

from __future__ import annotations

import torch

from genkit.caches.base import CacheCapacityError, CacheUsage, ReadBackKVCache, tensor_bytes

INT8_MAX = 127
# A vector of zeros gets this scale instead of 0, so quantizing never divides by zero.
MIN_SCALE = 1e-12


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return int8 values and float32 scales of ``x`` (..., hs), one scale per vector of the last dimension."""
    x = x.float()
    scale = (x.abs().amax(dim=-1, keepdim=True) / INT8_MAX).clamp(min=MIN_SCALE)  # (..., 1)
    q = torch.round(x / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)  # (..., hs)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Return ``q * scale`` in ``dtype``."""
    return (q.float() * scale).to(dtype)


class Int8KVCache(ReadBackKVCache):
    """Preallocates int8 keys and values for ``max_length`` positions, like the static cache, plus their scales.

    Attention dequantizes the stored prefix of a layer and runs SDPA over it,
    except for prefill into an empty cache, which attends over the unquantized
    prompt keys and values. Output is therefore not identical to the exact
    backends; the quality benchmark measures by how much.
    """

    name = "int8"
    exact = False

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        head_dim: int,
        max_length: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        shape = (batch_size, n_heads, max_length, head_dim)
        scale_shape = (batch_size, n_heads, max_length, 1)
        self.max_length = max_length
        self.dtype = dtype
        self.keys = [torch.zeros(shape, dtype=torch.int8, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=torch.int8, device=device) for _ in range(n_layers)]
        self.key_scales = [torch.zeros(scale_shape, dtype=torch.float32, device=device) for _ in range(n_layers)]
        self.value_scales = [torch.zeros(scale_shape, dtype=torch.float32, device=device) for _ in range(n_layers)]
        self.lengths = [0] * n_layers

    def _write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> int:
        """Quantize and store ``key``/``value``; return the layer's new length."""
        start = self.lengths[layer]
        end = start + key.shape[2]
        if end > self.max_length:
            raise CacheCapacityError(
                f"int8 KV cache overflow: a sequence needs {end} positions but {self.max_length} are "
                "allocated; raise cache_options max_length or lower max_new_tokens"
            )
        q, scale = quantize(key)
        self.keys[layer][:, :, start:end] = q
        self.key_scales[layer][:, :, start:end] = scale
        q, scale = quantize(value)
        self.values[layer][:, :, start:end] = q
        self.value_scales[layer][:, :, start:end] = scale
        self.lengths[layer] = end
        return end

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self._write(layer, key, value)
        # (B, nh, L, hs) in the model's dtype: the dequantized prefix, a new tensor each call.
        keys = dequantize(self.keys[layer][:, :, :end], self.key_scales[layer][:, :, :end], key.dtype)
        values = dequantize(self.values[layer][:, :, :end], self.value_scales[layer][:, :, :end], value.dtype)
        return keys, values

    def length(self, layer: int = 0) -> int:
        return self.lengths[layer]

    def usage(self) -> CacheUsage:
        rows = self.keys[0].shape[0] if self.keys else 0
        held = tensor_bytes(*self.keys, *self.values, *self.key_scales, *self.value_scales)
        return CacheUsage(
            allocated_slots=rows * self.max_length, used_slots=rows * self.lengths[0], bytes=held, pool_bytes=held
        )

    def select_rows(self, rows: torch.Tensor) -> bool:
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.key_scales = [s.index_select(0, rows) for s in self.key_scales]
        self.value_scales = [s.index_select(0, rows) for s in self.value_scales]
        return True

    def release(self) -> None:
        # New empty tensors: a zero-row view would keep the old storage alive.
        self.keys = [k.new_empty((0, *k.shape[1:])) for k in self.keys]
        self.values = [v.new_empty((0, *v.shape[1:])) for v in self.values]
        self.key_scales = [s.new_empty((0, *s.shape[1:])) for s in self.key_scales]
        self.value_scales = [s.new_empty((0, *s.shape[1:])) for s in self.value_scales]

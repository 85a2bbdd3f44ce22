"""The sliding-window KV cache: attention sinks plus the most recent positions (StreamingLLM).

The cache keeps the keys and values of each row's first ``sinks`` real tokens and
of its last ``window`` positions, and drops the rest. Xiao et al., "Efficient
Streaming Language Models with Attention Sinks" (2023, arXiv:2309.17453) found that
models put much attention on the first tokens whatever their content. Keeping
those few "sinks" lets a window cache run far past the trained length, where a
plain window breaks down as soon as they are evicted.

Storage is a ring buffer of ``sinks + window`` slots per row and layer: the sinks
in the first slots, then the window slots reused in turn. SDPA does not care
about the order of keys, so a decode step writes one slot and reads the buffer
in place, without copying. The model's mask is over logical positions, and the
cache picks the columns of the positions its slots hold.

Position ids: GPT-2 and the toy model add a learned absolute position embedding
to the input, so the position of a stored key is baked into it and cannot be
changed later. Past the model's ``max_positions``, :meth:`SlidingWindowKVCache.position_ids`
clamps new position ids to ``max_positions - 1``: every later token is embedded
at the last trained position, while the kept keys keep the positions they were
written with.

Shapes in comments: B batch rows, nh heads, hs head size, T new positions in
this forward pass, K key columns read, C slots per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genkit.caches.base import CacheCapacityError, CacheUsage, KVCache, tensor_bytes
from genkit.errors import ConfigError

DEFAULT_SINKS = 4  # the number of sink tokens that Xiao et al. (2023) found enough


class SlidingWindowKVCache(KVCache):
    """Keeps the first ``sinks`` real tokens and the last ``window`` positions of each row.

    A decode step attends over the sinks and the last ``window`` positions, its
    own included. A forward pass of several new positions (prefill) attends over
    what the cache held before it plus all of its own positions, so a prompt
    longer than ``sinks + window`` is attended exactly and trimmed afterwards.

    Left padding is not stored, and the sinks are the first real tokens of each
    row: row ``r`` with ``padding_lengths[r]`` padding positions stores its
    ``i``-th real token in slot ``i`` while ``i < sinks``, and in ring slot
    ``sinks + (i - sinks) % window`` after that. With ``padding_lengths`` unknown
    (empty), padding positions count as real tokens, which is still correct but
    makes padding the sinks of padded rows.
    """

    name = "sliding"
    exact = False
    extends_context = True

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        head_dim: int,
        window: int,
        sinks: int,
        max_length: int,
        dtype: torch.dtype,
        device: torch.device,
        padding_lengths: tuple[int, ...] = (),
    ):
        if padding_lengths and len(padding_lengths) != batch_size:
            raise ConfigError(
                f"padding_lengths has {len(padding_lengths)} entries for a batch of {batch_size} rows; "
                "pass one entry per row, or none"
            )
        self.window = window
        self.sinks = sinks
        # A request shorter than sinks + window never evicts, so it gets only the slots it can fill.
        self.capacity = min(sinks + window, max_length)
        shape = (batch_size, n_heads, self.capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.slot_positions = torch.full((batch_size, self.capacity), -1, dtype=torch.long, device=device)  # -1: empty
        self.padding = list(padding_lengths) or [0] * batch_size
        self.filled = [0] * batch_size  # slots in use per row
        self.lengths = [0] * n_layers  # logical positions fed per layer
        self.table_length = 0  # logical positions that slot_positions covers

        # Set by _prepare once per forward pass, shared by every layer.
        self.write_rows = self.write_slots = self.write_sources = torch.zeros(0, dtype=torch.long, device=device)
        self.read_count = 0  # buffer slots that the pass's attention reads
        self.read_columns = torch.zeros((batch_size, 0), dtype=torch.long, device=device)  # (B, K) logical positions
        self.read_mask: torch.Tensor | None = None  # (B, 1, T, K) bool, or None
        self.mask_source: torch.Tensor | None = None  # the model mask read_mask was computed from

    def _slot(self, index: int) -> int:
        """Return the slot of a row's ``index``-th real token."""
        if index < self.sinks:
            return index
        return self.sinks + (index - self.sinks) % self.window

    def _prepare(self, new: int, mask: torch.Tensor | None) -> None:
        """Assign slots to the pass's ``new`` positions and pick the mask columns the pass reads.

        Runs once per forward pass, at the first layer, because every layer stores
        the same positions in the same slots.
        """
        start = self.table_length
        rows: list[int] = []
        slots: list[int] = []
        sources: list[int] = []
        for row in range(len(self.filled)):
            # Positions later in the pass overwrite earlier ones in the same ring slot: keep the last.
            last_source: dict[int, int] = {}
            for offset in range(new):
                index = start + offset - self.padding[row]
                if index >= 0:
                    last_source[self._slot(index)] = offset
            for slot, offset in last_source.items():
                rows.append(row)
                slots.append(slot)
                sources.append(offset)
            real = max(0, start + new - self.padding[row])
            self.filled[row] = min(real, self.sinks + self.window)

        needed = max(self.filled, default=0)
        if needed > self.capacity:
            raise CacheCapacityError(
                f"sliding KV cache overflow: a row needs {needed} slots but {self.capacity} are allocated, "
                f"because the cache was built for a max_length of {self.capacity} positions; build it with a "
                "larger max_length (prompt + max_new_tokens)"
            )

        device = self.slot_positions.device
        before = self.slot_positions
        self.write_rows = torch.tensor(rows, dtype=torch.long, device=device)
        self.write_slots = torch.tensor(slots, dtype=torch.long, device=device)
        self.write_sources = torch.tensor(sources, dtype=torch.long, device=device)
        after = before.clone()
        after[self.write_rows, self.write_slots] = self.write_sources + start
        self.slot_positions = after
        self.table_length = start + new

        # A single new position is written first and then read from the buffer. Several
        # new positions are read beside the buffer as it was before the pass, so all of them are visible.
        if new == 1:
            self.read_count = max(self.filled, default=0)
            columns = after[:, : self.read_count]  # (B, K)
        else:
            self.read_count = int((before >= 0).sum(dim=1).max()) if before.numel() else 0
            new_columns = torch.arange(start, start + new, device=device).expand(len(self.filled), new)
            columns = torch.cat([before[:, : self.read_count], new_columns], dim=1)  # (B, K)
        self.read_columns = columns
        self.read_mask = self._pick_mask(mask, columns, start, new)
        self.mask_source = mask

    def _pick_mask(self, mask: torch.Tensor | None, columns: torch.Tensor, start: int, new: int) -> torch.Tensor | None:
        """Return the ``(B, 1, T, K)`` mask over the key ``columns`` (logical positions, -1 for empty slots)."""
        B, K = columns.shape
        stored = columns >= 0  # (B, K)
        if mask is None:
            every_slot_full = bool(stored.all())
            if new == 1 and every_slot_full:
                return None  # one query attends to every kept key
            if start == 0 and self.read_count == 0:
                return None  # plain causal attention over the new positions
            query_positions = torch.arange(start, start + new, device=columns.device)  # (T,)
            visible = columns[:, None, None, :] <= query_positions[None, None, :, None]  # (B, 1, T, K)
            return visible & stored[:, None, None, :]
        full = mask.expand(B, 1, new, mask.shape[-1])  # (B, 1, T, start + T)
        picked = full.gather(3, columns.clamp(min=0)[:, None, None, :].expand(B, 1, new, K))  # (B, 1, T, K)
        return picked & stored[:, None, None, :]

    def _write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        # (N, nh, hs) for the N (row, slot) pairs of this pass.
        self.keys[layer][self.write_rows, :, self.write_slots] = key[self.write_rows, :, self.write_sources]
        self.values[layer][self.write_rows, :, self.write_slots] = value[self.write_rows, :, self.write_sources]

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        new = key.shape[2]
        if self.lengths[layer] + new > self.table_length:
            self._prepare(self.lengths[layer] + new - self.table_length, mask)
        elif mask is not self.mask_source:
            # The models pass one mask object to every layer, so this runs only for a model that does not.
            self.read_mask = self._pick_mask(mask, self.read_columns, self.table_length - new, new)
            self.mask_source = mask
        self.lengths[layer] += new
        count = self.read_count

        if new == 1:
            self._write(layer, key, value)
            keys = self.keys[layer][:, :, :count]  # (B, nh, K, hs), a view
            values = self.values[layer][:, :, :count]
            return F.scaled_dot_product_attention(query, keys, values, attn_mask=self.read_mask)

        keys = torch.cat([self.keys[layer][:, :, :count], key], dim=2)  # (B, nh, K, hs)
        values = torch.cat([self.values[layer][:, :, :count], value], dim=2)
        causal = self.read_mask is None
        output = F.scaled_dot_product_attention(query, keys, values, attn_mask=self.read_mask, is_causal=causal)
        self._write(layer, key, value)
        return output

    def length(self, layer: int = 0) -> int:
        return self.lengths[layer]

    def position_ids(self, position_ids: torch.Tensor, max_positions: int) -> torch.Tensor:
        """Clamp position ids to ``max_positions - 1``, the last position the model has an embedding for."""
        return position_ids.clamp(max=max_positions - 1)

    def usage(self) -> CacheUsage:
        rows = len(self.filled)
        held = tensor_bytes(*self.keys, *self.values)
        return CacheUsage(
            allocated_slots=rows * self.capacity, used_slots=sum(self.filled), bytes=held, pool_bytes=held
        )

    def select_rows(self, rows: torch.Tensor) -> bool:
        keep = rows.tolist()
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.slot_positions = self.slot_positions.index_select(0, rows)
        self.padding = [self.padding[row] for row in keep]
        self.filled = [self.filled[row] for row in keep]
        return True

    def release(self) -> None:
        # New empty tensors: a zero-row view would keep the old storage alive.
        self.keys = [k.new_empty((0, *k.shape[1:])) for k in self.keys]
        self.values = [v.new_empty((0, *v.shape[1:])) for v in self.values]
        self.slot_positions = self.slot_positions[:0].clone()
        self.padding = []
        self.filled = []

"""The paged KV cache: fixed-size blocks from a shared pool, addressed through a block table per sequence.

Memory grows one block at a time as a sequence grows, so a sequence holds at
most one partly filled block, and blocks go back to the pool when the sequence
finishes. The price is an indirection: attention gathers each row's blocks
into contiguous keys and values before running SDPA.

Shapes in comments: B batch rows, nh heads, hs head size, T new positions in
this forward pass, L logical positions after it.
"""

from __future__ import annotations

import math

import torch

from genkit.caches.base import CacheCapacityError, CacheUsage, ReadBackKVCache, tensor_bytes
from genkit.errors import ConfigError


class BlockPool:
    """Preallocated key and value storage for ``num_blocks`` blocks of ``block_size`` positions, in every layer.

    The pool tensors are allocated once, at full size, and never grow. A
    preallocated pool keeps every block id valid for the life of the request, so
    no step copies old blocks into a larger tensor, and an out-of-memory error
    happens when the cache is built, not halfway through a request. The price is
    that ``pool_bytes`` is reserved from the start; ``num_blocks`` sizes it.

    Storage is slot-major, ``(num_blocks * block_size, nh, hs)`` per layer: slot
    ``block * block_size + offset`` is one position, so a block table turns into
    slot indices with one multiply-add.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        n_layers: int,
        n_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (num_blocks * block_size, n_heads, head_dim)
        # Zeros, not torch.empty: a gathered padding column is masked out, but SDPA
        # still multiplies its value by a zero weight, and 0 * NaN is NaN.
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.free_blocks = list(range(num_blocks - 1, -1, -1))  # popped from the end: block 0 first
        self.block_bytes = tensor_bytes(*self.keys, *self.values) // num_blocks

    @property
    def pool_bytes(self) -> int:
        return self.block_bytes * self.num_blocks

    @property
    def blocks_in_use(self) -> int:
        return self.num_blocks - len(self.free_blocks)

    def allocate(self) -> int:
        """Hand out one free block id; raise :class:`CacheCapacityError` when none is left."""
        if not self.free_blocks:
            raise CacheCapacityError(
                f"paged KV cache pool exhausted: all {self.num_blocks} block(s) of {self.block_size} positions "
                f"are in use; raise cache_options num_blocks (now {self.num_blocks}), "
                "or lower max_new_tokens or the batch size"
            )
        return self.free_blocks.pop()

    def free(self, blocks: list[int]) -> None:
        """Return ``blocks`` to the pool."""
        self.free_blocks.extend(reversed(blocks))


class PagedKVCache(ReadBackKVCache):
    """Stores each sequence's keys and values in blocks taken from a :class:`BlockPool` on demand.

    Left padding takes no storage: row ``r`` with ``padding_lengths[r]`` padding
    positions stores logical position ``p`` at its slot ``p - padding_lengths[r]``.
    A padding column of the attention read gathers some stored slot instead, and
    the model's mask hides it. With ``padding_lengths`` unknown (empty), padding
    positions are stored like real ones, which is also correct.
    """

    name = "paged"

    def __init__(self, pool: BlockPool, batch_size: int, n_layers: int, padding_lengths: tuple[int, ...] = ()):
        if padding_lengths and len(padding_lengths) != batch_size:
            raise ConfigError(
                f"padding_lengths has {len(padding_lengths)} entries for a batch of {batch_size} rows; "
                "pass one entry per row, or none"
            )
        self.pool = pool
        self.block_size = pool.block_size
        self.block_tables: list[list[int]] = [[] for _ in range(batch_size)]
        self.padding = list(padding_lengths) or [0] * batch_size
        self.stored = [0] * batch_size  # positions written per row (padding excluded)
        self.lengths = [0] * n_layers  # logical positions fed per layer
        device = pool.keys[0].device
        # (B, L): the pool slot that each logical position reads; refreshed once per forward pass.
        self.read_slots = torch.zeros((batch_size, 0), dtype=torch.long, device=device)
        self.write_slots = torch.zeros(0, dtype=torch.long, device=device)  # pool slots of this pass's new positions
        self.write_rows: torch.Tensor | None = None  # rows of the flattened (B*T) input to write; None: all
        self.table_length = 0  # logical positions that read_slots covers

    def _prepare(self, new: int) -> None:
        """Allocate blocks for ``new`` more positions of every row and compute the pass's slots.

        Runs once per forward pass, at the first layer, because every layer stores
        the same positions in the same slots.
        """
        start = self.table_length
        block_size = self.block_size
        read_new: list[list[int]] = []
        write_slots: list[int] = []
        write_rows: list[int] = []
        for row, table in enumerate(self.block_tables):
            row_read = []
            for offset in range(new):
                slot_index = start + offset - self.padding[row]
                if slot_index < 0:
                    # Left padding: read slot 0, which contains finite values, and the mask hides the column.
                    row_read.append(0)
                    continue
                if slot_index == len(table) * block_size:
                    table.append(self.pool.allocate())
                slot = table[slot_index // block_size] * block_size + slot_index % block_size
                row_read.append(slot)
                write_slots.append(slot)
                write_rows.append(row * new + offset)
            self.stored[row] = max(0, start + new - self.padding[row])
            read_new.append(row_read)

        device = self.read_slots.device
        self.read_slots = torch.cat([self.read_slots, torch.tensor(read_new, dtype=torch.long, device=device)], dim=1)
        self.write_slots = torch.tensor(write_slots, dtype=torch.long, device=device)
        everything = len(write_rows) == len(self.block_tables) * new
        self.write_rows = None if everything else torch.tensor(write_rows, dtype=torch.long, device=device)
        self.table_length = start + new

    def _write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Write the new ``key``/``value`` of ``layer`` into their rows' blocks."""
        B, nh, T, hs = key.shape
        if self.lengths[layer] + T > self.table_length:
            self._prepare(self.lengths[layer] + T - self.table_length)
        self.lengths[layer] += T

        flat_keys = key.transpose(1, 2).reshape(B * T, nh, hs)  # (B*T, nh, hs), row-major like write_rows
        flat_values = value.transpose(1, 2).reshape(B * T, nh, hs)
        if self.write_rows is not None:
            flat_keys = flat_keys.index_select(0, self.write_rows)  # left padding takes no slot
            flat_values = flat_values.index_select(0, self.write_rows)
        self.pool.keys[layer].index_copy_(0, self.write_slots, flat_keys)
        self.pool.values[layer].index_copy_(0, self.write_slots, flat_values)

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._write(layer, key, value)

        # Gather every row's blocks into contiguous keys and values over the logical positions.
        slots = self.read_slots[:, : self.lengths[layer]]  # (B, L)
        keys = self.pool.keys[layer][slots].transpose(1, 2)  # (B, L, nh, hs) -> (B, nh, L, hs)
        values = self.pool.values[layer][slots].transpose(1, 2)
        return keys, values

    def length(self, layer: int = 0) -> int:
        return self.lengths[layer]

    def usage(self) -> CacheUsage:
        blocks = sum(len(table) for table in self.block_tables)
        return CacheUsage(
            allocated_slots=blocks * self.block_size,
            used_slots=sum(self.stored),
            bytes=blocks * self.pool.block_bytes,
            pool_bytes=self.pool.pool_bytes,
        )

    def select_rows(self, rows: torch.Tensor) -> bool:
        keep = rows.tolist()
        kept = set(keep)
        for row, table in enumerate(self.block_tables):
            if row not in kept:
                self.pool.free(table)
        self.block_tables = [self.block_tables[row] for row in keep]
        self.padding = [self.padding[row] for row in keep]
        self.stored = [self.stored[row] for row in keep]
        self.read_slots = self.read_slots.index_select(0, rows.to(self.read_slots.device))
        return True

    def release(self) -> None:
        for table in self.block_tables:
            self.pool.free(table)
        self.block_tables = [[] for _ in self.block_tables]
        self.stored = [0] * len(self.stored)
        self.lengths = [0] * len(self.lengths)
        self.read_slots = self.read_slots[:, :0]
        self.table_length = 0


def default_num_blocks(batch_size: int, max_length: int, block_size: int) -> int:
    """Return the pool size that fits ``batch_size`` sequences of ``max_length`` positions."""
    return batch_size * math.ceil(max_length / block_size)

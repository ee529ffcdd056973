"""Paged KV-cache block allocator: which physical blocks each sequence owns.

Bookkeeping on the host, shared by every layer: one block id names the same
slot range in every layer's cache. ``block_table()`` builds a table from the
host lists; ``device_rows()`` reads a table that lives on the device and is
patched in place with only the entries that changed since the last read.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


class OutOfBlocksError(RuntimeError):
    """The pool has fewer free blocks than a request needs (nothing was allocated)."""


class BlockAllocator:
    """Allocates blocks of ``block_size`` positions from a pool of ``num_blocks``.

    A sequence has a *length* (positions holding committed tokens) and a
    *capacity* (its blocks times ``block_size``). ``reserve`` grows capacity
    (e.g. for the tree tokens of a verify step), ``append`` commits tokens,
    ``truncate`` rolls the length back and frees the whole blocks past it,
    ``free`` returns everything. Allocation is all-or-nothing.
    """

    def __init__(self, num_blocks: int, block_size: int, max_blocks_per_seq: int | None = None):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if max_blocks_per_seq is not None and max_blocks_per_seq < 1:
            raise ValueError(f"max_blocks_per_seq must be >= 1 or None, got {max_blocks_per_seq}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.max_blocks_per_seq = max_blocks_per_seq
        # Popped from the end: low ids first, recently freed blocks reused first.
        self._free = list(range(num_blocks - 1, -1, -1))
        self._blocks: dict[Hashable, list[int]] = {}
        self._lengths: dict[Hashable, int] = {}
        self._table: _DeviceTable | None = None  # from the first device_rows() call on

    # -- queries ---------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def sequences(self) -> list:
        return list(self._blocks)

    def length(self, seq_id) -> int:
        return self._lengths[self._known(seq_id)]

    def capacity(self, seq_id) -> int:
        return len(self._blocks[self._known(seq_id)]) * self.block_size

    def blocks(self, seq_id) -> list[int]:
        return list(self._blocks[self._known(seq_id)])

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- changes ---------------------------------------------------------
    def add(self, seq_id, num_tokens: int = 0) -> None:
        """Start a sequence, with room for and length ``num_tokens``."""
        if seq_id in self._blocks:
            raise KeyError(f"sequence {seq_id!r} already exists")
        self._blocks[seq_id] = []
        self._lengths[seq_id] = 0
        try:
            self.append(seq_id, num_tokens)
        except Exception:
            del self._blocks[seq_id], self._lengths[seq_id]
            raise

    def reserve(self, seq_id, num_tokens: int) -> None:
        """Ensure capacity for ``num_tokens`` positions in total (never shrinks)."""
        blocks = self._blocks[self._known(seq_id)]
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        need = self.blocks_needed(num_tokens) - len(blocks)
        if need <= 0:
            return
        total = len(blocks) + need
        if self.max_blocks_per_seq is not None and total > self.max_blocks_per_seq:
            raise OutOfBlocksError(
                f"sequence {seq_id!r} needs {total} blocks for {num_tokens} tokens, "
                f"more than max_blocks_per_seq={self.max_blocks_per_seq}")
        if need > len(self._free):
            raise OutOfBlocksError(
                f"sequence {seq_id!r} needs {need} more blocks for {num_tokens} tokens; "
                f"{len(self._free)} of {self.num_blocks} are free")
        first = len(blocks)
        for _ in range(need):
            blocks.append(self._free.pop())
        if self._table is not None:
            self._table.write(seq_id, first, blocks[first:])

    def append(self, seq_id, num_tokens: int) -> int:
        """Commit ``num_tokens`` more tokens (reserving as needed); returns the
        position of the first."""
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        start = self.length(seq_id)
        self.reserve(seq_id, start + num_tokens)
        self._lengths[seq_id] = start + num_tokens
        return start

    def truncate(self, seq_id, new_length: int) -> None:
        """Roll back to ``new_length`` tokens and free the blocks past them
        (reserved-but-unused blocks included)."""
        length = self.length(seq_id)
        if not 0 <= new_length <= length:
            raise ValueError(f"new_length must be in [0, {length}] for sequence {seq_id!r}, got {new_length}")
        blocks = self._blocks[seq_id]
        keep = self.blocks_needed(new_length)
        if self._table is not None and len(blocks) > keep:
            self._table.write(seq_id, keep, [-1] * (len(blocks) - keep))
        while len(blocks) > keep:
            self._free.append(blocks.pop())
        self._lengths[seq_id] = new_length

    def free(self, seq_id) -> None:
        """Forget the sequence and return all its blocks to the pool."""
        blocks = self._blocks.pop(self._known(seq_id))
        del self._lengths[seq_id]
        if self._table is not None:
            self._table.release(seq_id, len(blocks))
        self._free.extend(reversed(blocks))

    # -- tensors for the kernels -------------------------------------------
    def block_table(self, seq_ids: Sequence, *, width: int | None = None, device="cpu") -> torch.Tensor:
        """int32 ``[len(seq_ids), width]`` block ids, -1 past each sequence's blocks.
        ``width`` defaults to the longest sequence's block count (at least 1)."""
        rows = [self._blocks[self._known(s)] for s in seq_ids]
        longest = max((len(r) for r in rows), default=0)
        width = max(longest, 1) if width is None else width
        if width < longest:
            raise ValueError(f"width={width} is less than the {longest} blocks of the longest sequence")
        table = torch.full((len(rows), width), -1, dtype=torch.int32)
        for i, r in enumerate(rows):
            table[i, : len(r)] = torch.tensor(r, dtype=torch.int32)
        return table.to(device)

    def device_rows(self, seq_ids: Sequence, width: int, device="cpu") -> torch.Tensor:
        """The same table as ``block_table(seq_ids, width=width)``, gathered on
        ``device`` from a table that lives there: each read first applies the
        entries changed since the previous one (one ``index_put_`` of the new
        and freed blocks), so a step's table costs O(len(seq_ids)) host work
        however long the sequences are. The first call fixes ``width`` and
        ``device``. Raises ``ValueError`` if a sequence holds more than
        ``width`` blocks."""
        for s in seq_ids:
            count = len(self._blocks[self._known(s)])
            if count > width:
                raise ValueError(f"sequence {s!r} holds {count} blocks, more than width={width}")
        if self._table is None:
            self._table = _DeviceTable(width, torch.device(device))
            for s, blocks in self._blocks.items():
                self._table.write(s, 0, blocks)
        table = self._table
        if (width, torch.device(device)) != (table.width, table.device):
            raise ValueError(f"this allocator's device table is {table.width} wide on {table.device} (fixed by "
                             f"its first device_rows call); got width={width} on {device}")
        return table.rows(seq_ids)

    def lengths(self, seq_ids: Sequence, *, device="cpu") -> torch.Tensor:
        """int32 ``[len(seq_ids)]`` committed lengths (the ``prefix_lens`` of the next step)."""
        return torch.tensor([self.length(s) for s in seq_ids], dtype=torch.int32, device=device)

    def check_invariants(self) -> None:
        """Every block is either free or owned by exactly one sequence."""
        owned = [b for blocks in self._blocks.values() for b in blocks]
        everything = sorted(owned + self._free)
        if everything != list(range(self.num_blocks)):
            raise AssertionError("block accounting is broken: blocks lost or owned twice")
        for s, blocks in self._blocks.items():
            if self._lengths[s] > len(blocks) * self.block_size:
                raise AssertionError(f"sequence {s!r} is longer than its capacity")

    def _known(self, seq_id):
        if seq_id not in self._blocks:
            raise KeyError(f"unknown sequence {seq_id!r}")
        return seq_id


class _DeviceTable:
    """An int32 ``[slots, width]`` block table on a device, one row (slot) per
    sequence, -1 past its blocks. Writes are buffered on the host, last write
    per entry winning (``index_put_`` with repeated indices has no defined
    order on CUDA), and flushed by the next ``rows()``."""

    def __init__(self, width: int, device: torch.device):
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.width, self.device = width, device
        self.table = torch.full((8, width), -1, dtype=torch.int32, device=device)
        self._slots: dict[Hashable, int] = {}
        self._free_slots: list[int] = list(range(7, -1, -1))
        self._pending: dict[tuple[int, int], int] = {}
        self._gather: tuple[tuple, torch.Tensor] | None = None  # the last seq_ids and their slots on the device

    def _slot(self, seq_id) -> int:
        slot = self._slots.get(seq_id)
        if slot is None:
            if not self._free_slots:
                n = self.table.shape[0]
                grown = torch.full((2 * n, self.width), -1, dtype=torch.int32, device=self.device)
                grown[:n] = self.table
                self.table = grown
                self._free_slots = list(range(2 * n - 1, n - 1, -1))
            slot = self._slots[seq_id] = self._free_slots.pop()
        return slot

    def write(self, seq_id, first: int, values) -> None:
        """Entries ``first, first + 1, ...`` of seq_id's row become ``values``
        (those past the width are never read: ``device_rows`` refuses them)."""
        slot = self._slot(seq_id)
        for col, value in enumerate(values, start=first):
            if col < self.width:
                self._pending[slot, col] = value

    def release(self, seq_id, count: int) -> None:
        """seq_id is gone: clear its ``count`` entries and free its slot."""
        self.write(seq_id, 0, [-1] * count)
        self._free_slots.append(self._slots.pop(seq_id))
        self._gather = None

    def rows(self, seq_ids) -> torch.Tensor:
        if self._pending:
            flat = torch.tensor([(s, c, v) for (s, c), v in self._pending.items()], dtype=torch.int64)
            flat = flat.to(self.device, non_blocking=True)
            self.table.index_put_((flat[:, 0], flat[:, 1]), flat[:, 2].to(torch.int32))
            self._pending.clear()
        key = tuple(seq_ids)
        if self._gather is None or self._gather[0] != key:
            slots = torch.tensor([self._slot(s) for s in key], dtype=torch.int64)
            self._gather = key, slots.to(self.device, non_blocking=True)
        return self.table.index_select(0, self._gather[1])

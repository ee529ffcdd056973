"""Paged KV-cache block allocator: which physical blocks each sequence owns.

Pure bookkeeping on the host (no tensors until ``block_table()`` or
``block_rows()``), shared by
every layer: one block id names the same slot range in every layer's cache.
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
        # Per sequence an int32 row of its block ids (-1 past them), kept up to
        # date in place from the first block_rows() call on, so a step's table
        # costs O(batch) host work however long the sequences are.
        self._rows: dict[Hashable, torch.Tensor] = {}

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
        if seq_id in self._rows:
            row = self._row(seq_id, len(blocks))
            row[first:len(blocks)] = torch.tensor(blocks[first:], dtype=torch.int32)

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
        if seq_id in self._rows and len(blocks) > keep:
            self._rows[seq_id][keep:len(blocks)] = -1
        while len(blocks) > keep:
            self._free.append(blocks.pop())
        self._lengths[seq_id] = new_length

    def free(self, seq_id) -> None:
        """Forget the sequence and return all its blocks to the pool."""
        blocks = self._blocks.pop(self._known(seq_id))
        del self._lengths[seq_id]
        self._rows.pop(seq_id, None)
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

    def block_rows(self, seq_ids: Sequence, width: int) -> torch.Tensor:
        """The same table as ``block_table(seq_ids, width=width)`` on the host,
        from rows kept up to date in place (O(len(seq_ids)) Python work).
        Raises ``ValueError`` if a sequence holds more than ``width`` blocks."""
        rows = []
        for s in seq_ids:
            count = len(self._blocks[self._known(s)])
            if count > width:
                raise ValueError(f"sequence {s!r} holds {count} blocks, more than width={width}")
            if s not in self._rows:
                self._rows[s] = torch.tensor(self._blocks[s], dtype=torch.int32)
            rows.append(self._row(s, width)[:width])
        return torch.stack(rows) if rows else torch.empty(0, width, dtype=torch.int32)

    def _row(self, seq_id, size: int) -> torch.Tensor:
        """seq_id's kept row, grown (doubling, -1 filled) to hold ``size`` entries."""
        row = self._rows[seq_id]
        if row.numel() < size:
            grow = max(size, 2 * row.numel()) - row.numel()
            row = self._rows[seq_id] = torch.cat([row, torch.full((grow,), -1, dtype=torch.int32)])
        return row

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

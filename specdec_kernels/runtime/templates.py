"""Draft templates: the static structure a drafter reuses every step (a chain
of k, a Medusa tree, the lookahead layout), laid out once and kept on the
device, so a verify step broadcasts it over the batch with tensor ops instead
of rebuilding rows in Python (O(batch) host work a step, not O(rows)).
"""
from __future__ import annotations

import torch

from ..trees import _pack_rows, num_words


class DraftTemplate:
    """One draft structure of ``size = 1 + tokens`` rows (local row 0: the root).

    Args:
        parents: per drafted node its parent's local index (0 = the root), -1 an
            inert row (fed to the target, never verified); None: a chain.
        positions: RoPE offsets after the root per node; None: tree depths.
        visible: per node a bitset of the local rows it attends to (itself
            included); None: its ancestors (inert rows: only itself).
        num_tokens: drafted nodes, needed when ``parents`` is None.

    Raises ``ValueError`` naming the entry on a malformed structure.
    """

    def __init__(self, parents=None, positions=None, visible=None, *, num_tokens: int | None = None):
        if parents is None:
            if num_tokens is None:
                raise ValueError("DraftTemplate needs parents or num_tokens (a chain)")
            parents = list(range(num_tokens))
        parents = [-1] + [int(p) for p in parents]
        n = len(parents)
        if num_tokens is not None and n - 1 != num_tokens:
            raise ValueError(f"Draft.parents has {n - 1} entries for {num_tokens} tokens")
        depth, anc = [0] * n, [1] * n
        for i in range(1, n):
            p = parents[i]
            if p == -1:
                anc[i] = 1 << i
                continue
            if not 0 <= p < i:
                raise ValueError(f"Draft.parents[{i - 1}] = {p}: node {i} needs a parent in [0, {i}) or -1")
            depth[i], anc[i] = depth[p] + 1, anc[p] | (1 << i)
        self.parents = parents
        self.positions = [0] + [int(x) for x in positions] if positions is not None else depth
        self.visible = [1] + [int(x) for x in visible] if visible is not None else anc
        if len(self.positions) != n or len(self.visible) != n:
            raise ValueError(f"Draft.positions and Draft.visible need {n - 1} entries, one per token")
        self.depth = depth
        # Drafted nodes whose token the verify op reads (not inert), for range checks.
        self.checked = torch.tensor(parents[1:], dtype=torch.int64) != -1
        self.size = n
        self.max_depth = max(depth)
        self._device = {}  # (rows, device) -> padded device layout

    @classmethod
    def chain(cls, k: int) -> DraftTemplate:
        return cls(num_tokens=k)

    def layout(self):
        """-> (parents, positions, visible, depths), host lists of ``size`` rows."""
        return self.parents, self.positions, self.visible, self.depth

    def padded(self, rows: int, device) -> dict:
        """The layout padded with inert rows to ``rows``, as device tensors
        (built once per (rows, device)): parents int32 [rows], positions int64
        [rows] (offsets), mask int32 [rows, num_words(rows)], verified bool
        [rows] (rows whose token the verify op reads: the root and every node
        with a parent)."""
        key = (rows, str(device))
        if key not in self._device:
            if rows < self.size:
                raise ValueError(f"a template of {self.size} rows does not fit {rows} rows")
            pad = rows - self.size
            parents = self.parents + [-1] * pad
            self._device[key] = dict(
                parents=torch.tensor(parents, dtype=torch.int32, device=device),
                positions=torch.tensor(self.positions + [0] * pad, dtype=torch.int64, device=device),
                mask=_pack_rows(self.visible + [1 << (self.size + j) for j in range(pad)], num_words(rows)).to(device),
                verified=torch.tensor([i == 0 or p != -1 for i, p in enumerate(parents)], device=device))
        return self._device[key]

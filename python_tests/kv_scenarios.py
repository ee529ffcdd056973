"""Random paged-cache scenarios for the KV-cache tests and benchmarks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Scenario:
    k_cache: torch.Tensor       # [layers, num_blocks, block_size, H, D]
    v_cache: torch.Tensor
    block_table: torch.Tensor   # int32 [B, max_blocks], -1 padded
    prefix_lens: torch.Tensor   # int32 [B]
    qo_indptr: torch.Tensor     # int32 [B + 1]
    k: torch.Tensor             # [N, H, D]
    v: torch.Tensor

    @property
    def new_lens(self) -> list[int]:
        return (self.qo_indptr[1:] - self.qo_indptr[:-1]).tolist()


def random_values(shape, dtype, device, gen: torch.Generator) -> torch.Tensor:
    """Random normal values, never zeros, so an unwritten element cannot pass."""
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype=dtype, device=device)


def make_scenario(seed: int, *, batch: int, num_heads: int, head_dim: int, dtype, block_size: int,
                  device="cpu", layers: int = 1, max_prefix: int = 40, max_new: int = 9,
                  min_new: int = 0, new_lens=None) -> Scenario:
    """``new_lens`` (per sequence) overrides the random new-token counts."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    prefix = rng.integers(0, max_prefix + 1, batch)
    new = rng.integers(min_new, max_new + 1, batch) if new_lens is None else np.asarray(new_lens, dtype=np.int64)
    need = -(-(prefix + new) // block_size)
    num_blocks = int(need.sum()) + 3  # spare blocks nobody owns must stay untouched
    width = int(need.max(initial=0)) + int(rng.integers(0, 3))
    owners = rng.permutation(num_blocks)
    table = np.full((batch, max(width, 1)), -1, dtype=np.int32)
    used = 0
    for b in range(batch):
        table[b, : need[b]] = owners[used: used + need[b]]
        used += need[b]
    shape = (layers, num_blocks, block_size, num_heads, head_dim)
    n = int(new.sum())
    return Scenario(
        k_cache=random_values(shape, dtype, device, gen),
        v_cache=random_values(shape, dtype, device, gen),
        block_table=torch.from_numpy(table).to(device),
        prefix_lens=torch.from_numpy(prefix.astype(np.int32)).to(device),
        qo_indptr=torch.from_numpy(np.concatenate([[0], np.cumsum(new)]).astype(np.int32)).to(device),
        k=random_values((n, num_heads, head_dim), dtype, device, gen),
        v=random_values((n, num_heads, head_dim), dtype, device, gen),
    )


def random_paths(seed: int, tree_sizes: list[int], width: int | None = None):
    """A valid accepted path per sequence: root 0 first, strictly increasing
    node indices below the tree size. Returns (accepted_nodes [B, W] -1 padded,
    num_accepted [B]) as int32 CPU tensors."""
    rng = np.random.default_rng(seed)
    width = width or max(max(tree_sizes, default=1), 1)
    nodes = np.full((len(tree_sizes), width), -1, dtype=np.int32)
    counts = np.zeros(len(tree_sizes), dtype=np.int32)
    for b, t in enumerate(tree_sizes):
        assert t >= 1, "a tree has at least its root"
        k = int(rng.integers(0, min(t, width)))
        rest = np.sort(rng.choice(np.arange(1, t), size=k, replace=False)) if k else np.array([], dtype=np.int64)
        nodes[b, : k + 1] = np.concatenate([[0], rest])
        counts[b] = k
    return torch.from_numpy(nodes), torch.from_numpy(counts)

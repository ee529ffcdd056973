"""Random tree-attention inputs: a paged cache holding each sequence's prefix
and tree K/V, queries, and masks from random trees, chains or lookahead
layouts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from specdec_kernels.trees import Tree, lookahead_mask
from kv_scenarios import make_scenario, random_values


@dataclass
class AttnCase:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_table: torch.Tensor
    prefix_lens: torch.Tensor
    qo_indptr: torch.Tensor
    tree_mask: torch.Tensor | None

    def args(self):
        return (self.q, self.k_cache, self.v_cache, self.block_table, self.prefix_lens, self.qo_indptr,
                self.tree_mask)


def random_tree(rng: np.random.Generator, size: int) -> Tree:
    return Tree([-1] + [int(rng.integers(0, i)) for i in range(1, size)])


def make_case(seed: int, *, kind: str, batch: int, hq: int, hkv: int, head_dim: int, dtype,
              block_size: int, device="cpu", max_prefix: int = 40, tree_sizes=None) -> AttnCase:
    """kind: "causal" (tree_mask None, chains), "tree" (random trees, packed
    masks), "lookahead" (lookahead layouts of small W/N/G)."""
    rng = np.random.default_rng(seed)
    if kind == "lookahead":
        layouts = [lookahead_mask(int(rng.integers(1, 4)), int(rng.integers(2, 4)), int(rng.integers(0, 3)))
                   for _ in range(batch)]
        sizes = [layout.size for layout in layouts]
        masks = [layout.packed_mask() for layout in layouts]
    else:
        sizes = tree_sizes or [int(rng.integers(1, 12)) for _ in range(batch)]
        # A size-0 entry is a sequence with no tree tokens in this step.
        trees = [random_tree(rng, t) for t in sizes if t > 0]
        masks = [t.packed_mask() for t in trees] if kind == "tree" else None
    tree_mask = None
    if masks is not None:
        width = max(-(-max(sizes) // 32), 1)
        tree_mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks]).to(device)
    s = make_scenario(seed, batch=batch, num_heads=hkv, head_dim=head_dim, dtype=dtype, block_size=block_size,
                      device=device, max_prefix=max_prefix, new_lens=sizes)
    gen = torch.Generator().manual_seed(seed + 1)
    q = random_values((sum(sizes), hq, head_dim), dtype, device, gen)
    return AttnCase(q, s.k_cache[0], s.v_cache[0], s.block_table, s.prefix_lens, s.qo_indptr, tree_mask)


"""Reference KV-cache ops: one sequence at a time, positions through the block
table, plain indexing."""
from __future__ import annotations

import torch


def _slots(block_table: torch.Tensor, b: int, positions: torch.Tensor, block_size: int):
    return block_table[b, positions // block_size].long(), positions % block_size


def append_kv(k, v, k_cache, v_cache, block_table, prefix_lens, qo_indptr) -> None:
    block_size = k_cache.shape[1]
    indptr = qo_indptr.tolist()
    for b, prefix in enumerate(prefix_lens.tolist()):
        start, end = indptr[b], indptr[b + 1]
        positions = torch.arange(prefix, prefix + end - start, device=k_cache.device)
        blocks, slots = _slots(block_table, b, positions, block_size)
        k_cache[blocks, slots] = k[start:end]
        v_cache[blocks, slots] = v[start:end]


def compact_kv(k_layers, v_layers, block_table, prefix_lens, accepted_nodes, num_accepted) -> None:
    """``k_layers``/``v_layers``: lists of per-layer [num_blocks, block_size, H, D] caches."""
    block_size = k_layers[0].shape[1]
    counts = num_accepted.tolist()
    for b, prefix in enumerate(prefix_lens.tolist()):
        n = counts[b] + 1
        nodes = accepted_nodes[b, :n].long()
        src_blocks, src_slots = _slots(block_table, b, prefix + nodes, block_size)
        dst_blocks, dst_slots = _slots(block_table, b, prefix + torch.arange(n, device=nodes.device), block_size)
        for cache in (*k_layers, *v_layers):
            rows = cache[src_blocks, src_slots].clone()  # read every source before any write
            cache[dst_blocks, dst_slots] = rows

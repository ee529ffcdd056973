"""Reference tree attention: per sequence, gather the prefix and tree K/V
through the block table, build the visibility matrix, softmax in float32."""
from __future__ import annotations

import torch

MAX_TREE_LEN = 256


def unpack_mask(words: torch.Tensor, length: int) -> torch.Tensor:
    """int32 [rows, W] packed bits -> bool [rows, length] (bit j of word j // 32)."""
    j = torch.arange(length, device=words.device)
    w = words[:, j // 32].long() & 0xFFFFFFFF
    return ((w >> (j % 32)) & 1).bool()


def tree_attention(q, k_cache, v_cache, block_table, prefix_lens, qo_indptr, tree_mask, sm_scale):
    """Returns (out [N, Hq, D] in q's dtype, lse [N, Hq] float32)."""
    n, hq, d = q.shape
    hkv = k_cache.shape[2]
    group = hq // hkv
    block_size = k_cache.shape[1]
    out = torch.zeros(n, hq, d, dtype=torch.float32, device=q.device)
    lse = torch.full((n, hq), float("-inf"), dtype=torch.float32, device=q.device)
    indptr = qo_indptr.tolist()
    for b, prefix in enumerate(prefix_lens.tolist()):
        start, end = indptr[b], indptr[b + 1]
        t = end - start
        if t == 0:
            continue
        positions = torch.arange(prefix + t, device=q.device)
        blocks = block_table[b, positions // block_size].long()
        k = k_cache[blocks, positions % block_size].float()  # [L, Hkv, D]
        v = v_cache[blocks, positions % block_size].float()
        if tree_mask is None:
            tree_visible = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        else:
            tree_visible = unpack_mask(tree_mask[start:end], t)
        visible = torch.cat([torch.ones(t, prefix, dtype=torch.bool, device=q.device), tree_visible], dim=1)
        k = k.repeat_interleave(group, dim=1)  # query head h reads KV head h // group
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("thd,lhd->htl", q[start:end].float(), k) * sm_scale
        scores = scores.masked_fill(~visible, float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)  # [Hq, T]; -inf where nothing is visible
        seen = torch.isfinite(row_lse)
        probs = torch.where(seen[..., None], torch.exp(scores - row_lse[..., None]), 0.0)
        out[start:end] = torch.einsum("htl,lhd->thd", probs, v)
        lse[start:end] = row_lse.transpose(0, 1)
    return out.to(q.dtype), lse

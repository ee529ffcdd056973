"""Triton build_dynamic_tree: one program per request (rules in specdec/dynamic_tree.h).

The sequential parts of the reference become parallel ones: a candidate's
depth and whether all its ancestors are selected come from walking its
ancestor chain (every lane at once, until every chain has reached the
root); its rank is the number of eligible candidates that rank before it
(a block-by-block count); node indices are a running prefix count. Per
request three int32 scratch rows (depth, selected, node) carry values
between the phases: a phase reads other lanes' values, so each is fenced
by a barrier.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 128  # candidates per step
BLOCK_I = 64  # the ranking's other side


@triton.jit
def _eligible_depth(par_ptr, score_ptr, j, inside):
    """Depth of candidates j (0 = not eligible): a walk up each ancestor chain."""
    s = tl.load(score_ptr + j, mask=inside, other=float("-inf"))
    ok = inside & (s == s) & (s > float("-inf"))
    depth = ok.to(tl.int32)
    cur = j
    p = tl.load(par_ptr + j, mask=inside, other=-1)
    active = ok & (p != -1)
    while tl.sum(active.to(tl.int32), 0) > 0:
        good = active & (p >= 0) & (p < cur)
        ps = tl.load(score_ptr + p, mask=good, other=float("-inf"))
        good = good & (ps == ps) & (ps > float("-inf"))
        ok = ok & (~active | good)
        depth += good.to(tl.int32)
        cur = tl.where(good, p, cur)
        p = tl.where(good, tl.load(par_ptr + p, mask=good, other=-1), -1)
        active = ok & (p != -1)
    return tl.where(ok, depth, 0)


@triton.jit
def _dynamic_tree_kernel(par_ptr, tok_ptr, score_ptr, root_ptr, depth_ptr, sel_ptr, node_ptr,
                         tokens_out, parents_out, depths_out, mask_out, source_out, num_nodes_out, M, K,
                         WORDS: tl.constexpr, WORDS_P2: tl.constexpr, WIDTH_P2: tl.constexpr,
                         BLOCK: tl.constexpr, BLOCK_I: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    par_ptr += b * M
    tok_ptr += b * M
    score_ptr += b * M
    depth_ptr += b * M
    sel_ptr += b * M
    node_ptr += b * M
    width = K + 1
    # Inert rows first (the kept rows overwrite theirs after a barrier).
    n = tl.arange(0, WIDTH_P2)
    rows = n < width
    out_row = b * width + n
    tl.store(tokens_out + out_row, tl.where(n == 0, tl.load(root_ptr + b), 0), mask=rows)
    tl.store(parents_out + out_row, tl.full([WIDTH_P2], -1, tl.int32), mask=rows)
    tl.store(depths_out + out_row, tl.zeros([WIDTH_P2], tl.int32), mask=rows)
    tl.store(source_out + out_row, tl.full([WIDTH_P2], -1, tl.int32), mask=rows)
    w = tl.arange(0, WORDS_P2)
    own = tl.where((n // 32)[:, None] == w[None, :], (1 << (n % 32))[:, None], 0)
    tl.store(mask_out + out_row[:, None] * WORDS + w[None, :], own, mask=rows[:, None] & (w[None, :] < WORDS))
    # 1. depths (0: not eligible).
    for c0 in range(0, M, BLOCK):
        j = c0 + tl.arange(0, BLOCK)
        inside = j < M
        tl.store(depth_ptr + j, _eligible_depth(par_ptr, score_ptr, j, inside), mask=inside)
    tl.debug_barrier()
    # 2. selected: eligible with fewer than K eligible candidates ranking before it.
    for c0 in range(0, M, BLOCK):
        j = c0 + tl.arange(0, BLOCK)
        inside = j < M
        dj = tl.load(depth_ptr + j, mask=inside, other=0)
        sj = tl.load(score_ptr + j, mask=inside, other=0.0)
        rank = tl.zeros([BLOCK], tl.int32)
        for i0 in range(0, M, BLOCK_I):
            i = i0 + tl.arange(0, BLOCK_I)
            di = tl.load(depth_ptr + i, mask=i < M, other=0)
            si = tl.load(score_ptr + i, mask=i < M, other=0.0)
            before = (si[:, None] > sj[None, :]) | ((si[:, None] == sj[None, :]) & (
                (di[:, None] < dj[None, :]) | ((di[:, None] == dj[None, :]) & (i[:, None] < j[None, :]))))
            rank += tl.sum(((di > 0)[:, None] & before).to(tl.int32), 0)
        tl.store(sel_ptr + j, ((dj > 0) & (rank < K)).to(tl.int32), mask=inside)
    tl.debug_barrier()
    # 3. kept (selected with every ancestor selected) and node indices in index order.
    carry = tl.full([], 0, tl.int32)
    for c0 in range(0, M, BLOCK):
        j = c0 + tl.arange(0, BLOCK)
        inside = j < M
        kept = tl.load(sel_ptr + j, mask=inside, other=0) != 0
        p = tl.load(par_ptr + j, mask=inside, other=-1)
        active = kept & (p != -1)
        while tl.sum(active.to(tl.int32), 0) > 0:
            kept = kept & (~active | (tl.load(sel_ptr + p, mask=active, other=0) != 0))
            p = tl.where(active, tl.load(par_ptr + p, mask=active, other=-1), -1)
            active = kept & (p != -1)
        k32 = kept.to(tl.int32)
        node = carry + tl.cumsum(k32, 0)  # 1 + the kept count before j, for kept j
        tl.store(node_ptr + j, tl.where(kept, node, -1), mask=inside)
        carry += tl.sum(k32, 0)
    tl.store(num_nodes_out + b, carry + 1)
    tl.debug_barrier()
    # 4. the kept rows.
    for c0 in range(0, M, BLOCK):
        j = c0 + tl.arange(0, BLOCK)
        inside = j < M
        node = tl.load(node_ptr + j, mask=inside, other=-1)
        kept = node > 0
        p = tl.load(par_ptr + j, mask=kept, other=-1)
        parent_node = tl.where(p == -1, 0, tl.load(node_ptr + p, mask=kept & (p >= 0), other=0))
        row = b * width + node
        tl.store(tokens_out + row, tl.load(tok_ptr + j, mask=kept, other=0), mask=kept)
        tl.store(parents_out + row, parent_node, mask=kept)
        tl.store(depths_out + row, tl.load(depth_ptr + j, mask=kept, other=0), mask=kept)
        tl.store(source_out + row, j, mask=kept)
        # Ancestor bits: this node, each ancestor's node, the root (bit 0 of word 0).
        bits = tl.where((node // 32)[:, None] == w[None, :], (1 << (node % 32))[:, None], 0)
        bits = bits | tl.where(w[None, :] == 0, 1, 0)
        a = p
        active = kept & (a != -1)
        while tl.sum(active.to(tl.int32), 0) > 0:
            na = tl.load(node_ptr + a, mask=active, other=0)
            bits = bits | tl.where(active[:, None] & ((na // 32)[:, None] == w[None, :]), (1 << (na % 32))[:, None],
                                   0)
            a = tl.where(active, tl.load(par_ptr + a, mask=active, other=-1), -1)
            active = kept & (a != -1)
        tl.store(mask_out + row[:, None] * WORDS + w[None, :], bits, mask=kept[:, None] & (w[None, :] < WORDS))


def build(cand_parents, cand_tokens, cand_scores, root_tokens, num_keep: int):
    """The op on Triton (specdec_kernels/dynamic_tree.py has the contract):
    int32 cand_parents, int64 cand_tokens, float32 cand_scores [B, M] and
    int64 root_tokens [B], all contiguous. One launch of B programs."""
    device = cand_scores.device
    batch, m = cand_scores.shape
    width = num_keep + 1
    words = -(-width // 32)
    tokens = torch.empty(batch, width, dtype=torch.int64, device=device)
    parents = torch.empty(batch, width, dtype=torch.int32, device=device)
    depths = torch.empty(batch, width, dtype=torch.int32, device=device)
    mask = torch.empty(batch, width, words, dtype=torch.int32, device=device)
    source = torch.empty(batch, width, dtype=torch.int32, device=device)
    num_nodes = torch.empty(batch, dtype=torch.int32, device=device)
    if batch:
        scratch = torch.empty(3, batch, max(m, 1), dtype=torch.int32, device=device)
        _dynamic_tree_kernel[(batch,)](
            cand_parents, cand_tokens, cand_scores, root_tokens, scratch[0], scratch[1], scratch[2],
            tokens, parents, depths, mask, source, num_nodes, m, num_keep,
            WORDS=words, WORDS_P2=triton.next_power_of_2(words), WIDTH_P2=triton.next_power_of_2(width),
            BLOCK=BLOCK, BLOCK_I=BLOCK_I)
    return tokens, parents, depths, mask, source, num_nodes

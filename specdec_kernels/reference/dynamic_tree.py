"""Reference of build_dynamic_tree (EAGLE-2's reranked draft tree): plain
PyTorch, one request at a time. The ground truth of the kernels; the
contract is in specdec_kernels/dynamic_tree.py.

Candidate j of a request (an index into its M candidates) is *eligible* iff
its score is neither NaN nor -inf and its parent is -1 (a child of the root)
or an eligible candidate with a smaller index. Eligible candidates are ranked by (score descending, depth ascending,
index ascending); the first ``num_keep`` are *selected*, and a selected
candidate is *kept* iff every ancestor is selected too (always so when
scores do not increase from parent to child, as cumulative log-probabilities
do). Kept candidates become nodes 1, 2, ... in increasing candidate index
(parents precede children: a topological order); node 0 is the root.
"""
from __future__ import annotations

import torch


def _depths(parents: list[int], scores: list[float]) -> list[int]:
    """Depth of each candidate (1 = a child of the root); 0 = not eligible."""
    depth = [0] * len(parents)
    for j, par in enumerate(parents):
        s = scores[j]
        if s != s or s == float("-inf"):
            continue
        if par == -1:
            depth[j] = 1
        elif 0 <= par < j and depth[par] > 0:
            depth[j] = depth[par] + 1
    return depth


def build(cand_parents, cand_tokens, cand_scores, root_tokens, num_keep: int):
    """-> (draft_tokens int64 [B, K+1], parents int32 [B, K+1], depths int32
    [B, K+1], tree_mask int32 [B, K+1, ceil((K+1)/32)], source int32 [B, K+1],
    num_nodes int32 [B]), K = num_keep, on the inputs' device. Rows past
    num_nodes are inert: token 0, parent -1, depth 0, source -1, a mask row
    holding only its own bit."""
    device = cand_scores.device
    batch, _ = cand_scores.shape
    width = num_keep + 1
    words = max(1, -(-width // 32))
    tokens_out = torch.zeros(batch, width, dtype=torch.int64)
    parents_out = torch.full((batch, width), -1, dtype=torch.int32)
    depths_out = torch.zeros(batch, width, dtype=torch.int32)
    source_out = torch.full((batch, width), -1, dtype=torch.int32)
    num_nodes = torch.zeros(batch, dtype=torch.int32)
    rows = [[1 << n for n in range(width)] for _ in range(batch)]  # bitsets, own bit set
    all_parents = cand_parents.cpu().tolist()
    all_tokens = cand_tokens.cpu().tolist()
    all_scores = cand_scores.float().cpu().tolist()
    roots = root_tokens.cpu().tolist()
    for b in range(batch):
        par, scores = all_parents[b], all_scores[b]
        depth = _depths(par, scores)
        eligible = [j for j in range(len(par)) if depth[j] > 0]
        eligible.sort(key=lambda j: (-scores[j], depth[j], j))
        selected = set(eligible[:num_keep])

        def ancestors_selected(j):
            while par[j] != -1:
                j = par[j]
                if j not in selected:
                    return False
            return True

        kept = sorted(j for j in selected if ancestors_selected(j))
        node_of = {j: 1 + i for i, j in enumerate(kept)}
        tokens_out[b, 0] = roots[b]
        num_nodes[b] = 1 + len(kept)
        for j in kept:
            n = node_of[j]
            p = 0 if par[j] == -1 else node_of[par[j]]
            tokens_out[b, n] = all_tokens[b][j]
            parents_out[b, n] = p
            depths_out[b, n] = depth[j]
            source_out[b, n] = j
            rows[b][n] = rows[b][p] | (1 << n)  # the parent's row is final: p < n
    mask = torch.zeros(batch, width, words, dtype=torch.int32)
    for b in range(batch):
        for n, r in enumerate(rows[b]):
            for w in range(words):
                word = (r >> (32 * w)) & 0xFFFFFFFF
                mask[b, n, w] = word - (1 << 32) if word >= 1 << 31 else word
    return tuple(t.to(device) for t in (tokens_out, parents_out, depths_out, mask, source_out, num_nodes))

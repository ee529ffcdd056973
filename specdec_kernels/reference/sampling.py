"""Reference verification: per request, a plain Python walk down the tree with
float32 PyTorch maths. It is the contract every kernel is tested against, so
each rule below is written out step by step (see specdec_kernels/sampling.py
for the public semantics).

Modes: 0 greedy, 1 rejection (chain or tree, with or without draft
probabilities, the token rule), 2 typical acceptance, 3 rejection with the
traversal rule (block verification on chains). In modes 1-3 a request whose
temperature is 0 follows the greedy rule.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

GREEDY, REJECTION, TYPICAL, TRAVERSAL = 0, 1, 2, 3
# verify_rejection's acceptance rules (sampling.py): "token" runs as mode
# REJECTION, "block" and "traversal" as mode TRAVERSAL.
RULES = ("token", "block", "traversal")
# Medusa's entropy uses log(p + 1e-5); kept for parity with its acceptance.
TYPICAL_LOG_EPS = 1e-5

_PHILOX_M0, _PHILOX_M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_PHILOX_W0, _PHILOX_W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)


def philox_uniforms(seed: int, offset: int, n: int) -> torch.Tensor:
    """float32 [n]: draw i is Philox4x32-10 with key (seed lo, seed hi) and
    counter (offset + i lo, hi, 0, 0); its first word w gives (w >> 8) / 2^24,
    in [0, 1). Same stream as Triton's ``tl.randint(seed, offset + i)``."""
    ctr = (np.arange(n, dtype=np.uint64) + np.uint64(offset % 2**64))
    c0, c1 = ctr & _MASK32, ctr >> np.uint64(32)
    c2 = np.zeros(n, dtype=np.uint64)
    c3 = np.zeros(n, dtype=np.uint64)
    s = seed % 2**64
    k0, k1 = np.uint64(s & 0xFFFFFFFF), np.uint64(s >> 32)
    for _ in range(10):
        p0, p1 = _PHILOX_M0 * c0, _PHILOX_M1 * c2  # exact: 32 x 32 bits fit 64
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & _MASK32,
                          (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & _MASK32)
        k0, k1 = (k0 + _PHILOX_W0) & _MASK32, (k1 + _PHILOX_W1) & _MASK32
    return torch.from_numpy(((c0 >> np.uint64(8)).astype(np.float32)) * np.float32(2.0 ** -24))


def philox_uniforms_at(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """float32 uniforms at arbitrary counters, on ``offsets``' device: element
    j is ``philox_uniforms(seed, offsets[j], 1)``. Tensor ops only (no host
    loop, no sync), so a runtime can key its draws by (sequence, node) and
    draw them on the device. ``offsets``: int64, values in [0, 2^63)."""
    mask = 0xFFFFFFFF
    c0, c1 = offsets & mask, (offsets >> 32) & mask
    c2 = torch.zeros_like(offsets)
    c3 = torch.zeros_like(offsets)
    s = seed % 2**64
    k0, k1 = s & mask, s >> 32
    for _ in range(10):
        # 32 x 32-bit products wrap in int64 but keep their 64 bits; & mask undoes the sign.
        p0, p1 = c0 * int(_PHILOX_M0), c2 * int(_PHILOX_M1)
        c0, c1, c2, c3 = (((p1 >> 32) & mask) ^ c1 ^ k0, p1 & mask, ((p0 >> 32) & mask) ^ c3 ^ k1, p0 & mask)
        k0, k1 = (k0 + int(_PHILOX_W0)) & mask, (k1 + int(_PHILOX_W1)) & mask
    return (c0 >> 8).to(torch.float32) * (2.0 ** -24)


def unpack_bitmask(words: torch.Tensor, vocab: int) -> torch.Tensor:
    """bool [R, vocab] from a packed int32 [R, ceil(vocab / 32)] bitmask (bit
    j % 32 of word j // 32 = token j; xgrammar's and vLLM's layout)."""
    bits = (words.long()[..., None] >> torch.arange(32)) & 1
    return bits.reshape(words.shape[0], -1)[:, :vocab].bool()


def row_is_valid(logits: torch.Tensor) -> bool:
    """A row can define a distribution: no NaN, largest logit finite."""
    row = logits.float()
    return not bool(torch.isnan(row).any()) and bool(torch.isfinite(row.max()))


def argmax_lowest(logits: torch.Tensor) -> int:
    row = logits.float()
    return int((row == row.max()).nonzero()[0, 0])


class Filters(NamedTuple):
    """A request's sampling filters (target_probs)."""
    temperature: float
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0


def target_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                 min_p: float = 0.0) -> torch.Tensor:
    """p = softmax over the kept tokens of z = logits / temperature, float32.

    min_p (> 0): keep x iff exp(z(x) - max z) >= min_p, i.e. p(x) >= min_p *
    max p (the ratio does not depend on the normalisation, so every backend
    tests the same float32 number). top_k (0 < k < V): keep z >= the k-th
    largest z (ties at the threshold all kept). Both are thresholds on z that
    keep the argmax, so they commute. top_p (< 1): over the survivors of both,
    keep x iff the mass of tokens with a strictly larger z is < top_p (ties
    kept together; at least the argmax). The order is vLLM's (temperature,
    min_p, then top-k and top-p); transformers and SGLang apply min_p after
    top_p, which differs only when top_p < 1 as well.
    """
    z = logits.float() / torch.tensor(temperature, dtype=torch.float32)
    vocab = z.numel()
    keep = torch.ones_like(z, dtype=torch.bool)
    if 0 < top_k < vocab:
        keep = z >= torch.topk(z, top_k).values[-1]
    if min_p > 0.0:
        keep = keep & (torch.exp(z - z.max()) >= torch.tensor(min_p, dtype=torch.float32))
    e = torch.where(keep, torch.exp(z - z[keep].max()), torch.zeros_like(z))
    if top_p < 1.0:
        order = torch.argsort(z, descending=True, stable=True)
        zs, es = z[order], e[order]
        mass_before = torch.cumsum(es, 0) - es
        first_of_tie = torch.searchsorted(-zs, -zs, side="left")
        mass_above = torch.empty_like(z)
        mass_above[order] = mass_before[first_of_tie]
        keep = keep & (mass_above < torch.tensor(top_p, dtype=torch.float32) * e.sum())
        e = torch.where(keep, e, torch.zeros_like(e))
    return e / e.sum()


def typical_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    z = logits.float() / torch.tensor(temperature, dtype=torch.float32)
    return torch.softmax(z, 0)


def typical_threshold(p: torch.Tensor, eps: float, alpha: float) -> float:
    """min(eps, alpha * exp(-H(p))), H with Medusa's log(p + 1e-5)."""
    entropy = -(p * torch.log(p + TYPICAL_LOG_EPS)).sum()
    return float(torch.minimum(torch.tensor(eps, dtype=torch.float32),
                               torch.tensor(alpha, dtype=torch.float32) * torch.exp(-entropy)))


def sample_index(weights: torch.Tensor, u: float) -> int:
    """Inverse CDF: the first index whose running sum exceeds u * total; if
    rounding leaves none, the last index with weight."""
    cum = torch.cumsum(weights.float(), 0)
    hit = (cum > torch.tensor(u, dtype=torch.float32) * cum[-1]).nonzero()
    if hit.numel():
        return int(hit[0, 0])
    return int((weights > 0).nonzero()[-1, 0])


def _children(parents: list[int], node: int) -> list[int]:
    return [c for c in range(node + 1, len(parents)) if parents[c] == node]


def _path_to(parents: list[int], node: int) -> list[int]:
    """The accepted path root .. node, root first."""
    path = [node]
    while path[-1] != 0:
        path.append(parents[path[-1]])
    return path[::-1]


def _walk_greedy(rows, logit_rows, tokens, parents, width, bonus):
    """Accept the first child whose token is the argmax; bonus = argmax at the end.
    The argmax is of ``rows`` (probabilities, when given: their log would only
    blur near-ties); validity is judged on ``logit_rows``. A node past the
    rows (row map) ends the walk with ``bonus``."""
    path, node = [0], 0
    while True:
        if node >= rows.shape[0]:
            return path, bonus
        if not row_is_valid(logit_rows[node]):
            return None
        best = argmax_lowest(rows[node])
        nxt = None
        if len(path) < width:
            nxt = next((c for c in _children(parents, node) if tokens[c] == best), None)
        if nxt is None:
            return path, best
        path.append(nxt)
        node = nxt


def _accepts(u: float, qx: float, rx: float) -> bool:
    """Accept with probability min(1, r(x) / q(x)); q(x) = 1 for a point mass."""
    return bool(np.float32(u) * np.float32(qx) < np.float32(rx))


def _residual_after_rejection(r: torch.Tensor, q_row: torch.Tensor | None, x: int) -> torch.Tensor:
    """norm(max(0, r - q)); for a point mass at x that is r with x zeroed.
    Unchanged when nothing would be left (only rounding can get there)."""
    if q_row is not None:
        nr = torch.clamp(r - q_row, min=0.0)
    else:
        nr = r.clone()
        if 0 <= x < r.numel():
            nr[x] = 0.0
    mass = nr.sum()
    return nr / mass if mass > 0 else r


def _walk_rejection(rows, q_rows, tokens, parents, width, u, filters, bonus):
    """Children tried in order against the running residual r (r = p at first):
    with q, accept x iff u * q(x) < r(x), else r = norm(max(0, r - q)); without
    q (point-mass proposals), accept x iff u < r(x), else r(x) = 0, renormalised.
    A rejection that would leave r without mass leaves r unchanged. Bonus
    (or the correction) is drawn from the final r with the root's uniform."""
    vocab = rows.shape[1]
    path, node = [0], 0
    while True:
        if node >= rows.shape[0]:  # no row (row map): the caller's bonus
            return path, bonus
        if not row_is_valid(rows[node]):
            return None
        r = target_probs(rows[node], *filters)
        nxt = None
        kids = _children(parents, node) if len(path) < width else []
        for c in kids:
            x = tokens[c]
            rx = float(r[x]) if 0 <= x < vocab else 0.0
            q_row = q_rows[node].float() if q_rows is not None else None
            qx = float(q_row[x]) if q_row is not None and 0 <= x < vocab else (0.0 if q_row is not None else 1.0)
            if _accepts(u[c], qx, rx):
                nxt = c
                break
            r = _residual_after_rejection(r, q_row, x)
        if nxt is None:
            return path, sample_index(r, u[0])
        path.append(nxt)
        node = nxt


def _walk_traversal(rows, q_rows, tokens, parents, width, u, filters, bonus):
    """Traversal verification (leaf to root; block verification on a chain).

    Every node n carries a weight w_n in [0, 1] and a residual measure W_n
    over the vocabulary of mass w_n; the root has w = 1 and W = p_root. The
    tree is walked depth first, children in index order, and a node is
    decided only after its whole subtree was rejected:

    * entering child c (token x, drawn from q = q_rows[n], or a point mass at
      x without q): w_c = min(1, W_n(x) / q(x)), W_c = w_c p_c;
    * c's subtree rejected: R = max(W_n - q, 0), m = sum R; then
      W_n = R / (1 - w_n + m), w_n = m / (1 - w_n + m): the measure the rest
      of n's subtree must still produce, conditioned on the rejection;
    * n itself is accepted iff u[n] < w_n; the root always is (w = 1).
      A child of weight 0 (and so its whole subtree) is rejected whatever
      its uniforms, so it is not visited: its rows are not read.

    The first accepted node a ends the walk: the path root..a is accepted and
    the next token is drawn from W_a / w_a with the root's uniform (the
    caller's bonus when a has no row). On a chain this is Sun et al.'s block
    verification (w_i = min(1, w_(i-1) p(X_i) / q(X_i)); node i accepted with
    probability sum max(w_i p_i - q_i, 0) / (that + 1 - w_i) after the deeper
    nodes were rejected; the residual max(w_tau p_tau - q_tau, 0)). Lossless
    for trees with i.i.d. children from q or distinct point-mass children,
    and never shorter in expectation than the token rule: both are checked
    exactly in python_tests/test_verify_rules.py. The tree rule is derived
    here from Weng et al.'s description (leaf to root, sequence-level
    weights, block verification on chains; arXiv 2505.12398), whose full text
    was not at hand: that it is their algorithm step for step is unchecked.

    State per node, as the kernels keep it (no vocabulary-sized vector per
    ancestor): W = max(alpha p - beta q, 0) with q, or alpha p with the
    rejected children's tokens zeroed (a point mass at x subtracts to 0 at x:
    W <= 1); alpha = w, beta = 0 on entry."""
    vocab = rows.shape[1]
    n = len(parents)
    kids = [[] for _ in range(n)]
    depth = [0] * n
    for c in range(1, n):
        par = parents[c]
        if 0 <= par < c:
            kids[par].append(c)
            depth[c] = depth[par] + 1
    f32 = np.float32

    class _Invalid(Exception):
        pass

    def measure(p, q_row, alpha, beta, zeroed):
        if q_row is not None:
            return torch.clamp(torch.tensor(alpha, dtype=torch.float32) * p
                               - torch.tensor(beta, dtype=torch.float32) * q_row, min=0.0)
        W = torch.tensor(alpha, dtype=torch.float32) * p
        W[list(zeroed)] = 0.0
        return W

    def visit(node, w):
        """The accepted (node, W) in this subtree, or None if all of it is rejected."""
        if node >= rows.shape[0]:  # no row (row map): no candidate children
            return (node, None) if f32(u[node]) < w else None
        if not row_is_valid(rows[node]):
            raise _Invalid
        p = target_probs(rows[node], *filters)
        q_row = q_rows[node].float() if q_rows is not None else None
        alpha, beta, zeroed, zeroed_mass = w, f32(0.0), set(), f32(0.0)
        for c in (kids[node] if depth[node] + 1 < width else []):
            x = tokens[c]
            in_vocab = 0 <= x < vocab
            if q_row is not None:
                qx = f32(q_row[x]) if in_vocab else f32(0.0)
                wx = max(alpha * f32(p[x]) - beta * qx, f32(0.0)) if in_vocab else f32(0.0)
            else:
                qx = f32(1.0)
                wx = alpha * f32(p[x]) if in_vocab and x not in zeroed else f32(0.0)
            wc = min(f32(1.0), wx / qx) if qx > 0 else (f32(1.0) if wx > 0 else f32(0.0))
            # A subtree of weight 0 is rejected whatever its uniforms: not visited (its rows unread).
            got = visit(c, f32(wc)) if wc > 0 else None
            if got is not None:
                return got
            if q_row is not None:  # R = max(alpha p - (beta + 1) q, 0)
                beta = beta + f32(1.0)
                m = f32(measure(p, q_row, alpha, beta, zeroed).sum())
            else:  # R = W with x zeroed
                if in_vocab and x not in zeroed:
                    zeroed.add(x)
                    zeroed_mass = zeroed_mass + f32(p[x])
                m = alpha * max(f32(1.0) - zeroed_mass, f32(0.0))
            alpha, beta, w = _condition_on_rejection(alpha, beta, w, m)
        if node == 0 or f32(u[node]) < w:
            return node, measure(p, q_row, alpha, beta, zeroed)
        return None

    try:
        node, W = visit(0, f32(1.0))
    except _Invalid:
        return None
    path = _path_to(parents, node)
    if W is None:
        return path, bonus
    return path, _traversal_draw(W, rows[node], filters, u[0])


def _condition_on_rejection(alpha, beta, w, m):
    """After a child's subtree was rejected, R (alpha, beta already stepped
    past the child's q) of mass m is what the rest of the subtree must still
    produce, in the probability 1 - w + m that is left: everything is divided
    by 1 - w + m, and the node's weight becomes m / (1 - w + m). m = 0 is
    common (a small w: w p <= q everywhere) and leaves the node weight 0.
    1 - w + m = 0 (w = 1 and nothing left) means the child could not be
    rejected; only rounding gets there, and the scale is kept."""
    f32 = np.float32
    den = f32(1.0) - w + m
    if not den > 0:
        return alpha, beta, m
    return f32(alpha / den), f32(beta / den), f32(m / den)


def _traversal_draw(W, logits, filters, u) -> int:
    """The next token after the accepted node: from W / w (the residual)."""
    return sample_index(W, u)


def _walk_typical(rows, tokens, parents, width, u, temperature, eps, alpha, bonus):
    """Medusa: child c of an accepted node n is acceptable iff p_n(token c) >
    min(eps, alpha * exp(-H(p_n))). The answer is the deepest node whose whole
    path is acceptable; ties go to the larger sum of log p along the path, then
    the lower node index. The bonus is drawn from p at that node restricted to
    tokens with p >= its threshold."""
    t = len(parents)
    ok = [False] * t
    depth = [0] * t
    score = [0.0] * t
    ok[0] = True
    stats = {}

    def node_stats(n):
        if n not in stats:
            if not row_is_valid(rows[n]):
                stats[n] = None
            else:
                p = typical_probs(rows[n], temperature)
                stats[n] = (p, typical_threshold(p, eps, alpha))
        return stats[n]

    best = 0
    for c in range(1, t):
        par = parents[c]
        if not (0 <= par < c) or not ok[par] or depth[par] + 1 >= width or par >= rows.shape[0]:
            continue
        st = node_stats(par)
        if st is None:
            return None
        p, thr = st
        x = tokens[c]
        px = float(p[x]) if 0 <= x < p.numel() else 0.0
        if not px > thr:
            continue
        ok[c], depth[c] = True, depth[par] + 1
        score[c] = float(np.float32(score[par]) + np.float32(np.log(np.float32(px))))
        if depth[c] > depth[best] or (depth[c] == depth[best] and score[c] > score[best]):
            best = c
    path = _path_to(parents, best)
    if best >= rows.shape[0]:
        return path, bonus
    st = node_stats(best)
    if st is None:
        return None
    p, thr = st
    return path, sample_index(torch.where(p >= thr, p, torch.zeros_like(p)), u[0])


def verify(draft_tokens, parents, qo_indptr, target_logits, draft_probs, temperature, top_k, top_p,
           posterior_threshold, posterior_alpha, uniforms, mode, width, target_is_probs=False, target_indptr=None,
           bonus_tokens=None, min_p=None, allowed_tokens=None):
    """Returns (num_accepted int32 [B], accepted_nodes int32 [B, width],
    tokens int64 [B, width]) on the logits' device; uniforms float32 [N].

    target_indptr int32 [B + 1] + bonus_tokens int64 [B] (both or neither):
    the row map. Request b's rows of target_logits and draft_probs are
    ``target_indptr[b]:target_indptr[b+1]``, node j reading the j-th of them;
    a node past them has no row: its children are never accepted and a path
    that ends there emits ``bonus_tokens[b]``. Without it request b's rows are
    its nodes' (``qo_indptr``).

    target_is_probs: ``target_logits`` holds probabilities (not necessarily
    normalised); every rule reads them as the logits ``log(p)``, so a row is
    valid iff it has no NaN or negative value and a finite positive maximum,
    and greedy takes the argmax of p itself.

    min_p: float32 [B] or None (0: off; modes 1 and 3; target_probs).
    allowed_tokens: int32 [rows of target_logits, ceil(V / 32)] or None: bit
    j % 32 of word j // 32 of a row set = token j allowed there. It masks the
    row before anything else (a disallowed token's logit is -inf, its
    probability 0, whatever the row holds there), so a disallowed draft token
    is never accepted and every rule reads the masked distribution; a row with
    no token allowed cannot define one (num_accepted = -1)."""
    device = target_logits.device
    batch = qo_indptr.numel() - 1
    num_accepted = torch.zeros(batch, dtype=torch.int32)
    nodes_out = torch.full((batch, width), -1, dtype=torch.int32)
    tokens_out = torch.full((batch, width), -1, dtype=torch.int64)
    indptr = qo_indptr.tolist()
    all_tokens = draft_tokens.tolist()
    all_parents = parents.tolist()
    u_all = uniforms.cpu().tolist() if uniforms is not None else None
    row_indptr = target_indptr.tolist() if target_indptr is not None else indptr
    bonuses = bonus_tokens.tolist() if bonus_tokens is not None else [None] * batch
    for b in range(batch):
        s, e = indptr[b], indptr[b + 1]
        if e == s:
            continue
        rs, re = row_indptr[b], row_indptr[b + 1]
        rows = target_logits[rs:re].cpu()
        if allowed_tokens is not None:
            allowed = unpack_bitmask(allowed_tokens[rs:re].cpu(), rows.shape[1])
            rows = torch.where(allowed, rows, torch.zeros_like(rows) if target_is_probs
                               else torch.full_like(rows, float("-inf")))
        logit_rows = torch.log(rows.float()) if target_is_probs else rows
        tokens, par = all_tokens[s:e], all_parents[s:e]
        temp = 0.0 if mode == GREEDY else float(temperature[b])
        u = u_all[s:e] if u_all is not None else None
        if temp == 0.0:
            result = _walk_greedy(rows, logit_rows, tokens, par, width, bonuses[b])
        elif mode in (REJECTION, TRAVERSAL):
            q_rows = draft_probs[rs:re].cpu() if draft_probs is not None else None
            walk = _walk_rejection if mode == REJECTION else _walk_traversal
            filters = Filters(temp, int(top_k[b]), float(top_p[b]), float(min_p[b]) if min_p is not None else 0.0)
            result = walk(logit_rows, q_rows, tokens, par, width, u, filters, bonuses[b])
        else:
            result = _walk_typical(logit_rows, tokens, par, width, u, temp, float(posterior_threshold[b]),
                                   float(posterior_alpha[b]), bonuses[b])
        if result is None:  # a row the rule reads cannot define a distribution
            num_accepted[b] = -1
            continue
        path, bonus = result
        num_accepted[b] = len(path) - 1
        nodes_out[b, :len(path)] = torch.tensor(path, dtype=torch.int32)
        for j, n in enumerate(path[1:]):
            tokens_out[b, j] = tokens[n]
        tokens_out[b, len(path) - 1] = bonus
    return num_accepted.to(device), nodes_out.to(device), tokens_out.to(device)

"""Triton verification: one program per request walks its tree as
specdec_kernels/reference/sampling.py does, streaming each row it reads in
BLOCK_V chunks.

Passes over a visited row: one scan (argmax, max, NaN check); for sampled
rows one more for the softmax normaliser, plus, only when the filters are on,
a bisection over the order-preserving integer key of z for the exact top-k
and top-p thresholds (one pass per step, at most 32 steps each). The final
draw is an inverse-CDF pass (two when it has to find the total first).

Sums accumulate in float64, as torch's CPU reductions and scans (hence the
reference) do: a float32 running sum over a real vocabulary drifts enough
to move an inverse-CDF draw.

Residuals: without draft probabilities, rejecting x only removes x, so the
residual is p minus the rejected siblings' tokens, kept as a removed mass and
a count (no buffer). With them, it is materialised in a float32 scratch row
per request.

Everything one thread writes and another reads goes through registers, except
the residual row, which is fenced by a barrier: a scalar store is executed by
one thread only, so a scratch round trip would race across warps.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..backends import triton_interpreted

MAX_NODES = 256  # kMaxVerifyNodes
GREEDY, REJECTION, TYPICAL = 0, 1, 2
_BIG = tl.constexpr(1 << 30)
_MAX_KEY = tl.constexpr(4294967295)


@triton.jit
def _exp(x, LIBDEVICE: tl.constexpr):
    # tl.exp is ex2.approx on NVIDIA GPUs; the other backends use expf.
    if LIBDEVICE:
        y = libdevice.exp(x)
    else:
        y = tl.exp(x)
    return y


@triton.jit
def _log(x, LIBDEVICE: tl.constexpr):
    if LIBDEVICE:
        y = libdevice.log(x)
    else:
        y = tl.log(x)
    return y


@triton.jit
def _key(z):
    """Order-preserving int64 key of a float32 in [0, 2^32), -0.0 folded into +0.0."""
    bits = (z + 0.0).to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits.to(tl.int64) + 2147483648, (-1 - bits).to(tl.int64))


@triton.jit
def _pick(vec, idx, i):
    """vec[i] of a register vector (idx = its arange)."""
    return tl.sum(tl.where(idx == i, vec, 0), 0)


@triton.jit
def _logit(ptrs, mask, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr):
    """The logits at ptrs, -inf where masked off; log(p) for a row of probabilities."""
    if PROBS:
        x = _log(tl.load(ptrs, mask=mask, other=0.0).to(tl.float32), LIBDEVICE)
    else:
        x = tl.load(ptrs, mask=mask, other=float("-inf")).to(tl.float32)
    return x


@triton.jit
def _z(row_ptr, offs, V, temperature, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr):
    return tl.math.div_rn(_logit(row_ptr + offs, offs < V, PROBS, LIBDEVICE), temperature)


@triton.jit
def _e(row_ptr, offs, V, temperature, m, thr, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr):
    """exp(z - m) of the tokens whose key is >= thr, 0 elsewhere and past V."""
    z = _z(row_ptr, offs, V, temperature, PROBS, LIBDEVICE)
    return tl.where((_key(z) >= thr) & (offs < V), _exp(z - m, LIBDEVICE), 0.0)


@triton.jit
def _e_at(row_ptr, x, V, temperature, m, thr, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr):
    """_e of one token; 0 outside [0, V), without reading there."""
    inside = (x >= 0) & (x < V)
    z = tl.math.div_rn(_logit(row_ptr + tl.where(inside, x, 0), inside, PROBS, LIBDEVICE), temperature)
    return tl.where(inside & (_key(z) >= thr), _exp(z - m, LIBDEVICE), 0.0)


@triton.jit
def _scan(row_ptr, V, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr, BLOCK_V: tl.constexpr):
    """-> (argmax, lowest index on ties; max logit; valid: no NaN and a finite max).
    A row of probabilities: the argmax of p itself (log would only blur
    near-ties), max logit log(max p), valid iff no NaN or negative value and
    a finite positive max, the same test on log(p)."""
    best = tl.full([], float("-inf"), tl.float32)
    idx = tl.full([], 0, tl.int32)
    nans = tl.full([], 0, tl.int32)
    for s in range(0, V, BLOCK_V):
        offs = s + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        bad = x != x
        if PROBS:
            bad = bad | ((x < 0.0) & (offs < V))
        nans += tl.sum(bad.to(tl.int32), 0)
        x = tl.where(x != x, float("-inf"), x)
        cm = tl.max(x, 0)
        ci = tl.min(tl.where(x == cm, offs, _BIG), 0)
        better = cm > best
        idx = tl.where(better, ci, idx)
        best = tl.where(better, cm, best)
    if PROBS:
        best = _log(best, LIBDEVICE)
    valid = (nans == 0) & (best > float("-inf")) & (best < float("inf"))
    return idx, best, valid


@triton.jit
def _total(row_ptr, V, temperature, m, thr, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr, BLOCK_V: tl.constexpr):
    """-> (sum of _e in float64, how many tokens have _e > 0)."""
    total = tl.full([], 0.0, tl.float64)
    count = tl.full([], 0, tl.int32)
    for s in range(0, V, BLOCK_V):
        e = _e(row_ptr, s + tl.arange(0, BLOCK_V), V, temperature, m, thr, PROBS, LIBDEVICE)
        total += tl.sum(e.to(tl.float64), 0)
        count += tl.sum((e > 0.0).to(tl.int32), 0)
    return total, count


@triton.jit
def _count_at_least(row_ptr, V, temperature, key, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
                    BLOCK_V: tl.constexpr):
    n = tl.full([], 0, tl.int32)
    for s in range(0, V, BLOCK_V):
        offs = s + tl.arange(0, BLOCK_V)
        n += tl.sum(((_key(_z(row_ptr, offs, V, temperature, PROBS, LIBDEVICE)) >= key) & (offs < V)).to(tl.int32), 0)
    return n


@triton.jit
def _mass_above(row_ptr, V, temperature, m, key, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr, BLOCK_V: tl.constexpr):
    """Sum of exp(z - m) over the tokens whose key is > key, in float64."""
    mass = tl.full([], 0.0, tl.float64)
    for s in range(0, V, BLOCK_V):
        mass += tl.sum(_e(row_ptr, s + tl.arange(0, BLOCK_V), V, temperature, m, key + 1, PROBS, LIBDEVICE)
                       .to(tl.float64), 0)
    return mass


@triton.jit
def _target_stats(row_ptr, V, temperature, m, top_k, top_p, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
                  BLOCK_V: tl.constexpr):
    """-> (thr, total, count): p(x) = exp(z - m) / float32(total) where key(z) >= thr,
    else 0; count = how many tokens have p > 0. m = max z, which every filter keeps."""
    thr = tl.full([], 0, tl.int64)
    top = _key(m)
    if (top_k > 0) & (top_k < V):
        # The largest key with at least k keys >= it: the key of the k-th largest z.
        lo = tl.full([], 0, tl.int64)
        hi = top
        while lo < hi:
            mid = lo + (hi - lo + 1) // 2
            if _count_at_least(row_ptr, V, temperature, mid, PROBS, LIBDEVICE, BLOCK_V) >= top_k:
                lo = mid
            else:
                hi = mid - 1
        thr = lo
    total, count = _total(row_ptr, V, temperature, m, thr, PROBS, LIBDEVICE, BLOCK_V)
    if top_p < 1.0:
        # The smallest key whose strictly larger (top-k kept) mass is < top_p * total;
        # the max qualifies, as nothing is above it.
        limit = top_p * total.to(tl.float32)
        lo = thr
        hi = top
        while lo < hi:
            mid = lo + (hi - lo) // 2
            if _mass_above(row_ptr, V, temperature, m, mid, PROBS, LIBDEVICE, BLOCK_V).to(tl.float32) < limit:
                hi = mid
            else:
                lo = mid + 1
        if lo > thr:
            thr = lo
            total, count = _total(row_ptr, V, temperature, m, thr, PROBS, LIBDEVICE, BLOCK_V)
    return thr, total, count


@triton.jit
def _uniform(unif_ptr, philox_ptr, row, HAS_UNIFORMS: tl.constexpr):
    if HAS_UNIFORMS:
        u = tl.load(unif_ptr + row)
    else:
        # Loaded here, not passed by value, so a CUDA graph replays the
        # caller's current (seed, offset).
        r = tl.randint(tl.load(philox_ptr), tl.load(philox_ptr + 1) + row)
        u = (r >> 8).to(tl.float32) * (1.0 / 16777216.0)
    return u


@triton.jit
def _weights(row_ptr, res_row, offs, V, temperature, m, thr, total, thr_p, res_on, res_total,
             tokens_ptr, parents_ptr, start, node, c_lo, c_hi, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
             HAS_RES: tl.constexpr):
    """The weights of a chunk the final draw is taken from: the residual row
    when res_on, else p (above the key threshold thr) restricted to p >= thr_p,
    less the tokens of node's children among [c_lo, c_hi) (all rejected)."""
    if HAS_RES:
        if res_on != 0:
            w = tl.load(res_row + offs, mask=offs < V, other=0.0) / res_total
        else:
            w = _e(row_ptr, offs, V, temperature, m, thr, PROBS, LIBDEVICE) / total
    else:
        p = _e(row_ptr, offs, V, temperature, m, thr, PROBS, LIBDEVICE) / total
        w = tl.where(p >= thr_p, p, 0.0)
        for c in range(c_lo, c_hi):
            if tl.load(parents_ptr + start + c) == node:
                w = tl.where(offs.to(tl.int64) == tl.load(tokens_ptr + start + c), 0.0, w)
    return w


@triton.jit
def _sample(row_ptr, res_row, V, temperature, m, thr, total, thr_p, res_on, res_total,
            tokens_ptr, parents_ptr, start, node, c_lo, c_hi, u,
            PROBS: tl.constexpr, LIBDEVICE: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_V: tl.constexpr):
    """Inverse CDF over _weights: the first index whose running sum exceeds
    u * sum(w), else the last index with weight."""
    w_total = tl.full([], 0.0, tl.float64)
    for s in range(0, V, BLOCK_V):
        w = _weights(row_ptr, res_row, s + tl.arange(0, BLOCK_V), V, temperature, m, thr, total, thr_p, res_on,
                     res_total, tokens_ptr, parents_ptr, start, node, c_lo, c_hi, PROBS, LIBDEVICE, HAS_RES)
        w_total += tl.sum(w.to(tl.float64), 0)
    target = u * w_total.to(tl.float32)
    running = tl.full([], 0.0, tl.float64)
    found = tl.full([], _BIG, tl.int32)
    last = tl.full([], 0, tl.int32)
    s = 0
    while (s < V) & (found == _BIG):
        offs = s + tl.arange(0, BLOCK_V)
        w = _weights(row_ptr, res_row, offs, V, temperature, m, thr, total, thr_p, res_on, res_total,
                     tokens_ptr, parents_ptr, start, node, c_lo, c_hi, PROBS, LIBDEVICE, HAS_RES)
        cum = running + tl.cumsum(w.to(tl.float64), 0)
        found = tl.min(tl.where(cum.to(tl.float32) > target, offs, _BIG), 0)
        last = tl.maximum(last, tl.max(tl.where(w > 0.0, offs, 0), 0))
        running += tl.sum(w.to(tl.float64), 0)
        s += BLOCK_V
    return tl.where(found < _BIG, found, last)


@triton.jit
def _push(nodes, toks, w_offs, depth, node, token):
    """Record node as the path's entry at depth (its token at depth - 1)."""
    return tl.where(w_offs == depth, node, nodes), tl.where(w_offs == depth - 1, token, toks)


@triton.jit
def _walk_greedy(tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, rstart, rcount, bonus_tok, V, width,
                 nodes, toks, w_offs, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr, BLOCK_V: tl.constexpr):
    """Accept the first child equal to the argmax; the bonus is the last argmax
    (``bonus_tok`` at a node without a row: the row map)."""
    valid = tl.full([], 1, tl.int32)
    accepted = tl.full([], 0, tl.int32)
    node = tl.full([], 0, tl.int32)
    done = tl.full([], 0, tl.int32)
    while done == 0:
        if node >= rcount:
            toks = tl.where(w_offs == accepted, bonus_tok, toks)
            done = 1
        else:
            best_tok, _, ok_row = _scan(logits_ptr + (rstart + node) * logits_stride, V, PROBS, LIBDEVICE, BLOCK_V)
            nxt = tl.full([], -1, tl.int32)
            c = node + 1
            while (c < size) & (nxt < 0) & ok_row & (accepted + 1 < width):
                if (tl.load(parents_ptr + start + c) == node) & (tl.load(tokens_ptr + start + c) == best_tok):
                    nxt = c
                c += 1
            if ok_row == 0:
                valid = tl.full([], 0, tl.int32)
                done = 1
            elif nxt >= 0:
                accepted += 1
                nodes, toks = _push(nodes, toks, w_offs, accepted, nxt, tl.load(tokens_ptr + start + nxt))
                node = nxt
            else:
                toks = tl.where(w_offs == accepted, best_tok.to(tl.int64), toks)
                done = 1
    return accepted, valid, nodes, toks


@triton.jit
def _walk_rejection(tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, rstart, rcount, bonus_tok, b, V,
                    width, nodes, toks, w_offs, q_ptr, q_stride, temperature, top_k, top_p, unif_ptr, philox_ptr,
                    res_ptr,
                    HAS_Q: tl.constexpr, HAS_UNIFORMS: tl.constexpr, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
                    BLOCK_V: tl.constexpr):
    """Children tried in order against the running residual (module docstring)."""
    valid = tl.full([], 1, tl.int32)
    accepted = tl.full([], 0, tl.int32)
    node = tl.full([], 0, tl.int32)
    done = tl.full([], 0, tl.int32)
    res_row = res_ptr + b.to(tl.int64) * V
    while done == 0:
        if node >= rcount:  # no row (row map): the caller's bonus
            toks = tl.where(w_offs == accepted, bonus_tok, toks)
            done = 1
        else:
            row_ptr = logits_ptr + (rstart + node) * logits_stride
            _, row_max, ok_row = _scan(row_ptr, V, PROBS, LIBDEVICE, BLOCK_V)
            if ok_row == 0:
                valid = tl.full([], 0, tl.int32)
                done = 1
            else:
                # Rounding is monotone, so max(x / t) = max(x) / t.
                m = tl.math.div_rn(row_max, temperature)
                thr, total_d, count = _target_stats(row_ptr, V, temperature, m, top_k, top_p, PROBS, LIBDEVICE, BLOCK_V)
                total = total_d.to(tl.float32)
                nxt = tl.full([], -1, tl.int32)
                res_on = tl.full([], 0, tl.int32)  # with q: r lives in res_row, normalised by res_total
                res_total = tl.full([], 1.0, tl.float32)
                removed = tl.full([], 0.0, tl.float64)  # without q: exp(z - m) mass of the rejected tokens
                remaining = count  # without q: tokens with r > 0
                c = node + 1
                while (c < size) & (nxt < 0) & (accepted + 1 < width):
                    if tl.load(parents_ptr + start + c) == node:
                        x = tl.load(tokens_ptr + start + c)
                        u = _uniform(unif_ptr, philox_ptr, start + c, HAS_UNIFORMS)
                        if HAS_Q:
                            q_row = q_ptr + (rstart + node) * q_stride
                            inside = (x >= 0) & (x < V)
                            xs = tl.where(inside, x, 0)
                            qx = tl.where(inside, tl.load(q_row + xs).to(tl.float32), 0.0)
                            if res_on != 0:
                                rx = tl.where(inside, tl.load(res_row + xs), 0.0) / res_total
                            else:
                                rx = _e_at(row_ptr, x, V, temperature, m, thr, PROBS, LIBDEVICE) / total
                            if u * qx < rx:
                                nxt = c
                            else:
                                # r = norm(max(0, r - q)) unless that leaves no mass; a
                                # NaN in q propagates into the mass, leaving r as is.
                                mass = tl.full([], 0.0, tl.float64)
                                for s in range(0, V, BLOCK_V):
                                    offs = s + tl.arange(0, BLOCK_V)
                                    r = _weights(row_ptr, res_row, offs, V, temperature, m, thr, total, 0.0, res_on,
                                                 res_total, tokens_ptr, parents_ptr, start, node, 0, 0, PROBS, LIBDEVICE,
                                                 HAS_Q)
                                    q = tl.load(q_row + offs, mask=offs < V, other=0.0).to(tl.float32)
                                    mass += tl.sum(tl.maximum(r - q, 0.0, propagate_nan=tl.PropagateNan.ALL)
                                                   .to(tl.float64), 0)
                                if mass > 0.0:
                                    for s in range(0, V, BLOCK_V):
                                        offs = s + tl.arange(0, BLOCK_V)
                                        r = _weights(row_ptr, res_row, offs, V, temperature, m, thr, total, 0.0,
                                                     res_on, res_total, tokens_ptr, parents_ptr, start, node, 0, 0,
                                                     PROBS, LIBDEVICE, HAS_Q)
                                        q = tl.load(q_row + offs, mask=offs < V, other=0.0).to(tl.float32)
                                        tl.store(res_row + offs, tl.maximum(r - q, 0.0), mask=offs < V)
                                    # The next child's r(x) is one element, read by every thread.
                                    tl.debug_barrier()
                                    res_on = 1
                                    res_total = mass.to(tl.float32)
                        else:
                            ex = _e_at(row_ptr, x, V, temperature, m, thr, PROBS, LIBDEVICE)
                            # A token already rejected here has r(x) = 0, as has one p gives 0.
                            fresh = ex > 0.0
                            for c2 in range(node + 1, c):
                                fresh = fresh & ((tl.load(parents_ptr + start + c2) != node) |
                                                 (tl.load(tokens_ptr + start + c2) != x))
                            if fresh:
                                # The last token left has r = 1 exactly, as in the reference,
                                # so rejecting one never leaves r without mass.
                                rx = tl.where(remaining == 1, 1.0, ex / (total_d - removed).to(tl.float32))
                                if u < rx:
                                    nxt = c
                                else:
                                    removed += ex.to(tl.float64)
                                    remaining -= 1
                    c += 1
                if nxt >= 0:
                    accepted += 1
                    nodes, toks = _push(nodes, toks, w_offs, accepted, nxt, tl.load(tokens_ptr + start + nxt))
                    node = nxt
                else:
                    # Without q, the removed tokens are exactly node's children's (all rejected).
                    c_hi = tl.where(remaining < count, size, node + 1)
                    bonus = _sample(row_ptr, res_row, V, temperature, m, thr, total, 0.0, res_on, res_total,
                                    tokens_ptr, parents_ptr, start, node, node + 1, c_hi,
                                    _uniform(unif_ptr, philox_ptr, start, HAS_UNIFORMS), PROBS, LIBDEVICE, HAS_Q, BLOCK_V)
                    toks = tl.where(w_offs == accepted, bonus.to(tl.int64), toks)
                    done = 1
    return accepted, valid, nodes, toks


@triton.jit
def _typical_stats(row_ptr, V, temperature, eps, alpha, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
                   BLOCK_V: tl.constexpr):
    """-> (m, total, threshold, valid) of a row: p = exp(z - m) / total."""
    _, row_max, valid = _scan(row_ptr, V, PROBS, LIBDEVICE, BLOCK_V)
    m = tl.full([], 0.0, tl.float32)
    total = tl.full([], 1.0, tl.float32)
    thr = tl.full([], 0.0, tl.float32)
    if valid:
        m = tl.math.div_rn(row_max, temperature)
        total_d, _ = _total(row_ptr, V, temperature, m, 0, PROBS, LIBDEVICE, BLOCK_V)
        total = total_d.to(tl.float32)
        neg_entropy = tl.full([], 0.0, tl.float64)
        for s in range(0, V, BLOCK_V):
            p = _e(row_ptr, s + tl.arange(0, BLOCK_V), V, temperature, m, 0, PROBS, LIBDEVICE) / total
            neg_entropy += tl.sum((p * _log(p + 1e-5, LIBDEVICE)).to(tl.float64), 0)
        thr = tl.minimum(eps, alpha * _exp(neg_entropy.to(tl.float32), LIBDEVICE))
    return m, total, thr, valid


@triton.jit
def _walk_typical(tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, rstart, rcount, bonus_tok, V, width,
                  nodes, toks, w_offs, temperature, eps, alpha, unif_ptr, philox_ptr, HAS_UNIFORMS: tl.constexpr,
                  PROBS: tl.constexpr, LIBDEVICE: tl.constexpr, BLOCK_V: tl.constexpr, MAX_T: tl.constexpr):
    """Deepest node whose path passes Medusa's typical test; bonus from p >= threshold.
    Per-node state lives in [MAX_T] register vectors, indexed with t_offs."""
    t_offs = tl.arange(0, MAX_T)
    depth1 = tl.where(t_offs == 0, 1, 0)  # depth + 1 of acceptable nodes, 0 for the others
    score = tl.zeros([MAX_T], tl.float32)
    st_state = tl.zeros([MAX_T], tl.int32)  # row stats: 0 not computed, 1 valid, 2 invalid
    st_m = tl.zeros([MAX_T], tl.float32)
    st_total = tl.zeros([MAX_T], tl.float32)
    st_thr = tl.zeros([MAX_T], tl.float32)
    valid = tl.full([], 1, tl.int32)
    best = tl.full([], 0, tl.int32)
    best_depth = tl.full([], 0, tl.int32)
    best_score = tl.full([], 0.0, tl.float32)
    # Once more after the last child: the stats of `best`, whose row draws the bonus.
    c = tl.full([], 1, tl.int32)
    while (c <= size) & (valid != 0):
        par = tl.load(parents_ptr + start + tl.minimum(c, size - 1))
        par_ok = (par >= 0) & (par < c)
        par = tl.where(par_ok, par, 0)
        par_depth1 = _pick(depth1, t_offs, par)
        needed = (par_ok & (par_depth1 > 0) & (par_depth1 < width)) | (c == size)
        par = tl.where(c == size, best, par)
        if needed & (par < rcount):  # a node without a row (row map) accepts no child
            if _pick(st_state, t_offs, par) == 0:
                m, total, thr, ok_row = _typical_stats(logits_ptr + (rstart + par) * logits_stride, V, temperature,
                                                       eps, alpha, PROBS, LIBDEVICE, BLOCK_V)
                here = t_offs == par
                st_state = tl.where(here, tl.where(ok_row, 1, 2), st_state)
                st_m = tl.where(here, m, st_m)
                st_total = tl.where(here, total, st_total)
                st_thr = tl.where(here, thr, st_thr)
            if _pick(st_state, t_offs, par) == 2:
                valid = tl.full([], 0, tl.int32)
            elif c < size:
                row_ptr = logits_ptr + (rstart + par) * logits_stride
                px = _e_at(row_ptr, tl.load(tokens_ptr + start + c), V, temperature, _pick(st_m, t_offs, par), 0,
                           PROBS, LIBDEVICE) / _pick(st_total, t_offs, par)
                if px > _pick(st_thr, t_offs, par):
                    depth = par_depth1
                    sc = _pick(score, t_offs, par) + _log(px, LIBDEVICE)
                    depth1 = tl.where(t_offs == c, depth + 1, depth1)
                    score = tl.where(t_offs == c, sc, score)
                    if (depth > best_depth) | ((depth == best_depth) & (sc > best_score)):
                        best = c
                        best_depth = depth
                        best_score = sc
        c += 1
    accepted = tl.full([], 0, tl.int32)
    if valid != 0:
        bonus = bonus_tok
        if best < rcount:
            row_ptr = logits_ptr + (rstart + best) * logits_stride
            bonus = _sample(row_ptr, row_ptr, V, temperature, _pick(st_m, t_offs, best), 0,
                            _pick(st_total, t_offs, best), _pick(st_thr, t_offs, best), 0, 1.0, tokens_ptr,
                            parents_ptr, start, best, 0, 0, _uniform(unif_ptr, philox_ptr, start, HAS_UNIFORMS), PROBS,
                            LIBDEVICE, False, BLOCK_V).to(tl.int64)
        toks = tl.where(w_offs == best_depth, bonus, toks)
        n = best
        j = best_depth
        while j > 0:
            nodes, toks = _push(nodes, toks, w_offs, j, n, tl.load(tokens_ptr + start + n))
            n = tl.load(parents_ptr + start + n)
            j -= 1
        accepted = best_depth
    return accepted, valid, nodes, toks


@triton.jit
def _verify_kernel(tokens_ptr, parents_ptr, indptr_ptr, logits_ptr, logits_stride, q_ptr, q_stride,
                   temp_ptr, topk_ptr, topp_ptr, eps_ptr, alpha_ptr, unif_ptr, philox_ptr, res_ptr,
                   num_acc_ptr, nodes_ptr, out_tok_ptr, rows_ptr, bonus_ptr, num_nodes, num_rows, V, width,
                   MODE: tl.constexpr, HAS_Q: tl.constexpr, HAS_UNIFORMS: tl.constexpr, PROBS: tl.constexpr,
                   MAPPED: tl.constexpr, LIBDEVICE: tl.constexpr,
                   BLOCK_V: tl.constexpr, BLOCK_W: tl.constexpr, MAX_T: tl.constexpr):
    b = tl.program_id(0)
    # Clamped so that a malformed qo_indptr (validate=False) cannot read past the rows.
    start = tl.minimum(tl.maximum(tl.load(indptr_ptr + b), 0), num_nodes).to(tl.int64)
    end = tl.minimum(tl.maximum(tl.load(indptr_ptr + b + 1).to(tl.int64), start), num_nodes)
    size = tl.minimum(end - start, MAX_T).to(tl.int32)
    if MAPPED:  # the row map, clamped the same way
        rstart = tl.minimum(tl.maximum(tl.load(rows_ptr + b), 0), num_rows).to(tl.int64)
        rcount = (tl.minimum(tl.maximum(tl.load(rows_ptr + b + 1).to(tl.int64), rstart), num_rows) - rstart)
        rcount = rcount.to(tl.int32)
        bonus_tok = tl.load(bonus_ptr + b).to(tl.int64)
    else:
        rstart = start
        rcount = size
        bonus_tok = tl.full([], -1, tl.int64)
    w_offs = tl.arange(0, BLOCK_W)
    # The output rows are built in registers and stored once, by their owners.
    nodes = tl.where(w_offs == 0, 0, tl.full([BLOCK_W], -1, tl.int32))
    toks = tl.full([BLOCK_W], -1, tl.int64)
    valid = tl.full([], 1, tl.int32)
    accepted = tl.full([], 0, tl.int32)
    if size > 0:
        if MODE == 0:
            accepted, valid, nodes, toks = _walk_greedy(tokens_ptr, parents_ptr, logits_ptr, logits_stride, start,
                                                        size, rstart, rcount, bonus_tok, V, width, nodes, toks, w_offs,
                                                        PROBS, LIBDEVICE, BLOCK_V)
        else:
            temperature = tl.load(temp_ptr + b)
            if temperature > 0.0:
                if MODE == 1:
                    accepted, valid, nodes, toks = _walk_rejection(
                        tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, rstart, rcount, bonus_tok, b,
                        V, width, nodes, toks, w_offs, q_ptr, q_stride, temperature, tl.load(topk_ptr + b),
                        tl.load(topp_ptr + b),
                        unif_ptr, philox_ptr, res_ptr, HAS_Q, HAS_UNIFORMS, PROBS, LIBDEVICE, BLOCK_V)
                else:
                    accepted, valid, nodes, toks = _walk_typical(
                        tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, rstart, rcount, bonus_tok,
                        V, width, nodes, toks, w_offs, temperature, tl.load(eps_ptr + b), tl.load(alpha_ptr + b),
                        unif_ptr, philox_ptr, HAS_UNIFORMS, PROBS, LIBDEVICE, BLOCK_V, MAX_T)
            else:
                accepted, valid, nodes, toks = _walk_greedy(tokens_ptr, parents_ptr, logits_ptr, logits_stride,
                                                            start, size, rstart, rcount, bonus_tok, V, width, nodes,
                                                            toks, w_offs, PROBS, LIBDEVICE, BLOCK_V)
    else:
        nodes = tl.full([BLOCK_W], -1, tl.int32)
    if valid == 0:
        nodes = tl.full([BLOCK_W], -1, tl.int32)
        toks = tl.full([BLOCK_W], -1, tl.int64)
        accepted = tl.full([], -1, tl.int32)
    out_row = b.to(tl.int64) * width
    tl.store(nodes_ptr + out_row + w_offs, nodes, mask=w_offs < width)
    tl.store(out_tok_ptr + out_row + w_offs, toks, mask=w_offs < width)
    tl.store(num_acc_ptr + b, accepted)


def verify(draft_tokens, parents, qo_indptr, target_logits, draft_probs, temperature, top_k, top_p,
           posterior_threshold, posterior_alpha, uniforms, philox, mode, width, target_is_probs=False,
           target_indptr=None, bonus_tokens=None):
    """The verify_tree op on Triton, in one launch (one program per request).

    Args:
        draft_tokens: int64 [N]. parents: int32 [N], local, -1 at roots.
        qo_indptr: int32 [B + 1].
        target_logits: float32/bfloat16/float16 [N, V], last dim contiguous.
        draft_probs: [N, V] of those dtypes (last dim contiguous) or None.
        temperature, top_p, posterior_threshold, posterior_alpha: float32 [B]
            or None; top_k: int32 [B] or None (each as the mode needs).
        uniforms: float32 [N], or None with philox: int64 [2] = (seed, offset),
            read in the kernel.
        mode: 0 greedy, 1 rejection, 2 typical. width: max_depth + 1 (<= 256).
        target_is_probs: target_logits holds probabilities, read as log(p).
        target_indptr int32 [B + 1], bonus_tokens int64 [B]: the row map (both
            or neither; specdec_kernels/sampling.py); target_logits and
            draft_probs are then [R, V].

    Returns num_accepted int32 [B], accepted_nodes int32 [B, width], tokens
    int64 [B, width], all on the logits' device; every element is written by
    the kernel.
    """
    device = target_logits.device
    batch = qo_indptr.numel() - 1
    num_rows, vocab = target_logits.shape
    mapped = target_indptr is not None
    num_accepted = torch.empty(batch, dtype=torch.int32, device=device)
    nodes = torch.empty(batch, width, dtype=torch.int32, device=device)
    tokens = torch.empty(batch, width, dtype=torch.int64, device=device)
    if batch == 0:
        return num_accepted, nodes, tokens
    dummy_f = torch.empty(1, dtype=torch.float32, device=device)
    dummy_i = torch.empty(1, dtype=torch.int32, device=device)
    with_q = draft_probs is not None and mode == REJECTION
    residual = torch.empty(batch, vocab, dtype=torch.float32, device=device) if with_q else dummy_f
    pick = lambda t, d: t if t is not None else d  # noqa: E731
    _verify_kernel[(batch,)](
        draft_tokens, parents, qo_indptr, target_logits, target_logits.stride(0),
        draft_probs if with_q else target_logits, draft_probs.stride(0) if with_q else 0,
        pick(temperature, dummy_f), pick(top_k, dummy_i), pick(top_p, dummy_f), pick(posterior_threshold, dummy_f),
        pick(posterior_alpha, dummy_f), pick(uniforms, dummy_f),
        pick(philox, torch.zeros(2, dtype=torch.int64, device=device)), residual,
        num_accepted, nodes, tokens, pick(target_indptr, dummy_i),
        pick(bonus_tokens, torch.empty(1, dtype=torch.int64, device=device)), draft_tokens.numel(), num_rows, vocab,
        width, MODE=mode, HAS_Q=with_q, HAS_UNIFORMS=uniforms is not None, PROBS=bool(target_is_probs), MAPPED=mapped,
        LIBDEVICE=not triton_interpreted(),
        BLOCK_V=min(1024, triton.next_power_of_2(vocab)), BLOCK_W=triton.next_power_of_2(max(width, 2)),
        MAX_T=MAX_NODES)
    return num_accepted, nodes, tokens

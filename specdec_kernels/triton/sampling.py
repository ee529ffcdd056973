"""Triton verification: one program per request walks its tree as
specdec_kernels/reference/sampling.py does, streaming each row it reads in
BLOCK_V chunks.

Row statistics come either from the walk itself (one scan for argmax, max and
the NaN check; for sampled rows one more pass for the softmax normaliser) or,
when the batch is small enough that the walk would leave the GPU idle, from
a multi-program pre-pass over every target row (verify_rows.py: a 2-D grid
of rows x vocabulary chunks, folded per row in a fixed order), which leaves
the walk no pass at all for greedy rows and unfiltered sampled rows.

Top-k / top-p thresholds are exact, on the order-preserving integer key of
z: top-k by a radix select of 4 passes of 8 bits (integer histograms),
top-p by a radix select of 8 passes of 4 bits (float64 bucket masses), the
first fused with the pass that sums the top-k survivors, and one more pass
for the total of what top-p keeps. A row with both filters costs the walk
4 + 1 + 7 + 1 = 13 passes (the 32-step bisections took up to 67 with the
scan and totals). The final draw is an inverse-CDF pass (two when it has to
find the total first).

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

from ..backends import triton_interpreted
from . import verify_rows
from .verify_rows import _exp, _log, fold_count, fold_max, fold_sum

MAX_NODES = 256  # kMaxVerifyNodes
BLOCK_V_MAX = 1024  # elements per tl.load of a row (tests lower it to get many blocks and chunks)
BLOCK_H_MAX = 128  # elements per step of a top-p mass pass: [BLOCK_H, 16] float64 accumulators
GREEDY, REJECTION, TYPICAL, TRAVERSAL = 0, 1, 2, 3
_BIG = tl.constexpr(1 << 30)
_MAX_KEY = tl.constexpr(4294967295)


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
def _row_head(row_ptr, row, V, pmax_ptr, pidx_ptr, pbad_ptr, C, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
              BLOCK_V: tl.constexpr, STATS: tl.constexpr, BLOCK_C: tl.constexpr):
    """_scan of row (at row_ptr), or the fold of its pre-pass partials (verify_rows)."""
    if STATS:
        idx, best, valid = fold_max(pmax_ptr, pidx_ptr, pbad_ptr, row, C, PROBS, LIBDEVICE, BLOCK_C)
    else:
        idx, best, valid = _scan(row_ptr, V, PROBS, LIBDEVICE, BLOCK_V)
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
def _mass_hist(row_ptr, V, temperature, m, thr, prefix, shift, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
               BLOCK_H: tl.constexpr):
    """-> (hist, total, count): hist float64 [16] = the mass of exp(z - m)
    over the keys >= thr whose bits above shift + 4 equal prefix, per 4-bit
    digit at shift; total, count = _total's over the same keys. Sums run in
    [BLOCK_H, 16] / [BLOCK_H] float64 accumulators reduced once at the end
    (a fixed order). On sm_90 (cuobjdump of triton_aot.py's variants) BLOCK_H =
    128 gives 122-128 registers and no local memory, except the pre-pass +
    row-map variant (128 registers, 5 stores of 16 bytes around ptxas's
    division subroutine calls); 64 spilled in three variants (ptxas then
    capped them at 96 registers) and 256 took 200 registers."""
    bins = tl.arange(0, 16)
    acc = tl.zeros([BLOCK_H, 16], tl.float64)
    acc_total = tl.zeros([BLOCK_H], tl.float64)
    acc_count = tl.zeros([BLOCK_H], tl.int32)
    for s in range(0, V, BLOCK_H):
        offs = s + tl.arange(0, BLOCK_H)
        z = _z(row_ptr, offs, V, temperature, PROBS, LIBDEVICE)
        key = _key(z)
        e = tl.where((key >= thr) & (offs < V) & ((key >> (shift + 4)) == prefix), _exp(z - m, LIBDEVICE), 0.0)
        e64 = e.to(tl.float64)
        acc_total += e64
        acc_count += (e > 0.0).to(tl.int32)
        digit = ((key >> shift) & 15).to(tl.int32)
        acc += tl.where(digit[:, None] == bins[None, :], e64[:, None], 0.0)
    return tl.sum(acc, 0), tl.sum(acc_total, 0), tl.sum(acc_count, 0)


@triton.jit
def _select_count(row_ptr, V, temperature, k, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
                  BLOCK_V: tl.constexpr):
    """The largest key J with at least k keys >= J: the key of the k-th
    largest z (ties: every token with that z is kept). An MSB-first radix
    select, 4 passes of 8 bits, each a histogram (tl.histogram, integer
    counts) of the keys that still match the prefix found so far; digit g is
    the largest whose bucket start still has >= k keys at or above it.
    Integer counts, so exactly the bisection's answer."""
    bins = tl.arange(0, 256)
    prefix = tl.full([], 0, tl.int64)
    above = tl.full([], 0, tl.int32)  # keys above every key with this prefix
    for p in tl.static_range(4):
        shift = 24 - 8 * p
        hist = tl.zeros([256], tl.int32)
        for s in range(0, V, BLOCK_V):
            offs = s + tl.arange(0, BLOCK_V)
            key = _key(_z(row_ptr, offs, V, temperature, PROBS, LIBDEVICE))
            cand = (offs < V) & ((key >> (shift + 8)) == prefix)
            hist += tl.histogram(((key >> shift) & 255).to(tl.int32), 256, mask=cand)
        suffix = tl.cumsum(hist, 0, reverse=True)  # keys with the prefix and a digit >= j
        g = tl.max(tl.where(above + suffix >= k, bins, 0), 0)
        above += _pick(suffix, bins, g + 1)
        prefix = prefix * 256 + g
    return prefix


@triton.jit
def _select_mass(row_ptr, V, temperature, m, thr, limit, hist, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
                 BLOCK_H: tl.constexpr):
    """The smallest key K >= thr whose strictly larger mass (of exp(z - m),
    keys >= thr) is < limit: K = the largest J with float32(mass of keys >=
    J) >= limit, or thr if no J has that much. An MSB-first radix select
    like _select_count, 8 passes of 4 bits whose histograms are float64
    masses (the first, hist, comes with the total): 16 bins keep the
    per-element work of a pass small. The bucket masses add up to the same
    float64 sums the bisection formed token by token, only grouped
    differently, so the float32 comparisons agree with it unless a sum lies
    within a float64 rounding of a float32 boundary."""
    bins = tl.arange(0, 16)
    prefix = tl.full([], 0, tl.int64)
    above = tl.full([], 0.0, tl.float64)  # mass of the keys above every key with this prefix
    for p in tl.static_range(8):
        shift = 28 - 4 * p
        if p > 0:
            hist, _, _ = _mass_hist(row_ptr, V, temperature, m, thr, prefix, shift, PROBS, LIBDEVICE, BLOCK_H)
        suffix = tl.cumsum(hist, 0, reverse=True)
        # None qualifying (only rounding can do that below the first pass): stay at the bucket start.
        g = tl.max(tl.where((above + suffix).to(tl.float32) >= limit, bins, 0), 0)
        above += _pick(suffix, bins, g + 1)
        prefix = prefix * 16 + g
    return tl.maximum(prefix, thr)


@triton.jit
def _min_p_key(row_ptr, V, temperature, m, min_p, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
               BLOCK_V: tl.constexpr):
    """The smallest key whose z has exp(z - m) >= min_p (m = max z, which has it)."""
    lowest = _key(m)
    for s in range(0, V, BLOCK_V):
        offs = s + tl.arange(0, BLOCK_V)
        z = _z(row_ptr, offs, V, temperature, PROBS, LIBDEVICE)
        kept = (offs < V) & (_exp(z - m, LIBDEVICE) >= min_p)
        lowest = tl.minimum(lowest, tl.min(tl.where(kept, _key(z), _MAX_KEY), 0))
    return lowest


@triton.jit
def _target_stats(row_ptr, V, temperature, m, top_k, top_p, min_p, total_in, count_in, has_total,
                  PROBS: tl.constexpr, LIBDEVICE: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """-> (thr, total, count): p(x) = exp(z - m) / float32(total) where key(z) >= thr,
    else 0; count = how many tokens have p > 0. m = max z, which every filter keeps.
    (total_in, count_in): the unfiltered total and count when has_total (the
    row pre-pass), so a row without filters takes no pass here.

    Passes over the row: top-k 4 (radix select), then with top-p 1 (total +
    first mass histogram) + 7 + 1 (total of the survivors), else 1 (total)
    when top-k is on or the total is not given: at most 13, was up to 67
    with the 32-step bisections; min_p (> 0) adds 1 (_min_p_key)."""
    thr = tl.full([], 0, tl.int64)
    filtered = (top_k > 0) & (top_k < V)
    if filtered:
        thr = _select_count(row_ptr, V, temperature, top_k, PROBS, LIBDEVICE, BLOCK_V)
    if min_p > 0.0:
        # min-p and top-k are both thresholds on z that keep the max: they commute.
        thr = tl.maximum(thr, _min_p_key(row_ptr, V, temperature, m, min_p, PROBS, LIBDEVICE, BLOCK_V))
        filtered = filtered | (min_p > 0.0)
    if top_p < 1.0:
        hist, total, count = _mass_hist(row_ptr, V, temperature, m, thr, 0, 28, PROBS, LIBDEVICE, BLOCK_H)
        limit = top_p * total.to(tl.float32)
        key_p = _select_mass(row_ptr, V, temperature, m, thr, limit, hist, PROBS, LIBDEVICE, BLOCK_H)
        if key_p > thr:
            thr = key_p
            total, count = _total(row_ptr, V, temperature, m, thr, PROBS, LIBDEVICE, BLOCK_V)
    else:
        total = total_in
        count = count_in
        if filtered | (has_total == 0):
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


W_POINT, W_RESIDUAL, W_MEASURE = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)  # _weights' KIND


@triton.jit
def _weights(row_ptr, res_row, q_row, offs, V, temperature, m, thr, total, thr_p, res_on, res_total, alpha, beta,
             tokens_ptr, parents_ptr, start, node, c_lo, c_hi, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
             KIND: tl.constexpr):
    """The weights of a chunk the final draw is taken from (p = the target's
    probabilities above the key threshold thr):
    W_RESIDUAL: the residual row when res_on, else p;
    W_MEASURE: max(alpha p - beta q, 0) (the traversal rule's measure, q at q_row);
    W_POINT: alpha p restricted to p >= thr_p, less the tokens of node's
    children among [c_lo, c_hi) (all rejected)."""
    if KIND == W_RESIDUAL:
        if res_on != 0:
            w = tl.load(res_row + offs, mask=offs < V, other=0.0) / res_total
        else:
            w = _e(row_ptr, offs, V, temperature, m, thr, PROBS, LIBDEVICE) / total
    elif KIND == W_MEASURE:
        p = _e(row_ptr, offs, V, temperature, m, thr, PROBS, LIBDEVICE) / total
        q = tl.load(q_row + offs, mask=offs < V, other=0.0).to(tl.float32)
        w = tl.where(offs < V, tl.maximum(alpha * p - beta * q, 0.0), 0.0)
    else:
        p = _e(row_ptr, offs, V, temperature, m, thr, PROBS, LIBDEVICE) / total
        w = alpha * tl.where(p >= thr_p, p, 0.0)
        for c in range(c_lo, c_hi):
            if tl.load(parents_ptr + start + c) == node:
                w = tl.where(offs.to(tl.int64) == tl.load(tokens_ptr + start + c), 0.0, w)
    return w


@triton.jit
def _sample(row_ptr, res_row, q_row, V, temperature, m, thr, total, thr_p, res_on, res_total, alpha, beta,
            tokens_ptr, parents_ptr, start, node, c_lo, c_hi, u,
            PROBS: tl.constexpr, LIBDEVICE: tl.constexpr, KIND: tl.constexpr, BLOCK_V: tl.constexpr):
    """Inverse CDF over _weights: the first index whose running sum exceeds
    u * sum(w), else the last index with weight."""
    w_total = tl.full([], 0.0, tl.float64)
    for s in range(0, V, BLOCK_V):
        w = _weights(row_ptr, res_row, q_row, s + tl.arange(0, BLOCK_V), V, temperature, m, thr, total, thr_p,
                     res_on, res_total, alpha, beta, tokens_ptr, parents_ptr, start, node, c_lo, c_hi, PROBS,
                     LIBDEVICE, KIND)
        w_total += tl.sum(w.to(tl.float64), 0)
    target = u * w_total.to(tl.float32)
    running = tl.full([], 0.0, tl.float64)
    found = tl.full([], _BIG, tl.int32)
    last = tl.full([], 0, tl.int32)
    s = 0
    while (s < V) & (found == _BIG):
        offs = s + tl.arange(0, BLOCK_V)
        w = _weights(row_ptr, res_row, q_row, offs, V, temperature, m, thr, total, thr_p, res_on, res_total, alpha,
                     beta, tokens_ptr, parents_ptr, start, node, c_lo, c_hi, PROBS, LIBDEVICE, KIND)
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
                 nodes, toks, w_offs, pmax_ptr, pidx_ptr, pbad_ptr, C, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
                 BLOCK_V: tl.constexpr, STATS: tl.constexpr, BLOCK_C: tl.constexpr):
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
            best_tok, _, ok_row = _row_head(logits_ptr + (rstart + node) * logits_stride, rstart + node, V, pmax_ptr,
                                            pidx_ptr, pbad_ptr, C, PROBS, LIBDEVICE, BLOCK_V, STATS, BLOCK_C)
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
def _sampled_row(row_ptr, row, b, V, temperature, top_k, top_p, min_p, pmax_ptr, pidx_ptr, pbad_ptr, psum_ptr,
                 pcnt_ptr, owner_ptr, C, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr, BLOCK_V: tl.constexpr,
                 STATS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
    """-> (valid, m, thr, total, count) of a row the token and traversal rules
    sample from: p(x) = exp(z - m) / float32(total) where key(z) >= thr
    (_target_stats); m, thr, total are meaningless unless valid."""
    _, row_max, ok_row = _row_head(row_ptr, row, V, pmax_ptr, pidx_ptr, pbad_ptr, C, PROBS, LIBDEVICE, BLOCK_V,
                                   STATS, BLOCK_C)
    m = tl.full([], 0.0, tl.float32)
    thr = tl.full([], 0, tl.int64)
    total = tl.full([], 1.0, tl.float64)
    count = tl.full([], 1, tl.int32)
    if ok_row:
        # Rounding is monotone, so max(x / t) = max(x) / t.
        m = tl.math.div_rn(row_max, temperature)
        # The pre-pass's sums, when it computed them for this request (owner).
        has_total = tl.full([], 0, tl.int32)
        total_in = tl.full([], 0.0, tl.float64)
        count_in = tl.full([], 0, tl.int32)
        if STATS:
            if tl.load(owner_ptr + row) == b:
                has_total = tl.full([], 1, tl.int32)
                total_in = fold_sum(psum_ptr, row, C, BLOCK_C)
                count_in = fold_count(pcnt_ptr, row, C, BLOCK_C)
        thr, total, count = _target_stats(row_ptr, V, temperature, m, top_k, top_p, min_p, total_in, count_in,
                                          has_total, PROBS, LIBDEVICE, BLOCK_V, BLOCK_H)
    return ok_row, m, thr, total, count


@triton.jit
def _walk_rejection(tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, rstart, rcount, bonus_tok, b, V,
                    width, nodes, toks, w_offs, q_ptr, q_stride, temperature, top_k, top_p, min_p, unif_ptr,
                    philox_ptr, res_ptr, pmax_ptr, pidx_ptr, pbad_ptr, psum_ptr, pcnt_ptr, owner_ptr, C,
                    HAS_Q: tl.constexpr, HAS_UNIFORMS: tl.constexpr, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
                    BLOCK_V: tl.constexpr, STATS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
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
            row = rstart + node
            row_ptr = logits_ptr + row * logits_stride
            ok_row, m, thr, total_d, count = _sampled_row(row_ptr, row, b, V, temperature, top_k, top_p, min_p,
                                                          pmax_ptr, pidx_ptr, pbad_ptr, psum_ptr, pcnt_ptr, owner_ptr,
                                                          C, PROBS, LIBDEVICE, BLOCK_V, STATS, BLOCK_C, BLOCK_H)
            if ok_row == 0:
                valid = tl.full([], 0, tl.int32)
                done = 1
            else:
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
                                    r = _weights(row_ptr, res_row, q_row, offs, V, temperature, m, thr, total, 0.0,
                                                 res_on, res_total, 1.0, 0.0, tokens_ptr, parents_ptr, start, node, 0,
                                                 0, PROBS, LIBDEVICE, W_RESIDUAL)
                                    q = tl.load(q_row + offs, mask=offs < V, other=0.0).to(tl.float32)
                                    mass += tl.sum(tl.maximum(r - q, 0.0, propagate_nan=tl.PropagateNan.ALL)
                                                   .to(tl.float64), 0)
                                if mass > 0.0:
                                    for s in range(0, V, BLOCK_V):
                                        offs = s + tl.arange(0, BLOCK_V)
                                        r = _weights(row_ptr, res_row, q_row, offs, V, temperature, m, thr, total,
                                                     0.0, res_on, res_total, 1.0, 0.0, tokens_ptr, parents_ptr, start,
                                                     node, 0, 0, PROBS, LIBDEVICE, W_RESIDUAL)
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
                    bonus = _sample(row_ptr, res_row, row_ptr, V, temperature, m, thr, total, 0.0, res_on, res_total,
                                    1.0, 0.0, tokens_ptr, parents_ptr, start, node, node + 1, c_hi,
                                    _uniform(unif_ptr, philox_ptr, start, HAS_UNIFORMS), PROBS, LIBDEVICE,
                                    W_RESIDUAL if HAS_Q else W_POINT, BLOCK_V)
                    toks = tl.where(w_offs == accepted, bonus.to(tl.int64), toks)
                    done = 1
    return accepted, valid, nodes, toks


@triton.jit
def _walk_traversal(tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, rstart, rcount, bonus_tok, b, V,
                    width, nodes, toks, w_offs, q_ptr, q_stride, temperature, top_k, top_p, min_p, unif_ptr,
                    philox_ptr, pmax_ptr, pidx_ptr, pbad_ptr, psum_ptr, pcnt_ptr, owner_ptr, C,
                    HAS_Q: tl.constexpr, HAS_UNIFORMS: tl.constexpr, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr,
                    BLOCK_V: tl.constexpr, MAX_T: tl.constexpr, STATS: tl.constexpr, BLOCK_C: tl.constexpr,
                    BLOCK_H: tl.constexpr):
    """The traversal rule (reference _walk_traversal; the CUDA kernel's
    walk_traversal): depth first, children in increasing index, a node
    decided once its whole subtree was rejected. Node n's state lives in
    [MAX_T] register vectors at n: its residual measure W = max(alpha p -
    beta q, 0) (with q) or alpha p less its rejected children's tokens
    (point mass; zeroed = their distinct p mass), its weight w, its row's
    filter statistics (so returning to a node reads nothing), the next child
    index to try and its depth."""
    t_offs = tl.arange(0, MAX_T)
    s_alpha = tl.zeros([MAX_T], tl.float32)
    s_beta = tl.zeros([MAX_T], tl.float32)
    s_zeroed = tl.zeros([MAX_T], tl.float32)
    s_w = tl.zeros([MAX_T], tl.float32)
    s_m = tl.zeros([MAX_T], tl.float32)
    s_total = tl.zeros([MAX_T], tl.float32)
    s_thr = tl.zeros([MAX_T], tl.int64)
    s_next = tl.zeros([MAX_T], tl.int32)
    s_depth = tl.zeros([MAX_T], tl.int32)
    valid = tl.full([], 1, tl.int32)
    node = tl.full([], 0, tl.int32)
    weight = tl.full([], 1.0, tl.float32)  # of the node being entered
    depth = tl.full([], 0, tl.int32)
    entering = tl.full([], 1, tl.int32)
    done = tl.full([], 0, tl.int32)
    while done == 0:
        if entering != 0:
            m = tl.full([], 0.0, tl.float32)
            thr = tl.full([], 0, tl.int64)
            total = tl.full([], 1.0, tl.float32)
            nxt0 = size  # no row (row map): no candidate children
            if node < rcount:
                row = rstart + node
                ok_row, m, thr, total_d, _ = _sampled_row(logits_ptr + row * logits_stride, row, b, V, temperature,
                                                          top_k, top_p, min_p, pmax_ptr, pidx_ptr, pbad_ptr,
                                                          psum_ptr, pcnt_ptr, owner_ptr, C, PROBS, LIBDEVICE, BLOCK_V,
                                                          STATS, BLOCK_C, BLOCK_H)
                total = total_d.to(tl.float32)
                nxt0 = node + 1
                if ok_row == 0:
                    valid = tl.full([], 0, tl.int32)
                    done = 1
            here = t_offs == node
            s_alpha = tl.where(here, weight, s_alpha)
            s_beta = tl.where(here, 0.0, s_beta)
            s_zeroed = tl.where(here, 0.0, s_zeroed)
            s_w = tl.where(here, weight, s_w)
            s_m = tl.where(here, m, s_m)
            s_total = tl.where(here, total, s_total)
            s_thr = tl.where(here, thr, s_thr)
            s_next = tl.where(here, nxt0, s_next)
            s_depth = tl.where(here, depth, s_depth)
            entering = tl.full([], 0, tl.int32)
        if done == 0:
            cur_depth = _pick(s_depth, t_offs, node)
            c = tl.full([], -1, tl.int32)
            c2 = _pick(s_next, t_offs, node)
            while (c2 < size) & (c < 0) & (cur_depth + 1 < width):
                if tl.load(parents_ptr + start + c2) == node:
                    c = c2
                c2 += 1
            alpha = _pick(s_alpha, t_offs, node)
            beta = _pick(s_beta, t_offs, node)
            row_ptr = logits_ptr + (rstart + node) * logits_stride
            q_row = q_ptr + (rstart + node) * q_stride
            rejected = tl.full([], -1, tl.int32)  # the node whose subtree was just rejected
            if c >= 0:  # enter child c with w_c = min(1, W(x) / q(x))
                x = tl.load(tokens_ptr + start + c)
                inside = (x >= 0) & (x < V)
                px = _e_at(row_ptr, x, V, temperature, _pick(s_m, t_offs, node), _pick(s_thr, t_offs, node), PROBS,
                           LIBDEVICE) / _pick(s_total, t_offs, node)
                if HAS_Q:
                    qx = tl.where(inside, tl.load(q_row + tl.where(inside, x, 0)).to(tl.float32), 0.0)
                    wx = tl.where(inside, tl.maximum(alpha * px - beta * qx, 0.0), 0.0)
                else:
                    qx = tl.full([], 1.0, tl.float32)
                    fresh = inside
                    for c3 in range(node + 1, c):
                        fresh = fresh & ((tl.load(parents_ptr + start + c3) != node) |
                                         (tl.load(tokens_ptr + start + c3) != x))
                    wx = tl.where(fresh, alpha * px, 0.0)
                s_next = tl.where(t_offs == node, c + 1, s_next)
                weight = tl.where(qx > 0.0, tl.minimum(1.0, tl.math.div_rn(wx, tl.where(qx > 0.0, qx, 1.0))),
                                  tl.where(wx > 0.0, 1.0, 0.0))
                if weight > 0.0:
                    depth = cur_depth + 1
                    node = c
                    entering = tl.full([], 1, tl.int32)
                else:
                    rejected = c  # weight 0: rejected whatever its uniforms, so not visited (rows unread)
            elif (node == 0) | (_uniform(unif_ptr, philox_ptr, start + node, HAS_UNIFORMS) < _pick(s_w, t_offs, node)):
                done = 1  # accepted: ends the walk
            else:
                rejected = node
            if rejected >= 0:
                # Rejected with its subtree: condition the parent on it (reference
                # _condition_on_rejection), its state divided by 1 - w + m.
                x = tl.load(tokens_ptr + start + rejected)
                par = tl.load(parents_ptr + start + rejected)
                p_row = logits_ptr + (rstart + par) * logits_stride
                pm = _pick(s_m, t_offs, par)
                pthr = _pick(s_thr, t_offs, par)
                ptotal = _pick(s_total, t_offs, par)
                palpha = _pick(s_alpha, t_offs, par)
                pbeta = _pick(s_beta, t_offs, par)
                pw = _pick(s_w, t_offs, par)
                if HAS_Q:
                    pbeta = pbeta + 1.0
                    mass = tl.full([], 0.0, tl.float64)
                    for s in range(0, V, BLOCK_V):
                        mass += tl.sum(_weights(p_row, p_row, q_ptr + (rstart + par) * q_stride,
                                                s + tl.arange(0, BLOCK_V), V, temperature, pm, pthr, ptotal, 0.0, 0,
                                                1.0, palpha, pbeta, tokens_ptr, parents_ptr, start, par, 0, 0, PROBS,
                                                LIBDEVICE, W_MEASURE).to(tl.float64), 0)
                    msum = mass.to(tl.float32)
                else:
                    zeroed = _pick(s_zeroed, t_offs, par)
                    fresh = (x >= 0) & (x < V)
                    for c3 in range(par + 1, rejected):
                        fresh = fresh & ((tl.load(parents_ptr + start + c3) != par) |
                                         (tl.load(tokens_ptr + start + c3) != x))
                    if fresh:
                        zeroed = zeroed + _e_at(p_row, x, V, temperature, pm, pthr, PROBS, LIBDEVICE) / ptotal
                    s_zeroed = tl.where(t_offs == par, zeroed, s_zeroed)
                    msum = palpha * tl.maximum(1.0 - zeroed, 0.0)
                # 1 - w + m = 0 (the child could not be rejected) only by rounding.
                den = 1.0 - pw + msum
                ok = den > 0.0
                safe = tl.where(ok, den, 1.0)
                s_alpha = tl.where(t_offs == par, tl.where(ok, tl.math.div_rn(palpha, safe), palpha), s_alpha)
                s_beta = tl.where(t_offs == par, tl.where(ok, tl.math.div_rn(pbeta, safe), pbeta), s_beta)
                s_w = tl.where(t_offs == par, tl.where(ok, tl.math.div_rn(msum, safe), msum), s_w)
                node = par
    accepted = tl.full([], 0, tl.int32)
    if valid != 0:
        accepted = _pick(s_depth, t_offs, node)
        bonus = bonus_tok
        if node < rcount:
            row_ptr = logits_ptr + (rstart + node) * logits_stride
            bonus = _sample(row_ptr, row_ptr, q_ptr + (rstart + node) * q_stride, V, temperature,
                            _pick(s_m, t_offs, node), _pick(s_thr, t_offs, node), _pick(s_total, t_offs, node), 0.0, 0,
                            1.0, _pick(s_alpha, t_offs, node), _pick(s_beta, t_offs, node), tokens_ptr, parents_ptr,
                            start, node, node + 1, _pick(s_next, t_offs, node),
                            _uniform(unif_ptr, philox_ptr, start, HAS_UNIFORMS), PROBS, LIBDEVICE,
                            W_MEASURE if HAS_Q else W_POINT, BLOCK_V).to(tl.int64)
        toks = tl.where(w_offs == accepted, bonus, toks)
        n = node
        j = accepted
        while j > 0:
            nodes, toks = _push(nodes, toks, w_offs, j, n, tl.load(tokens_ptr + start + n))
            n = tl.load(parents_ptr + start + n)
            j -= 1
    return accepted, valid, nodes, toks


@triton.jit
def _typical_stats(row_ptr, row, b, V, temperature, eps, alpha, pmax_ptr, pidx_ptr, pbad_ptr, psum_ptr, pent_ptr,
                   owner_ptr, C, PROBS: tl.constexpr, LIBDEVICE: tl.constexpr, BLOCK_V: tl.constexpr,
                   STATS: tl.constexpr, BLOCK_C: tl.constexpr):
    """-> (m, total, threshold, valid) of a row: p = exp(z - m) / total.
    Three passes (scan, total, entropy), or none with the pre-pass's sums."""
    _, row_max, valid = _row_head(row_ptr, row, V, pmax_ptr, pidx_ptr, pbad_ptr, C, PROBS, LIBDEVICE, BLOCK_V, STATS,
                                  BLOCK_C)
    m = tl.full([], 0.0, tl.float32)
    total = tl.full([], 1.0, tl.float32)
    thr = tl.full([], 0.0, tl.float32)
    if valid:
        m = tl.math.div_rn(row_max, temperature)
        mine = tl.full([], 0, tl.int32)
        if STATS:
            mine = (tl.load(owner_ptr + row) == b).to(tl.int32)
        if mine != 0:
            total = fold_sum(psum_ptr, row, C, BLOCK_C).to(tl.float32)
            neg_entropy = fold_sum(pent_ptr, row, C, BLOCK_C)
        else:
            total_d, _ = _total(row_ptr, V, temperature, m, 0, PROBS, LIBDEVICE, BLOCK_V)
            total = total_d.to(tl.float32)
            neg_entropy = tl.full([], 0.0, tl.float64)
            for s in range(0, V, BLOCK_V):
                p = _e(row_ptr, s + tl.arange(0, BLOCK_V), V, temperature, m, 0, PROBS, LIBDEVICE) / total
                neg_entropy += tl.sum((p * _log(p + 1e-5, LIBDEVICE)).to(tl.float64), 0)
        thr = tl.minimum(eps, alpha * _exp(neg_entropy.to(tl.float32), LIBDEVICE))
    return m, total, thr, valid


@triton.jit
def _walk_typical(tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, rstart, rcount, bonus_tok, b, V,
                  width, nodes, toks, w_offs, temperature, eps, alpha, unif_ptr, philox_ptr, pmax_ptr, pidx_ptr,
                  pbad_ptr, psum_ptr, pent_ptr, owner_ptr, C, HAS_UNIFORMS: tl.constexpr, PROBS: tl.constexpr,
                  LIBDEVICE: tl.constexpr, BLOCK_V: tl.constexpr, MAX_T: tl.constexpr, STATS: tl.constexpr,
                  BLOCK_C: tl.constexpr):
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
                m, total, thr, ok_row = _typical_stats(logits_ptr + (rstart + par) * logits_stride, rstart + par, b,
                                                       V, temperature, eps, alpha, pmax_ptr, pidx_ptr, pbad_ptr,
                                                       psum_ptr, pent_ptr, owner_ptr, C, PROBS, LIBDEVICE, BLOCK_V,
                                                       STATS, BLOCK_C)
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
            bonus = _sample(row_ptr, row_ptr, row_ptr, V, temperature, _pick(st_m, t_offs, best), 0,
                            _pick(st_total, t_offs, best), _pick(st_thr, t_offs, best), 0, 1.0, 1.0, 0.0, tokens_ptr,
                            parents_ptr, start, best, 0, 0, _uniform(unif_ptr, philox_ptr, start, HAS_UNIFORMS), PROBS,
                            LIBDEVICE, W_POINT, BLOCK_V).to(tl.int64)
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
                   temp_ptr, topk_ptr, topp_ptr, minp_ptr, eps_ptr, alpha_ptr, unif_ptr, philox_ptr, res_ptr,
                   num_acc_ptr, nodes_ptr, out_tok_ptr, rows_ptr, bonus_ptr, num_nodes, num_rows, V, width,
                   pmax_ptr, pidx_ptr, pbad_ptr, psum_ptr, pcnt_ptr, pent_ptr, owner_ptr, C,
                   MODE: tl.constexpr, HAS_Q: tl.constexpr, HAS_UNIFORMS: tl.constexpr, PROBS: tl.constexpr,
                   MAPPED: tl.constexpr, LIBDEVICE: tl.constexpr,
                   BLOCK_V: tl.constexpr, BLOCK_W: tl.constexpr, MAX_T: tl.constexpr, STATS: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
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
                                                        pmax_ptr, pidx_ptr, pbad_ptr, C, PROBS, LIBDEVICE, BLOCK_V,
                                                        STATS, BLOCK_C)
        else:
            temperature = tl.load(temp_ptr + b)
            if temperature > 0.0:
                if MODE == 3:
                    accepted, valid, nodes, toks = _walk_traversal(
                        tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, rstart, rcount, bonus_tok, b,
                        V, width, nodes, toks, w_offs, q_ptr, q_stride, temperature, tl.load(topk_ptr + b),
                        tl.load(topp_ptr + b), tl.load(minp_ptr + b), unif_ptr, philox_ptr, pmax_ptr, pidx_ptr,
                        pbad_ptr, psum_ptr, pcnt_ptr, owner_ptr, C, HAS_Q, HAS_UNIFORMS, PROBS, LIBDEVICE, BLOCK_V,
                        MAX_T, STATS, BLOCK_C, BLOCK_H)
                elif MODE == 1:
                    accepted, valid, nodes, toks = _walk_rejection(
                        tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, rstart, rcount, bonus_tok, b,
                        V, width, nodes, toks, w_offs, q_ptr, q_stride, temperature, tl.load(topk_ptr + b),
                        tl.load(topp_ptr + b), tl.load(minp_ptr + b), unif_ptr, philox_ptr, res_ptr, pmax_ptr,
                        pidx_ptr, pbad_ptr, psum_ptr, pcnt_ptr, owner_ptr, C, HAS_Q, HAS_UNIFORMS, PROBS, LIBDEVICE,
                        BLOCK_V, STATS, BLOCK_C, BLOCK_H)
                else:
                    accepted, valid, nodes, toks = _walk_typical(
                        tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, rstart, rcount, bonus_tok,
                        b, V, width, nodes, toks, w_offs, temperature, tl.load(eps_ptr + b), tl.load(alpha_ptr + b),
                        unif_ptr, philox_ptr, pmax_ptr, pidx_ptr, pbad_ptr, psum_ptr, pent_ptr, owner_ptr, C,
                        HAS_UNIFORMS, PROBS, LIBDEVICE, BLOCK_V, MAX_T, STATS, BLOCK_C)
            else:
                accepted, valid, nodes, toks = _walk_greedy(tokens_ptr, parents_ptr, logits_ptr, logits_stride,
                                                            start, size, rstart, rcount, bonus_tok, V, width, nodes,
                                                            toks, w_offs, pmax_ptr, pidx_ptr, pbad_ptr, C, PROBS,
                                                            LIBDEVICE, BLOCK_V, STATS, BLOCK_C)
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


@triton.jit
def _bitmask_kernel(src_ptr, src_stride, dst_ptr, words_ptr, words_stride, V, fill, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < V
    words = tl.load(words_ptr + r * words_stride + (offs >> 5), mask=inside, other=0)
    allowed = ((words >> (offs & 31)) & 1) != 0
    x = tl.load(src_ptr + r * src_stride + offs, mask=inside)
    tl.store(dst_ptr + r * V + offs, tl.where(allowed, x.to(tl.float32), fill).to(dst_ptr.dtype.element_ty),
             mask=inside)


def apply_bitmask(rows, allowed_tokens, probs: bool):
    """A contiguous copy of rows [R, V] with the tokens allowed_tokens
    (int32 [R, ceil(V / 32)]) does not allow set to -inf (0 for probabilities)."""
    num_rows, vocab = rows.shape
    out = torch.empty(num_rows, vocab, dtype=rows.dtype, device=rows.device)
    if num_rows and vocab:
        block = min(1024, triton.next_power_of_2(vocab))
        _bitmask_kernel[(num_rows, triton.cdiv(vocab, block))](
            rows, rows.stride(0), out, allowed_tokens, allowed_tokens.stride(0), vocab,
            0.0 if probs else float("-inf"), BLOCK=block)
    return out


def verify(draft_tokens, parents, qo_indptr, target_logits, draft_probs, temperature, top_k, top_p,
           posterior_threshold, posterior_alpha, uniforms, philox, mode, width, target_is_probs=False,
           target_indptr=None, bonus_tokens=None, min_p=None, allowed_tokens=None):
    """The verify_tree op on Triton: one program per request walks its tree,
    after the multi-program row pre-pass (verify_rows.py: one launch for
    greedy, two for rejection, three for typical) when verify_rows.use_row_pass
    says it pays.

    Args:
        draft_tokens: int64 [N]. parents: int32 [N], local, -1 at roots.
        qo_indptr: int32 [B + 1].
        target_logits: float32/bfloat16/float16 [N, V], last dim contiguous.
        draft_probs: [N, V] of those dtypes (last dim contiguous) or None.
        temperature, top_p, posterior_threshold, posterior_alpha: float32 [B]
            or None; top_k: int32 [B] or None (each as the mode needs).
        uniforms: float32 [N], or None with philox: int64 [2] = (seed, offset),
            read in the kernel.
        mode: 0 greedy, 1 rejection (token rule), 2 typical, 3 traversal. width: max_depth + 1 (<= 256).
        target_is_probs: target_logits holds probabilities, read as log(p).
        target_indptr int32 [B + 1], bonus_tokens int64 [B]: the row map (both
            or neither; specdec_kernels/sampling.py); target_logits and
            draft_probs are then [R, V].

        min_p: float32 [B] or None (modes 1 and 3).
        allowed_tokens: int32 [rows, ceil(V / 32)] bitmask or None. Applied by
            a masking pass that writes a masked copy of the rows first (one
            more launch, the rows read and written once more; info() says so):
            every walk and the pre-pass then read the masked rows. The CUDA
            kernel masks as it loads instead.

    Returns num_accepted int32 [B], accepted_nodes int32 [B, width], tokens
    int64 [B, width], all on the logits' device; every element is written by
    the kernel.
    """
    if allowed_tokens is not None:
        target_logits = apply_bitmask(target_logits, allowed_tokens, bool(target_is_probs))
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
    with_q = draft_probs is not None and mode in (REJECTION, TRAVERSAL)
    # Only the token rule keeps a residual row; traversal keeps scalars per node.
    residual = torch.empty(batch, vocab, dtype=torch.float32, device=device) if with_q and mode == REJECTION \
        else dummy_f
    pick = lambda t, d: t if t is not None else d  # noqa: E731
    block_v = min(BLOCK_V_MAX, triton.next_power_of_2(vocab))
    libdevice_on = not triton_interpreted()
    stats = None
    # Both rejection rules read the same row statistics.
    stats_mode = (REJECTION if mode == TRAVERSAL else mode) if temperature is not None else GREEDY
    if verify_rows.use_row_pass(batch, num_rows, stats_mode, device):
        stats = verify_rows.RowStats(target_logits, target_indptr if mapped else qo_indptr, pick(temperature, dummy_f),
                                     top_k, top_p, stats_mode, bool(target_is_probs), libdevice_on, block_v)
        stats_args = stats.args()
    else:
        stats_args = (dummy_f, dummy_i, dummy_i, torch.empty(1, dtype=torch.float64, device=device), dummy_i,
                      torch.empty(1, dtype=torch.float64, device=device), dummy_i, 1)
    _verify_kernel[(batch,)](
        draft_tokens, parents, qo_indptr, target_logits, target_logits.stride(0),
        draft_probs if with_q else target_logits, draft_probs.stride(0) if with_q else 0,
        pick(temperature, dummy_f), pick(top_k, dummy_i), pick(top_p, dummy_f),
        min_p if min_p is not None else torch.zeros(batch, dtype=torch.float32, device=device),
        pick(posterior_threshold, dummy_f),
        pick(posterior_alpha, dummy_f), pick(uniforms, dummy_f),
        pick(philox, torch.zeros(2, dtype=torch.int64, device=device)), residual,
        num_accepted, nodes, tokens, pick(target_indptr, dummy_i),
        pick(bonus_tokens, torch.empty(1, dtype=torch.int64, device=device)), draft_tokens.numel(), num_rows, vocab,
        width, *stats_args, MODE=mode, HAS_Q=with_q, HAS_UNIFORMS=uniforms is not None, PROBS=bool(target_is_probs),
        MAPPED=mapped, LIBDEVICE=libdevice_on, BLOCK_V=block_v, BLOCK_W=triton.next_power_of_2(max(width, 2)),
        MAX_T=MAX_NODES, STATS=stats is not None, BLOCK_C=stats.block_c if stats is not None else 1,
        BLOCK_H=min(block_v, BLOCK_H_MAX))
    return num_accepted, nodes, tokens

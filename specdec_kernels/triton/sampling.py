"""Triton verification: one program per request walks its tree as
specdec_kernels/reference/sampling.py does, streaming the rows it reads in
BLOCK_V chunks. Greedy rows cost one pass (argmax); sampled rows one pass for
the softmax statistics plus, only when used, 32 bisection passes each for the
exact top-k and top-p thresholds (over the order-preserving integer key of
z); the final draw is an inverse-CDF pass.

Residuals: without draft probabilities the residual is p with the rejected
siblings' tokens removed (tracked as removed mass, no buffer); with them it
is materialised in a float32 scratch row per request.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_NODES = 256  # kMaxVerifyNodes
GREEDY, REJECTION, TYPICAL = 0, 1, 2
_BIG = tl.constexpr(1 << 30)


@triton.jit
def _key(z):
    """Order-preserving int64 key of a float32 (-0.0 folded into +0.0)."""
    bits = (z + 0.0).to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits.to(tl.int64) + 2147483648, (-1 - bits).to(tl.int64))


@triton.jit
def _z(row_ptr, offs, V, temperature):
    x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
    return tl.math.div_rn(x, temperature)


@triton.jit
def _scan(row_ptr, V, BLOCK_V: tl.constexpr):
    """-> (argmax of the raw row, lowest index on ties; valid: no NaN and a finite max)."""
    best = tl.full([], float("-inf"), tl.float32)
    idx = tl.full([], 0, tl.int32)
    nans = tl.full([], 0, tl.int32)
    for s in range(0, V, BLOCK_V):
        offs = s + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        nans += tl.sum((x != x).to(tl.int32), 0)
        x = tl.where(x != x, float("-inf"), x)
        cm = tl.max(x, 0)
        ci = tl.min(tl.where(x == cm, offs, _BIG), 0)
        better = cm > best
        idx = tl.where(better, ci, idx)
        best = tl.where(better, cm, best)
    valid = (nans == 0) & (best > float("-inf")) & (best < float("inf"))
    return idx, valid


@triton.jit
def _count_at_least(row_ptr, V, temperature, key, BLOCK_V: tl.constexpr):
    n = tl.full([], 0, tl.int32)
    for s in range(0, V, BLOCK_V):
        offs = s + tl.arange(0, BLOCK_V)
        k = _key(_z(row_ptr, offs, V, temperature))
        n += tl.sum(((k >= key) & (offs < V)).to(tl.int32), 0)
    return n


@triton.jit
def _softmax_stats(row_ptr, V, temperature, thr, BLOCK_V: tl.constexpr):
    """max and sum of exp(z - max) over the tokens with key >= thr."""
    m = tl.full([], float("-inf"), tl.float32)
    for s in range(0, V, BLOCK_V):
        offs = s + tl.arange(0, BLOCK_V)
        z = _z(row_ptr, offs, V, temperature)
        keep = (_key(z) >= thr) & (offs < V)
        m = tl.maximum(m, tl.max(tl.where(keep, z, float("-inf")), 0))
    total = tl.full([], 0.0, tl.float32)
    for s in range(0, V, BLOCK_V):
        offs = s + tl.arange(0, BLOCK_V)
        z = _z(row_ptr, offs, V, temperature)
        keep = (_key(z) >= thr) & (offs < V)
        total += tl.sum(tl.where(keep, tl.exp(z - m), 0.0), 0)
    return m, total


@triton.jit
def _mass_above(row_ptr, V, temperature, thr, m, key, BLOCK_V: tl.constexpr):
    mass = tl.full([], 0.0, tl.float32)
    for s in range(0, V, BLOCK_V):
        offs = s + tl.arange(0, BLOCK_V)
        z = _z(row_ptr, offs, V, temperature)
        k = _key(z)
        mass += tl.sum(tl.where((k >= thr) & (k > key) & (offs < V), tl.exp(z - m), 0.0), 0)
    return mass


@triton.jit
def _target_stats(row_ptr, V, temperature, top_k, top_p, BLOCK_V: tl.constexpr):
    """-> (thr, m, total): p(x) = exp(z - m) / total where key(z) >= thr, else 0."""
    thr = tl.full([], 0, tl.int64)
    if (top_k > 0) & (top_k < V):
        # Largest key whose count of keys >= it is still >= k: the k-th largest z.
        lo = tl.full([], 0, tl.int64)
        hi = tl.full([], 4294967295, tl.int64)
        for _ in range(32):
            mid = lo + (hi - lo + 1) // 2
            ok = _count_at_least(row_ptr, V, temperature, mid, BLOCK_V) >= top_k
            lo = tl.where(ok, mid, lo)
            hi = tl.where(ok, hi, mid - 1)
        thr = lo
    m, total = _softmax_stats(row_ptr, V, temperature, thr, BLOCK_V)
    if top_p < 1.0:
        # Smallest key whose strictly-larger kept mass is < top_p * total.
        limit = top_p * total
        lo = thr
        hi = tl.full([], 4294967295, tl.int64)
        for _ in range(33):
            mid = (lo + hi) // 2
            ok = _mass_above(row_ptr, V, temperature, thr, m, mid, BLOCK_V) < limit
            hi = tl.where(ok, mid, hi)
            lo = tl.where(ok, lo, mid + 1)
        thr = tl.maximum(thr, lo)
        m, total = _softmax_stats(row_ptr, V, temperature, thr, BLOCK_V)
    return thr, m, total


@triton.jit
def _p_at(row_ptr, x, V, temperature, thr, m, total):
    """p(x) of a row with stats (thr, m, total); 0 outside [0, V)."""
    inside = (x >= 0) & (x < V)
    xs = tl.where(inside, x, 0)
    z = tl.math.div_rn(tl.load(row_ptr + xs).to(tl.float32), temperature)
    p = tl.exp(z - m) / total
    return tl.where(inside & (_key(z) >= thr), p, 0.0)


@triton.jit
def _uniform(unif_ptr, philox_ptr, row, HAS_UNIFORMS: tl.constexpr):
    if HAS_UNIFORMS:
        u = tl.load(unif_ptr + row)
    else:
        seed = tl.load(philox_ptr)
        offset = tl.load(philox_ptr + 1)
        r = tl.randint(seed, offset + row)
        u = (r >> 8).to(tl.float32) * (1.0 / 16777216.0)
    return u


@triton.jit
def _in_rejected(tokens_ptr, parents_ptr, start, node, size, offs):
    """Vector mask: offs equal to the token of some child of `node` (all of
    them were rejected when this is asked)."""
    hit = offs < 0
    for c in range(node + 1, size):
        is_child = tl.load(parents_ptr + start + c) == node
        tok = tl.load(tokens_ptr + start + c)
        hit = hit | (is_child & (offs.to(tl.int64) == tok))
    return hit


@triton.jit
def _weights(row_ptr, q_res_ptr, offs, V, temperature, thr, m, total, removed_mask,
             MODE_W: tl.constexpr):
    """Sampling weights of a chunk. MODE_W 0: p; 1: p without the rejected
    tokens; 2: the materialised residual; 3: p restricted to p >= thr (typical,
    where thr is a probability and the key filter is off)."""
    z = _z(row_ptr, offs, V, temperature)
    if MODE_W == 2:
        w = tl.load(q_res_ptr + offs, mask=offs < V, other=0.0)
    elif MODE_W == 3:
        p = tl.exp(z - m) / total
        w = tl.where((offs < V) & (p >= thr), p, 0.0)
    else:
        p = tl.where((_key(z) >= thr) & (offs < V), tl.exp(z - m) / total, 0.0)
        w = tl.where(removed_mask, 0.0, p) if MODE_W == 1 else p
    return w


@triton.jit
def _sample(row_ptr, res_ptr, tokens_ptr, parents_ptr, start, node, size, V, temperature, thr, m, total, u,
            MODE_W: tl.constexpr, BLOCK_V: tl.constexpr):
    """Inverse CDF: first index whose running sum exceeds u * sum(w), else the
    last index with weight."""
    w_total = tl.full([], 0.0, tl.float32)
    for s in range(0, V, BLOCK_V):
        offs = s + tl.arange(0, BLOCK_V)
        removed = _in_rejected(tokens_ptr, parents_ptr, start, node, size, offs) if MODE_W == 1 else offs < 0
        w_total += tl.sum(_weights(row_ptr, res_ptr, offs, V, temperature, thr, m, total, removed, MODE_W), 0)
    target = u * w_total
    running = tl.full([], 0.0, tl.float32)
    found = tl.full([], _BIG, tl.int32)
    last = tl.full([], 0, tl.int32)
    for s in range(0, V, BLOCK_V):
        offs = s + tl.arange(0, BLOCK_V)
        removed = _in_rejected(tokens_ptr, parents_ptr, start, node, size, offs) if MODE_W == 1 else offs < 0
        w = _weights(row_ptr, res_ptr, offs, V, temperature, thr, m, total, removed, MODE_W)
        cum = running + tl.cumsum(w, 0)
        found = tl.minimum(found, tl.min(tl.where(cum > target, offs, _BIG), 0))
        last = tl.maximum(last, tl.max(tl.where(w > 0.0, offs, 0), 0))
        running += tl.sum(w, 0)
    return tl.where(found < _BIG, found, last)


@triton.jit
def _typical_stats(row_ptr, V, temperature, eps, alpha, BLOCK_V: tl.constexpr):
    m, total = _softmax_stats(row_ptr, V, temperature, tl.full([], 0, tl.int64), BLOCK_V)
    entropy = tl.full([], 0.0, tl.float32)
    for s in range(0, V, BLOCK_V):
        offs = s + tl.arange(0, BLOCK_V)
        p = tl.exp(_z(row_ptr, offs, V, temperature) - m) / total
        entropy -= tl.sum(tl.where(offs < V, p * tl.log(p + 1e-5), 0.0), 0)
    return m, total, tl.minimum(eps, alpha * tl.exp(-entropy))


@triton.jit
def _walk_greedy(tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, b, out_row, V, width, nodes_ptr,
                 out_tok_ptr, BLOCK_V: tl.constexpr):
    """Accept the first child equal to the argmax; the bonus is the last argmax."""
    valid = tl.full([], 1, tl.int32)
    accepted = tl.full([], 0, tl.int32)
    node = tl.full([], 0, tl.int32)
    done = tl.full([], 0, tl.int32)
    while done == 0:
        row_ptr = logits_ptr + (start + node) * logits_stride
        best_tok, ok_row = _scan(row_ptr, V, BLOCK_V)
        nxt = tl.full([], -1, tl.int32)
        if ok_row & (accepted + 1 < width):
            for c in range(node + 1, size):
                if (nxt < 0) & (tl.load(parents_ptr + start + c) == node):
                    if tl.load(tokens_ptr + start + c) == best_tok:
                        nxt = c
        if ok_row == 0:
            valid = tl.full([], 0, tl.int32)
            done = 1
        elif nxt >= 0:
            accepted += 1
            tl.store(nodes_ptr + out_row + accepted, nxt)
            tl.store(out_tok_ptr + out_row + accepted - 1, tl.load(tokens_ptr + start + nxt))
            node = nxt
        else:
            tl.store(out_tok_ptr + out_row + accepted, best_tok.to(tl.int64))
            done = 1
    return accepted, valid


@triton.jit
def _walk_rejection(tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, b, out_row, V, width, nodes_ptr,
                    out_tok_ptr, q_ptr, q_stride, temperature, top_k, top_p,
                    unif_ptr, philox_ptr, res_ptr, HAS_Q: tl.constexpr, HAS_UNIFORMS: tl.constexpr,
                    BLOCK_V: tl.constexpr):
    """Children tried in order against the running residual (module docstring)."""
    valid = tl.full([], 1, tl.int32)
    accepted = tl.full([], 0, tl.int32)
    node = tl.full([], 0, tl.int32)
    done = tl.full([], 0, tl.int32)
    res_row = res_ptr + b.to(tl.int64) * V
    while done == 0:
        row_ptr = logits_ptr + (start + node) * logits_stride
        q_row = q_ptr + (start + node) * q_stride
        _, ok_row = _scan(row_ptr, V, BLOCK_V)
        thr, m, total = _target_stats(row_ptr, V, temperature, top_k, top_p, BLOCK_V)
        nxt = tl.full([], -1, tl.int32)
        removed = tl.full([], 0.0, tl.float32)  # point mass: p of distinct rejected tokens
        res_active = tl.full([], 0, tl.int32)  # with q: residual materialised in res_row
        res_total = tl.full([], 1.0, tl.float32)
        if ok_row & (accepted + 1 < width):
            for c in range(node + 1, size):
                if (nxt < 0) & (tl.load(parents_ptr + start + c) == node):
                    x = tl.load(tokens_ptr + start + c)
                    inside = (x >= 0) & (x < V)
                    xs = tl.where(inside, x, 0)
                    px = _p_at(row_ptr, x, V, temperature, thr, m, total)
                    u = _uniform(unif_ptr, philox_ptr, start + c, HAS_UNIFORMS)
                    if HAS_Q:
                        qx = tl.where(inside, tl.load(q_row + xs).to(tl.float32), 0.0)
                        rx = tl.where(res_active != 0,
                                      tl.where(inside, tl.load(res_row + xs), 0.0) / res_total, px)
                        if u * qx < rx:
                            nxt = c
                        else:
                            # r = norm(max(0, r - q)), kept only if it has mass.
                            mass = tl.full([], 0.0, tl.float32)
                            for s in range(0, V, BLOCK_V):
                                offs = s + tl.arange(0, BLOCK_V)
                                q = tl.load(q_row + offs, mask=offs < V, other=0.0).to(tl.float32)
                                r = tl.where(res_active != 0,
                                             tl.load(res_row + offs, mask=offs < V, other=0.0) / res_total,
                                             _weights(row_ptr, res_row, offs, V, temperature, thr, m, total,
                                                      offs < 0, 0))
                                mass += tl.sum(tl.where(offs < V, tl.maximum(r - q, 0.0), 0.0), 0)
                            if mass > 0.0:
                                for s in range(0, V, BLOCK_V):
                                    offs = s + tl.arange(0, BLOCK_V)
                                    q = tl.load(q_row + offs, mask=offs < V, other=0.0).to(tl.float32)
                                    r = tl.where(res_active != 0,
                                                 tl.load(res_row + offs, mask=offs < V, other=0.0) / res_total,
                                                 _weights(row_ptr, res_row, offs, V, temperature, thr, m,
                                                          total, offs < 0, 0))
                                    tl.store(res_row + offs, tl.maximum(r - q, 0.0), mask=offs < V)
                                res_active = 1
                                res_total = mass
                    else:
                        # A token already rejected among the siblings has r(x) = 0.
                        dup = tl.full([], 0, tl.int32)
                        for c2 in range(node + 1, c):
                            same = (tl.load(parents_ptr + start + c2) == node) & \
                                   (tl.load(tokens_ptr + start + c2) == x)
                            dup = dup | same.to(tl.int32)
                        rx = tl.where(dup != 0, 0.0, px / (1.0 - removed))
                        if u < rx:
                            nxt = c
                        elif (dup == 0) & (removed + px < 1.0):
                            removed += px
        if ok_row == 0:
            valid = tl.full([], 0, tl.int32)
            done = 1
        elif nxt >= 0:
            accepted += 1
            tl.store(nodes_ptr + out_row + accepted, nxt)
            tl.store(out_tok_ptr + out_row + accepted - 1, tl.load(tokens_ptr + start + nxt))
            node = nxt
        else:
            u0 = _uniform(unif_ptr, philox_ptr, start, HAS_UNIFORMS)
            if HAS_Q:
                if res_active != 0:
                    bonus = _sample(row_ptr, res_row, tokens_ptr, parents_ptr, start, node, size, V,
                                    temperature, thr, m, total, u0, 2, BLOCK_V)
                else:
                    bonus = _sample(row_ptr, res_row, tokens_ptr, parents_ptr, start, node, size, V,
                                    temperature, thr, m, total, u0, 0, BLOCK_V)
            else:
                if accepted + 1 < width:
                    bonus = _sample(row_ptr, res_row, tokens_ptr, parents_ptr, start, node, size, V,
                                    temperature, thr, m, total, u0, 1, BLOCK_V)
                else:
                    bonus = _sample(row_ptr, res_row, tokens_ptr, parents_ptr, start, node, size, V,
                                    temperature, thr, m, total, u0, 0, BLOCK_V)
            tl.store(out_tok_ptr + out_row + accepted, bonus.to(tl.int64))
            done = 1
    return accepted, valid


@triton.jit
def _walk_typical(tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, b, out_row, V, width, nodes_ptr,
                  out_tok_ptr, temperature, eps, alpha, unif_ptr, philox_ptr,
                  state_ptr, stats_ptr, res_ptr, HAS_UNIFORMS: tl.constexpr, BLOCK_V: tl.constexpr,
                  MAX_T: tl.constexpr):
    """Deepest node whose path passes Medusa's typical test; bonus from p >= threshold."""
    valid = tl.full([], 1, tl.int32)
    accepted = tl.full([], 0, tl.int32)
    st = state_ptr + b.to(tl.int64) * MAX_T * 2  # [depth + 1 if accepted else 0, computed stats flag]
    sc = stats_ptr + b.to(tl.int64) * MAX_T * 4  # [m, total, thr, score]
    tl.store(st + 0, 1)
    tl.store(st + 1, 0)
    tl.store(sc + 3, 0.0)
    for c in range(1, size):
        tl.store(st + 2 * c, 0)
        tl.store(st + 2 * c + 1, 0)
    best = tl.full([], 0, tl.int32)
    best_depth = tl.full([], 0, tl.int32)
    best_score = tl.full([], 0.0, tl.float32)
    for c in range(1, size):
        par = tl.load(parents_ptr + start + c)
        if (valid != 0) & (par >= 0) & (par < c):
            par_depth = tl.load(st + 2 * par)  # depth + 1, 0 if not accepted
            if (par_depth > 0) & (par_depth < width):
                row_ptr = logits_ptr + (start + par) * logits_stride
                if tl.load(st + 2 * par + 1) == 0:
                    _, ok_row = _scan(row_ptr, V, BLOCK_V)
                    m, total, thr_p = _typical_stats(row_ptr, V, temperature, eps, alpha, BLOCK_V)
                    tl.store(sc + 4 * par, m)
                    tl.store(sc + 4 * par + 1, total)
                    tl.store(sc + 4 * par + 2, thr_p)
                    tl.store(st + 2 * par + 1, tl.where(ok_row, 1, 2))
                if tl.load(st + 2 * par + 1) == 2:
                    valid = tl.full([], 0, tl.int32)
                else:
                    m = tl.load(sc + 4 * par)
                    total = tl.load(sc + 4 * par + 1)
                    thr_p = tl.load(sc + 4 * par + 2)
                    x = tl.load(tokens_ptr + start + c)
                    px = _p_at(row_ptr, x, V, temperature, tl.full([], 0, tl.int64), m, total)
                    if px > thr_p:
                        depth = par_depth  # the child's depth
                        score = tl.load(sc + 4 * par + 3) + tl.log(px)
                        tl.store(st + 2 * c, depth + 1)
                        tl.store(sc + 4 * c + 3, score)
                        if (depth > best_depth) | ((depth == best_depth) & (score > best_score)):
                            best = c
                            best_depth = depth
                            best_score = score
    if valid != 0:
        row_ptr = logits_ptr + (start + best) * logits_stride
        _, ok_row = _scan(row_ptr, V, BLOCK_V)
        if ok_row:
            m, total, thr_p = _typical_stats(row_ptr, V, temperature, eps, alpha, BLOCK_V)
            u0 = _uniform(unif_ptr, philox_ptr, start, HAS_UNIFORMS)
            bonus = _sample(row_ptr, res_ptr, tokens_ptr, parents_ptr, start, best, size, V, temperature,
                            thr_p, m, total, u0, 3, BLOCK_V)
            n = best
            j = best_depth
            while j > 0:
                tl.store(nodes_ptr + out_row + j, n)
                tl.store(out_tok_ptr + out_row + j - 1, tl.load(tokens_ptr + start + n))
                n = tl.load(parents_ptr + start + n)
                j -= 1
            tl.store(out_tok_ptr + out_row + best_depth, bonus.to(tl.int64))
            accepted = best_depth
        else:
            valid = tl.full([], 0, tl.int32)
    return accepted, valid


@triton.jit
def _verify_kernel(tokens_ptr, parents_ptr, indptr_ptr, logits_ptr, logits_stride, q_ptr, q_stride,
                   temp_ptr, topk_ptr, topp_ptr, eps_ptr, alpha_ptr, unif_ptr, philox_ptr,
                   res_ptr, state_ptr, stats_ptr, num_acc_ptr, nodes_ptr, out_tok_ptr, V, width,
                   MODE: tl.constexpr, HAS_Q: tl.constexpr, HAS_UNIFORMS: tl.constexpr,
                   BLOCK_V: tl.constexpr, BLOCK_W: tl.constexpr, MAX_T: tl.constexpr):
    b = tl.program_id(0)
    start = tl.load(indptr_ptr + b).to(tl.int64)
    size = tl.minimum(tl.load(indptr_ptr + b + 1).to(tl.int64) - start, MAX_T).to(tl.int32)
    w_offs = tl.arange(0, BLOCK_W)
    out_row = b.to(tl.int64) * width
    tl.store(nodes_ptr + out_row + w_offs, tl.full([BLOCK_W], -1, tl.int32), mask=w_offs < width)
    tl.store(out_tok_ptr + out_row + w_offs, tl.full([BLOCK_W], -1, tl.int64), mask=w_offs < width)
    valid = tl.full([], 1, tl.int32)
    accepted = tl.full([], 0, tl.int32)
    if size > 0:
        tl.store(nodes_ptr + out_row, 0)
        if MODE == 0:
            accepted, valid = _walk_greedy(tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, b,
                                           out_row, V, width, nodes_ptr, out_tok_ptr, BLOCK_V)
        else:
            temperature = tl.load(temp_ptr + b)
            if temperature > 0.0:
                if MODE == 1:
                    accepted, valid = _walk_rejection(
                        tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, b, out_row, V, width,
                        nodes_ptr, out_tok_ptr, q_ptr, q_stride, temperature, tl.load(topk_ptr + b),
                        tl.load(topp_ptr + b), unif_ptr, philox_ptr, res_ptr, HAS_Q, HAS_UNIFORMS, BLOCK_V)
                else:
                    accepted, valid = _walk_typical(
                        tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size, b, out_row, V, width,
                        nodes_ptr, out_tok_ptr, temperature, tl.load(eps_ptr + b), tl.load(alpha_ptr + b),
                        unif_ptr, philox_ptr, state_ptr, stats_ptr, res_ptr, HAS_UNIFORMS, BLOCK_V, MAX_T)
            else:
                accepted, valid = _walk_greedy(tokens_ptr, parents_ptr, logits_ptr, logits_stride, start, size,
                                               b, out_row, V, width, nodes_ptr, out_tok_ptr, BLOCK_V)
    if valid != 0:
        tl.store(num_acc_ptr + b, accepted)
    else:
        tl.store(nodes_ptr + out_row + w_offs, tl.full([BLOCK_W], -1, tl.int32), mask=w_offs < width)
        tl.store(out_tok_ptr + out_row + w_offs, tl.full([BLOCK_W], -1, tl.int64), mask=w_offs < width)
        tl.store(num_acc_ptr + b, -1)


def verify(draft_tokens, parents, qo_indptr, target_logits, draft_probs, temperature, top_k, top_p,
           posterior_threshold, posterior_alpha, uniforms, philox, mode, width):
    """The verify_tree op on Triton. draft_tokens int64 [N], parents int32 [N],
    qo_indptr int32 [B + 1], target_logits [N, V] (last dim contiguous),
    draft_probs [N, V] or None, per-request float32/int32 [B] parameters as the
    mode needs (None otherwise), uniforms float32 [N] or philox int64 [2].
    Returns num_accepted int32 [B], accepted_nodes int32 [B, width], tokens
    int64 [B, width]; every element is written by the kernel."""
    device = target_logits.device
    batch = qo_indptr.numel() - 1
    n, vocab = target_logits.shape
    num_accepted = torch.empty(batch, dtype=torch.int32, device=device)
    nodes = torch.empty(batch, width, dtype=torch.int32, device=device)
    tokens = torch.empty(batch, width, dtype=torch.int64, device=device)
    if batch == 0:
        return num_accepted, nodes, tokens
    dummy_f = torch.empty(1, dtype=torch.float32, device=device)
    dummy_i = torch.empty(1, dtype=torch.int32, device=device)
    with_q = draft_probs is not None and mode == REJECTION
    residual = torch.empty(batch, vocab, dtype=torch.float32, device=device) if with_q else dummy_f
    state = torch.empty(batch, MAX_NODES * 2, dtype=torch.int32, device=device) if mode == TYPICAL else dummy_i
    stats = torch.empty(batch, MAX_NODES * 4, dtype=torch.float32, device=device) if mode == TYPICAL else dummy_f
    pick = lambda t, d: t if t is not None else d  # noqa: E731
    _verify_kernel[(batch,)](
        draft_tokens, parents, qo_indptr, target_logits, target_logits.stride(0),
        draft_probs if with_q else target_logits, draft_probs.stride(0) if with_q else 0,
        pick(temperature, dummy_f), pick(top_k, dummy_i), pick(top_p, dummy_f), pick(posterior_threshold, dummy_f),
        pick(posterior_alpha, dummy_f), pick(uniforms, dummy_f),
        philox if philox is not None else torch.zeros(2, dtype=torch.int64, device=device),
        residual, state, stats, num_accepted, nodes, tokens, vocab, width,
        MODE=mode, HAS_Q=with_q, HAS_UNIFORMS=uniforms is not None,
        BLOCK_V=min(1024, triton.next_power_of_2(vocab)), BLOCK_W=triton.next_power_of_2(max(width, 2)),
        MAX_T=MAX_NODES)
    return num_accepted, nodes, tokens

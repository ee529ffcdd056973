// CUDA verification kernel (header-only): one CTA of kVerifyThreads threads
// per request walks the request's tree exactly as the CPU kernel and the
// Python reference do (rules in specdec/sampling.h). Every thread runs the
// same scalar walk; the passes over a row (argmax, softmax statistics, the
// exact top-k / top-p thresholds by a 16-way search over the order-preserving
// integer key of z, residual updates, the inverse-CDF draw) are block-wide
// with deterministic reductions, so all threads hold identical scalars and
// control flow stays uniform. Thread 0 writes the outputs.
//
// This first version reads each visited row with one CTA; a row-parallel
// statistics pass over all rows (several CTAs per row, last-CTA walk) is the
// planned bandwidth step for B = 1 with large V.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "specdec/philox.h"
#include "specdec/sampling.h"

namespace specdec {
namespace kernels {
namespace verify {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr float kInf = __builtin_huge_valf();

__device__ __forceinline__ float load(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat16: return __half2float(static_cast<const __half*>(base)[i]);
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

// Points one pass of a threshold search tests at once (see search_key).
constexpr int kProbes = 15;

// Shared scratch of the block reductions.
struct Scratch {
  float f[kWarps * kProbes];
  int64_t i[kWarps];
  double seg[kThreads];
};

// Reductions return the same value to every thread: warps combine by xor
// shuffles, then every thread folds the warp partials in the same order.
__device__ __forceinline__ float block_sum(float v, Scratch& s) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) s.f[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = s.f[0];
  for (int w = 1; w < kWarps; ++w) r += s.f[w];
  return r;
}

__device__ __forceinline__ float block_max(float v, Scratch& s) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) s.f[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = s.f[0];
  for (int w = 1; w < kWarps; ++w) r = fmaxf(r, s.f[w]);
  return r;
}

// kProbes sums at once, each bitwise what block_sum gives for that value.
// The xor tree by recursive halving: at step o a lane keeps half of the
// values it still holds and sends its partner the other half, so each kept
// value is the very sum the full tree forms at that step (same operands, and
// a + b == b + a), for 16 shuffles instead of 5 kProbes. Lane l ends with the
// warp's sum of value (l >> 1) & 15; the warp partials are folded in the
// same order as block_sum's.
__device__ __forceinline__ void block_sum_probes(float (&v)[kProbes], Scratch& s) {
  static_assert(kProbes <= 16, "one value per lane pair after four halvings");
  const unsigned lane = threadIdx.x & 31;
  float h[16];
#pragma unroll
  for (int j = 0; j < 16; ++j) h[j] = j < kProbes ? v[j] : 0.f;
#pragma unroll
  for (int width = 8, o = 16; width >= 1; width >>= 1, o >>= 1) {
    const bool upper = (lane & unsigned(o)) != 0;
#pragma unroll
    for (int i = 0; i < width; ++i) {
      const float send = upper ? h[i] : h[width + i];
      const float keep = upper ? h[width + i] : h[i];
      h[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
    }
  }
  h[0] += __shfl_xor_sync(0xffffffffu, h[0], 1);
  __syncthreads();
  const unsigned j = (lane >> 1) & 15u;
  if ((lane & 1u) == 0 && j < unsigned(kProbes)) s.f[j * kWarps + (threadIdx.x >> 5)] = h[0];
  __syncthreads();
#pragma unroll
  for (int k = 0; k < kProbes; ++k) {
    float r = s.f[k * kWarps];
    for (int w = 1; w < kWarps; ++w) r += s.f[k * kWarps + w];
    v[k] = r;
  }
}

template <bool kMin>
__device__ __forceinline__ int64_t block_extreme(int64_t v, Scratch& s) {
  for (int o = 16; o > 0; o >>= 1) {
    const int64_t other = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMin ? (other < v ? other : v) : (other > v ? other : v);
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) s.i[threadIdx.x >> 5] = v;
  __syncthreads();
  int64_t r = s.i[0];
  for (int w = 1; w < kWarps; ++w) r = kMin ? (s.i[w] < r ? s.i[w] : r) : (s.i[w] > r ? s.i[w] : r);
  return r;
}

__device__ __forceinline__ int64_t block_min(int64_t v, Scratch& s) { return block_extreme<true>(v, s); }
__device__ __forceinline__ int64_t block_max_i(int64_t v, Scratch& s) { return block_extreme<false>(v, s); }

// Order-preserving key of a float (-0 folded into +0), in [0, 2^32).
__device__ __forceinline__ int64_t key_of(float z) {
  const int32_t bits = __float_as_int(z + 0.0f);
  return bits >= 0 ? int64_t(bits) + 2147483648LL : int64_t(-1 - bits);
}

// A row of the target's logits (or probabilities) of element type L: the
// kernel is instantiated per logits dtype, so the row passes have no dtype
// branch between their loads and unroll by 4 into 4 loads in flight per
// thread (each thread still sums its elements in x order: same results).
template <typename L>
struct Row {
  const L* base;   // the row's first element
  int64_t vocab;
  bool probs;      // the row holds probabilities: its logits are log(raw)
  __device__ float raw(int64_t x) const { return to_f(base[x]); }
  __device__ float logit(int64_t x) const {
    const float v = raw(x);
    return probs ? logf(v) : v;
  }
};

// z = logit / t with IEEE division, so every backend gets the same z.
template <typename R>
__device__ __forceinline__ float z_of(const R& row, int64_t x, float t) { return __fdiv_rn(row.logit(x), t); }

struct Scan {
  int64_t argmax;
  bool valid;
};

// Argmax of the raw row (lowest index on ties); valid = no NaN, finite max
// (probabilities: no NaN or negative value, a finite positive max, i.e. the
// same test on log(row)).
template <typename R>
__device__ Scan scan_row(const R& row, Scratch& s) {
  float best = -kInf;
  int64_t idx = row.vocab;  // this thread's first maximum (strided x increases)
  int nan = 0;
#pragma unroll 4
  for (int64_t x = threadIdx.x; x < row.vocab; x += kThreads) {
    const float v = row.raw(x);
    if (v != v || (row.probs && v < 0.f)) {
      nan = 1;
    } else if (idx == row.vocab || v > best) {
      best = v;
      idx = x;
    }
  }
  const float m = block_max(best, s);
  const int64_t first = block_min(best == m && idx < row.vocab ? idx : row.vocab, s);
  const float nans = block_sum(float(nan), s);
  return Scan{first < row.vocab ? first : 0, nans == 0.f && m > (row.probs ? 0.f : -kInf) && m < kInf};
}

struct Stats {
  int64_t thr;  // keep tokens with key(z) >= thr
  float m, total;
  template <typename R>
  __device__ float p(const R& row, int64_t x, float t) const {
    if (x < 0 || x >= row.vocab) return 0.f;
    const float z = z_of(row, x, t);
    return key_of(z) >= thr ? expf(z - m) / total : 0.f;
  }
};

template <typename R>
__device__ void softmax_stats(const R& row, float t, int64_t thr, Scratch& s, float* m_out, float* total_out) {
  float m = -kInf;
#pragma unroll 4
  for (int64_t x = threadIdx.x; x < row.vocab; x += kThreads) {
    const float z = z_of(row, x, t);
    if (key_of(z) >= thr) m = fmaxf(m, z);
  }
  m = block_max(m, s);
  float total = 0.f;
#pragma unroll 4
  for (int64_t x = threadIdx.x; x < row.vocab; x += kThreads) {
    const float z = z_of(row, x, t);
    if (key_of(z) >= thr) total += expf(z - m);
  }
  *m_out = m;
  *total_out = block_sum(total, s);
}

// The boundary of a monotone predicate over keys in [lo, hi], kProbes + 1
// ways per pass over the row (8 passes for 32-bit keys where bisection takes
// 32). fill(probe, sums) adds this thread's share of each probe's sum; the
// sums are block-reduced exactly as a bisection step's single sum would be,
// so the boundary found is the one bisection finds, bit for bit.
// kLast: the largest key whose predicate holds (it holds at lo); otherwise
// the smallest key whose predicate holds (hi when none in [lo, hi) does).
template <bool kLast, typename Fill, typename Pred>
__device__ int64_t search_key(int64_t lo, int64_t hi, Fill fill, Pred holds, Scratch& s) {
  while (lo < hi) {
    int64_t probe[kProbes];
    float sums[kProbes];
    const int64_t span = hi - lo;
#pragma unroll
    for (int j = 0; j < kProbes; ++j) {
      // kLast probes (lo, hi], else [lo, hi): both strictly inside the interval's open end.
      probe[j] = kLast ? lo + (span * (j + 1) + kProbes) / (kProbes + 1) : lo + span * j / (kProbes + 1);
      sums[j] = 0.f;
    }
    fill(probe, sums);
    block_sum_probes(sums, s);
    if (kLast) {
      int64_t new_lo = lo, new_hi = hi;
#pragma unroll
      for (int j = 0; j < kProbes; ++j) {
        if (holds(sums[j])) {
          new_lo = probe[j] > new_lo ? probe[j] : new_lo;
        } else if (probe[j] - 1 < new_hi) {
          new_hi = probe[j] - 1;
        }
      }
      lo = new_lo;
      hi = new_hi > lo ? new_hi : lo;
    } else {
      int64_t new_lo = lo, new_hi = hi;
#pragma unroll
      for (int j = kProbes - 1; j >= 0; --j) {
        if (holds(sums[j])) {
          new_hi = probe[j] < new_hi ? probe[j] : new_hi;
        } else if (probe[j] + 1 > new_lo) {
          new_lo = probe[j] + 1;
        }
      }
      hi = new_hi;
      lo = new_lo < hi ? new_lo : hi;
    }
  }
  return lo;
}

template <typename R>
__device__ Stats target_stats(const R& row, float t, int64_t top_k, float top_p, Scratch& s) {
  Stats st{0, 0.f, 0.f};
  if (top_k > 0 && top_k < row.vocab) {
    // The largest key that at least k keys reach: the k-th largest z.
    st.thr = search_key<true>(
        0, 4294967295LL,
        [&](const int64_t (&probe)[kProbes], float (&count)[kProbes]) {
#pragma unroll 1  // 15 probes per element already keep the loads apart
          for (int64_t x = threadIdx.x; x < row.vocab; x += kThreads) {
            const int64_t k = key_of(z_of(row, x, t));
#pragma unroll
            for (int j = 0; j < kProbes; ++j) count[j] += k >= probe[j];
          }
        },
        [&](float count) { return count >= float(top_k); }, s);
  }
  softmax_stats(row, t, st.thr, s, &st.m, &st.total);
  if (top_p < 1.f) {
    // The smallest key whose strictly larger kept mass is < top_p * total.
    const float limit = top_p * st.total;
    const int64_t thr = st.thr;
    const float m = st.m;
    const int64_t lo = search_key<false>(
        thr, 4294967295LL,
        [&](const int64_t (&probe)[kProbes], float (&mass)[kProbes]) {
#pragma unroll 1
          for (int64_t x = threadIdx.x; x < row.vocab; x += kThreads) {
            const float z = z_of(row, x, t);
            const int64_t k = key_of(z);
            if (k < thr) continue;
            const float e = expf(z - m);
#pragma unroll
            for (int j = 0; j < kProbes; ++j) mass[j] += k > probe[j] ? e : 0.f;
          }
        },
        [&](float mass) { return mass < limit; }, s);
    st.thr = lo > st.thr ? lo : st.thr;
    softmax_stats(row, t, st.thr, s, &st.m, &st.total);
  }
  return st;
}

// Inverse CDF over weights(x): first index whose running sum exceeds
// u * total, else the last index with weight. Each thread owns a contiguous
// segment so the running sum has one well-defined order.
template <typename W>
__device__ int64_t sample(int64_t vocab, float u, W weight, Scratch& s) {
  const int64_t per = (vocab + kThreads - 1) / kThreads;
  const int64_t lo = threadIdx.x * per;
  const int64_t hi = lo + per < vocab ? lo + per : vocab;
  double mine = 0.0;  // double: a float running sum over 100K tokens drifts by ~1e-3
  int64_t last = -1;
  for (int64_t x = lo; x < hi; ++x) {
    const float w = weight(x);
    mine += w;
    if (w > 0.f) last = x;
  }
  __syncthreads();
  s.seg[threadIdx.x] = mine;
  __syncthreads();
  double before = 0.0, total = 0.0;
  for (int i = 0; i < kThreads; ++i) {
    if (i == int(threadIdx.x)) before = total;
    total += s.seg[i];
  }
  const float target = u * float(total);
  int64_t found = vocab;
  if (float(before + mine) > target && mine > 0.0) {
    double running = before;
    for (int64_t x = lo; x < hi; ++x) {
      running += weight(x);
      if (float(running) > target) {
        found = x;
        break;
      }
    }
  }
  found = block_min(found, s);
  const int64_t last_all = block_max_i(last, s);
  return found < vocab ? found : (last_all >= 0 ? last_all : 0);
}

template <typename L>
struct Walk {
  const VerifyArgs& a;
  int64_t b, start, size;
  RowSpan rows;
  Scratch& s;

  __device__ int64_t token(int64_t node) const { return a.draft_tokens[start + node]; }
  __device__ int32_t parent(int64_t node) const { return a.parents[start + node]; }
  __device__ bool has_row(int64_t node) const { return node < rows.count; }
  __device__ int64_t bonus() const { return a.bonus_tokens[b]; }
  __device__ Row<L> row(int64_t node) const {
    return Row<L>{static_cast<const L*>(a.logits) + (rows.start + node) * a.logits_stride, a.vocab,
                  a.logits_are_probs};
  }
  __device__ float q(int64_t node, int64_t x) const {
    return load(a.draft_probs, a.probs_dtype, (rows.start + node) * a.probs_stride + x);
  }
  __device__ float uniform(int64_t node) const {
    const int64_t r = start + node;
    return a.uniforms != nullptr ? a.uniforms[r] : philox_uniform(uint64_t(a.philox[0]), uint64_t(a.philox[1]) + uint64_t(r));
  }
  __device__ void emit(int64_t j, int64_t node) const {
    if (threadIdx.x == 0) {
      a.accepted_nodes[b * a.width + j] = int32_t(node);
      a.tokens[b * a.width + j - 1] = token(node);
    }
  }
  __device__ void emit_bonus(int64_t j, int64_t tok) const {
    if (threadIdx.x == 0) a.tokens[b * a.width + j] = tok;
  }
};

// Returns the number of accepted drafted tokens, or -1 for an invalid row.
template <typename W>
__device__ int64_t walk_greedy(const W& w) {
  int64_t node = 0, accepted = 0;
  while (true) {
    if (!w.has_row(node)) {
      w.emit_bonus(accepted, w.bonus());
      return accepted;
    }
    const Scan sc = scan_row(w.row(node), w.s);
    if (!sc.valid) return -1;
    int64_t next = -1;
    if (accepted + 1 < w.a.width) {
      for (int64_t c = node + 1; c < w.size && next < 0; ++c) {
        if (w.parent(c) == node && w.token(c) == sc.argmax) next = c;
      }
    }
    if (next < 0) {
      w.emit_bonus(accepted, sc.argmax);
      return accepted;
    }
    w.emit(++accepted, next);
    node = next;
  }
}

template <typename W>
__device__ int64_t walk_rejection(const W& w, float* residual) {
  const VerifyArgs& a = w.a;
  const float t = a.temperature[w.b];
  const int64_t top_k = a.top_k[w.b];
  const float top_p = a.top_p[w.b];
  const bool with_q = a.draft_probs != nullptr;
  const int64_t vocab = a.vocab;
  int64_t node = 0, accepted = 0;
  while (true) {
    if (!w.has_row(node)) {
      w.emit_bonus(accepted, w.bonus());
      return accepted;
    }
    const auto row = w.row(node);
    if (!scan_row(row, w.s).valid) return -1;
    const Stats st = target_stats(row, t, top_k, top_p, w.s);
    bool res_active = false;  // with q: residual materialised (unnormalised) in `residual`
    float res_total = 1.f;
    float removed = 0.f;      // without q: p mass of the distinct rejected tokens
    int64_t next = -1;
    const bool try_children = accepted + 1 < a.width;
    for (int64_t c = node + 1; try_children && c < w.size && next < 0; ++c) {
      if (w.parent(c) != node) continue;
      const int64_t x = w.token(c);
      const bool inside = x >= 0 && x < vocab;
      const float u = w.uniform(c);
      const float px = st.p(row, x, t);
      if (with_q) {
        const float qx = inside ? w.q(node, x) : 0.f;
        const float rx = res_active ? (inside ? residual[x] : 0.f) / res_total : px;
        if (u * qx < rx) {
          next = c;
          break;
        }
        auto r_of = [&](int64_t y) { return res_active ? residual[y] / res_total : st.p(row, y, t); };
        float mass = 0.f;
#pragma unroll 4
        for (int64_t y = threadIdx.x; y < vocab; y += kThreads) mass += fmaxf(r_of(y) - w.q(node, y), 0.f);
        mass = block_sum(mass, w.s);
        if (mass > 0.f) {
          // Each thread rewrites only the entries it read: no race.
          for (int64_t y = threadIdx.x; y < vocab; y += kThreads) residual[y] = fmaxf(r_of(y) - w.q(node, y), 0.f);
          __syncthreads();
          res_active = true;
          res_total = mass;
        }
      } else {
        bool dup = false;
        for (int64_t c2 = node + 1; c2 < c; ++c2) dup |= w.parent(c2) == node && w.token(c2) == x;
        const float rx = dup ? 0.f : px / (1.f - removed);
        if (u < rx) {
          next = c;
          break;
        }
        if (!dup && removed + px < 1.f) removed += px;
      }
    }
    if (next >= 0) {
      w.emit(++accepted, next);
      node = next;
      continue;
    }
    const float u0 = w.uniform(0);
    int64_t bonus;
    if (with_q && res_active) {
      bonus = sample(vocab, u0, [&](int64_t y) { return residual[y]; }, w.s);
    } else if (!with_q && try_children) {
      bonus = sample(vocab, u0, [&](int64_t y) {
        for (int64_t c = node + 1; c < w.size; ++c) {
          if (w.parent(c) == node && w.token(c) == y) return 0.f;
        }
        return st.p(row, y, t);
      }, w.s);
    } else {
      bonus = sample(vocab, u0, [&](int64_t y) { return st.p(row, y, t); }, w.s);
    }
    w.emit_bonus(accepted, bonus);
    return accepted;
  }
}

struct TypicalNode {
  int32_t depth1;  // depth + 1 when accepted, 0 otherwise
  int32_t stats;   // 0 not computed, 1 valid, 2 invalid row
  float m, total, thr, score;
};

template <typename R>
__device__ void typical_stats(const R& row, float t, float eps, float alpha, Scratch& s, TypicalNode& n) {
  softmax_stats(row, t, 0, s, &n.m, &n.total);
  float h = 0.f;
#pragma unroll 4
  for (int64_t x = threadIdx.x; x < row.vocab; x += kThreads) {
    const float p = expf(z_of(row, x, t) - n.m) / n.total;
    h -= p * logf(p + kTypicalLogEps);
  }
  n.thr = fminf(eps, alpha * expf(-block_sum(h, s)));
}

template <typename W>
__device__ int64_t walk_typical(const W& w, TypicalNode* nodes) {
  const VerifyArgs& a = w.a;
  const float t = a.temperature[w.b], eps = a.posterior_threshold[w.b], alpha = a.posterior_alpha[w.b];
  for (int64_t i = threadIdx.x; i < w.size; i += kThreads) nodes[i] = TypicalNode{i == 0 ? 1 : 0, 0, 0.f, 0.f, 0.f, 0.f};
  __syncthreads();
  int64_t best = 0;
  for (int64_t c = 1; c < w.size; ++c) {
    const int64_t par = w.parent(c);
    if (par < 0 || par >= c || nodes[par].depth1 == 0 || nodes[par].depth1 >= a.width || !w.has_row(par)) continue;
    TypicalNode& pn = nodes[par];
    if (pn.stats == 0) {
      const bool ok = scan_row(w.row(par), w.s).valid;
      TypicalNode fresh = pn;
      if (ok) typical_stats(w.row(par), t, eps, alpha, w.s, fresh);
      fresh.stats = ok ? 1 : 2;
      __syncthreads();
      if (threadIdx.x == 0) pn = fresh;
      __syncthreads();
    }
    if (pn.stats == 2) return -1;
    const int64_t x = w.token(c);
    const float px = (x >= 0 && x < a.vocab) ? expf(z_of(w.row(par), x, t) - pn.m) / pn.total : 0.f;
    if (!(px > pn.thr)) continue;
    const int32_t depth1 = pn.depth1 + 1;
    const float score = pn.score + logf(px);
    __syncthreads();
    if (threadIdx.x == 0) {
      nodes[c].depth1 = depth1;
      nodes[c].score = score;
    }
    __syncthreads();
    if (depth1 > nodes[best].depth1 || (depth1 == nodes[best].depth1 && score > nodes[best].score)) best = c;
  }
  int64_t bonus;
  if (w.has_row(best)) {
    const auto row = w.row(best);
    if (!scan_row(row, w.s).valid) return -1;
    TypicalNode bn{};
    typical_stats(row, t, eps, alpha, w.s, bn);
    const float u0 = w.uniform(0);
    bonus = sample(a.vocab, u0, [&](int64_t y) {
      const float p = expf(z_of(row, y, t) - bn.m) / bn.total;
      return p >= bn.thr ? p : 0.f;
    }, w.s);
  } else {
    bonus = w.bonus();
  }
  const int64_t accepted = nodes[best].depth1 - 1;
  for (int64_t n = best, j = accepted; j > 0; n = w.parent(n), --j) w.emit(j, n);
  w.emit_bonus(accepted, bonus);
  return accepted;
}

// grid = batch, block = kThreads. residual: float [batch, vocab] (mode 1 with q).
// L: the element type of a.logits (a.logits_dtype).
template <typename L>
__global__ void __launch_bounds__(kThreads) verify_kernel(const VerifyArgs a, float* residual) {
  __shared__ Scratch scratch;
  __shared__ TypicalNode typical_nodes[kMaxVerifyNodes];
  const int64_t b = blockIdx.x;
  for (int64_t j = threadIdx.x; j < a.width; j += kThreads) {
    a.accepted_nodes[b * a.width + j] = -1;
    a.tokens[b * a.width + j] = -1;
  }
  __syncthreads();
  const int64_t start = a.qo_indptr[b];
  int64_t size = int64_t(a.qo_indptr[b + 1]) - start;
  size = size < kMaxVerifyNodes ? size : kMaxVerifyNodes;
  int64_t accepted = 0;
  if (size > 0) {
    if (threadIdx.x == 0) a.accepted_nodes[b * a.width] = 0;
    const Walk<L> w{a, b, start, size, row_span(a, b, start, size), scratch};
    const bool greedy = a.mode == VerifyMode::kGreedy || !(a.temperature[b] > 0.f);
    if (greedy) {
      accepted = walk_greedy(w);
    } else if (a.mode == VerifyMode::kRejection) {
      accepted = walk_rejection(w, residual + b * a.vocab);
    } else {
      accepted = walk_typical(w, typical_nodes);
    }
  }
  __syncthreads();
  if (accepted < 0) {
    for (int64_t j = threadIdx.x; j < a.width; j += kThreads) {
      a.accepted_nodes[b * a.width + j] = -1;
      a.tokens[b * a.width + j] = -1;
    }
  }
  if (threadIdx.x == 0) a.num_accepted[b] = int32_t(accepted);
}

}  // namespace verify
}  // namespace kernels
}  // namespace specdec

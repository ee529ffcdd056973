// CUDA verification kernel (header-only): one CTA of kThreads threads per
// request walks the request's tree exactly as the CPU kernel and the Python
// reference do (rules in specdec/sampling.h). Every thread runs the same
// scalar walk; the passes over a row (argmax, softmax statistics, the exact
// top-k / top-p thresholds by a radix select over the order-preserving
// integer key of z, residual updates, the inverse-CDF draw by a block-wide
// scan) are block-wide with deterministic reductions, so all threads hold
// identical scalars and control flow stays uniform. Thread 0 writes the
// outputs. Small batches first split every row over several CTAs
// (verify_partial_kernel) for argmax, validity and softmax statistics.
//
// Row passes read 16 bytes per load (row_pass): a row whose start is not
// 16-byte aligned is read one element at a time up to its first 16-byte
// boundary, the rest in 16-byte packs, several in flight per thread, and the
// last partial pack one element at a time again.
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

// 16 bytes of a row: one vector load (LDG.E.128).
template <typename T>
struct alignas(16) Pack {
  static constexpr int N = int(16 / sizeof(T));
  T e[N];
};

// How the row [base, base + n) splits for 16-byte loads: elements [0, head)
// one by one up to the first 16-byte boundary, `vecs` packs, then elements
// [rest, n) one by one (fewer than a pack, so fewer than kThreads).
struct Split {
  int64_t head, vecs, rest;
};

template <typename T>
__device__ __forceinline__ Split split_of(const T* base, int64_t n) {
  constexpr int N = Pack<T>::N;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(base);
  if (addr % sizeof(T) != 0) return Split{0, 0, 0};  // not even element-aligned: all one by one
  int64_t head = (addr & 15u) != 0 ? int64_t((16u - (addr & 15u)) / sizeof(T)) : 0;
  head = head < n ? head : n;
  const int64_t vecs = (n - head) / N;
  return Split{head, vecs, head + vecs * N};
}

// Calls f(x, value) for every x in [0, n): thread t takes the t-th head
// element, packs t, t + kThreads, ... (U packs in flight per thread), and the
// t-th element of the rest, so each thread sees its x in increasing order.
template <int U, typename T, typename F>
__device__ __forceinline__ void row_pass(const T* base, int64_t n, F&& f) {
  constexpr int N = Pack<T>::N;
  const Split sp = split_of(base, n);
  const int64_t t = threadIdx.x;
  if (t < sp.head) f(t, to_f(base[t]));
  const Pack<T>* packs = reinterpret_cast<const Pack<T>*>(base + sp.head);
  for (int64_t i = t; i < sp.vecs; i += int64_t(kThreads) * U) {
    Pack<T> r[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (i + u * kThreads < sp.vecs) r[u] = packs[i + u * kThreads];
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (i + u * kThreads < sp.vecs) {
        const int64_t x0 = sp.head + (i + u * kThreads) * N;
#pragma unroll
        for (int j = 0; j < N; ++j) f(x0 + j, to_f(r[u].e[j]));
      }
    }
  }
  for (int64_t x = sp.rest + t; x < n; x += kThreads) f(x, to_f(base[x]));
}

// Shared scratch of the block reductions.
struct Scratch {
  float f[kWarps];
  int64_t i[kWarps];
  double d[kWarps];
  int64_t fi[kWarps];
  unsigned long long hist[kWarps][256];  // radix_select: one histogram per warp
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

__device__ __forceinline__ double block_sum_d(double v, Scratch& s) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) s.d[threadIdx.x >> 5] = v;
  __syncthreads();
  double r = s.d[0];
  for (int w = 1; w < kWarps; ++w) r += s.d[w];
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
// branch between their loads. pass<U>(f) is row_pass: 16-byte loads, U in
// flight per thread.
// Statistics of one chunk of one row, from verify_partial_kernel (small
// batches: several CTAs per row). Chunks are combined in increasing order.
struct RowPartial {
  float raw_max;   // largest raw value that is not NaN (nor negative, for probabilities); -inf if none
  int32_t bad;     // 1: a NaN (or negative probability) in the chunk
  int64_t argmax;  // first x of raw_max in the chunk (absolute); vocab if none
  float t;         // temperature z was taken at; 0: z not computed (greedy)
  float z_max;     // max of z = logit / t over the chunk
  float z_sum;     // sum of expf(z - z_max) over the chunk (0 when z_max is -inf)
  int32_t unused;
};

// MU: packs in flight per thread in a masked row's passes (the bitmask's
// words take registers: the 64-register pre-pass spills above 1).
template <typename L, int MU = 4>
struct Row {
  const L* base;   // the row's first element
  int64_t vocab;
  bool probs;      // the row holds probabilities: its logits are log(raw)
  const RowPartial* pre;  // this row's chunk statistics, or null (then every pass reads the row)
  int chunks;
  const int32_t* mask;    // the row's allowed_tokens words, or null (all allowed)
  int64_t mask_x0;        // the token of element 0 (a chunk's start)
  // What element x reads as: v, or (a disallowed token) logit -inf /
  // probability 0, whatever the row holds there.
  __device__ float value(int64_t x, float v) const {
    if (mask == nullptr) return v;
    const int64_t tok = mask_x0 + x;
    return ((uint32_t(mask[tok >> 5]) >> (tok & 31)) & 1u) != 0 ? v : (probs ? 0.f : -kInf);
  }
  __device__ float raw(int64_t x) const { return value(x, to_f(base[x])); }
  __device__ float logit_of(float v) const { return probs ? logf(v) : v; }
  __device__ float logit(int64_t x) const { return logit_of(raw(x)); }
  // z = logit / t with IEEE division, so every backend gets the same z.
  __device__ float z_of_raw(float v, float t) const { return __fdiv_rn(logit_of(v), t); }
  template <int U = 4, typename F>
  __device__ __forceinline__ void pass(F&& f) const {
    if (mask == nullptr) {
      row_pass<U>(base, vocab, f);
    } else {
      row_pass<(U < MU ? U : MU)>(base, vocab, [&](int64_t x, float v) { f(x, value(x, v)); });
    }
  }
};

template <typename R>
__device__ __forceinline__ float z_of(const R& row, int64_t x, float t) { return row.z_of_raw(row.raw(x), t); }

struct Scan {
  int64_t argmax;
  bool valid;
};

struct RawStats {
  float max;      // largest value that is not bad, -inf if none
  int64_t first;  // its lowest index, vocab if none
  bool bad;       // a NaN (or a negative probability)
};

// One pass: max, first argmax and badness of the raw row.
template <typename R>
__device__ RawStats raw_stats(const R& row, Scratch& s) {
  float best = -kInf;
  int64_t idx = row.vocab;  // this thread's first maximum (each thread's x increase)
  int nan = 0;
  row.pass([&](int64_t x, float v) {
    if (v != v || (row.probs && v < 0.f)) {
      nan = 1;
    } else if (idx == row.vocab || v > best) {
      best = v;
      idx = x;
    }
  });
  const float m = block_max(best, s);
  const int64_t first = block_min(best == m && idx < row.vocab ? idx : row.vocab, s);
  const float nans = block_sum(float(nan), s);
  return RawStats{m, first, nans != 0.f};
}

// Argmax of the raw row (lowest index on ties); valid = no NaN, finite max
// (probabilities: no NaN or negative value, a finite positive max, i.e. the
// same test on log(row)). From the row's chunk statistics when it has them
// (every thread folds the chunks in order: the same result as one pass).
template <typename R>
__device__ Scan scan_row(const R& row, Scratch& s) {
  RawStats r{-kInf, row.vocab, false};
  if (row.pre != nullptr) {
    for (int c = 0; c < row.chunks; ++c) {
      const RowPartial& p = row.pre[c];
      r.bad |= p.bad != 0;
      if (p.argmax < row.vocab && (r.first == row.vocab || p.raw_max > r.max)) {
        r.max = p.raw_max;
        r.first = p.argmax;
      }
    }
  } else {
    r = raw_stats(row, s);
  }
  return Scan{r.first < row.vocab ? r.first : 0, !r.bad && r.max > (row.probs ? 0.f : -kInf) && r.max < kInf};
}

struct Stats {
  int64_t thr;  // keep tokens with key(z) >= thr
  float m, total;
  template <typename R>
  __device__ float p_of_raw(const R& row, float v, float t) const {
    const float z = row.z_of_raw(v, t);
    return key_of(z) >= thr ? expf(z - m) / total : 0.f;
  }
  template <typename R>
  __device__ float p(const R& row, int64_t x, float t) const {
    return x < 0 || x >= row.vocab ? 0.f : p_of_raw(row, row.raw(x), t);
  }
};

// Max and normaliser of z over the tokens with key(z) >= thr. Without a
// threshold (thr = 0) and with chunk statistics taken at this t, from those:
// m = the largest chunk max, total = sum over chunks in order of
// z_sum * expf(z_max - m) (the same m; total differs only by rounding).
template <typename R>
__device__ void softmax_stats(const R& row, float t, int64_t thr, Scratch& s, float* m_out, float* total_out) {
  if (row.pre != nullptr && thr == 0) {
    bool ok = true;
    float m = -kInf;
    for (int c = 0; c < row.chunks; ++c) {
      ok &= row.pre[c].t == t;
      m = fmaxf(m, row.pre[c].z_max);
    }
    if (ok) {
      float total = 0.f;
      for (int c = 0; c < row.chunks; ++c) {
        const RowPartial& p = row.pre[c];
        if (p.z_sum > 0.f) total += p.z_sum * expf(p.z_max - m);
      }
      *m_out = m;
      *total_out = total;
      return;
    }
  }
  float m = -kInf;
  row.pass([&](int64_t, float v) {
    const float z = row.z_of_raw(v, t);
    if (key_of(z) >= thr) m = fmaxf(m, z);
  });
  m = block_max(m, s);
  float total = 0.f;
  row.pass([&](int64_t, float v) {
    const float z = row.z_of_raw(v, t);
    if (key_of(z) >= thr) total += expf(z - m);
  });
  *m_out = m;
  *total_out = block_sum(total, s);
}

// Fixed point of the top-p masses: expf(z - m) in [0, 1] in units of 2^-40,
// so a row's mass is an exact integer below 2^57 whatever order it is summed
// in (each term rounds by at most 2^-41: far below float's rounding of a sum).
constexpr double kMassUnit = 1099511627776.0;  // 2^40

// Radix select over the 32-bit keys: the largest key K with A(K) >= goal,
// A(K) = the sum of amount(z) over the elements whose key is >= K and >=
// floor (else floor, when even A(floor) < goal). 8 bits of the key a pass
// from the top, so 4 passes. A pass sums, over the elements that share the
// digits found so far, the amounts of each value of the next 8 bits: integer
// atomics into a histogram per warp, folded per bucket (integer sums, so no
// order matters). Every thread then walks the 256 sums from the top in the
// same order to the digit where the running sum reaches goal.
//   top-k: amount 1, goal k: the k-th largest key (ties included);
//   top-p: amount = expf(z - m) in kMassUnit, goal = top_p * total: the
//   smallest key whose strictly larger kept mass is < top_p * total.
template <typename R, typename Amount>
__device__ int64_t radix_select(const R& row, float t, int64_t floor, double goal, Amount amount, Scratch& s) {
  static_assert(kThreads == 256, "one thread per bucket");
  unsigned long long* mine = s.hist[threadIdx.x >> 5];
  uint32_t prefix = 0;
  unsigned long long above = 0;  // the amount of the keys above the prefix's range
#pragma unroll 1
  for (int shift = 24; shift >= 0; shift -= 8) {
    __syncthreads();  // the last pass's readers are done
    for (int w = 0; w < kWarps; ++w) s.hist[w][threadIdx.x] = 0;
    __syncthreads();
    row.pass([&](int64_t, float v) {
      const float z = row.z_of_raw(v, t);
      const uint32_t key = uint32_t(key_of(z));
      if (int64_t(key) >= floor && (shift == 24 || (key >> (shift + 8)) == prefix)) {
        atomicAdd(&mine[(key >> shift) & 255u], amount(z));
      }
    });
    __syncthreads();
    unsigned long long total = 0;  // bucket threadIdx.x over all warps
    for (int w = 0; w < kWarps; ++w) total += s.hist[w][threadIdx.x];
    s.hist[0][threadIdx.x] = total;  // only this thread touches this bucket
    __syncthreads();
    int digit = -1;
    unsigned long long before = above;
    for (int b = 255; b >= 0; --b) {
      const unsigned long long c = s.hist[0][b];
      if (double(before + c) >= goal) {
        digit = b;
        break;
      }
      before += c;
    }
    if (digit < 0) return floor;  // only at the top: later ranges hold the goal
    above = before;
    prefix = (prefix << 8) | uint32_t(digit);
  }
  return int64_t(prefix);
}

// A request's filters of the rejection rules (modes 1 and 3).
struct Filters {
  float t;
  int64_t top_k;
  float top_p, min_p;
};

__device__ __forceinline__ Filters filters_of(const VerifyArgs& a, int64_t b) {
  return Filters{a.temperature[b], a.top_k[b], a.top_p[b], a.min_p != nullptr ? a.min_p[b] : 0.f};
}

template <typename R>
__device__ Stats target_stats(const R& row, const Filters& f, Scratch& s) {
  const float t = f.t, top_p = f.top_p, min_p = f.min_p;
  const int64_t top_k = f.top_k;
  Stats st{0, 0.f, 0.f};
  if (top_k > 0 && top_k < row.vocab) {
    // The largest key that at least k keys reach: the k-th largest z.
    st.thr = radix_select(row, t, 0, double(top_k), [](float) { return 1ull; }, s);
  }
  if (min_p > 0.f) {
    // The smallest key with expf(z - max z) >= min_p (the max always has it);
    // min-p and top-k are both thresholds on z that keep the max: they commute.
    float zmax = -kInf;
    row.pass([&](int64_t, float v) { zmax = fmaxf(zmax, row.z_of_raw(v, t)); });
    zmax = block_max(zmax, s);
    int64_t lowest = key_of(zmax);
    row.pass([&](int64_t, float v) {
      const float z = row.z_of_raw(v, t);
      const int64_t k = key_of(z);
      if (expf(z - zmax) >= min_p && k < lowest) lowest = k;
    });
    lowest = block_min(lowest, s);
    st.thr = lowest > st.thr ? lowest : st.thr;
  }
  softmax_stats(row, t, st.thr, s, &st.m, &st.total);
  if (top_p < 1.f) {
    // The smallest key whose strictly larger kept mass is < top_p * total.
    const float limit = top_p * st.total;
    const int64_t thr = st.thr;
    const float m = st.m;
    const int64_t lo = radix_select(row, t, thr, double(limit) * kMassUnit, [&](float z) {
      return static_cast<unsigned long long>(double(expf(z - m)) * kMassUnit + 0.5);
    }, s);
    st.thr = lo > st.thr ? lo : st.thr;
    softmax_stats(row, t, st.thr, s, &st.m, &st.total);
  }
  return st;
}

// Packs per thread in one tile of the draw's scan: a tile is kThreads *
// kDrawPacks packs, thread t owning kDrawPacks consecutive ones.
constexpr int kDrawPacks = 4;

// One tile of the inverse-CDF scan. This thread holds the weights w[0, cnt)
// of x0, x0 + 1, ...; *base is the running sum before the tile. The block
// scans its threads' sums (double), each thread continues the running sum
// over its weights in x order and notes the first x where float(running) >
// target; returns that block-wide first x (n if none) and advances *base by
// the tile's sum. Every thread folds the warp sums in warp order, so all
// hold the same *base and the running sums continue one fixed order of
// additions. Scratch d and fi: each written before one barrier and read
// before the next, so two barriers a tile.
template <int M>
__device__ __forceinline__ int64_t draw_tile(const float (&w)[M], int cnt, int64_t x0, double* base, float target,
                                             int64_t n, Scratch& s) {
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  double local = 0.0;
#pragma unroll
  for (int j = 0; j < M; ++j) local += j < cnt ? double(w[j]) : 0.0;
  double incl = local;  // warp-inclusive scan, lanes in order
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double y = __shfl_sync(0xffffffffu, incl, lane >= unsigned(o) ? lane - o : lane);
    if (lane >= unsigned(o)) incl += y;
  }
  double excl = __shfl_sync(0xffffffffu, incl, lane > 0 ? lane - 1 : 0);
  if (lane == 0) excl = 0.0;
  if (lane == 31) s.d[warp] = incl;
  __syncthreads();
  double running = *base, next = *base;
  for (int v = 0; v < kWarps; ++v) {
    if (v == int(warp)) running = next;
    next += s.d[v];
  }
  *base = next;
  running += excl;
  int64_t found = n;
#pragma unroll
  for (int j = 0; j < M; ++j) {
    if (j < cnt) {
      running += w[j];
      if (found == n && float(running) > target) found = x0 + j;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const int64_t other = __shfl_xor_sync(0xffffffffu, found, o);
    found = other < found ? other : found;
  }
  if (lane == 0) s.fi[warp] = found;
  __syncthreads();
  int64_t r = s.fi[0];
  for (int v = 1; v < kWarps; ++v) r = s.fi[v] < r ? s.fi[v] : r;
  return r;
}

// Inverse CDF over weight(x, value of x in src): the first index whose
// running sum exceeds u * total, else the last index with weight. The total
// is one pass of 16-byte loads (double per thread, folded in a fixed order);
// the running sum is a double (a float one over 100K tokens drifts by ~1e-3)
// continued over coalesced tiles by a block-wide scan (draw_tile), stopping
// at the tile where it crosses.
template <typename T, typename W>
__device__ int64_t sample(const T* src, int64_t n, float u, W weight, Scratch& s) {
  constexpr int N = Pack<T>::N;
  double mine = 0.0;
  int64_t last = -1;
  row_pass<4>(src, n, [&](int64_t x, float v) {
    const float w = weight(x, v);
    mine += w;
    if (w > 0.f) last = x;
  });
  const float target = u * float(block_sum_d(mine, s));
  const int64_t last_all = block_max_i(last, s);
  const Split sp = split_of(src, n);
  const int64_t t = threadIdx.x;
  double base = 0.0;
  int64_t found = n;
  for (int64_t h = 0; h < sp.head && found == n; h += kThreads) {  // at most one tile
    float w[1] = {0.f};
    const bool mine_x = h + t < sp.head;
    if (mine_x) w[0] = weight(h + t, to_f(src[h + t]));
    found = draw_tile(w, mine_x ? 1 : 0, h + t, &base, target, n, s);
  }
  const Pack<T>* packs = reinterpret_cast<const Pack<T>*>(src + sp.head);
  for (int64_t p0 = 0; p0 < sp.vecs && found == n; p0 += int64_t(kThreads) * kDrawPacks) {
    const int64_t mine_p = p0 + t * kDrawPacks;
    Pack<T> r[kDrawPacks];
#pragma unroll
    for (int k = 0; k < kDrawPacks; ++k) {
      if (mine_p + k < sp.vecs) r[k] = packs[mine_p + k];
    }
    float w[kDrawPacks * N];
    int cnt = 0;
#pragma unroll
    for (int k = 0; k < kDrawPacks; ++k) {
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const int64_t x = sp.head + (mine_p + k) * N + j;
        const bool in = mine_p + k < sp.vecs;
        w[k * N + j] = in ? weight(x, to_f(r[k].e[j])) : 0.f;
        cnt += in;
      }
    }
    found = draw_tile(w, cnt, sp.head + mine_p * N, &base, target, n, s);
  }
  for (int64_t h = sp.rest; h < n && found == n; h += kThreads) {
    float w[1] = {0.f};
    const bool mine_x = h + t < n;
    if (mine_x) w[0] = weight(h + t, to_f(src[h + t]));
    found = draw_tile(w, mine_x ? 1 : 0, h + t, &base, target, n, s);
  }
  return found < n ? found : (last_all >= 0 ? last_all : 0);
}

template <typename L>
struct Walk {
  const VerifyArgs& a;
  int64_t b, start, size;
  RowSpan rows;
  Scratch& s;
  const RowPartial* pre;  // [rows of logits, chunks] or null
  int chunks;

  __device__ int64_t token(int64_t node) const { return a.draft_tokens[start + node]; }
  __device__ int32_t parent(int64_t node) const { return a.parents[start + node]; }
  __device__ bool has_row(int64_t node) const { return node < rows.count; }
  __device__ int64_t bonus() const { return a.bonus_tokens[b]; }
  __device__ Row<L> row(int64_t node) const {
    const int64_t r = rows.start + node;
    return Row<L>{static_cast<const L*>(a.logits) + r * a.logits_stride, a.vocab, a.logits_are_probs,
                  pre != nullptr ? pre + r * chunks : nullptr, chunks,
                  a.allowed != nullptr ? a.allowed + r * a.allowed_stride : nullptr, 0};
  }
  __device__ float q(int64_t node, int64_t x) const {
    return load(a.draft_probs, a.probs_dtype, (rows.start + node) * a.probs_stride + x);
  }
  // f(y, q(y)) over the draft row of `node`, 16-byte loads (row_pass): the
  // draft dtype is a run-time argument, so one switch a pass, not an element.
  template <typename F>
  __device__ __forceinline__ void q_pass(int64_t node, F&& f) const {
    const int64_t off = (rows.start + node) * a.probs_stride;
    switch (a.probs_dtype) {
      case DType::kFloat16: row_pass<4>(static_cast<const __half*>(a.draft_probs) + off, a.vocab, f); break;
      case DType::kBFloat16: row_pass<4>(static_cast<const __nv_bfloat16*>(a.draft_probs) + off, a.vocab, f); break;
      default: row_pass<4>(static_cast<const float*>(a.draft_probs) + off, a.vocab, f); break;
    }
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
__device__ __forceinline__ int64_t walk_rejection(const W& w, float* residual) {
  const VerifyArgs& a = w.a;
  const Filters f = filters_of(a, w.b);
  const float t = f.t;
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
    const Stats st = target_stats(row, f, w.s);
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
        w.q_pass(node, [&](int64_t y, float qy) { mass += fmaxf(r_of(y) - qy, 0.f); });
        mass = block_sum(mass, w.s);
        if (mass > 0.f) {
          // The same split of the row as the pass above: each thread rewrites
          // only the entries it read, so no race.
          w.q_pass(node, [&](int64_t y, float qy) { residual[y] = fmaxf(r_of(y) - qy, 0.f); });
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
      bonus = sample(residual, vocab, u0, [](int64_t, float r) { return r; }, w.s);
    } else if (!with_q && try_children) {
      bonus = sample(row.base, vocab, u0, [&](int64_t y, float v) {
        for (int64_t c = node + 1; c < w.size; ++c) {
          if (w.parent(c) == node && w.token(c) == y) return 0.f;
        }
        return st.p_of_raw(row, row.value(y, v), t);
      }, w.s);
    } else {
      bonus = sample(row.base, vocab, u0, [&](int64_t y, float v) { return st.p_of_raw(row, row.value(y, v), t); },
                     w.s);
    }
    w.emit_bonus(accepted, bonus);
    return accepted;
  }
}

// The traversal rule (kTraversal; specdec/sampling.h, reference
// _walk_traversal): a depth-first walk, children in increasing index, each
// node decided after its whole subtree was rejected. A node's residual
// measure is W = max(alpha p - beta q, 0), or alpha p less the tokens of its
// rejected children for point-mass proposals, so its state is a few scalars
// plus its row's Stats (no residual row, and a row is never re-filtered when
// the walk returns to it). Written by thread 0 between barriers; every
// thread reads the same values.
struct TraversalNode {
  float alpha, beta, zeroed, w;  // zeroed: p mass of the distinct rejected child tokens (point mass)
  Stats st;
  int32_t next, depth;           // the next child index to try; depth
};

__device__ __forceinline__ void store_node(TraversalNode* nodes, int64_t n, const TraversalNode& v) {
  __syncthreads();  // every thread has read the old value
  if (threadIdx.x == 0) nodes[n] = v;
  __syncthreads();
}

// True if child c of `node` repeats the token of an earlier child (so its
// rejection zeroed nothing new).
template <typename W>
__device__ __forceinline__ bool repeats_sibling(const W& w, int64_t node, int64_t c, int64_t x) {
  for (int64_t c2 = node + 1; c2 < c; ++c2) {
    if (w.parent(c2) == node && w.token(c2) == x) return true;
  }
  return false;
}

template <typename W>
__device__ __forceinline__ int64_t walk_traversal(const W& w, TraversalNode* nodes) {
  const VerifyArgs& a = w.a;
  const Filters f = filters_of(a, w.b);
  const float t = f.t;
  const bool with_q = a.draft_probs != nullptr;
  int64_t node = 0;
  float weight = 1.f;  // of the node being entered
  int32_t depth = 0;
  bool entering = true;
  TraversalNode cur{};
  while (true) {
    if (entering && w.has_row(node)) {
      const auto row = w.row(node);
      if (!scan_row(row, w.s).valid) return -1;
      cur = TraversalNode{weight, 0.f, 0.f, weight, target_stats(row, f, w.s), int32_t(node + 1), depth};
      store_node(nodes, node, cur);
    } else if (entering) {  // no row (row map): no candidate children
      cur = TraversalNode{weight, 0.f, 0.f, weight, Stats{0, 0.f, 1.f}, int32_t(w.size), depth};
    } else {
      cur = nodes[node];
    }
    entering = false;
    int64_t c = -1;
    if (cur.depth + 1 < a.width) {
      for (int64_t c2 = cur.next; c2 < w.size && c < 0; ++c2) {
        if (w.parent(c2) == node) c = c2;
      }
    }
    int64_t rejected;  // the node whose subtree was just rejected
    if (c >= 0) {  // enter child c with w_c = min(1, W(x) / q(x))
      const int64_t x = w.token(c);
      const bool inside = x >= 0 && x < a.vocab;
      const auto row = w.row(node);
      const float px = cur.st.p(row, x, t);
      float qx = 1.f, wx = 0.f;
      if (with_q) {
        qx = inside ? w.q(node, x) : 0.f;
        wx = inside ? fmaxf(cur.alpha * px - cur.beta * qx, 0.f) : 0.f;
      } else if (inside && !repeats_sibling(w, node, c, x)) {
        wx = cur.alpha * px;
      }
      cur.next = int32_t(c + 1);
      store_node(nodes, node, cur);
      weight = qx > 0.f ? fminf(1.f, wx / qx) : (wx > 0.f ? 1.f : 0.f);
      if (weight > 0.f) {
        depth = cur.depth + 1;
        node = c;
        entering = true;
        continue;
      }
      rejected = c;  // weight 0: rejected whatever its uniforms, so not visited (its rows unread)
    } else {
      if (node == 0 || w.uniform(node) < cur.w) break;  // accepted: ends the walk
      rejected = node;
    }
    // Rejected with its subtree: condition the parent on it (reference
    // _condition_on_rejection): R = max(W - q, 0), m = sum R, and the
    // parent's state divided by 1 - w + m, its weight becoming m / (1 - w + m).
    const int64_t x = w.token(rejected);
    const int64_t par = w.parent(rejected);
    TraversalNode pn = nodes[par];
    const auto prow = w.row(par);
    float m;
    if (with_q) {
      pn.beta += 1.f;
      double mine = 0.0;
      w.q_pass(par, [&](int64_t y, float qy) { mine += fmaxf(pn.alpha * pn.st.p(prow, y, t) - pn.beta * qy, 0.f); });
      m = float(block_sum_d(mine, w.s));
    } else {
      if (x >= 0 && x < a.vocab && !repeats_sibling(w, par, rejected, x)) pn.zeroed += pn.st.p(prow, x, t);
      m = pn.alpha * fmaxf(1.f - pn.zeroed, 0.f);
    }
    // 1 - w + m = 0 (the child could not be rejected) only by rounding.
    const float den = 1.f - pn.w + m;
    if (den > 0.f) {
      pn.alpha /= den;
      pn.beta /= den;
      pn.w = m / den;
    } else {
      pn.w = m;
    }
    store_node(nodes, par, pn);
    node = par;
  }
  const int64_t accepted = cur.depth;
  int64_t bonus;
  if (w.has_row(node)) {
    const auto row = w.row(node);
    const int64_t tried_end = cur.next;  // the children tried (all rejected)
    bonus = sample(row.base, a.vocab, w.uniform(0), [&](int64_t y, float v) {
      const float p = cur.st.p_of_raw(row, row.value(y, v), t);
      if (with_q) return fmaxf(cur.alpha * p - cur.beta * w.q(node, y), 0.f);
      for (int64_t c = node + 1; c < tried_end; ++c) {
        if (w.parent(c) == node && w.token(c) == y) return 0.f;
      }
      return cur.alpha * p;
    }, w.s);
  } else {
    bonus = w.bonus();
  }
  for (int64_t n = node, j = accepted; j > 0; n = w.parent(n), --j) w.emit(j, n);
  w.emit_bonus(accepted, bonus);
  return accepted;
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
  row.pass([&](int64_t, float v) {
    const float p = expf(row.z_of_raw(v, t) - n.m) / n.total;
    h -= p * logf(p + kTypicalLogEps);
  });
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
    bonus = sample(row.base, a.vocab, u0, [&](int64_t y, float v) {
      const float p = expf(row.z_of_raw(row.value(y, v), t) - bn.m) / bn.total;
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

// Small batches: the rows of logits split into `chunks` chunks of chunk_len
// elements (a multiple of kChunkAlign, so every chunk starts as its row does
// modulo 16 bytes). verify_partial_kernel, one CTA per (row, chunk), writes
// each chunk's RowPartial; verify_kernel then takes each visited row's
// argmax, validity and (without top-k) softmax max and normaliser from them,
// in chunk order: a deterministic split reduction, no atomics.
constexpr int64_t kChunkAlign = 1024;

// The temperature verify_kernel uses for a row: that of the request whose
// rows hold it (binary search over the row map, else qo_indptr; indices are
// device data, so malformed ones only give some request, and verify_kernel
// ignores statistics taken at another t). 0 for greedy.
__device__ __forceinline__ float row_temperature(const VerifyArgs& a, int64_t r) {
  if (a.mode == VerifyMode::kGreedy || a.temperature == nullptr || a.batch <= 0) return 0.f;
  const int32_t* ind = a.target_indptr != nullptr ? a.target_indptr : a.qo_indptr;
  int64_t lo = 0, hi = a.batch - 1;  // the last b with ind[b] <= r
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (ind[mid] <= r) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const float t = a.temperature[lo];
  return t > 0.f ? t : 0.f;
}

// grid = rows * chunks, block = kThreads: CTA (r, c) reads chunk c of row r.
template <typename L>
__global__ void __launch_bounds__(kThreads, 4) verify_partial_kernel(const VerifyArgs a, RowPartial* out, int chunks,
                                                                   int64_t chunk_len) {
  __shared__ Scratch scratch;
  const int64_t r = blockIdx.x / chunks, c = blockIdx.x % chunks;
  const int64_t begin = c * chunk_len;
  const int64_t end = begin + chunk_len < a.vocab ? begin + chunk_len : a.vocab;
  const Row<L, 1> row{static_cast<const L*>(a.logits) + r * a.logits_stride + begin, end - begin,
                      a.logits_are_probs, nullptr, 0, a.allowed != nullptr ? a.allowed + r * a.allowed_stride : nullptr,
                      begin};
  const RawStats raw = raw_stats(row, scratch);
  RowPartial p{raw.max, raw.bad ? 1 : 0, raw.first < row.vocab ? begin + raw.first : a.vocab, 0.f, -kInf, 0.f, 0};
  const float t = row_temperature(a, r);
  if (t > 0.f) {
    p.t = t;
    softmax_stats(row, t, 0, scratch, &p.z_max, &p.z_sum);
    if (!(p.z_max > -kInf)) p.z_sum = 0.f;
  }
  if (threadIdx.x == 0) out[blockIdx.x] = p;
}

// Per-node state of the tree walks that keep one (a request uses one mode).
union WalkNodes {
  TypicalNode typical[kMaxVerifyNodes];
  TraversalNode traversal[kMaxVerifyNodes];
};

// grid = batch, block = kThreads. M: the mode, so each kernel holds one walk
// besides greedy's (temperature-0 requests): the greedy and token-rule kernels
// keep fewer registers and shared memory, and ptxas compiles four smaller
// kernels faster than one with every walk. residual: float [batch, vocab] (mode 1 with q).
// pre: [rows, chunks] from verify_partial_kernel, or null. L: the element
// type of a.logits (a.logits_dtype).
template <typename L, VerifyMode M>
__global__ void __launch_bounds__(kThreads, 1) verify_kernel(const VerifyArgs a, float* residual,
                                                             const RowPartial* pre, int chunks) {
  __shared__ Scratch scratch;
  __shared__ WalkNodes walk_nodes;
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
    const Walk<L> w{a, b, start, size, row_span(a, b, start, size), scratch, pre, chunks};
    const bool greedy = M == VerifyMode::kGreedy || !(a.temperature[b] > 0.f);
    if (greedy) {
      accepted = walk_greedy(w);
    } else if constexpr (M == VerifyMode::kRejection) {
      accepted = walk_rejection(w, residual + b * a.vocab);
    } else if constexpr (M == VerifyMode::kTraversal) {
      accepted = walk_traversal(w, walk_nodes.traversal);
    } else if constexpr (M == VerifyMode::kTypical) {
      accepted = walk_typical(w, walk_nodes.typical);
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

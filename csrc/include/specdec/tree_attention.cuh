// CUDA kernels of tree attention, header-only and templated on the element
// type (half, __nv_bfloat16, float) and the head dim (64, 128, 256), so a
// runtime can instantiate them in its own translation units. Launchers:
// csrc/cuda/tree_attention.cu. Contract: specdec/tree_attention.h.
//
// This header has what both kernels share (parameters, the fill role, the
// split merge) and the CUDA-core kernel, tree_attention_kernel, which runs
// fp32 and any dtype on devices below compute capability 8.0. fp16 / bf16 on
// sm_80+ take the tensor-core kernel in tree_attention_mma.cuh.
//
// Work decomposition. One CTA per (sequence b, KV head, KV split, query-tile
// slot). The rows of a sequence and KV head are the T_b x G pairs (tree query
// i, q head g of the KV head's group), i-major: row r = (i, g) = (r / G, r % G).
// A query tile holds kRows of them, so all q heads of a group and all tree
// queries share every K/V tile the CTA loads: the prefix KV is read once per
// (sequence, KV head, query tile, split). A CTA handles the query tiles
// slot, slot + q_ctas, slot + 2 q_ctas, ... of its sequence, so the result
// does not depend on the grid bound (any T_b is covered).
//
// The KV range of a sequence is the key index space 0 .. L - 1: key k <
// prefix is cache position k (always visible, no mask work), key k >= prefix
// is tree node j = k - prefix at position prefix + j (visible through the
// mask row, or causally). Split s of S takes keys [s * chunk, (s+1) * chunk),
// chunk = ceil(L / S) rounded up to the key tile; a split past L writes
// neutral partials (lse = -inf, o = 0).
//
// Per key tile (kKeyTile = 32 keys): K and V rows -> shared memory (zeros for
// keys that map outside the block table or the pool), S = Q K^T (fp32),
// online softmax with running max per row (one warp per row, lane = key),
// O += P V with O kept in shared memory as fp32, all on CUDA cores.
//
// Tokens no sequence owns (sequence_of_token(t) < 0) get out = 0 and
// lse = -inf from the merge kernel (split mode) or from extra "fill" CTAs at
// the end of the attention grid (single-split mode), so every row is written.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "specdec/paged_index.h"
#include "specdec/tree_attention.h"

namespace specdec {
namespace kernels {
namespace tree_attn {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kKeyTile = 32;  // one key per lane in the softmax

constexpr size_t align128(size_t x) { return (x + 127) / 128 * 128; }

// Tile shapes and the shared-memory layout (byte offsets, 128-aligned
// sections). Every configuration fits 99 KB (the sm_86/89 opt-in limit).
template <typename T, int D>
struct Config {
  static_assert(D == 64 || D == 128 || D == 256, "head dim must be 64, 128 or 256");
  static constexpr bool kFloat = std::is_same<T, float>::value;
  // Query rows (i, g) per tile.
  static constexpr int kRows = kFloat ? (D == 256 ? 16 : 32) : (D == 256 ? 32 : 64);
  // fp32 D=256: K and V take turns in one buffer (V is loaded after S).
  static constexpr bool kShareKV = kFloat && D == 256;
  static constexpr int kVec = 16 / int(sizeof(T));  // elements per 16-byte vector
  static constexpr int kLdT = D + kVec;             // Q, K, V rows: +16 B against bank conflicts
  static constexpr int kLdS = kKeyTile + 4;         // S rows (fp32); P reuses them in place
  static constexpr int kLdO = D + 4;                // O rows (fp32)

  static constexpr size_t kOffQ = 0;
  static constexpr size_t kOffK = align128(kOffQ + size_t(kRows) * kLdT * sizeof(T));
  static constexpr size_t kOffV = kShareKV ? kOffK : align128(kOffK + size_t(kKeyTile) * kLdT * sizeof(T));
  static constexpr size_t kOffS = align128(kOffV + size_t(kKeyTile) * kLdT * sizeof(T));
  static constexpr size_t kOffO = align128(kOffS + size_t(kRows) * kLdS * sizeof(float));
  static constexpr size_t kOffRowM = align128(kOffO + size_t(kRows) * kLdO * sizeof(float));
  static constexpr size_t kOffRowL = kOffRowM + size_t(kRows) * sizeof(float);
  static constexpr size_t kOffRowTok = kOffRowL + size_t(kRows) * sizeof(float);
  static constexpr size_t kOffRowNode = kOffRowTok + size_t(kRows) * sizeof(int32_t);
  static constexpr size_t kOffRowHead = kOffRowNode + size_t(kRows) * sizeof(int32_t);
  static constexpr size_t kOffKeyOff = align128(kOffRowHead + size_t(kRows) * sizeof(int32_t));
  static constexpr size_t kOffKeyNode = kOffKeyOff + size_t(kKeyTile) * sizeof(int64_t);
  static constexpr size_t kSmemBytes = align128(kOffKeyNode + size_t(kKeyTile) * sizeof(int32_t));

  static_assert(kRows % kWarps == 0, "rows are dealt to warps");
  static_assert(kThreads % (D / 4) == 0 && kRows % (kThreads / (D / 4)) == 0, "P V thread mapping");
  static_assert(kSmemBytes <= 99 * 1024, "tile does not fit the smallest opt-in shared memory");
};

// Everything the kernels need besides the contract's arguments.
struct Params {
  TreeAttentionArgs a;
  float* ws_o;        // [num_splits, N, Hq, D] (split mode only)
  float* ws_lse;      // [num_splits, N, Hq]
  int num_splits;     // 1: write out/lse directly
  int q_ctas;         // CTAs per (sequence, KV head, split) along the query tiles
  int64_t main_ctas;  // batch * Hkv * num_splits * q_ctas; CTAs past it fill uncovered tokens
  int fill_ctas;
  int vec_ok;         // q, caches and their strides allow 16-byte loads
};

// ------------------------------------------------------------ element helpers

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// 16 bytes of T (shared memory, 16-byte aligned) -> floats.
template <typename T>
__device__ __forceinline__ void load_vec_f(const T* p, float (&out)[16 / sizeof(T)]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  T e[16 / sizeof(T)];
  memcpy(e, &u, sizeof u);  // no type punning through pointers; compiles to register moves
#pragma unroll
  for (int i = 0; i < int(16 / sizeof(T)); ++i) out[i] = to_float<T>(e[i]);
}

// 4 elements of T (shared memory, aligned to 4 * sizeof(T)) -> floats.
template <typename T>
__device__ __forceinline__ void load4_f(const T* p, float (&out)[4]) {
  if constexpr (sizeof(T) == 4) {
    const float4 u = *reinterpret_cast<const float4*>(p);
    out[0] = u.x; out[1] = u.y; out[2] = u.z; out[3] = u.w;
  } else {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    T e[4];
    memcpy(e, &u, sizeof u);
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = to_float<T>(e[i]);
  }
}

// One 16-byte vector (kVec elements) from global memory into shared memory:
// a single load when aligned, element by element otherwise, zeros for src null.
template <typename T>
__device__ __forceinline__ void copy_vec(T* dst, const T* src, bool vec_ok) {
  constexpr int kVec = 16 / int(sizeof(T));
  if (src == nullptr) {
    *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
  } else if (vec_ok) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) dst[i] = src[i];
  }
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ------------------------------------------------------------ tile math

// S[kRows, kKeyTile] = Q K^T on CUDA cores: lane = key, warp w owns rows
// w, w + kWarps, ...; 16-byte smem reads (conflict-free with the +16 B pad).
template <typename T, int D>
__device__ __forceinline__ void fma_scores(const T* sQ, const T* sK, float* sS, int warp, int lane) {
  using C = Config<T, D>;
  constexpr int kPer = C::kRows / kWarps;
  constexpr int kVec = C::kVec;
  float acc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i] = 0.0f;
  const T* krow = sK + lane * C::kLdT;
#pragma unroll 2
  for (int d = 0; d < D; d += kVec) {
    float kf[kVec];
    load_vec_f<T>(krow + d, kf);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      float qf[kVec];
      load_vec_f<T>(sQ + (warp + i * kWarps) * C::kLdT + d, qf);
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[i] = fmaf(qf[e], kf[e], acc[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) sS[(warp + i * kWarps) * C::kLdS + lane] = acc[i];
}

// O[kRows, D] += P V on CUDA cores, P fp32 in sS. Thread = 4 adjacent columns
// of kRows / (kThreads / (D / 4)) rows.
template <typename T, int D>
__device__ __forceinline__ void fma_pv(const float* sP, const T* sV, float* sO, int tid) {
  using C = Config<T, D>;
  constexpr int kChunks = D / 4;
  constexpr int kGroups = kThreads / kChunks;
  constexpr int kPer = C::kRows / kGroups;
  const int chunk = tid % kChunks;
  const int group = tid / kChunks;
  float acc[kPer][4];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const float4 o = *reinterpret_cast<const float4*>(sO + (group + i * kGroups) * C::kLdO + chunk * 4);
    acc[i][0] = o.x; acc[i][1] = o.y; acc[i][2] = o.z; acc[i][3] = o.w;
  }
#pragma unroll 4
  for (int c = 0; c < kKeyTile; ++c) {
    float v[4];
    load4_f<T>(sV + c * C::kLdT + chunk * 4, v);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const float pr = sP[(group + i * kGroups) * C::kLdS + c];
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(pr, v[j], acc[i][j]);
    }
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    *reinterpret_cast<float4*>(sO + (group + i * kGroups) * C::kLdO + chunk * 4) =
        make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
  }
}

// ------------------------------------------------------------ CTA work

// What one attention CTA does: blockIdx.x = ((b * Hkv + kv) * S + split) *
// q_ctas + slot; its sequence's rows (tree queries whose token lies in
// [0, N), times the group) and query tiles; its split's key range. The key
// index space is [0, L): keys past the block table's reach are invisible
// anyway, so L stops there (bounded work for any prefix or T); split s takes
// [s chunk, (s + 1) chunk), chunk = ceil(L / S) rounded up to the key tile.
struct CtaWork {
  int slot, split;
  int64_t b, kv, group, start, i_lo, num_rows, num_qtiles;
  int64_t prefix, prefix_keys, kv_begin, kv_end;
};

// False when the CTA has nothing to do (no rows, or its slot is past the tiles).
__device__ __forceinline__ bool cta_work(const Params& p, int rows_per_tile, int key_tile, CtaWork* out) {
  const TreeAttentionArgs& a = p.a;
  CtaWork w;
  int64_t idx = blockIdx.x;
  w.slot = int(idx % p.q_ctas);
  idx /= p.q_ctas;
  w.split = int(idx % p.num_splits);
  idx /= p.num_splits;
  w.kv = idx % a.num_kv_heads;
  w.b = idx / a.num_kv_heads;
  const int64_t N = a.num_tokens;
  w.group = a.num_q_heads / a.num_kv_heads;
  w.start = a.qo_indptr[w.b];
  const int64_t tree_len = int64_t(a.qo_indptr[w.b + 1]) - w.start;
  if (tree_len <= 0) return false;
  w.i_lo = w.start < 0 ? -w.start : 0;
  const int64_t i_hi = tree_len < N - w.start ? tree_len : N - w.start;
  if (i_hi <= w.i_lo) return false;
  w.num_rows = (i_hi - w.i_lo) * w.group;
  w.num_qtiles = (w.num_rows + rows_per_tile - 1) / rows_per_tile;
  if (w.slot >= w.num_qtiles) return false;
  w.prefix = a.prefix_lens[w.b];
  w.prefix_keys = w.prefix > 0 ? w.prefix : 0;
  const int64_t reach = (a.max_blocks > 0 && a.block_size > 0) ? a.max_blocks * a.block_size : 0;
  int64_t L = w.prefix_keys + tree_len;
  const int64_t L_reach = reach + w.prefix_keys - w.prefix;  // key whose position is `reach`
  if (L > L_reach) L = L_reach;
  if (L < 0) L = 0;
  int64_t chunk = (L + p.num_splits - 1) / p.num_splits;
  chunk = (chunk + key_tile - 1) / key_tile * key_tile;
  w.kv_begin = int64_t(w.split) * chunk;
  w.kv_end = w.kv_begin + chunk < L ? w.kv_begin + chunk : L;
  *out = w;
  return true;
}

// ------------------------------------------------------------ fill role

// Tokens no sequence owns: out = 0, lse = -inf. One thread tests one token;
// each warp then writes its uncovered tokens' rows together.
template <typename T>
__device__ void fill_uncovered(const Params& p, int64_t fill_idx) {
  const TreeAttentionArgs& a = p.a;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t row_elems = a.num_q_heads * a.head_dim;
  T* out = static_cast<T*>(a.out);
  const T zero = from_float<T>(0.0f);
  for (int64_t base = fill_idx * kThreads; base < a.num_tokens; base += int64_t(p.fill_ctas) * kThreads) {
    const int64_t t = base + tid;
    const bool uncovered = t < a.num_tokens && sequence_of_token(a.qo_indptr, a.batch, t) < 0;
    unsigned todo = __ballot_sync(0xffffffffu, uncovered);
    while (todo != 0u) {
      const int src = __ffs(todo) - 1;
      todo &= todo - 1u;
      const int64_t tt = base + warp * 32 + src;
      for (int64_t x = lane; x < row_elems; x += 32) out[tt * row_elems + x] = zero;
      for (int64_t h = lane; h < a.num_q_heads; h += 32) a.lse[tt * a.num_q_heads + h] = -INFINITY;
    }
  }
}

// ------------------------------------------------------------ attention

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 2) tree_attention_kernel(const Params p) {
  using C = Config<T, D>;
  constexpr int kRows = C::kRows;
  constexpr int kVec = C::kVec;
  constexpr float kNegInf = -INFINITY;

  if (int64_t(blockIdx.x) >= p.main_ctas) {
    fill_uncovered<T>(p, int64_t(blockIdx.x) - p.main_ctas);
    return;
  }

  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem + C::kOffQ);
  T* sK = reinterpret_cast<T*>(smem + C::kOffK);
  T* sV = reinterpret_cast<T*>(smem + C::kOffV);
  float* sS = reinterpret_cast<float*>(smem + C::kOffS);
  float* sO = reinterpret_cast<float*>(smem + C::kOffO);
  float* sM = reinterpret_cast<float*>(smem + C::kOffRowM);
  float* sL = reinterpret_cast<float*>(smem + C::kOffRowL);
  int32_t* sRowTok = reinterpret_cast<int32_t*>(smem + C::kOffRowTok);
  int32_t* sRowNode = reinterpret_cast<int32_t*>(smem + C::kOffRowNode);
  int32_t* sRowHead = reinterpret_cast<int32_t*>(smem + C::kOffRowHead);
  int64_t* sKeyOff = reinterpret_cast<int64_t*>(smem + C::kOffKeyOff);
  int32_t* sKeyNode = reinterpret_cast<int32_t*>(smem + C::kOffKeyNode);

  const TreeAttentionArgs& a = p.a;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;

  CtaWork wk;
  if (!cta_work(p, kRows, kKeyTile, &wk)) return;
  const int slot = wk.slot, split = wk.split;
  const int64_t b = wk.b, kv = wk.kv, N = a.num_tokens, Hq = a.num_q_heads, group = wk.group;
  const int64_t start = wk.start, i_lo = wk.i_lo, num_rows = wk.num_rows, num_qtiles = wk.num_qtiles;
  const int64_t prefix = wk.prefix, prefix_keys = wk.prefix_keys, kv_begin = wk.kv_begin, kv_end = wk.kv_end;

  const PagedLayout layout{a.num_blocks, a.block_size, a.num_kv_heads, D,
                           a.cache_stride_block, a.cache_stride_token, a.cache_stride_head};
  const BlockTable blocks{a.block_table, a.block_table_stride, a.max_blocks, a.prefix_lens, a.batch};
  const T* q = static_cast<const T*>(a.q);
  const T* k_cache = static_cast<const T*>(a.k_cache);
  const T* v_cache = static_cast<const T*>(a.v_cache);
  const bool vec_ok = p.vec_ok != 0;
  const bool split_mode = p.num_splits > 1;

  for (int64_t qt = slot; qt < num_qtiles; qt += p.q_ctas) {
    // Rows of this tile: token, tree node, q head; running max and sum.
    for (int r = tid; r < kRows; r += kThreads) {
      const int64_t gr = qt * kRows + r;
      int32_t tok = -1, node = 0, head = 0;
      if (gr < num_rows) {
        const int64_t i = i_lo + gr / group;
        const int64_t t = start + i;
        // A malformed (overlapping) qo_indptr: the token belongs to the
        // sequence the binary search names, as in the CPU kernel.
        if (sequence_of_token(a.qo_indptr, a.batch, t) == b) {
          tok = int32_t(t);
          node = int32_t(i);
          head = int32_t(kv * group + gr % group);
        }
      }
      sRowTok[r] = tok;
      sRowNode[r] = node;
      sRowHead[r] = head;
      sM[r] = kNegInf;
      sL[r] = 0.0f;
    }
    __syncthreads();

    if (kv_begin < kv_end) {
      for (int x = tid; x < kRows * (D / kVec); x += kThreads) {
        const int r = x / (D / kVec);
        const int c = (x % (D / kVec)) * kVec;
        const int32_t tok = sRowTok[r];
        const T* src = tok < 0 ? nullptr : q + tok * a.q_stride_token + sRowHead[r] * a.q_stride_head + c;
        copy_vec<T>(sQ + r * C::kLdT + c, src, vec_ok);
      }
    }
    for (int x = tid; x < kRows * (D / 4); x += kThreads) {
      const int r = x / (D / 4);
      const int c = (x % (D / 4)) * 4;
      *reinterpret_cast<float4*>(sO + r * C::kLdO + c) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }

    for (int64_t k0 = kv_begin; k0 < kv_end; k0 += kKeyTile) {
      // Key meta: element offset of the key's row for this KV head (-1:
      // skipped), tree node (-1: prefix key, visible to every row).
      if (tid < kKeyTile) {
        const int64_t k = k0 + tid;
        int64_t off = -1;
        int32_t node = -1;
        if (k < kv_end) {
          int64_t pos = k;
          if (k >= prefix_keys) {
            node = int32_t(k - prefix_keys);
            pos = prefix + node;
          }
          const int64_t row = paged_row_offset(layout, blocks, b, pos);
          if (row >= 0) off = row + kv * a.cache_stride_head;
        }
        sKeyOff[tid] = off;
        sKeyNode[tid] = node;
      }
      __syncthreads();

      // K (and V) rows; zeros for skipped keys, so P = 0 never meets garbage.
      for (int x = tid; x < kKeyTile * (D / kVec); x += kThreads) {
        const int c = x / (D / kVec);
        const int d = (x % (D / kVec)) * kVec;
        const int64_t off = sKeyOff[c];
        copy_vec<T>(sK + c * C::kLdT + d, off < 0 ? nullptr : k_cache + off + d, vec_ok);
        if constexpr (!C::kShareKV) {
          copy_vec<T>(sV + c * C::kLdT + d, off < 0 ? nullptr : v_cache + off + d, vec_ok);
        }
      }
      __syncthreads();

      fma_scores<T, D>(sQ, sK, sS, warp, lane);
      __syncthreads();

      if constexpr (C::kShareKV) {  // S is done with K: V takes its buffer
        for (int x = tid; x < kKeyTile * (D / kVec); x += kThreads) {
          const int c = x / (D / kVec);
          const int d = (x % (D / kVec)) * kVec;
          const int64_t off = sKeyOff[c];
          copy_vec<T>(sV + c * C::kLdT + d, off < 0 ? nullptr : v_cache + off + d, vec_ok);
        }
      }

      // Online softmax: warp per row, lane = key. P overwrites S in place
      // (each lane has read its S before the shuffles, and __syncwarp orders
      // the writes after them).
      for (int r = warp; r < kRows; r += kWarps) {
        const int32_t tok = sRowTok[r];
        float s = kNegInf;
        if (tok >= 0 && sKeyOff[lane] >= 0) {
          const int32_t node = sKeyNode[lane];
          bool visible = true;
          if (node >= 0) {
            if (a.tree_mask != nullptr) {
              const int32_t w = node >> 5;
              visible = w < a.mask_words &&
                        ((uint32_t(a.tree_mask[int64_t(tok) * a.mask_stride + w]) >> (node & 31)) & 1u) != 0u;
            } else {
              visible = node <= sRowNode[r];
            }
          }
          if (visible) s = sS[r * C::kLdS + lane] * a.sm_scale;
        }
        const float m_old = sM[r];
        const float m_new = fmaxf(m_old, warp_max(s));
        float pr = 0.0f, alpha = 1.0f;
        if (m_new != kNegInf) {
          pr = __expf(s - m_new);         // 0 for invisible keys
          alpha = __expf(m_old - m_new);  // 0 while nothing was seen before
        }
        const float sum = warp_sum(pr);
        __syncwarp();
        sS[r * C::kLdS + lane] = pr;
        if (lane == 0) {
          sM[r] = m_new;
          sL[r] = sL[r] * alpha + sum;
        }
        if (alpha != 1.0f) {
          for (int d = lane; d < D; d += 32) sO[r * C::kLdO + d] *= alpha;
        }
      }
      __syncthreads();

      fma_pv<T, D>(sS, sV, sO, tid);
      // No barrier here: the next tile's key meta touches nothing P V reads,
      // and the barrier after it precedes every write P V could race with.
    }
    __syncthreads();

    // Epilogue: normalised rows (or partials) and their log-sum-exp.
    const int64_t split_rows = int64_t(split) * N * Hq;
    for (int x = tid; x < kRows * D; x += kThreads) {
      const int r = x / D;
      const int d = x % D;
      const int32_t tok = sRowTok[r];
      if (tok < 0) continue;
      const float l = sL[r];
      const float v = l > 0.0f ? sO[r * C::kLdO + d] * (1.0f / l) : 0.0f;
      const int64_t row = int64_t(tok) * Hq + sRowHead[r];
      if (split_mode) {
        p.ws_o[(split_rows + row) * D + d] = v;
      } else {
        static_cast<T*>(a.out)[row * D + d] = from_float<T>(v);
      }
    }
    for (int r = tid; r < kRows; r += kThreads) {
      const int32_t tok = sRowTok[r];
      if (tok < 0) continue;
      const float l = sL[r];
      const float lse = l > 0.0f ? sM[r] + logf(l) : kNegInf;
      const int64_t row = int64_t(tok) * Hq + sRowHead[r];
      if (split_mode) {
        p.ws_lse[split_rows + row] = lse;
      } else {
        a.lse[row] = lse;
      }
    }
    __syncthreads();
  }
}

// ------------------------------------------------------------ merge

constexpr int kMergeThreads = 128;
constexpr int kMergeRowsPerCta = kMergeThreads / 32;

// One warp per (token, q head): out = sum_s w_s o_s / sum_s w_s with
// w_s = exp(lse_s - max lse), lse = max + log(sum w). Uncovered tokens (no
// partials were written for them) and rows no split saw: out 0, lse -inf.
template <typename T, int D>
__global__ void __launch_bounds__(kMergeThreads) tree_attention_merge_kernel(const Params p) {
  const TreeAttentionArgs& a = p.a;
  const int lane = threadIdx.x % 32;
  const int64_t rows = a.num_tokens * a.num_q_heads;
  const int64_t row = int64_t(blockIdx.x) * kMergeRowsPerCta + threadIdx.x / 32;
  if (row >= rows) return;
  constexpr int kPer = D / 32;
  float acc[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) acc[j] = 0.0f;
  float lse = -INFINITY;
  const int64_t t = row / a.num_q_heads;
  if (sequence_of_token(a.qo_indptr, a.batch, t) >= 0) {
    float m = -INFINITY;
    for (int s = 0; s < p.num_splits; ++s) m = fmaxf(m, p.ws_lse[s * rows + row]);
    if (m != -INFINITY) {
      float sum = 0.0f;
      for (int s = 0; s < p.num_splits; ++s) {
        const float w = expf(p.ws_lse[s * rows + row] - m);
        if (w == 0.0f) continue;
        sum += w;
        const float* o = p.ws_o + (s * rows + row) * D;
#pragma unroll
        for (int j = 0; j < kPer; ++j) acc[j] = fmaf(w, o[lane + 32 * j], acc[j]);
      }
      const float inv = 1.0f / sum;
#pragma unroll
      for (int j = 0; j < kPer; ++j) acc[j] *= inv;
      lse = m + logf(sum);
    }
  }
  T* out = static_cast<T*>(a.out) + row * D;
#pragma unroll
  for (int j = 0; j < kPer; ++j) out[lane + 32 * j] = from_float<T>(acc[j]);
  if (lane == 0) a.lse[row] = lse;
}

}  // namespace tree_attn
}  // namespace kernels
}  // namespace specdec

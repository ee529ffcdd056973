// The tensor-core tree-attention kernel (fp16 / bf16, sm_80+), FlashAttention-2
// style: Q, S, P and O live in registers, S and P V are mma.sync m16n8k16 with
// fp32 accumulation, operands come from shared memory through ldmatrix (the
// same instruction for fp16 and bf16), K/V tiles stream through a kStages-deep
// cp.async pipeline whose block-table offsets are read one tile ahead of their
// copies. The launcher (csrc/cuda/tree_attention.cu) chooses it for fp16/bf16
// on devices of compute capability 8.0 and up; fp32 (and older devices) use
// tree_attention_kernel in tree_attention.cuh. Notes and the per-tile model:
// bench/NOTES.md.
//
// Work decomposition. One CTA per (sequence b, KV head, KV split, query-tile
// slot), as in tree_attention.cuh, but a query tile holds kRows = 16 W rows
// (i, g) for W = 4 or 8 warps, so a tree of T x G <= 128 rows is one tile: every
// K/V tile of the split is read once for all tree queries and all q heads of
// the group. Warp w owns rows [16 w, 16 w + 16); lane 4 g + t holds rows g and
// g + 8, as the mma accumulator layout puts them, so the row max and sum are
// two quad shuffles. (More rows per warp would not fit O in the registers at
// D = 128: two m-tiles spill.)
//
// Per key tile (kKeys keys, stage j % kStages of the ring):
//   wait for tile j's copies, barrier; issue tile j + kStages - 1's copies into
//   the stage tile j - 1 used (every warp is past it: the barrier); read the
//   block table for the tile after that (used one iteration later, so its
//   latency hides behind this tile's math);
//   S = Q K^T (ldmatrix Q rows and K rows, mma), scale, mask, online softmax in
//   registers (exp2 with log2(e) folded into the scale), O *= alpha;
//   P (rounded to T) is the A operand as the accumulator left it; V through
//   ldmatrix.trans is the B operand; O += P V.
// Masking is per (row, key): keys past the split or outside the block table
// (a flag per key per stage, written by the copying thread) are invisible;
// prefix keys are visible; tree key node j is visible through bit j of the
// row's mask words (kept in shared memory, kMaxTreeWords per row) or causally.
#pragma once

#include "specdec/ptx.cuh"
#include "specdec/tree_attention.cuh"

namespace specdec {
namespace kernels {
namespace tree_attn {

// ---------------------------------------------------------------- fragment helpers
// Shared by the mma.sync kernel below and the wgmma kernel
// (tree_attention_wgmma.cuh): both keep S and O in the mma.sync accumulator
// layout, per warp 16 rows, lane 4 g + t holding rows g and g + 8 and, of
// each 8-column n-tile, columns 2 t and 2 t + 1 (flat arrays: element
// 4 n + 2 h + e is row g + 8 h, column 8 n + 2 t + e).

// 16 bytes into shared memory: cp.async when `vec` (zero-fill for a null
// src; `any` is a valid address it never reads), else element by element
// (plain stores, complete at once).
template <typename T>
__device__ __forceinline__ void copy16(T* dst, const T* src, bool vec, const T* any) {
  if (vec) {
    ptx::cp_async_16(dst, src != nullptr ? src : any, src != nullptr ? 16 : 0);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) dst[e] = src != nullptr ? src[e] : from_float<T>(0.0f);
  }
}

// Element offset of key k's row (KV head wk.kv) in the caches; -1 past the
// split's keys or where the block table has no block.
__device__ __forceinline__ int64_t key_row(const TreeAttentionArgs& a, const CtaWork& wk, int64_t k) {
  if (k >= wk.kv_end) return -1;
  const PagedLayout layout{a.num_blocks, a.block_size, a.num_kv_heads, a.head_dim,
                           a.cache_stride_block, a.cache_stride_token, a.cache_stride_head};
  const BlockTable blocks{a.block_table, a.block_table_stride, a.max_blocks, a.prefix_lens, a.batch};
  const int64_t pos = k < wk.prefix_keys ? k : wk.prefix + (k - wk.prefix_keys);
  const int64_t row = paged_row_offset(layout, blocks, wk.b, pos);
  return row >= 0 ? row + wk.kv * a.cache_stride_head : -1;
}

// Row gr of the CTA's row space (token i_lo + gr / G, head gr % G of the
// group): its query row's column c, or null for a row of no token of b.
template <typename T>
__device__ __forceinline__ const T* q_src(const TreeAttentionArgs& a, const CtaWork& wk, int64_t gr, int c) {
  if (gr >= wk.num_rows) return nullptr;
  const int64_t tok = wk.start + wk.i_lo + gr / wk.group;
  if (sequence_of_token(a.qo_indptr, a.batch, tok) != wk.b) return nullptr;
  return static_cast<const T*>(a.q) + tok * a.q_stride_token + (wk.kv * wk.group + gr % wk.group) * a.q_stride_head + c;
}

// The mask words of rows [row_base, row_base + rows) into mask_rows
// (kMaxTreeWords per row, zeros past the mask or the rows).
__device__ __forceinline__ void load_mask_rows(uint32_t* mask_rows, const TreeAttentionArgs& a, const CtaWork& wk,
                                               int64_t row_base, int rows, int tid, int threads) {
  for (int x = tid; x < rows * kMaxTreeWords; x += threads) {
    const int r = x / kMaxTreeWords, w = x % kMaxTreeWords;
    const int64_t gr = row_base + r;
    uint32_t bits = 0;
    if (a.tree_mask != nullptr && w < a.mask_words && gr < wk.num_rows)
      bits = uint32_t(a.tree_mask[(wk.start + wk.i_lo + gr / wk.group) * a.mask_stride + w]);
    mask_rows[x] = bits;
  }
}

// The tokens and tree nodes of the two rows this lane holds (-1: no token of
// sequence b). `row0` is the warp's first row in the CTA's row space.
struct FragRows {
  int32_t tok[2], node[2];
};
__device__ __forceinline__ FragRows frag_rows(const TreeAttentionArgs& a, const CtaWork& wk, int64_t row0, int g) {
  FragRows r;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t gr = row0 + g + 8 * h;
    int32_t tok = -1, node = 0;
    if (gr < wk.num_rows) {
      const int64_t i = wk.i_lo + gr / wk.group;
      if (sequence_of_token(a.qo_indptr, a.batch, wk.start + i) == wk.b) {
        tok = int32_t(wk.start + i);
        node = int32_t(i);
      }
    }
    r.tok[h] = tok;
    r.node[h] = node;
  }
  return r;
}

// Whether a key tile is plain: every key a prefix key (tree node < 0) with a
// block behind it, so no key needs the mask or its flag (most tiles of a long
// prefix). Warp-uniform (a vote over the tile's key_ok flags).
template <int kKeys>
__device__ __forceinline__ bool plain_tile(const int32_t* key_ok, int32_t node0, int lane) {
  bool ok = node0 + kKeys <= 0;
#pragma unroll
  for (int c = lane; c < kKeys; c += 32) ok = ok && key_ok[c] != 0;
  return __all_sync(0xffffffffu, ok) != 0;
}

// One key tile of kNT 8-key n-tiles: mask, scale (log2 e folded in), online
// softmax with the quad's row max, O rescaled; s becomes P (unnormalised).
// Keys whose key_ok flag is 0 are invisible, prefix keys (node < 0) visible,
// tree key node j through bit j of the row's mask words (the CTA-local
// `mask_rows` copy, kMaxTreeWords per row) or causally. `r_local` is the
// lane's row g in mask_rows. `plain` (plain_tile): every key visible to
// every row of a token, nothing to look up.
template <int kNT, int kDT>
__device__ __forceinline__ void softmax_tile(float (&s)[kNT * 4], float (&o)[kDT * 4], float (&m)[2], float (&l)[2],
                                             const FragRows& rows, const TreeAttentionArgs& a, const int32_t* key_ok,
                                             int32_t node0, const uint32_t* mask_rows, int r_local, int t4,
                                             float scale_log2, bool plain) {
  constexpr float kNegInf = -INFINITY;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int32_t tok = rows.tok[h];
    float mx = kNegInf;
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = nt * 8 + 2 * t4 + e;
        const int32_t node = node0 + c;  // < 0: a prefix key
        bool vis = tok >= 0 && (plain || key_ok[c] != 0);
        if (vis && !plain && node >= 0) {
          if (a.tree_mask != nullptr) {
            const int32_t w = node >> 5;
            uint32_t bits = 0;
            if (w < kMaxTreeWords) {
              bits = mask_rows[(r_local + 8 * h) * kMaxTreeWords + w];
            } else if (w < a.mask_words) {  // trees past kMaxTreeLen (callers reject them)
              bits = uint32_t(a.tree_mask[int64_t(tok) * a.mask_stride + w]);
            }
            vis = ((bits >> (node & 31)) & 1u) != 0u;
          } else {
            vis = node <= rows.node[h];
          }
        }
        const float v = vis ? s[4 * nt + 2 * h + e] * scale_log2 : kNegInf;
        s[4 * nt + 2 * h + e] = v;
        mx = fmaxf(mx, v);
      }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[h], mx);
    // Nothing visible yet: p = 0 and O, l stay 0 (alpha 1).
    const float alpha = m_new == kNegInf ? 1.0f : exp2f(m[h] - m_new);
    float sum = 0.0f;
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float pr = m_new == kNegInf ? 0.0f : exp2f(s[4 * nt + 2 * h + e] - m_new);
        s[4 * nt + 2 * h + e] = pr;
        sum += pr;
      }
    l[h] = l[h] * alpha + sum;  // this lane's columns; the quad is summed at the end
    m[h] = m_new;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      o[4 * dt + 2 * h] *= alpha;
      o[4 * dt + 2 * h + 1] *= alpha;
    }
  }
}

// P (rounded to T) as the A operand of P V: the accumulator layout of two
// 8-key n-tiles is the m16n8k16 A fragment of their 16 keys.
template <typename T, int kNT>
__device__ __forceinline__ void pack_p(const float (&s)[kNT * 4], uint32_t (&pa)[kNT / 2][4]) {
#pragma unroll
  for (int kk = 0; kk < kNT / 2; ++kk) {
    pa[kk][0] = ptx::pack2<T>(s[8 * kk + 0], s[8 * kk + 1]);
    pa[kk][1] = ptx::pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
    pa[kk][2] = ptx::pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
    pa[kk][3] = ptx::pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

// Epilogue: the quad's row sums, normalised rows to out (or fp32 partials to
// the split workspace) and lse. `row0` as in frag_rows.
template <typename T, int D>
__device__ __forceinline__ void store_rows(const Params& p, const CtaWork& wk, const FragRows& rows, int64_t row0,
                                           const float (&o)[D / 2], const float (&m)[2], const float (&l)[2], int g,
                                           int t4) {
  constexpr int kDT = D / 8;
  const TreeAttentionArgs& a = p.a;
  const int64_t Hq = a.num_q_heads;
  const int64_t split_rows = int64_t(wk.split) * a.num_tokens * Hq;
  const bool split_mode = p.num_splits > 1;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float lsum = l[h];
    lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
    lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
    const int32_t tok = rows.tok[h];
    if (tok < 0) continue;
    const int64_t gr = row0 + g + 8 * h;
    const int64_t row = int64_t(tok) * Hq + wk.kv * wk.group + gr % wk.group;
    const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      const float v0 = o[4 * dt + 2 * h] * inv, v1 = o[4 * dt + 2 * h + 1] * inv;
      const int64_t d = dt * 8 + 2 * t4;
      if (split_mode) {
        *reinterpret_cast<float2*>(p.ws_o + (split_rows + row) * D + d) = make_float2(v0, v1);
      } else {
        *reinterpret_cast<uint32_t*>(static_cast<T*>(a.out) + row * D + d) = ptx::pack2<T>(v0, v1);
      }
    }
    if (t4 == 0) {
      const float lse = lsum > 0.0f ? (m[h] + log2f(lsum)) * 0.6931471805599453f : -INFINITY;
      if (split_mode) {
        p.ws_lse[split_rows + row] = lse;
      } else {
        a.lse[row] = lse;
      }
    }
  }
}

template <typename T, int D, int W>
struct MmaConfig {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "fp16 or bf16");
  static_assert(D == 64 || D == 128 || D == 256, "head dim must be 64, 128 or 256");
  static_assert(W == 4 || (W == 8 && D <= 128), "8 warps only up to D = 128 (99 KB of shared memory)");
  static constexpr int kThreads = 32 * W;
  static constexpr int kRows = 16 * W;
  static constexpr int kKeys = D == 256 ? 16 : 32;  // keys per tile; D = 256 halves it to fit 99 KB
  // Stages of the K/V ring; two at D = 256 so that two CTAs fit an A100 SM (164 KB).
  static constexpr int kStages = D == 256 ? 2 : 3;
  static constexpr int kLd = D + 8;  // +16 B per row: the 8 rows of an ldmatrix hit 8 different bank groups
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static constexpr int kCopies = kKeys * kChunks / kThreads;  // K (and V) chunks per thread per tile
  static constexpr int kKeyStep = kThreads / kChunks;         // between a thread's keys

  static constexpr size_t kTileBytes = size_t(kKeys) * kLd * sizeof(T);
  static constexpr size_t kOffQ = 0;
  static constexpr size_t kOffK = align128(size_t(kRows) * kLd * sizeof(T));
  static constexpr size_t kOffV = kOffK + kStages * kTileBytes;
  static constexpr size_t kOffMask = align128(kOffV + kStages * kTileBytes);
  static constexpr size_t kOffKeyOk = kOffMask + size_t(kRows) * kMaxTreeWords * sizeof(uint32_t);
  static constexpr size_t kSmemBytes = align128(kOffKeyOk + size_t(kStages) * kKeys * sizeof(int32_t));

  static_assert(kThreads % kChunks == 0 && (kKeys * kChunks) % kThreads == 0, "copy mapping");
  static_assert(kTileBytes % 128 == 0, "stages stay 128-byte aligned");
  static_assert(kSmemBytes <= 99 * 1024, "tile does not fit the smallest opt-in shared memory");
};

template <typename T, int D, int W>
__global__ void __launch_bounds__(32 * W, W == 4 ? 2 : 1) tree_attention_mma_kernel(const Params p) {
  using C = MmaConfig<T, D, W>;
  constexpr int kThreads = C::kThreads;
  constexpr int kRows = C::kRows, kKeys = C::kKeys, kStages = C::kStages, kLd = C::kLd;
  constexpr int kNT = kKeys / 8;  // 8-key n-tiles of S
  constexpr int kDT = D / 8;      // 8-column n-tiles of O
  constexpr float kLog2e = 1.4426950408889634f;

  if (int64_t(blockIdx.x) >= p.main_ctas) {
    // The fill role is written for tree_attn::kThreads; extra warps leave whole.
    if (threadIdx.x < tree_attn::kThreads) fill_uncovered<T>(p, int64_t(blockIdx.x) - p.main_ctas);
    return;
  }

  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem + C::kOffQ);
  T* sK = reinterpret_cast<T*>(smem + C::kOffK);
  T* sV = reinterpret_cast<T*>(smem + C::kOffV);
  uint32_t* sMask = reinterpret_cast<uint32_t*>(smem + C::kOffMask);
  int32_t* sKeyOk = reinterpret_cast<int32_t*>(smem + C::kOffKeyOk);

  const TreeAttentionArgs& a = p.a;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, t4 = lane % 4;

  CtaWork wk;
  if (!cta_work(p, kRows, kKeys, &wk)) return;
  const int64_t kv_begin = wk.kv_begin, kv_end = wk.kv_end, prefix_keys = wk.prefix_keys;

  const int num_tiles = kv_begin < kv_end ? int((kv_end - kv_begin + kKeys - 1) / kKeys) : 0;

  const T* q = static_cast<const T*>(a.q);
  const T* k_cache = static_cast<const T*>(a.k_cache);
  const T* v_cache = static_cast<const T*>(a.v_cache);
  const bool vec_ok = p.vec_ok != 0;
  const float scale_log2 = a.sm_scale * kLog2e;

  // This thread's copies: column chunk `col` of keys key0 + i kKeyStep.
  const int col = (tid % C::kChunks) * 8;
  const int key0 = tid / C::kChunks;
  // Element offsets of this thread's keys of tile `tile` (-1: invisible).
  auto key_offsets = [&](int tile, int64_t (&off)[C::kCopies]) {
#pragma unroll
    for (int i = 0; i < C::kCopies; ++i)
      off[i] = tile < num_tiles ? key_row(a, wk, kv_begin + int64_t(tile) * kKeys + key0 + i * C::kKeyStep)
                                : -1;
  };
  auto issue = [&](int tile, const int64_t (&off)[C::kCopies]) {
    const int stage = tile % kStages;
    T* k_dst = sK + stage * kKeys * kLd;
    T* v_dst = sV + stage * kKeys * kLd;
#pragma unroll
    for (int i = 0; i < C::kCopies; ++i) {
      const int c = key0 + i * C::kKeyStep;
      copy16<T>(k_dst + c * kLd + col, off[i] < 0 ? nullptr : k_cache + off[i] + col, vec_ok, q);
      copy16<T>(v_dst + c * kLd + col, off[i] < 0 ? nullptr : v_cache + off[i] + col, vec_ok, q);
      if (col == 0) sKeyOk[stage * kKeys + c] = off[i] >= 0 ? 1 : 0;
    }
  };

  for (int64_t qt = wk.slot; qt < wk.num_qtiles; qt += p.q_ctas) {
    // Q rows and mask words of this tile (zeros for rows of no token).
    for (int x = tid; x < kRows * C::kChunks; x += kThreads) {
      const int r = x / C::kChunks;
      const int c = (x % C::kChunks) * 8;
      copy16<T>(sQ + r * kLd + c, q_src<T>(a, wk, qt * kRows + r, c), vec_ok, q);
    }
    load_mask_rows(sMask, a, wk, qt * kRows, kRows, tid, kThreads);

    // The rows this lane holds: rows g and g + 8 of the warp's 16.
    const int64_t row0 = qt * kRows + warp * 16;
    const FragRows rows = frag_rows(a, wk, row0, g);

    // A warp whose 16 rows are all empty (a small tree: T x G under the
    // CTA's rows) skips the math; the skip is warp-uniform, so the collective
    // ldmatrix / mma stay whole-warp. It still copies its share of K/V.
    const bool warp_active = __any_sync(0xffffffffu, rows.tok[0] >= 0 || rows.tok[1] >= 0);

    float o[kDT * 4], m[2], l[2];
#pragma unroll
    for (int e = 0; e < kDT * 4; ++e) o[e] = 0.0f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;

    // Prologue: Q with tile 0 in the first group, then tiles 1 .. kStages - 2.
    int64_t off[C::kCopies];
    key_offsets(0, off);
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < num_tiles) issue(s, off);
      key_offsets(s + 1, off);
      ptx::cp_async_commit();
    }

    for (int j = 0; j < num_tiles; ++j) {
      ptx::cp_async_wait<kStages - 2>();
      __syncthreads();
      if (j + kStages - 1 < num_tiles) {
        issue(j + kStages - 1, off);
        key_offsets(j + kStages, off);
      }
      ptx::cp_async_commit();

      if (!warp_active) continue;
      const int stage = j % kStages;
      const T* k_tile = sK + stage * kKeys * kLd;
      const T* v_tile = sV + stage * kKeys * kLd;
      const int32_t* key_ok = sKeyOk + stage * kKeys;
      // Tree node of the tile's first key (both terms < 2^31: fits int32).
      const int32_t node0 = int32_t(kv_begin + int64_t(j) * kKeys - prefix_keys);

      // S = Q K^T. K rows are B's columns: ldmatrix (not transposed) of keys
      // 16 n..16 n + 15 gives two n-tiles' b0/b1.
      float s[kNT * 4];
#pragma unroll
      for (int e = 0; e < kNT * 4; ++e) s[e] = 0.0f;
      // Fully unrolled up to D = 128; at D = 256 (O is 128 registers) by 2, or sm_90a spills.
#pragma unroll(D == 256 ? 2 : D / 16)
      for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t qa[4];
        ptx::ldmatrix_x4(qa, sQ + (warp * 16 + lane % 16) * kLd + ks * 16 + (lane / 16) * 8);
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          uint32_t kb[4];
          ptx::ldmatrix_x4(kb, k_tile + (np * 16 + (lane / 16) * 8 + lane % 8) * kLd + ks * 16 + ((lane / 8) % 2) * 8);
          ptx::mma_16816<T>(s + 4 * (2 * np), qa, kb[0], kb[1]);
          ptx::mma_16816<T>(s + 4 * (2 * np + 1), qa, kb[2], kb[3]);
        }
      }

      // Mask, scale, online softmax; P as the A operand of P V.
      softmax_tile<kNT, kDT>(s, o, m, l, rows, a, key_ok, node0, sMask, warp * 16 + g, t4, scale_log2,
                             plain_tile<kKeys>(key_ok, node0, lane));
      uint32_t pa[kKeys / 16][4];
      pack_p<T, kNT>(s, pa);

      // O += P V. V rows are keys: ldmatrix.trans of keys 16 kk.. and columns
      // 16 dp.. gives two n-tiles' b0/b1.
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk)
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t vb[4];
          ptx::ldmatrix_x4_trans(vb, v_tile + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kLd + dp * 16 +
                                         (lane / 16) * 8);
          ptx::mma_16816<T>(o + 4 * (2 * dp), pa[kk], vb[0], vb[1]);
          ptx::mma_16816<T>(o + 4 * (2 * dp + 1), pa[kk], vb[2], vb[3]);
        }
    }
    ptx::cp_async_wait<0>();  // the trailing (empty) groups; no copy is left behind

    store_rows<T, D>(p, wk, rows, row0, o, m, l, g, t4);
    __syncthreads();  // the next query tile overwrites sQ and sMask
  }
}

}  // namespace tree_attn
}  // namespace kernels
}  // namespace specdec

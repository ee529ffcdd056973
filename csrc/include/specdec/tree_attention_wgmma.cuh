// The Hopper tree-attention kernel (fp16 / bf16, sm_90a), FlashAttention-3
// style: S = Q K^T and O += P V are warpgroup MMAs (wgmma.mma_async
// m64nNk16, fp32 accumulation), Q and K read by the tensor cores straight from
// shared memory through matrix descriptors, P fed from registers, V from
// shared memory as an MN-major operand; S, P and O live in registers in the
// same accumulator layout as the mma.sync kernel (tree_attention_mma.cuh), so
// the masking, online softmax and epilogue are the same helpers. The launcher
// (csrc/cuda/tree_attention.cu) picks it on compute capability 9.0 when the
// loaded binary holds sm_90a code; SPECDEC_TREE_ATTENTION_KERNEL overrides.
// Notes and the per-tile model: bench/NOTES.md.
//
// Work decomposition as in the mma.sync kernel: one CTA per (sequence b, KV
// head, KV split, query-tile slot) holds kRows = 16 W rows (i, g): W = 4
// warps (one warpgroup, 64 rows) or 8 (two warpgroups, 128 rows), so a tree
// of T x G <= 128 rows reads every K/V tile of its split once. Warp w owns
// rows [16 w, 16 w + 16), warpgroup w / 4 the 64 rows its wgmma covers.
//
// Shared memory holds Q, K and V in the no-swizzle canonical layout: 8 rows
// x 16 bytes core matrices of 128 contiguous bytes; a group of 8 rows is D / 8
// core matrices side by side (16 D bytes). Q and K are the K-major operands
// (LBO 128 B, SBO 16 D B); the same bytes read as V's MN-major operand are
// LBO 16 D B (next 8 keys) and SBO 128 B (next 8 columns). Copies are dealt
// so that 8 consecutive threads fill one core matrix (8 keys, one 16-byte
// column chunk): conflict-free stores, and a warp still reads 64 contiguous
// bytes of each of 8 key rows.
//
// Per key tile (kKeys keys, stage j % kStages of a cp.async ring; a tile's
// cache offsets are looked up in the block table one tile ahead of its
// copies, one thread per key, into a double buffer in shared memory: every
// copying thread of a key reads it there, and no thread holds 64-bit offsets
// in registers across the math):
//   wait for tile j's copies, fence them to the async proxy, barrier; issue
//   tile j + kStages - 1's copies into the stage tile j - 1 used (its wgmmas
//   were waited for before the barrier); S = Q K^T (D / 16 wgmmas, one commit
//   group, wait); mask, scale, online softmax on the fragments; P rounded to
//   T as the A registers; O += P V (kKeys / 16 wgmmas, wait).
// A warpgroup with no live rows skips the math (warpgroup-uniform, decided
// through shared memory) and still copies its share of K/V.
#pragma once

#include "specdec/ptx.cuh"
#include "specdec/tree_attention_mma.cuh"

namespace specdec {
namespace kernels {
namespace tree_attn {

template <typename T, int D, int W>
struct WgmmaConfig {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "fp16 or bf16");
  static_assert(D == 64 || D == 128 || D == 256, "head dim must be 64, 128 or 256");
  static_assert(W == 4 || (W == 8 && D <= 128), "two warpgroups only up to D = 128 (O at D = 256 is 128 registers)");
  static constexpr int kThreads = 32 * W;
  static constexpr int kRows = 16 * W;
  static constexpr int kKeys = D == 256 ? 32 : 64;  // keys per tile: the N of S's wgmma
  static constexpr int kStages = D == 64 ? 3 : 2;   // so that two CTAs of 4 warps fit an SM (228 KB)
  static constexpr int kChunks = D / 8;             // 16-byte chunks per row
  static constexpr int kGroupElems = 8 * D;         // one 8-row group: D / 8 core matrices
  static constexpr int kCopies = kKeys * kChunks / kThreads;  // K (and V) chunks per thread per tile

  static constexpr size_t kTileBytes = size_t(kKeys) * D * sizeof(T);
  static constexpr size_t kOffQ = 0;
  static constexpr size_t kOffK = align128(size_t(kRows) * D * sizeof(T));
  static constexpr size_t kOffV = kOffK + kStages * kTileBytes;
  static constexpr size_t kOffMask = align128(kOffV + kStages * kTileBytes);
  static constexpr size_t kOffKeyOk = kOffMask + size_t(kRows) * kMaxTreeWords * sizeof(uint32_t);
  static constexpr size_t kOffKeyRow = align128(kOffKeyOk + size_t(kStages) * kKeys * sizeof(int32_t));
  static constexpr size_t kOffLive = kOffKeyRow + size_t(2) * kKeys * sizeof(int64_t);
  static constexpr size_t kSmemBytes = align128(kOffLive + size_t(W) * sizeof(int32_t));

  static_assert((kKeys * kChunks) % kThreads == 0 && kKeys % 16 == 0 && kKeys <= kThreads, "copy mapping");
  static_assert(kTileBytes % 128 == 0, "stages stay 128-byte aligned");
  static_assert(kSmemBytes <= 227 * 1024, "tile does not fit the sm_90 opt-in shared memory");
  static_assert(kSmemBytes + 1024 <= 228 * 1024 / (W == 4 ? 2 : 1), "the launch bounds' CTAs per SM do not fit");
};

// Element offset of row r, column chunk c (8 elements) in the core-matrix layout.
template <int D>
__device__ __forceinline__ int core_offset(int r, int c) {
  return (r / 8) * (8 * D) + c * 64 + (r % 8) * 8;
}

template <typename T, int D, int W>
__global__ void __launch_bounds__(32 * W, W == 4 ? 2 : 1) tree_attention_wgmma_kernel(const Params p) {
#if defined(__CUDA_ARCH__) && !defined(SPECDEC_EMULATED) && !defined(SPECDEC_HAS_WGMMA)
  // Compiled for a target without wgmma: the launcher never picks this build.
  __trap();
#else
  using C = WgmmaConfig<T, D, W>;
  constexpr int kThreads = C::kThreads;
  constexpr int kRows = C::kRows, kKeys = C::kKeys, kStages = C::kStages;
  constexpr int kNT = kKeys / 8;  // 8-key n-tiles of S
  constexpr int kDT = D / 8;      // 8-column n-tiles of O
  constexpr float kLog2e = 1.4426950408889634f;
  constexpr uint32_t kCoreBytes = 128, kGroupBytes = 16 * D;

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
  int64_t* sKeyRow = reinterpret_cast<int64_t*>(smem + C::kOffKeyRow);  // [2][kKeys], by tile parity
  int32_t* sLive = reinterpret_cast<int32_t*>(smem + C::kOffLive);

  const TreeAttentionArgs& a = p.a;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, wg = warp / 4;
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

  // Chunk x of a tile (x = tid + i kThreads): row x % 8 + 8 (x / D), column
  // chunk (x / 8) % (D / 8); 8 consecutive threads fill one core matrix.
  auto chunk_row = [&](int x) { return x % 8 + 8 * (x / (8 * C::kChunks)); };
  auto chunk_col = [&](int x) { return (x / 8) % C::kChunks; };
  // Element offsets of tile `tile`'s keys (-1: invisible), one thread per
  // key, into buffer tile % 2 (read after the next barrier).
  auto key_offsets = [&](int tile) {
    if (tid < kKeys)
      sKeyRow[(tile % 2) * kKeys + tid] =
          tile < num_tiles ? key_row(a, wk, kv_begin + int64_t(tile) * kKeys + tid) : -1;
  };
  auto issue = [&](int tile) {
    const int stage = tile % kStages;
    T* k_dst = sK + stage * kKeys * D;
    T* v_dst = sV + stage * kKeys * D;
    const int64_t* rows_of_tile = sKeyRow + (tile % 2) * kKeys;
    // Unrolled by 2 from D = 128: fully unrolled, the 8 copies' addresses made it spill.
#pragma unroll(D >= 128 ? 2 : C::kCopies)
    for (int i = 0; i < C::kCopies; ++i) {
      const int x = tid + i * kThreads, r = chunk_row(x), c = chunk_col(x);
      const int dst = core_offset<D>(r, c);
      const int64_t off = rows_of_tile[r];
      copy16<T>(k_dst + dst, off < 0 ? nullptr : k_cache + off + 8 * c, vec_ok, q);
      copy16<T>(v_dst + dst, off < 0 ? nullptr : v_cache + off + 8 * c, vec_ok, q);
      if (c == 0) sKeyOk[stage * kKeys + r] = off >= 0 ? 1 : 0;
    }
  };

  // This warpgroup's descriptors: its 64 Q rows; stage 0 of K and of V (a
  // stage is kTileBytes further; a 16-wide k step 32 B of Q / K columns, 16
  // keys of V).
  const uint64_t q_desc = ptx::smem_desc(sQ + wg * 8 * C::kGroupElems, kCoreBytes, kGroupBytes);
  const uint64_t k_desc = ptx::smem_desc(sK, kCoreBytes, kGroupBytes);
  const uint64_t v_desc = ptx::smem_desc(sV, kGroupBytes, kCoreBytes);
  constexpr uint64_t kStageStep = C::kTileBytes >> 4, kColStep = (2 * kCoreBytes) >> 4;
  constexpr uint64_t kKeyStep = (2 * kGroupBytes) >> 4;

  for (int64_t qt = wk.slot; qt < wk.num_qtiles; qt += p.q_ctas) {
    // Q rows (core-matrix layout) and mask words of this tile (zeros for rows of no token).
    for (int x = tid; x < kRows * C::kChunks; x += kThreads) {
      const int r = chunk_row(x), c = chunk_col(x);
      copy16<T>(sQ + core_offset<D>(r, c), q_src<T>(a, wk, qt * kRows + r, 8 * c), vec_ok, q);
    }
    load_mask_rows(sMask, a, wk, qt * kRows, kRows, tid, kThreads);

    const int64_t row0 = qt * kRows + warp * 16;
    const FragRows rows = frag_rows(a, wk, row0, g);
    // A warpgroup whose 64 rows are all empty skips the math; wgmma is
    // warpgroup-wide, so the decision is too.
    const bool warp_live = __any_sync(0xffffffffu, rows.tok[0] >= 0 || rows.tok[1] >= 0);
    if (lane == 0) sLive[warp] = warp_live ? 1 : 0;
    __syncthreads();
    const bool wg_active = (sLive[4 * wg] | sLive[4 * wg + 1] | sLive[4 * wg + 2] | sLive[4 * wg + 3]) != 0;

    float o[kDT * 4], m[2], l[2];
#pragma unroll
    for (int e = 0; e < kDT * 4; ++e) o[e] = 0.0f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;

    // Prologue: Q with tile 0 in the first group, then tiles 1 .. kStages - 2
    // (each tile's offsets behind a barrier of their own).
    key_offsets(0);
#pragma unroll
    for (int st = 0; st < kStages - 1; ++st) {
      __syncthreads();
      if (st < num_tiles) issue(st);
      key_offsets(st + 1);
      ptx::cp_async_commit();
    }

    for (int j = 0; j < num_tiles; ++j) {
      ptx::cp_async_wait<kStages - 2>();
      ptx::fence_proxy_async();
      __syncthreads();
      if (j + kStages - 1 < num_tiles) {
        issue(j + kStages - 1);
        key_offsets(j + kStages);
      }
      ptx::cp_async_commit();

      if (!wg_active) continue;
      const int stage = j % kStages;
      const int32_t* key_ok = sKeyOk + stage * kKeys;
      // Tree node of the tile's first key (both terms < 2^31: fits int32).
      const int32_t node0 = int32_t(kv_begin + int64_t(j) * kKeys - prefix_keys);

      // S = Q K^T: A = Q (64 rows x 16 columns per step), B = K (kKeys keys x
      // 16 columns). The first step does not accumulate: s needs no zeroing
      // (zeroing it made D = 128 spill 4 bytes), and it is dead outside the tile.
      float s[kNT * 4];
      ptx::wgmma_fence();
      // The first step peeled and the rest fully unrolled: a partly unrolled
      // loop with a run-time accumulate flag made ptxas serialise every
      // wgmma at D = 256 (C7520; check_sass counts the waits).
      ptx::wgmma_ss<T, kKeys>(s, q_desc, k_desc + stage * kStageStep, false);
#pragma unroll
      for (int ks = 1; ks < D / 16; ++ks)
        ptx::wgmma_ss<T, kKeys>(s, q_desc + ks * kColStep, k_desc + stage * kStageStep + ks * kColStep, true);
      ptx::wgmma_commit();
      ptx::wgmma_wait<0>();
      ptx::fence_regs(s);

      softmax_tile<kNT, kDT>(s, o, m, l, rows, a, key_ok, node0, sMask, warp * 16 + g, t4, scale_log2,
                             plain_tile<kKeys>(key_ok, node0, lane));
      uint32_t pa[kKeys / 16][4];
      pack_p<T, kNT>(s, pa);

      // O += P V: A = P (registers, 16 keys per step), B = V (16 keys x D columns, MN-major).
      ptx::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk)
        ptx::wgmma_rs<T, D>(o, pa[kk], v_desc + stage * kStageStep + kk * kKeyStep, true);
      ptx::wgmma_commit();
      ptx::wgmma_wait<0>();
      ptx::fence_regs(o);
    }
    ptx::cp_async_wait<0>();  // the trailing (empty) groups; no copy is left behind

    store_rows<T, D>(p, wk, rows, row0, o, m, l, g, t4);
    __syncthreads();  // the next query tile overwrites sQ, sMask and sLive
  }
#endif
}

}  // namespace tree_attn
}  // namespace kernels
}  // namespace specdec

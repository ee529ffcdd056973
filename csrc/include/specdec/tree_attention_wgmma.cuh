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
// Warp specialisation. Warpgroup 0 is the producer: it gives registers back
// (setmaxnreg.dec), and its first warp looks up the block table and streams
// Q, the mask rows and the K/V tiles into shared memory with cp.async; the
// other three warps leave. Warpgroups 1 .. kConsumers take the registers
// (setmaxnreg.inc) and only do math. A kStages-deep ring of K/V stages is
// handed over through mbarriers: full[s] completes when the producer's copies
// of the tile in stage s have landed (cp.async.mbarrier.arrive) and its flag
// stores are released (mbarrier.arrive); empty[s] when every consumer thread
// is done with it (its wgmmas waited for). Q and the mask rows have their own
// pair (q_full, q_empty), as a CTA may loop over several query tiles. The
// producer runs up to kStages tiles ahead of the slowest consumer warpgroup;
// block-table lookups run one tile ahead of their copies.
//
// Work decomposition as in the mma.sync kernel: one CTA per (sequence b, KV
// head, KV split, query-tile slot) holds kRows rows (i, g): 64 (one consumer
// warpgroup), 128 (two) or, up to D = 128, 256 (two consumer warpgroups of two
// 64-row m-tiles each, O of both in registers: the register budget setmaxnreg
// gives the consumers is what lets one CTA hold 256 rows). So a tree of
// T x G <= 256 rows (128 at D = 256) reads every K/V tile of its split once.
// Consumer warpgroup c, m-tile t covers rows 64 (c kMTiles + t) ..; its warp w
// the 16 rows from there + 16 w.
//
// Shared memory holds Q, K and V in the no-swizzle canonical layout: 8 rows
// x 16 bytes core matrices of 128 contiguous bytes; a group of 8 rows is D / 8
// core matrices side by side (16 D bytes). Q and K are the K-major operands
// (LBO 128 B, SBO 16 D B); the same bytes read as V's MN-major operand are
// LBO 16 D B (next 8 keys) and SBO 128 B (next 8 columns). Copies are dealt
// so that 8 consecutive lanes fill one core matrix (8 keys, one 16-byte
// column chunk): conflict-free stores.
//
// Consumer, per key tile j (stage j % kStages): wait full; fence the landed
// copies to the async proxy; per m-tile: S = Q K^T (D / 16 wgmmas, one commit
// group, wait); mask, scale, online softmax on the fragments; P rounded to T
// as the A registers; O += P V (kKeys / 16 wgmmas, wait); then arrive empty.
// An m-tile with no rows (past the tree's rows) skips the math; the decision
// is warpgroup-uniform (from row indices only), as wgmma needs.
#pragma once

#include "specdec/ptx.cuh"
#include "specdec/tree_attention_mma.cuh"

namespace specdec {
namespace kernels {
namespace tree_attn {

template <typename T, int D, int R>
struct WgmmaConfig {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "fp16 or bf16");
  static_assert(D == 64 || D == 128 || D == 256, "head dim must be 64, 128 or 256");
  // At D = 256 O is 128 registers per m-tile: one m-tile per consumer
  // warpgroup, and not the 64-row variant (two CTAs per SM leave too few).
  static_assert(R == 128 || D <= 128, "D = 256 runs 128 rows per CTA");
  static constexpr int kRows = R;
  static constexpr int kConsumers = R == 64 ? 1 : 2;        // consumer warpgroups
  static constexpr int kMTiles = R / (64 * kConsumers);      // 64-row m-tiles per consumer warpgroup
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // 64 rows: two CTAs per SM (one consumer warpgroup each); else one.
  static constexpr int kCtasPerSm = R == 64 ? 2 : 1;
  // Registers: the launch gives every thread 65536 / (kThreads kCtasPerSm)
  // (128 or 168); the producer keeps kProducerRegs, the consumers take the rest.
  static constexpr int kLaunchRegs = 65536 / (kThreads * kCtasPerSm) / 8 * 8;
  static constexpr int kProducerRegs = 56;
  static constexpr int kConsumerRegs =
      (kLaunchRegs * kThreads - kProducerRegs * 128) / (128 * kConsumers) / 8 * 8;
  // Keys per tile (the N of S's wgmma): 32 where the consumers' registers
  // are tight (O 128 registers per thread at D = 256 or with two m-tiles at
  // D = 128; 200 registers at 64 rows, D = 128), so S and P fit beside O with
  // no spill (ptxas -v, checked by tools/check_sass.py); else 64.
  static constexpr int kKeys = (D == 256 || R == 256 || (R == 64 && D == 128)) ? 32 : 64;
  static constexpr int kChunks = D / 8;             // 16-byte chunks per row
  static constexpr int kGroupElems = 8 * D;         // one 8-row group: D / 8 core matrices
  static constexpr int kCopies = kKeys * kChunks / 32;  // K (and V) chunks per producer lane per tile

  static constexpr size_t kTileBytes = size_t(kKeys) * D * sizeof(T);
  static constexpr size_t kQBytes = align128(size_t(kRows) * D * sizeof(T));
  static constexpr size_t kMaskBytes = size_t(kRows) * kMaxTreeWords * sizeof(uint32_t);
  static constexpr size_t kKeyRowBytes = size_t(2) * kKeys * sizeof(int64_t);
  // Per stage: K and V tiles, the key flags, two mbarriers.
  static constexpr size_t kStageBytes = 2 * kTileBytes + kKeys * sizeof(int32_t) + 2 * sizeof(uint64_t);
  static constexpr size_t kFixedBytes = kQBytes + kMaskBytes + kKeyRowBytes + 2 * sizeof(uint64_t) + 3 * 128;
  // As many stages as fit (2 .. 4): 227 KB per CTA, 228 KB per SM less 1 KB per CTA.
  static constexpr size_t kBudget = (228 * 1024) / kCtasPerSm - 1024;
  static constexpr int kStages = (kBudget - kFixedBytes) / kStageBytes >= 4 ? 4 : int((kBudget - kFixedBytes) / kStageBytes);

  static constexpr size_t kOffQ = 0;
  static constexpr size_t kOffK = kQBytes;
  static constexpr size_t kOffV = kOffK + kStages * kTileBytes;
  static constexpr size_t kOffMask = align128(kOffV + kStages * kTileBytes);
  static constexpr size_t kOffKeyOk = kOffMask + kMaskBytes;
  static constexpr size_t kOffKeyRow = align128(kOffKeyOk + size_t(kStages) * kKeys * sizeof(int32_t));
  static constexpr size_t kOffBars = kOffKeyRow + kKeyRowBytes;  // full[kStages], empty[kStages], q_full, q_empty
  static constexpr size_t kSmemBytes = align128(kOffBars + (2 * size_t(kStages) + 2) * sizeof(uint64_t));

  static_assert(kStages >= 2, "fewer than two K/V stages fit");
  static_assert(kConsumerRegs >= 192 && kConsumerRegs <= 256, "consumer register budget");
  static_assert((kKeys * kChunks) % 32 == 0 && kKeys % 16 == 0 && kKeys <= 64, "copy mapping");
  static_assert(kTileBytes % 128 == 0, "stages stay 128-byte aligned");
  static_assert(kSmemBytes <= kBudget && kSmemBytes <= 227 * 1024, "tile does not fit the planned CTAs per SM");
};

// Element offset of row r, column chunk c (8 elements) in the core-matrix layout.
template <int D>
__device__ __forceinline__ int core_offset(int r, int c) {
  return (r / 8) * (8 * D) + c * 64 + (r % 8) * 8;
}

// The producer warp: Q and the mask rows of each query tile,
// then every K/V tile of the split into the ring. `it` counts tiles over the
// CTA's query tiles (stage it % kStages, round it / kStages).
template <typename T, int D, int R>
__device__ __forceinline__ void produce(const Params& p, const CtaWork& wk, int num_tiles, unsigned char* smem) {
  using C = WgmmaConfig<T, D, R>;
  const int lane = threadIdx.x % 32;  // read here, not kept live across the setmaxnreg
  constexpr int kKeys = C::kKeys, kStages = C::kStages;
  const TreeAttentionArgs& a = p.a;
  T* sQ = reinterpret_cast<T*>(smem + C::kOffQ);
  T* sK = reinterpret_cast<T*>(smem + C::kOffK);
  T* sV = reinterpret_cast<T*>(smem + C::kOffV);
  uint32_t* sMask = reinterpret_cast<uint32_t*>(smem + C::kOffMask);
  int32_t* sKeyOk = reinterpret_cast<int32_t*>(smem + C::kOffKeyOk);
  int64_t* sKeyRow = reinterpret_cast<int64_t*>(smem + C::kOffKeyRow);  // [2][kKeys], by tile parity
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + C::kOffBars);
  uint64_t* empty = full + kStages;
  uint64_t* q_full = empty + kStages;
  uint64_t* q_empty = q_full + 1;
  const T* q = static_cast<const T*>(a.q);
  const T* k_cache = static_cast<const T*>(a.k_cache);
  const T* v_cache = static_cast<const T*>(a.v_cache);
  const bool vec_ok = p.vec_ok != 0;
  const int64_t kv_begin = wk.kv_begin;

  // Chunk x of a tile or of Q: row x % 8 + 8 (x / D), column chunk
  // (x / 8) % (D / 8); 8 consecutive lanes fill one core matrix.
  auto chunk_row = [](int x) { return x % 8 + 8 * (x / (8 * C::kChunks)); };
  auto chunk_col = [](int x) { return (x / 8) % C::kChunks; };
  // Cache offsets of tile `tile`'s keys (-1: invisible) into buffer `buf`.
  auto key_offsets = [&](int tile, int buf) {
    for (int k = lane; k < kKeys; k += 32)
      sKeyRow[buf * kKeys + k] = key_row(a, wk, kv_begin + int64_t(tile) * kKeys + k);
  };

  uint32_t it = 0;
  int round = 0;
  for (int64_t qt = wk.slot; qt < wk.num_qtiles; qt += p.q_ctas, ++round) {
    // The consumers are done with the previous query tile's Q and mask rows.
    ptx::mbarrier_wait(q_empty, (round & 1) ^ 1);
    for (int x = lane; x < R * C::kChunks; x += 32) {
      const int r = chunk_row(x), c = chunk_col(x);
      copy16<T>(sQ + core_offset<D>(r, c), q_src<T>(a, wk, qt * R + r, 8 * c), vec_ok, q);
    }
    load_mask_rows(sMask, a, wk, qt * R, R, lane, 32);
    ptx::cp_async_mbarrier_arrive(q_full);
    ptx::mbarrier_arrive(q_full);

    if (num_tiles > 0) key_offsets(0, it % 2);
    for (int j = 0; j < num_tiles; ++j, ++it) {
      const int stage = int(it % kStages), buf = int(it % 2);
      __syncwarp();  // the tile's offsets, written by every lane, are read by every lane
      ptx::mbarrier_wait(&empty[stage], ((it / kStages) & 1) ^ 1);
      T* k_dst = sK + stage * kKeys * D;
      T* v_dst = sV + stage * kKeys * D;
      const int64_t* rows_of_tile = sKeyRow + buf * kKeys;
#pragma unroll 4
      for (int i = 0; i < C::kCopies; ++i) {
        const int x = lane + 32 * i, r = chunk_row(x), c = chunk_col(x);
        const int dst = core_offset<D>(r, c);
        const int64_t off = rows_of_tile[r];
        copy16<T>(k_dst + dst, off < 0 ? nullptr : k_cache + off + 8 * c, vec_ok, q);
        copy16<T>(v_dst + dst, off < 0 ? nullptr : v_cache + off + 8 * c, vec_ok, q);
      }
      for (int k = lane; k < kKeys; k += 32) sKeyOk[stage * kKeys + k] = rows_of_tile[k] >= 0 ? 1 : 0;
      // The next tile's lookups overlap this tile's copies; its buffer was
      // last read by tile j - 1's copies, before the __syncwarp above.
      if (j + 1 < num_tiles) key_offsets(j + 1, buf ^ 1);
      ptx::cp_async_mbarrier_arrive(&full[stage]);
      ptx::mbarrier_arrive(&full[stage]);
    }
  }
  ptx::cp_async_wait<0>();  // nothing is left in flight (the barriers already track every copy)
}

// A consumer warpgroup: every key tile
// of the split for its kMTiles m-tiles of each query tile.
template <typename T, int D, int R>
__device__ __forceinline__ void consume(const Params& p, const CtaWork& wk, int num_tiles, unsigned char* smem) {
  using C = WgmmaConfig<T, D, R>;
  const int ctid = int(threadIdx.x) - 128;  // thread of the consumers (read here, as in produce)
  constexpr int kKeys = C::kKeys, kStages = C::kStages, kMT = C::kMTiles;
  constexpr int kNT = kKeys / 8;  // 8-key n-tiles of S
  constexpr int kDT = D / 8;      // 8-column n-tiles of O
  constexpr float kLog2e = 1.4426950408889634f;
  constexpr uint32_t kCoreBytes = 128, kGroupBytes = 16 * D;
  const TreeAttentionArgs& a = p.a;
  T* sQ = reinterpret_cast<T*>(smem + C::kOffQ);
  T* sK = reinterpret_cast<T*>(smem + C::kOffK);
  T* sV = reinterpret_cast<T*>(smem + C::kOffV);
  const uint32_t* sMask = reinterpret_cast<const uint32_t*>(smem + C::kOffMask);
  const int32_t* sKeyOk = reinterpret_cast<const int32_t*>(smem + C::kOffKeyOk);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + C::kOffBars);
  uint64_t* empty = full + kStages;
  uint64_t* q_full = empty + kStages;
  uint64_t* q_empty = q_full + 1;

  const int cw = ctid / 128, lane = ctid % 32, cwarp = (ctid / 32) % 4;
  const int g = lane / 4, t4 = lane % 4;
  const int64_t kv_begin = wk.kv_begin, prefix_keys = wk.prefix_keys;
  const float scale_log2 = a.sm_scale * kLog2e;

  // Descriptors: Q of m-tile 0 (m-tile t is 8 row groups further); stage 0
  // of K and of V (a stage is kTileBytes further; a 16-wide k step 32 B of
  // Q / K columns, 16 keys of V).
  const uint64_t q_desc = ptx::smem_desc(sQ + cw * kMT * 8 * C::kGroupElems, kCoreBytes, kGroupBytes);
  const uint64_t k_desc = ptx::smem_desc(sK, kCoreBytes, kGroupBytes);
  const uint64_t v_desc = ptx::smem_desc(sV, kGroupBytes, kCoreBytes);
  constexpr uint64_t kStageStep = C::kTileBytes >> 4, kColStep = (2 * kCoreBytes) >> 4;
  constexpr uint64_t kKeyStep = (2 * kGroupBytes) >> 4, kMTileStep = (8 * kGroupBytes) >> 4;

  uint32_t it = 0;
  int round = 0;
  for (int64_t qt = wk.slot; qt < wk.num_qtiles; qt += p.q_ctas, ++round) {
    FragRows rows[kMT];
    int64_t row0[kMT];
    bool live[kMT];
    float o[kMT][kDT * 4], m[kMT][2], l[kMT][2];
#pragma unroll
    for (int t = 0; t < kMT; ++t) {
      const int64_t tile_row0 = qt * R + 64 * (cw * kMT + t);
      row0[t] = tile_row0 + 16 * cwarp;
      rows[t] = frag_rows(a, wk, row0[t], g);
      live[t] = tile_row0 < wk.num_rows;  // warpgroup-uniform
#pragma unroll
      for (int e = 0; e < kDT * 4; ++e) o[t][e] = 0.0f;
      m[t][0] = m[t][1] = -INFINITY;
      l[t][0] = l[t][1] = 0.0f;
    }
    ptx::mbarrier_wait(q_full, round & 1);
    ptx::fence_proxy_async();  // Q landed through the generic proxy; wgmma reads it through the async one

    for (int j = 0; j < num_tiles; ++j, ++it) {
      const int stage = int(it % kStages);
      ptx::mbarrier_wait(&full[stage], (it / kStages) & 1);
      ptx::fence_proxy_async();
      const int32_t* key_ok = sKeyOk + stage * kKeys;
      // Tree node of the tile's first key (both terms < 2^31: fits int32).
      const int32_t node0 = int32_t(kv_begin + int64_t(j) * kKeys - prefix_keys);
      const bool plain = plain_tile<kKeys>(key_ok, node0, lane);
#pragma unroll
      for (int t = 0; t < kMT; ++t) {
        if (!live[t]) continue;
        // S = Q K^T: A = Q (64 rows x 16 columns per step), B = K (kKeys keys
        // x 16 columns). The first step does not accumulate (s needs no
        // zeroing), peeled so the rest unrolls fully: a partly unrolled loop
        // with a run-time accumulate flag made ptxas serialise every wgmma at
        // D = 256 (C7520; check_sass counts the waits).
        float s[kNT * 4];
        const uint64_t qd = q_desc + t * kMTileStep, kd = k_desc + stage * kStageStep;
        ptx::wgmma_fence();
        ptx::wgmma_ss<T, kKeys>(s, qd, kd, false);
#pragma unroll
        for (int ks = 1; ks < D / 16; ++ks) ptx::wgmma_ss<T, kKeys>(s, qd + ks * kColStep, kd + ks * kColStep, true);
        ptx::wgmma_commit();
        ptx::wgmma_wait<0>();
        ptx::fence_regs(s);

        softmax_tile<kNT, kDT>(s, o[t], m[t], l[t], rows[t], a, key_ok, node0, sMask,
                               64 * (cw * kMT + t) + 16 * cwarp + g, t4, scale_log2, plain);
        uint32_t pa[kKeys / 16][4];
        pack_p<T, kNT>(s, pa);

        // O += P V: A = P (registers, 16 keys per step), B = V (16 keys x D columns, MN-major).
        ptx::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk)
          ptx::wgmma_rs<T, D>(o[t], pa[kk], v_desc + stage * kStageStep + kk * kKeyStep, true);
        ptx::wgmma_commit();
        ptx::wgmma_wait<0>();
        ptx::fence_regs(o[t]);
      }
      ptx::mbarrier_arrive(&empty[stage]);  // its wgmmas are complete, its flags read
    }
    ptx::mbarrier_arrive(q_empty);  // Q and the mask rows are read (the last wgmma was waited for)
#pragma unroll
    for (int t = 0; t < kMT; ++t) store_rows<T, D>(p, wk, rows[t], row0[t], o[t], m[t], l[t], g, t4);
  }
}

template <typename T, int D, int R>
__global__ void __launch_bounds__(WgmmaConfig<T, D, R>::kThreads, WgmmaConfig<T, D, R>::kCtasPerSm)
    tree_attention_wgmma_kernel(const Params p) {
#if defined(__CUDA_ARCH__) && !defined(SPECDEC_EMULATED) && !defined(SPECDEC_HAS_WGMMA)
  // Compiled for a target without wgmma: the launcher never picks this build.
  __trap();
#else
  using C = WgmmaConfig<T, D, R>;
  if (int64_t(blockIdx.x) >= p.main_ctas) {
    // The fill role is written for tree_attn::kThreads; extra warps leave whole.
    if (threadIdx.x < tree_attn::kThreads) fill_uncovered<T>(p, int64_t(blockIdx.x) - p.main_ctas);
    return;
  }
  extern __shared__ __align__(128) unsigned char smem[];
  CtaWork wk;
  if (!cta_work(p, R, C::kKeys, &wk)) return;
  const int num_tiles = wk.kv_begin < wk.kv_end ? int((wk.kv_end - wk.kv_begin + C::kKeys - 1) / C::kKeys) : 0;
  const int tid = threadIdx.x;
  if (tid == 0) {
    uint64_t* bars = reinterpret_cast<uint64_t*>(smem + C::kOffBars);
    for (int s = 0; s < C::kStages; ++s) {
      ptx::mbarrier_init(&bars[s], 32);                             // full: the producer warp's lanes
      ptx::mbarrier_init(&bars[C::kStages + s], 128 * C::kConsumers);  // empty: every consumer thread
    }
    ptx::mbarrier_init(&bars[2 * C::kStages], 32);
    ptx::mbarrier_init(&bars[2 * C::kStages + 1], 128 * C::kConsumers);
  }
  __syncthreads();  // the barriers are initialised; no block-wide barrier follows (warps leave)
  if (tid < 128) {
    ptx::setmaxnreg_dec<C::kProducerRegs>();
    if (tid < 32) produce<T, D, R>(p, wk, num_tiles, smem);
    return;
  }
  ptx::setmaxnreg_inc<C::kConsumerRegs>();
  consume<T, D, R>(p, wk, num_tiles, smem);
#endif
}

}  // namespace tree_attn
}  // namespace kernels
}  // namespace specdec

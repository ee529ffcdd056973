// Torch-free launchers of the tree-attention kernels: validate, plan the grid
// and the KV splits from host-known sizes only, launch on the given stream.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

#include "specdec/tree_attention.cuh"
#include "specdec/tree_attention_mma.cuh"
#include "specdec/tree_attention_wgmma.cuh"
#include "specdec/tree_attention_cuda.h"

namespace specdec {
namespace {

namespace ta = kernels::tree_attn;

// A split should own at least this many keys of the block table's reach, so
// its fixed costs (row setup, Q tile, partial write, merge) stay small.
constexpr int64_t kMinKeysPerSplit = 256;
// CTAs that test tokens for "owned by no sequence" in single-split launches.
constexpr int64_t kMaxFillCtas = 64;
constexpr int kMaxCachedDevices = 64;
constexpr int64_t kMaxGrid = std::numeric_limits<int32_t>::max();

struct DeviceInfo {
  int device;
  int sms;
  int smem_optin;
  int cc_major;
  int cc_minor;
};

// The kernel a launch runs, for fp16 / bf16: the wgmma kernel on compute
// capability 9.0 when the loaded binary has sm_90a code (64, 128 or, up to
// D = 128, 256 rows per CTA), else the mma.sync kernel on 8.0+ with 4 or 8
// warps of 16 rows; fp32 and older devices: the CUDA-core kernel. SPECDEC_TREE_ATTENTION_KERNEL = auto | wgmma | mma |
// simt (read once per process) asks for one; a kernel the device or dtype
// cannot run falls back to the next in that order. Rows per query tile,
// shared memory and residency per SM with it.
enum Kind { kSimt = 0, kMma4, kMma8, kWgmma64, kWgmma128, kWgmma256, kKinds };
struct Kernel {
  void (*func)(ta::Params) = nullptr;
  int threads = ta::kThreads;
  int rows_per_tile = 0;
  size_t smem = 0;
  int variant = 0;  // dtype, head dim and kind: an index for per-kernel caches
  bool clusters = false;  // may be launched in thread-block clusters (sm_90)
};
// Most CTAs of one cluster (the portable limit).
constexpr int64_t kMaxCluster = 8;
constexpr int kKernelVariants = 3 * 3 * kKinds;

enum class Choice { kAuto, kWgmma, kMma, kSimt };
Choice requested_kernel() {
  static const Choice c = [] {
    const char* e = std::getenv("SPECDEC_TREE_ATTENTION_KERNEL");
    if (e == nullptr) return Choice::kAuto;
    if (std::strcmp(e, "wgmma") == 0) return Choice::kWgmma;
    if (std::strcmp(e, "mma") == 0) return Choice::kMma;
    if (std::strcmp(e, "simt") == 0) return Choice::kSimt;
    return Choice::kAuto;  // "auto" or anything else
  }();
  return c;
}

// SM count, opt-in shared memory and compute capability of the current
// device, queried once per device (attribute queries do not synchronise).
cudaError_t device_info(DeviceInfo* info) {
  // Minor + 1 is cached: minor 0 is a valid answer, 0 means "not queried".
  static std::atomic<int> cache[kMaxCachedDevices][4];
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const bool cached = dev >= 0 && dev < kMaxCachedDevices;
  int v[4] = {0, 0, 0, 0};
  if (cached) {
    for (int i = 0; i < 4; ++i) v[i] = cache[dev][i].load(std::memory_order_relaxed);
  }
  if (v[0] <= 0 || v[1] <= 0 || v[2] <= 0 || v[3] <= 0) {
    const cudaDeviceAttr attrs[4] = {cudaDevAttrMultiProcessorCount, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                     cudaDevAttrComputeCapabilityMajor, cudaDevAttrComputeCapabilityMinor};
    for (int i = 0; i < 4; ++i) {
      err = cudaDeviceGetAttribute(&v[i], attrs[i], dev);
      if (err != cudaSuccess) return err;
      if (i == 3) ++v[i];
      if (cached) cache[dev][i].store(v[i], std::memory_order_relaxed);
    }
  }
  *info = DeviceInfo{dev, v[0] > 0 ? v[0] : 1, v[1], v[2], v[3] - 1};
  return cudaSuccess;
}

// Raises the kernel's dynamic shared-memory limit once per (kernel variant,
// device): the attribute stays set for the process.
cudaError_t allow_smem(const Kernel& k, const DeviceInfo& info) {
  if (k.smem > size_t(info.smem_optin)) return cudaErrorInvalidValue;
  if (k.smem <= 48 * 1024) return cudaSuccess;
  static std::atomic<bool> done[kMaxCachedDevices][kKernelVariants];
  const bool cached = info.device >= 0 && info.device < kMaxCachedDevices;
  if (cached && done[info.device][k.variant].load(std::memory_order_relaxed)) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(k.func, cudaFuncAttributeMaxDynamicSharedMemorySize, int(k.smem));
  if (err == cudaSuccess && cached) done[info.device][k.variant].store(true, std::memory_order_relaxed);
  return err;
}

// Resident CTAs per SM of `k` (registers, shared memory, threads), once per
// (kernel variant, device). The limit is raised first: the query counts
// against the function's current one.
cudaError_t ctas_per_sm(const Kernel& k, const DeviceInfo& info, int* out) {
  static std::atomic<int> cache[kMaxCachedDevices][kKernelVariants];
  const bool cached = info.device >= 0 && info.device < kMaxCachedDevices;
  int v = cached ? cache[info.device][k.variant].load(std::memory_order_relaxed) : 0;
  if (v <= 0) {
    cudaError_t err = allow_smem(k, info);
    if (err != cudaSuccess) return err;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, k.func, k.threads, k.smem);
    if (err != cudaSuccess) return err;
    v = std::max(v, 1);
    if (cached) cache[info.device][k.variant].store(v, std::memory_order_relaxed);
  }
  *out = v;
  return cudaSuccess;
}

template <typename T, int D>
struct Tag {
  using type = T;
  static constexpr int dim = D;
};

template <typename T, typename F>
cudaError_t dispatch_dim(int64_t head_dim, F& f) {
#ifdef SPECDEC_ONLY_HEAD_DIM
  // The CPU harness's mutation builds (csrc/tests/emu/mutation_test.py) run the
  // test's --subset, all at one head dim: instantiating only it cuts each
  // build's compile to about a third.
  if (head_dim != SPECDEC_ONLY_HEAD_DIM) return cudaErrorInvalidValue;
  return f(Tag<T, SPECDEC_ONLY_HEAD_DIM>{});
#else
  switch (head_dim) {
    case 64: return f(Tag<T, 64>{});
    case 128: return f(Tag<T, 128>{});
    case 256: return f(Tag<T, 256>{});
    default: return cudaErrorInvalidValue;
  }
#endif
}

// Calls f(Tag<T, D>{}) for the arguments' dtype and head dim.
template <typename F>
cudaError_t dispatch(const TreeAttentionArgs& a, F&& f) {
  switch (a.dtype) {
    case DType::kFloat16: return dispatch_dim<__half>(a.head_dim, f);
    case DType::kBFloat16: return dispatch_dim<__nv_bfloat16>(a.head_dim, f);
    case DType::kFloat32: return dispatch_dim<float>(a.head_dim, f);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t validate(const TreeAttentionArgs& a) {
  const int64_t kMaxInt = std::numeric_limits<int32_t>::max();
  if (a.dtype != DType::kFloat16 && a.dtype != DType::kBFloat16 && a.dtype != DType::kFloat32)
    return cudaErrorInvalidValue;
  if (a.head_dim != 64 && a.head_dim != 128 && a.head_dim != 256) return cudaErrorInvalidValue;
  if (a.num_q_heads <= 0 || a.num_kv_heads <= 0 || a.num_q_heads % a.num_kv_heads != 0 ||
      a.num_q_heads > kMaxInt)
    return cudaErrorInvalidValue;
  if (a.num_tokens < 0 || a.num_tokens > kMaxInt || a.batch < 0 || a.batch > kMaxInt)
    return cudaErrorInvalidValue;
  if (a.num_tokens == 0) return cudaSuccess;
  if (a.q == nullptr || a.out == nullptr || a.lse == nullptr) return cudaErrorInvalidValue;
  if (a.batch > 0) {
    if (a.qo_indptr == nullptr || a.prefix_lens == nullptr) return cudaErrorInvalidValue;
    if (a.max_blocks > 0 && a.block_table == nullptr) return cudaErrorInvalidValue;
    if (a.num_blocks > 0 && (a.k_cache == nullptr || a.v_cache == nullptr)) return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

// Index of (dtype, head dim, kind) for the per-kernel caches.
template <typename T, int D>
int variant_of(Kind kind) {
  constexpr int kDtype = std::is_same<T, __half>::value ? 0 : std::is_same<T, float>::value ? 2 : 1;
  return kKinds * (kDtype * 3 + (D == 64 ? 0 : D == 128 ? 1 : 2)) + kind;
}

// A tensor-core kernel with its configuration Cfg (kThreads, kRows, kSmemBytes).
template <typename T, int D, typename Cfg>
Kernel make_kernel(void (*func)(ta::Params), Kind kind) {
  Kernel k;
  k.func = func;
  k.threads = Cfg::kThreads;
  k.rows_per_tile = Cfg::kRows;
  k.smem = Cfg::kSmemBytes;
  k.variant = variant_of<T, D>(kind);
  k.clusters = kind == kWgmma64 || kind == kWgmma128 || kind == kWgmma256;
  return k;
}

// Whether the loaded binary of `func` was compiled for sm_90a (wgmma): its
// PTX and SASS versions are 9.0 (an sm_80-only build JIT-compiled for the
// device reports PTX 8.0). Once per device: every kernel of this file is
// built for the same architectures.
bool has_sm90a_code(const void* func, const DeviceInfo& info) {
  static std::atomic<int> cache[kMaxCachedDevices];  // 0 unknown, 1 no, 2 yes
  const bool cached = info.device >= 0 && info.device < kMaxCachedDevices;
  int v = cached ? cache[info.device].load(std::memory_order_relaxed) : 0;
  if (v == 0) {
    cudaFuncAttributes attr{};
    v = cudaFuncGetAttributes(&attr, func) == cudaSuccess && attr.ptxVersion >= 90 && attr.binaryVersion >= 90 ? 2 : 1;
    (void)cudaGetLastError();
    if (cached) cache[info.device].store(v, std::memory_order_relaxed);
  }
  return v == 2;
}

// The kernels that may run a tree of `rows_per_seq` rows (T x G), best
// first: one, except on sm_90a for trees of more than 128 rows up to D = 128,
// where one 256-row CTA per (sequence, KV head) reads the prefix once and two
// 128-row CTAs fill twice as many SMs (the re-read is an L2 hit: the two run
// side by side); make_plan keeps the cheaper plan. Returns how many it wrote.
template <typename T, int D>
int pick_kernels(const DeviceInfo& info, int64_t rows_per_seq, Kernel (&out)[2]) {
  if constexpr (!std::is_same<T, float>::value) {
    const Choice want = requested_kernel();
    if (want != Choice::kSimt && want != Choice::kMma && info.cc_major == 9 && info.cc_minor == 0 &&
        has_sm90a_code(reinterpret_cast<const void*>(ta::tree_attention_wgmma_kernel<T, D, 128>), info)) {
      const Kernel k128 =
          make_kernel<T, D, ta::WgmmaConfig<T, D, 128>>(ta::tree_attention_wgmma_kernel<T, D, 128>, kWgmma128);
      if constexpr (D <= 128) {
        if (rows_per_seq <= 64) {
          out[0] = make_kernel<T, D, ta::WgmmaConfig<T, D, 64>>(ta::tree_attention_wgmma_kernel<T, D, 64>, kWgmma64);
          return 1;
        }
        if (rows_per_seq > 128) {
          out[0] =
              make_kernel<T, D, ta::WgmmaConfig<T, D, 256>>(ta::tree_attention_wgmma_kernel<T, D, 256>, kWgmma256);
          out[1] = k128;
          return 2;
        }
      }
      out[0] = k128;
      return 1;
    }
    if (want != Choice::kSimt && info.cc_major >= 8) {
      // 8 warps (128 rows) fit shared memory and registers up to D = 128.
      if (D <= 128 && rows_per_seq > 64) {
        out[0] = make_kernel<T, D, ta::MmaConfig<T, D, D <= 128 ? 8 : 4>>(
            ta::tree_attention_mma_kernel<T, D, D <= 128 ? 8 : 4>, kMma8);
      } else {
        out[0] = make_kernel<T, D, ta::MmaConfig<T, D, 4>>(ta::tree_attention_mma_kernel<T, D, 4>, kMma4);
      }
      return 1;
    }
  }
  Kernel k;
  k.func = ta::tree_attention_kernel<T, D>;
  k.rows_per_tile = ta::Config<T, D>::kRows;
  k.smem = ta::Config<T, D>::kSmemBytes;
  k.variant = variant_of<T, D>(kSimt);
  out[0] = k;
  return 1;
}

struct Plan {
  Kernel kernel;
  int splits = 1;
  int q_ctas = 1;
  int64_t main_ctas = 0;
  int fill_ctas = 0;
  int64_t rows = 0;      // N * Hq
  size_t workspace = 0;  // bytes
  int cluster = 1;       // CTAs per thread-block cluster: the query tiles of one (sequence, KV head, split)
};

int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }

// Flops per byte at which mma.sync fp16/bf16 work takes as long as HBM
// traffic on A100 (312 TFLOP/s, 2.0 TB/s) and H100/H200 with mma.sync (about
// 500 of the 990 dense TFLOP/s wgmma reaches, 3.35-4.8 TB/s): about 150.
constexpr double kRidgeFlopsPerByte = 150.0;

// KV splits (flash-decoding partitions) for `ctas` CTAs per split, `slots`
// resident CTAs (one wave), `sms` SMs. The cost of s splits, in bytes, is
//   max(KV bytes + partial bytes(s), flops / ridge) / min(1, ctas s / sms):
// the KV is read once whatever s is; each split adds its fp32 partials (a
// write and the merge's read); more splits keep more SMs busy, up to all of
// them. The cheapest s with ctas s <= slots (never a second partial wave),
// at most one per kMinKeysPerSplit keys of the reach, at most
// kTreeAttentionMaxSplits; ties go to fewer splits. `fixed` > 0: that many
// splits, only costed. *cost_out: the plan's cost.
int plan_splits(const TreeAttentionArgs& a, size_t elem, int64_t ctas, int64_t slots, int sms, int fixed,
                double* cost_out) {
  const int64_t reach = (a.max_blocks > 0 && a.block_size > 0) ? a.max_blocks * a.block_size : 0;
  // The reach bounds every prefix; the average tree is added to it.
  const double keys = double(reach) + double(a.num_tokens) / double(std::max<int64_t>(a.batch, 1));
  const double kv_bytes = double(a.batch) * double(a.num_kv_heads) * keys * double(a.head_dim) * 2.0 * double(elem);
  const double flops = 4.0 * double(a.num_tokens) * double(a.num_q_heads) * keys * double(a.head_dim);
  const double partial_bytes = double(a.num_tokens) * double(a.num_q_heads) * double(a.head_dim + 1) * 4.0 * 2.0;
  int64_t max_s = std::min<int64_t>(kTreeAttentionMaxSplits, std::max<int64_t>(1, reach / kMinKeysPerSplit));
  max_s = std::min<int64_t>(max_s, std::max<int64_t>(1, slots / std::max<int64_t>(ctas, 1)));
  const int64_t lo = fixed > 0 ? fixed : 1, hi = fixed > 0 ? fixed : max_s;
  int best = int(lo);
  double best_cost = 0.0;
  for (int64_t s = lo; s <= hi; ++s) {
    const double bytes = kv_bytes + (s > 1 ? double(s) * partial_bytes : 0.0);
    const double busy = std::min(1.0, double(ctas * s) / double(sms));
    const double cost = std::max(bytes, flops / kRidgeFlopsPerByte) / busy;
    if (s == lo || cost < best_cost * (1.0 - 1e-9)) {
      best = int(s);
      best_cost = cost;
    }
  }
  *cost_out = best_cost;
  return best;
}

// Grid and splits from host-known sizes (valid arguments, N > 0). `splits`
// <= 0: plan_splits.
cudaError_t make_plan(const TreeAttentionArgs& a, const DeviceInfo& info, int splits, Plan* plan) {
  Plan p;
  const int64_t n = a.num_tokens;
  const int64_t group = a.num_q_heads / a.num_kv_heads;
  p.rows = n * a.num_q_heads;
  if (a.batch > 0) {
    // Query-tile CTAs per (sequence, KV head, split): enough for the average
    // tree (exact when all trees have the same size); longer trees loop.
    const int64_t t_cap = std::min<int64_t>(n, kMaxTreeLen);
    const int64_t t_avg = std::min<int64_t>(ceil_div(n, a.batch), t_cap);
    Kernel candidates[2];
    int num_candidates = 1;
    dispatch(a, [&](auto tag) {
      using Tg = decltype(tag);
      num_candidates = pick_kernels<typename Tg::type, Tg::dim>(info, t_avg * group, candidates);
      return cudaSuccess;
    });
    double best_cost = 0.0;
    int best_splits = 0;
    for (int c = 0; c < num_candidates; ++c) {
      const Kernel& k = candidates[c];
      const int64_t q_max = ceil_div(t_cap * group, k.rows_per_tile);
      const int64_t q_ctas = std::max<int64_t>(1, std::min<int64_t>(ceil_div(t_avg * group, k.rows_per_tile), q_max));
      if (double(a.batch) * double(a.num_kv_heads) * double(q_ctas) > double(kMaxGrid)) continue;
      const int64_t ctas = a.batch * a.num_kv_heads * q_ctas;
      int per_sm = 1;
      const cudaError_t err = ctas_per_sm(k, info, &per_sm);
      if (err != cudaSuccess) return err;
      double cost = 0.0;
      const int s = plan_splits(a, a.dtype == DType::kFloat32 ? 4 : 2, ctas, int64_t(per_sm) * info.sms, info.sms,
                                splits, &cost);
      // Ties (within 1 %) go to the first candidate: fewer CTAs, the prefix read once.
      if (best_splits == 0 || cost < best_cost * 0.99) {
        best_cost = cost;
        best_splits = s;
        p.kernel = k;
        p.q_ctas = int(q_ctas);
        p.main_ctas = ctas;  // times the splits below
      }
    }
    if (best_splits == 0) return cudaErrorInvalidValue;
    splits = best_splits;
    const int64_t ctas = p.main_ctas;
    if (splits > kTreeAttentionMaxSplits) return cudaErrorInvalidValue;
    if (double(ctas) * splits > double(kMaxGrid)) return cudaErrorInvalidValue;
    p.main_ctas = ctas * splits;
  } else {
    splits = 1;  // no sequence: every token is uncovered
    dispatch(a, [&](auto tag) {
      using Tg = decltype(tag);
      Kernel candidates[2];
      pick_kernels<typename Tg::type, Tg::dim>(info, 0, candidates);
      p.kernel = candidates[0];
      return cudaSuccess;
    });
  }
  p.splits = splits;
  // A tree of more rows than one CTA holds takes q_ctas CTAs per (sequence,
  // KV head, split), adjacent in the grid. On sm_90 they are launched as one
  // cluster (or the largest divisor of q_ctas up to kMaxCluster): co-scheduled
  // on one GPC, so they stream the same K/V tiles side by side and every tile
  // after the first CTA's read is an L2 hit; the prefix is read from HBM once.
  if (p.kernel.clusters && p.q_ctas > 1) {
    for (int64_t c = std::min<int64_t>(p.q_ctas, kMaxCluster); c > 1; --c)
      if (p.q_ctas % c == 0) {
        p.cluster = int(c);
        break;
      }
  }
  if (splits > 1) {
    if (ceil_div(p.rows, ta::kMergeRowsPerCta) > kMaxGrid) return cudaErrorInvalidValue;
    p.workspace = size_t(splits) * size_t(p.rows) * size_t(a.head_dim + 1) * sizeof(float);
  } else {
    // A whole number of clusters: the fill CTAs follow the main ones in the grid.
    p.fill_ctas = int(ceil_div(std::min<int64_t>(ceil_div(n, ta::kThreads), kMaxFillCtas), p.cluster) * p.cluster);
  }
  if (p.main_ctas + p.fill_ctas > kMaxGrid) return cudaErrorInvalidValue;
  *plan = p;
  return cudaSuccess;
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

bool vector_loads_ok(const TreeAttentionArgs& a, size_t elem) {
  const int64_t e = int64_t(elem);
  for (int64_t stride : {a.q_stride_token, a.q_stride_head, a.cache_stride_block, a.cache_stride_token,
                         a.cache_stride_head}) {
    if ((stride * e) % 16 != 0) return false;
  }
  return aligned16(a.q) && aligned16(a.k_cache) && aligned16(a.v_cache);
}

template <typename T, int D>
cudaError_t launch(const TreeAttentionArgs& a, const Plan& plan, const DeviceInfo& info, void* workspace,
                   cudaStream_t stream) {
  ta::Params p{};
  p.a = a;
  p.num_splits = plan.splits;
  p.q_ctas = plan.q_ctas;
  p.main_ctas = plan.main_ctas;
  p.fill_ctas = plan.fill_ctas;
  p.vec_ok = vector_loads_ok(a, sizeof(T)) ? 1 : 0;
  if (plan.splits > 1) {
    p.ws_o = static_cast<float*>(workspace);
    p.ws_lse = p.ws_o + size_t(plan.splits) * size_t(plan.rows) * size_t(D);
  }

  const int64_t grid = plan.main_ctas + plan.fill_ctas;
  if (grid > 0) {
    cudaError_t err = allow_smem(plan.kernel, info);
    if (err != cudaSuccess) return err;
    const auto kernel = plan.kernel.func;
    if (plan.cluster > 1) {
      cudaLaunchAttribute attr[1] = {};
      attr[0].id = cudaLaunchAttributeClusterDimension;
      attr[0].val.clusterDim.x = unsigned(plan.cluster);
      attr[0].val.clusterDim.y = attr[0].val.clusterDim.z = 1;
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(unsigned(grid));
      cfg.blockDim = dim3(unsigned(plan.kernel.threads));
      cfg.dynamicSmemBytes = plan.kernel.smem;
      cfg.stream = stream;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      err = cudaLaunchKernelEx(&cfg, kernel, p);
      const cudaError_t last = cudaGetLastError();
      if (err == cudaSuccess) err = last;
    } else {
      kernel<<<unsigned(grid), unsigned(plan.kernel.threads), plan.kernel.smem, stream>>>(p);
      err = cudaGetLastError();
    }
    if (err != cudaSuccess) return err;
  }
  if (plan.splits > 1) {
    const int64_t merge_grid = ceil_div(plan.rows, ta::kMergeRowsPerCta);
    ta::tree_attention_merge_kernel<T, D><<<unsigned(merge_grid), ta::kMergeThreads, 0, stream>>>(p);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

// Plan for `args` on the current device; splits <= 0: the heuristic.
cudaError_t plan_for(const TreeAttentionArgs& a, int splits, DeviceInfo* info, Plan* plan) {
  cudaError_t err = validate(a);
  if (err != cudaSuccess) return err;
  if (a.num_tokens == 0) {
    *plan = Plan{};
    return cudaSuccess;
  }
  err = device_info(info);
  if (err != cudaSuccess) return err;
  return make_plan(a, *info, splits, plan);
}

size_t workspace_bytes_impl(const TreeAttentionArgs& a, int splits, int* num_splits_out) {
  DeviceInfo info{};
  Plan plan;
  if (plan_for(a, splits, &info, &plan) != cudaSuccess) plan = Plan{};
  if (num_splits_out != nullptr) *num_splits_out = plan.splits;
  return plan.workspace;
}

cudaError_t run(const TreeAttentionArgs& a, int splits, void* workspace, size_t workspace_bytes,
                cudaStream_t stream) {
  DeviceInfo info{};
  Plan plan;
  const cudaError_t err = plan_for(a, splits, &info, &plan);
  if (err != cudaSuccess) return err;
  if (a.num_tokens == 0) return cudaSuccess;
  if (plan.workspace > 0 && (workspace == nullptr || workspace_bytes < plan.workspace))
    return cudaErrorInvalidValue;
  return dispatch(a, [&](auto tag) {
    using Tg = decltype(tag);
    return launch<typename Tg::type, Tg::dim>(a, plan, info, workspace, stream);
  });
}

}  // namespace

size_t tree_attention_cuda_workspace_bytes(const TreeAttentionArgs& args, int* num_splits_out) {
  return workspace_bytes_impl(args, 0, num_splits_out);
}

cudaError_t tree_attention_cuda(const TreeAttentionArgs& args, void* workspace, size_t workspace_bytes,
                                cudaStream_t stream) {
  return run(args, 0, workspace, workspace_bytes, stream);
}

size_t tree_attention_cuda_workspace_bytes_for_splits(const TreeAttentionArgs& args, int num_splits) {
  if (num_splits < 1 || num_splits > kTreeAttentionMaxSplits) return 0;
  return workspace_bytes_impl(args, num_splits, nullptr);
}

cudaError_t tree_attention_cuda_with_splits(const TreeAttentionArgs& args, int num_splits, void* workspace,
                                            size_t workspace_bytes, cudaStream_t stream) {
  if (num_splits < 1 || num_splits > kTreeAttentionMaxSplits) return cudaErrorInvalidValue;
  return run(args, num_splits, workspace, workspace_bytes, stream);
}

}  // namespace specdec

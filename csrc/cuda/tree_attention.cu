// Torch-free launchers of the tree-attention kernels: validate, plan the grid
// and the KV splits from host-known sizes only, launch on the given stream.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>

#include "specdec/tree_attention.cuh"
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
};

// SM count and opt-in shared memory of the current device, queried once per
// device (attribute queries do not synchronise).
cudaError_t device_info(DeviceInfo* info) {
  static std::atomic<int> sms_cache[kMaxCachedDevices];
  static std::atomic<int> smem_cache[kMaxCachedDevices];
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const bool cached = dev >= 0 && dev < kMaxCachedDevices;
  if (cached) {
    const int sms = sms_cache[dev].load(std::memory_order_relaxed);
    const int smem = smem_cache[dev].load(std::memory_order_relaxed);
    if (sms > 0 && smem > 0) {
      *info = DeviceInfo{dev, sms, smem};
      return cudaSuccess;
    }
  }
  int sms = 0, smem = 0;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err != cudaSuccess) return err;
  if (cached) {
    sms_cache[dev].store(sms, std::memory_order_relaxed);
    smem_cache[dev].store(smem, std::memory_order_relaxed);
  }
  *info = DeviceInfo{dev, sms > 0 ? sms : 1, smem};
  return cudaSuccess;
}

template <typename T, int D>
struct Tag {
  using type = T;
  static constexpr int dim = D;
};

template <typename T, typename F>
cudaError_t dispatch_dim(int64_t head_dim, F& f) {
  switch (head_dim) {
    case 64: return f(Tag<T, 64>{});
    case 128: return f(Tag<T, 128>{});
    case 256: return f(Tag<T, 256>{});
    default: return cudaErrorInvalidValue;
  }
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

int rows_per_tile_for(const TreeAttentionArgs& a) {
  int rows = 0;
  dispatch(a, [&](auto tag) {
    using Tg = decltype(tag);
    rows = ta::Config<typename Tg::type, Tg::dim>::kRows;
    return cudaSuccess;
  });
  return rows;
}

struct Plan {
  int splits = 1;
  int q_ctas = 1;
  int64_t main_ctas = 0;
  int fill_ctas = 0;
  int64_t rows = 0;      // N * Hq
  size_t workspace = 0;  // bytes
};

int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }

// Grid and splits from host-known sizes (valid arguments, N > 0). `splits`
// <= 0: the heuristic, which aims at ~2 waves of CTAs: as many splits as it
// takes to lift batch * Hkv * query-tile CTAs to 2 * SMs, at most one per
// kMinKeysPerSplit keys of the block table's reach, at most kMaxSplits.
cudaError_t make_plan(const TreeAttentionArgs& a, int sms, int splits, Plan* plan) {
  Plan p;
  const int64_t n = a.num_tokens;
  const int64_t group = a.num_q_heads / a.num_kv_heads;
  const int64_t rows_per_tile = rows_per_tile_for(a);
  p.rows = n * a.num_q_heads;
  if (a.batch > 0) {
    // Query-tile CTAs per (sequence, KV head, split): enough for the average
    // tree (exact when all trees have the same size); longer trees loop.
    const int64_t t_cap = std::min<int64_t>(n, kMaxTreeLen);
    const int64_t t_avg = std::min<int64_t>(ceil_div(n, a.batch), t_cap);
    const int64_t q_max = ceil_div(t_cap * group, rows_per_tile);
    const int64_t q_ctas = std::max<int64_t>(1, std::min<int64_t>(ceil_div(t_avg * group, rows_per_tile), q_max));
    const double per_split = double(a.batch) * double(a.num_kv_heads) * double(q_ctas);
    if (per_split > double(kMaxGrid)) return cudaErrorInvalidValue;
    p.q_ctas = int(q_ctas);
    const int64_t ctas = a.batch * a.num_kv_heads * q_ctas;
    if (splits <= 0) {
      const int64_t target = 2 * int64_t(sms);
      int64_t s = ctas >= target ? 1 : ceil_div(target, ctas);
      const int64_t reach = (a.max_blocks > 0 && a.block_size > 0) ? a.max_blocks * a.block_size : 0;
      s = std::min<int64_t>(s, std::max<int64_t>(1, ceil_div(reach, kMinKeysPerSplit)));
      s = std::min<int64_t>(s, kTreeAttentionMaxSplits);
      splits = int(std::max<int64_t>(1, s));
    }
    if (splits > kTreeAttentionMaxSplits) return cudaErrorInvalidValue;
    if (double(ctas) * splits > double(kMaxGrid)) return cudaErrorInvalidValue;
    p.main_ctas = ctas * splits;
  } else {
    splits = 1;  // no sequence: every token is uncovered
  }
  p.splits = splits;
  if (splits > 1) {
    if (ceil_div(p.rows, ta::kMergeRowsPerCta) > kMaxGrid) return cudaErrorInvalidValue;
    p.workspace = size_t(splits) * size_t(p.rows) * size_t(a.head_dim + 1) * sizeof(float);
  } else {
    p.fill_ctas = int(std::min<int64_t>(ceil_div(n, ta::kThreads), kMaxFillCtas));
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
  using C = ta::Config<T, D>;
  const size_t smem = C::kSmemBytes;
  if (smem > size_t(info.smem_optin)) return cudaErrorInvalidValue;
  if (smem > 48 * 1024) {
    // Once per device: the attribute stays set for the process.
    static std::atomic<uint64_t> done{0};
    const uint64_t bit = info.device < 64 ? (uint64_t(1) << info.device) : 0;
    if (bit == 0 || (done.load(std::memory_order_relaxed) & bit) == 0) {
      const cudaError_t err = cudaFuncSetAttribute(ta::tree_attention_kernel<T, D>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
      if (err != cudaSuccess) return err;
      done.fetch_or(bit, std::memory_order_relaxed);
    }
  }

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
    ta::tree_attention_kernel<T, D><<<unsigned(grid), ta::kThreads, smem, stream>>>(p);
    const cudaError_t err = cudaGetLastError();
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
  return make_plan(a, info->sms, splits, plan);
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

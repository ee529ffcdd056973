// Torch-free launchers of the KV-cache kernels: pick the widest vector the
// pointers and strides allow, size the grid, launch on the given stream.
#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "specdec/kv_cache.cuh"
#include "specdec/kv_cache_cuda.h"

namespace specdec {
namespace {

// Largest of 16, 8, 4, 2, 1 dividing every address and byte stride.
int vector_bytes(std::initializer_list<int64_t> values) {
  int64_t bits = 16;
  for (int64_t v : values) bits |= v;
  return int(bits & -bits);
}

int vector_bytes_for(const PagedLayout& l, std::initializer_list<int64_t> more) {
  int v = vector_bytes(more);
  return std::min(v, vector_bytes({l.row_bytes, l.stride_block, l.stride_token, l.stride_head}));
}

// Threads per CTA and CTAs along the column dimension for `total` vectors.
void column_grid(int64_t total, unsigned* threads, unsigned* ctas) {
  const int64_t t = std::min<int64_t>(256, std::max<int64_t>(32, (total + 31) / 32 * 32));
  *threads = unsigned(t);
  *ctas = unsigned(std::min<int64_t>(65535, (total + t - 1) / t));
}

template <typename Vec>
cudaError_t launch_append(const AppendKVArgs& a, cudaStream_t stream) {
  unsigned threads, ctas;
  column_grid(a.layout.num_heads * (a.layout.row_bytes / int64_t(sizeof(Vec))), &threads, &ctas);
  kernels::append_kv_kernel<Vec><<<dim3(unsigned(a.num_tokens), ctas), threads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename Vec>
cudaError_t launch_compact(const CompactKVArgs& a, cudaStream_t stream) {
  unsigned threads, ctas;
  column_grid(a.layout.num_heads * (a.layout.row_bytes / int64_t(sizeof(Vec))), &threads, &ctas);
  const size_t smem = size_t(2 * a.path_width) * sizeof(int64_t);
  for (int64_t first = 0; first < a.num_layers; first += kMaxLayersPerLaunch) {
    const int64_t count = std::min<int64_t>(kMaxLayersPerLaunch, a.num_layers - first);
    kernels::LayerPointers layers{};
    for (int64_t l = 0; l < count; ++l) {
      layers.k[l] = a.k_layers[first + l];
      layers.v[l] = a.v_layers[first + l];
    }
    kernels::compact_kv_kernel<Vec>
        <<<dim3(unsigned(a.blocks.batch), unsigned(count), ctas), threads, smem, stream>>>(a, layers);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <template <typename> class Launch, typename Args>
cudaError_t dispatch_vector(int bytes, const Args& a, cudaStream_t stream) {
  switch (bytes) {
    case 16: return Launch<uint4>::run(a, stream);
    case 8: return Launch<uint2>::run(a, stream);
    case 4: return Launch<uint32_t>::run(a, stream);
    case 2: return Launch<uint16_t>::run(a, stream);
    default: return Launch<uint8_t>::run(a, stream);
  }
}

template <typename Vec> struct AppendLaunch {
  static cudaError_t run(const AppendKVArgs& a, cudaStream_t s) { return launch_append<Vec>(a, s); }
};
template <typename Vec> struct CompactLaunch {
  static cudaError_t run(const CompactKVArgs& a, cudaStream_t s) { return launch_compact<Vec>(a, s); }
};

}  // namespace

cudaError_t append_kv_cuda(const AppendKVArgs& a, cudaStream_t stream) {
  if (a.num_tokens < 0 || a.num_tokens > 0x7fffffff) return cudaErrorInvalidValue;
  if (a.num_tokens == 0 || a.blocks.batch <= 0 || a.layout.num_heads <= 0 || a.layout.row_bytes <= 0)
    return cudaSuccess;
  const int bytes = vector_bytes_for(
      a.layout, {int64_t(reinterpret_cast<uintptr_t>(a.k)), int64_t(reinterpret_cast<uintptr_t>(a.v)),
                 int64_t(reinterpret_cast<uintptr_t>(a.k_cache)),
                 int64_t(reinterpret_cast<uintptr_t>(a.v_cache)), a.k_stride_token, a.k_stride_head,
                 a.v_stride_token, a.v_stride_head});
  return dispatch_vector<AppendLaunch>(bytes, a, stream);
}

cudaError_t compact_kv_cuda(const CompactKVArgs& a, cudaStream_t stream) {
  if (a.num_layers <= 0 || a.blocks.batch <= 0 || a.path_width <= 0 || a.layout.num_heads <= 0 ||
      a.layout.row_bytes <= 0)
    return cudaSuccess;
  if (a.path_width > kMaxPathWidth || a.blocks.batch > 0x7fffffff) return cudaErrorInvalidValue;
  int bytes = vector_bytes_for(a.layout, {});
  for (int64_t l = 0; l < a.num_layers; ++l) {
    bytes = std::min(bytes, vector_bytes({int64_t(reinterpret_cast<uintptr_t>(a.k_layers[l])),
                                          int64_t(reinterpret_cast<uintptr_t>(a.v_layers[l]))}));
  }
  return dispatch_vector<CompactLaunch>(bytes, a, stream);
}

}  // namespace specdec

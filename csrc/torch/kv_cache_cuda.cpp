// CUDA registrations of the KV-cache ops: checks (no value reads, no sync),
// device guard, current stream, then the torch-free launchers. The kernels
// skip out-of-range indices instead of raising; the Python layer's
// validate=True raises on them before the launch.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kv_cache_args.h"
#include "specdec/kv_cache_cuda.h"

namespace specdec {
namespace glue {
namespace {

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

void append_kv_cuda_op(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
                       const at::Tensor& v_cache, const at::Tensor& block_table,
                       const at::Tensor& prefix_lens, const at::Tensor& qo_indptr) {
  check_append_kv(k, v, k_cache, v_cache, block_table, prefix_lens, qo_indptr);
  const c10::cuda::CUDAGuard guard(k_cache.device());
  const AppendKVArgs args = append_kv_args(k, v, k_cache, v_cache, block_table, prefix_lens, qo_indptr);
  check_launch(append_kv_cuda(args, c10::cuda::getCurrentCUDAStream().stream()), "specdec::append_kv");
}

void compact_kv_cuda_op(at::TensorList k_caches, at::TensorList v_caches, const at::Tensor& block_table,
                        const at::Tensor& prefix_lens, const at::Tensor& accepted_nodes,
                        const at::Tensor& num_accepted) {
  check_compact_kv(k_caches, v_caches, block_table, prefix_lens, accepted_nodes, num_accepted);
  const c10::cuda::CUDAGuard guard(k_caches[0].device());
  std::vector<void*> k_layers, v_layers;
  const CompactKVArgs args = compact_kv_args(k_caches, v_caches, block_table, prefix_lens,
                                             accepted_nodes, num_accepted, &k_layers, &v_layers);
  check_launch(compact_kv_cuda(args, c10::cuda::getCurrentCUDAStream().stream()), "specdec::compact_kv");
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("append_kv", &append_kv_cuda_op);
  m.impl("compact_kv", &compact_kv_cuda_op);
}

}  // namespace glue
}  // namespace specdec

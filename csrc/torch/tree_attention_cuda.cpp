// CUDA registration of tree_attention: checks (no value reads, no sync),
// device guard, outputs, a workspace from the caching allocator, then the
// torch-free launcher on the current stream. Out-of-range indices are skipped
// by the kernels rather than raised; the Python layer's validation raises on
// them before the launch.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "specdec/tree_attention_cuda.h"
#include "tree_attention_args.h"

namespace specdec {
namespace glue {
namespace {

constexpr const char* kOp = "specdec::tree_attention";

std::tuple<at::Tensor, at::Tensor> tree_attention_cuda_op(const at::Tensor& q, const at::Tensor& k_cache,
                                                          const at::Tensor& v_cache, const at::Tensor& block_table,
                                                          const at::Tensor& prefix_lens, const at::Tensor& qo_indptr,
                                                          const std::optional<at::Tensor>& tree_mask,
                                                          double sm_scale) {
  check_tree_attention(q, k_cache, v_cache, block_table, prefix_lens, qo_indptr, tree_mask);
  const c10::cuda::CUDAGuard guard(q.device());
  auto [out, lse] = tree_attention_outputs(q);
  const TreeAttentionArgs args = tree_attention_args(q, k_cache, v_cache, block_table, prefix_lens, qo_indptr,
                                                     tree_mask, sm_scale, out, lse);
  int num_splits = 1;
  const size_t workspace_bytes = tree_attention_cuda_workspace_bytes(args, &num_splits);
  // Stream-ordered scratch: the caching allocator hands this block to later
  // work on the same stream only, after the launch below.
  at::Tensor workspace;
  if (workspace_bytes > 0) {
    workspace = at::empty({static_cast<int64_t>(workspace_bytes)}, q.options().dtype(at::kByte));
  }
  const cudaError_t err =
      tree_attention_cuda(args, workspace_bytes > 0 ? workspace.data_ptr() : nullptr, workspace_bytes,
                          c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, kOp, ": CUDA launch failed: ", cudaGetErrorString(err), " (", num_splits,
              " KV splits, head dim ", q.size(2), ")");
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) { m.impl("tree_attention", &tree_attention_cuda_op); }

}  // namespace glue
}  // namespace specdec

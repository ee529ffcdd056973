// CUDA registration of build_dynamic_tree: checks (no value reads, no sync),
// device guard, one launch on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "dynamic_tree_args.h"
#include "specdec/dynamic_tree_cuda.h"

namespace specdec {
namespace glue {
namespace {

DynamicTreeOutputs build_dynamic_tree_cuda_op(const at::Tensor& cand_parents, const at::Tensor& cand_tokens,
                                              const at::Tensor& cand_scores, const at::Tensor& root_tokens,
                                              int64_t num_keep) {
  check_dynamic_tree(cand_parents, cand_tokens, cand_scores, root_tokens, num_keep);
  const c10::cuda::CUDAGuard guard(cand_scores.device());
  DynamicTreeOutputs out = dynamic_tree_outputs(cand_scores, num_keep);
  const DynamicTreeArgs args = dynamic_tree_args(cand_parents, cand_tokens, cand_scores, root_tokens, num_keep, out);
  const cudaError_t err = build_dynamic_tree_cuda(args, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "specdec::build_dynamic_tree: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) { m.impl("build_dynamic_tree", &build_dynamic_tree_cuda_op); }

}  // namespace glue
}  // namespace specdec

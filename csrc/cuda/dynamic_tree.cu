// Torch-free launcher of build_dynamic_tree.
#include <limits>

#include "specdec/dynamic_tree.cuh"
#include "specdec/dynamic_tree_cuda.h"

namespace specdec {

cudaError_t build_dynamic_tree_cuda(const DynamicTreeArgs& a, cudaStream_t stream) {
  const bool ok = a.batch >= 0 && a.batch <= std::numeric_limits<int32_t>::max() && a.num_cand >= 0 &&
                  a.num_cand <= kMaxDynamicCandidates && a.num_keep >= 0 && a.num_keep < kMaxDynamicNodes &&
                  a.words == (a.num_keep + 1 + 31) / 32 && a.cand_parents && a.cand_tokens && a.cand_scores &&
                  a.root_tokens && a.tokens && a.parents && a.depths && a.tree_mask && a.source && a.num_nodes;
  if (!ok) return cudaErrorInvalidValue;
  if (a.batch == 0) return cudaSuccess;
  kernels::dynamic_tree::build_kernel<<<unsigned(a.batch), kernels::dynamic_tree::kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace specdec

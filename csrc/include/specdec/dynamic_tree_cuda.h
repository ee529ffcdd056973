// Host-side declaration of the build_dynamic_tree CUDA launcher
// (csrc/cuda/dynamic_tree.cu).
#pragma once

#include <cuda_runtime_api.h>

#include "specdec/dynamic_tree.h"

namespace specdec {

// One CTA per request on `stream`. cudaErrorInvalidValue without launching
// for unsupported arguments (num_cand > kMaxDynamicCandidates, num_keep
// outside [0, kMaxDynamicNodes), a missing pointer), else the launch's error.
cudaError_t build_dynamic_tree_cuda(const DynamicTreeArgs& args, cudaStream_t stream);

}  // namespace specdec

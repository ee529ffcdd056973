// Host-side declarations of the verification CUDA launcher
// (csrc/cuda/sampling.cu). Plain C++ can include it; it needs the CUDA
// toolkit's include path for cudaError_t and cudaStream_t.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "specdec/sampling.h"

namespace specdec {

// Bytes of device workspace verify_cuda needs: a float32 residual row per
// request for rejection with draft probabilities, 0 otherwise. Host-only.
size_t verify_cuda_workspace_bytes(const VerifyArgs& args);

// Launches one CTA per request on `stream`. `workspace` is scratch device
// memory of at least the size above (null when that is 0). Returns
// cudaErrorInvalidValue for unsupported arguments (width outside
// [1, kMaxVerifyNodes], a missing pointer the mode needs, a small workspace)
// without launching, else the launch's error. Never synchronises; reads all
// index values on the device and skips out-of-range ones.
cudaError_t verify_cuda(const VerifyArgs& args, void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace specdec

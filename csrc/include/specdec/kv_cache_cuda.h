// Host-side declarations of the CUDA launchers (csrc/cuda/kv_cache.cu).
// Plain C++ can include it; it needs the CUDA toolkit's include path for
// cudaError_t and cudaStream_t (the CMake target passes it on).
#pragma once

#include <cuda_runtime_api.h>

#include "specdec/kv_cache.h"

namespace specdec {

// Each returns the launch's error (cudaSuccess when launched), never throws,
// and never synchronises. `args.k_layers` / `v_layers` are host arrays.
cudaError_t append_kv_cuda(const AppendKVArgs& args, cudaStream_t stream);
cudaError_t compact_kv_cuda(const CompactKVArgs& args, cudaStream_t stream);

}  // namespace specdec

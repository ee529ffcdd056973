// Torch-free launcher of the verification kernel.
#include <cstdint>
#include <limits>

#include "specdec/sampling.cuh"
#include "specdec/sampling_cuda.h"

namespace specdec {

size_t verify_cuda_workspace_bytes(const VerifyArgs& args) {
  if (args.mode != VerifyMode::kRejection || args.draft_probs == nullptr || args.batch <= 0 || args.vocab <= 0) {
    return 0;
  }
  return size_t(args.batch) * size_t(args.vocab) * sizeof(float);
}

cudaError_t verify_cuda(const VerifyArgs& args, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const bool sampled = args.mode != VerifyMode::kGreedy;
  const bool ok = args.batch >= 0 && args.batch <= std::numeric_limits<int32_t>::max() && args.vocab >= 1 &&
                  args.width >= 1 && args.width <= kMaxVerifyNodes && args.draft_tokens && args.parents &&
                  args.qo_indptr && args.logits && args.num_accepted && args.accepted_nodes && args.tokens &&
                  (!sampled || (args.temperature && (args.uniforms || args.philox))) &&
                  (args.mode != VerifyMode::kRejection || (args.top_k && args.top_p)) &&
                  (args.mode != VerifyMode::kTypical || (args.posterior_threshold && args.posterior_alpha)) &&
                  (args.target_indptr == nullptr) == (args.bonus_tokens == nullptr) &&
                  workspace_bytes >= verify_cuda_workspace_bytes(args) &&
                  (verify_cuda_workspace_bytes(args) == 0 || workspace != nullptr);
  if (!ok) return cudaErrorInvalidValue;
  if (args.batch == 0) return cudaSuccess;
  float* residual = static_cast<float*>(workspace);
  const unsigned grid = unsigned(args.batch);
  constexpr int kThreads = kernels::verify::kThreads;
  switch (args.logits_dtype) {
    case DType::kFloat16: kernels::verify::verify_kernel<__half><<<grid, kThreads, 0, stream>>>(args, residual); break;
    case DType::kBFloat16:
      kernels::verify::verify_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(args, residual);
      break;
    case DType::kFloat32: kernels::verify::verify_kernel<float><<<grid, kThreads, 0, stream>>>(args, residual); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace specdec

// Torch-free launcher of the verification kernel.
#include <cstdint>
#include <limits>

#include "specdec/sampling.cuh"
#include "specdec/sampling_cuda.h"

namespace specdec {
namespace {

namespace vk = kernels::verify;

// CTAs the split pass aims at: 8 per SM of a 132-SM H100/H200 (the residency
// of 256-thread CTAs). Fixed, not queried, so a batch splits (and rounds) the
// same way on every device.
constexpr int64_t kSplitCtas = 8 * 132;

// How verify_cuda reads the rows. chunks == 0: one launch, one CTA per
// request reads each row it visits. Otherwise (rows of logits fewer than half
// of kSplitCtas, i.e. the one-CTA-per-request kernel would leave most SMs
// idle): verify_partial_kernel first reads every row in `chunks` chunks of
// chunk_len elements, rows * chunks CTAs, then verify_kernel walks the trees
// with those statistics. Two launches.
struct Plan {
  int64_t rows = 0, chunks = 0, chunk_len = 0;
  size_t residual_bytes = 0, partial_offset = 0, bytes = 0;
};

Plan plan(const VerifyArgs& a) {
  Plan p;
  if (a.batch <= 0 || a.vocab <= 0) return p;
  if (a.mode == VerifyMode::kRejection && a.draft_probs != nullptr) {
    p.residual_bytes = size_t(a.batch) * size_t(a.vocab) * sizeof(float);
  }
  p.bytes = p.residual_bytes;
  p.rows = a.target_indptr != nullptr ? a.num_rows : a.num_tokens;
  if (p.rows <= 0) return p;
  const int64_t max_chunks = (a.vocab + vk::kChunkAlign - 1) / vk::kChunkAlign;
  int64_t chunks = kSplitCtas / p.rows;
  chunks = chunks < max_chunks ? chunks : max_chunks;
  if (chunks < 2) return p;
  const int64_t per = (a.vocab + chunks - 1) / chunks;
  p.chunk_len = (per + vk::kChunkAlign - 1) / vk::kChunkAlign * vk::kChunkAlign;
  p.chunks = (a.vocab + p.chunk_len - 1) / p.chunk_len;
  p.partial_offset = (p.residual_bytes + 15) / 16 * 16;
  p.bytes = p.partial_offset + size_t(p.rows) * size_t(p.chunks) * sizeof(vk::RowPartial);
  return p;
}

}  // namespace

size_t verify_cuda_workspace_bytes(const VerifyArgs& args) { return plan(args).bytes; }

namespace {

template <typename L>
cudaError_t launch(const VerifyArgs& args, const Plan& p, float* residual, vk::RowPartial* pre, cudaStream_t stream) {
  if (p.chunks > 0) {
    const unsigned grid = unsigned(p.rows * p.chunks);
    vk::verify_partial_kernel<L><<<grid, vk::kThreads, 0, stream>>>(args, pre, int(p.chunks), p.chunk_len);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  const unsigned grid = unsigned(args.batch);
  const int c = int(p.chunks);
  switch (args.mode) {
    case VerifyMode::kGreedy:
      vk::verify_kernel<L, VerifyMode::kGreedy><<<grid, vk::kThreads, 0, stream>>>(args, residual, pre, c);
      break;
    case VerifyMode::kRejection:
      vk::verify_kernel<L, VerifyMode::kRejection><<<grid, vk::kThreads, 0, stream>>>(args, residual, pre, c);
      break;
    case VerifyMode::kTypical:
      vk::verify_kernel<L, VerifyMode::kTypical><<<grid, vk::kThreads, 0, stream>>>(args, residual, pre, c);
      break;
    case VerifyMode::kTraversal:
      vk::verify_kernel<L, VerifyMode::kTraversal><<<grid, vk::kThreads, 0, stream>>>(args, residual, pre, c);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t verify_cuda(const VerifyArgs& args, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const bool sampled = args.mode != VerifyMode::kGreedy;
  const bool ok = args.batch >= 0 &&
                  args.batch <= std::numeric_limits<int32_t>::max() && args.vocab >= 1 &&
                  args.width >= 1 && args.width <= kMaxVerifyNodes && args.draft_tokens && args.parents &&
                  args.qo_indptr && args.logits && args.num_accepted && args.accepted_nodes && args.tokens &&
                  (!sampled || (args.temperature && (args.uniforms || args.philox))) &&
                  int32_t(args.mode) >= 0 && int32_t(args.mode) <= int32_t(VerifyMode::kTraversal) &&
                  ((args.mode != VerifyMode::kRejection && args.mode != VerifyMode::kTraversal) ||
                   (args.top_k && args.top_p)) &&
                  (args.mode != VerifyMode::kTypical || (args.posterior_threshold && args.posterior_alpha)) &&
                  (args.target_indptr == nullptr) == (args.bonus_tokens == nullptr) &&
                  workspace_bytes >= verify_cuda_workspace_bytes(args) &&
                  (verify_cuda_workspace_bytes(args) == 0 || workspace != nullptr);
  if (!ok) return cudaErrorInvalidValue;
  if (args.batch == 0) return cudaSuccess;
  const Plan p = plan(args);
  float* residual = p.residual_bytes > 0 ? static_cast<float*>(workspace) : nullptr;
  vk::RowPartial* pre =
      p.chunks > 0 ? reinterpret_cast<vk::RowPartial*>(static_cast<char*>(workspace) + p.partial_offset) : nullptr;
  switch (args.logits_dtype) {
    case DType::kFloat16: return launch<__half>(args, p, residual, pre, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(args, p, residual, pre, stream);
    case DType::kFloat32: return launch<float>(args, p, residual, pre, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace specdec

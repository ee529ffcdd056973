// CUDA registration of verify_tree: checks (no value reads, no sync), device
// guard, outputs, a workspace from the caching allocator, then the torch-free
// launcher on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "sampling_args.h"
#include "specdec/sampling_cuda.h"

namespace specdec {
namespace glue {
namespace {

using Optional = std::optional<at::Tensor>;

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_cuda(
    const at::Tensor& draft_tokens, const at::Tensor& parents, const at::Tensor& qo_indptr,
    const at::Tensor& target_logits, const Optional& draft_probs, const Optional& temperature, const Optional& top_k,
    const Optional& top_p, const Optional& posterior_threshold, const Optional& posterior_alpha,
    const Optional& uniforms, const Optional& philox, int64_t mode, int64_t width, bool target_is_probs,
    const Optional& target_indptr, const Optional& bonus_tokens, const Optional& min_p,
    const Optional& allowed_tokens) {
  const VerifyTensors t{draft_tokens, parents, qo_indptr, target_logits, draft_probs, temperature, top_k, top_p,
                        posterior_threshold, posterior_alpha, uniforms, philox, mode, width, target_is_probs,
                        target_indptr, bonus_tokens, min_p, allowed_tokens};
  check_verify(t);
  const c10::cuda::CUDAGuard guard(target_logits.device());
  auto [num_accepted, accepted_nodes, tokens] = verify_outputs(t);
  const VerifyArgs args = verify_args(t, num_accepted, accepted_nodes, tokens);
  const size_t bytes = verify_cuda_workspace_bytes(args);
  at::Tensor workspace;
  if (bytes > 0) workspace = at::empty({static_cast<int64_t>(bytes)}, target_logits.options().dtype(at::kByte));
  const cudaError_t err = verify_cuda(args, bytes > 0 ? workspace.data_ptr() : nullptr, bytes,
                                      c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "specdec::verify_tree: CUDA launch failed: ", cudaGetErrorString(err));
  return {num_accepted, accepted_nodes, tokens};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) { m.impl("verify_tree", &verify_tree_cuda); }

}  // namespace glue
}  // namespace specdec

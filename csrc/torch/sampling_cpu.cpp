// CPU and Meta registrations of verify_tree.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "sampling_args.h"

namespace specdec {
namespace glue {
namespace {

using Optional = std::optional<at::Tensor>;

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_cpu(
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
  check_verify_values(t);
  auto [num_accepted, accepted_nodes, tokens] = verify_outputs(t);
  const VerifyArgs args = verify_args(t, num_accepted, accepted_nodes, tokens);
  // A request costs a few passes over V per visited row: split by request,
  // a chunk worth roughly 64K elements of work.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, args.vocab * 4));
  at::parallel_for(0, args.batch, grain, [&](int64_t begin, int64_t end) { verify_cpu(args, begin, end); });
  return {num_accepted, accepted_nodes, tokens};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_meta(
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
  return verify_outputs(t);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("verify_tree", &verify_tree_cpu); }

TORCH_LIBRARY_IMPL(specdec, Meta, m) { m.impl("verify_tree", &verify_tree_meta); }

}  // namespace glue
}  // namespace specdec

// CPU and Meta registrations of build_dynamic_tree.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "dynamic_tree_args.h"

namespace specdec {
namespace glue {
namespace {

DynamicTreeOutputs build_dynamic_tree_cpu_op(const at::Tensor& cand_parents, const at::Tensor& cand_tokens,
                                             const at::Tensor& cand_scores, const at::Tensor& root_tokens,
                                             int64_t num_keep) {
  check_dynamic_tree(cand_parents, cand_tokens, cand_scores, root_tokens, num_keep);
  DynamicTreeOutputs out = dynamic_tree_outputs(cand_scores, num_keep);
  const DynamicTreeArgs args = dynamic_tree_args(cand_parents, cand_tokens, cand_scores, root_tokens, num_keep, out);
  at::parallel_for(0, args.batch, 1, [&](int64_t begin, int64_t end) { build_dynamic_tree_cpu(args, begin, end); });
  return out;
}

DynamicTreeOutputs build_dynamic_tree_meta(const at::Tensor& cand_parents, const at::Tensor& cand_tokens,
                                           const at::Tensor& cand_scores, const at::Tensor& root_tokens,
                                           int64_t num_keep) {
  check_dynamic_tree(cand_parents, cand_tokens, cand_scores, root_tokens, num_keep);
  return dynamic_tree_outputs(cand_scores, num_keep);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("build_dynamic_tree", &build_dynamic_tree_cpu_op); }

TORCH_LIBRARY_IMPL(specdec, Meta, m) { m.impl("build_dynamic_tree", &build_dynamic_tree_meta); }

}  // namespace glue
}  // namespace specdec

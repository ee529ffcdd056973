// CPU and Meta registrations of tree_attention.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "tree_attention_args.h"

namespace specdec {
namespace glue {
namespace {

std::tuple<at::Tensor, at::Tensor> tree_attention_cpu_op(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
    const at::Tensor& block_table, const at::Tensor& prefix_lens, const at::Tensor& qo_indptr,
    const std::optional<at::Tensor>& tree_mask, double sm_scale) {
  check_tree_attention(q, k_cache, v_cache, block_table, prefix_lens, qo_indptr, tree_mask);
  check_tree_attention_values(q, k_cache, block_table, prefix_lens, qo_indptr, tree_mask);
  auto [out, lse] = tree_attention_outputs(q);
  const TreeAttentionArgs args = tree_attention_args(q, k_cache, v_cache, block_table, prefix_lens,
                                                     qo_indptr, tree_mask, sm_scale, out, lse);
  // Work item = (token, q head). Grain: roughly 64K multiply-adds per chunk,
  // from the average number of keys a row reads.
  const int64_t items = args.num_tokens * args.num_q_heads;
  int64_t keys = 0;
  for (int64_t b = 0; b < args.batch; ++b) {
    const int64_t tree = int64_t(args.qo_indptr[b + 1]) - args.qo_indptr[b];
    keys += tree * (int64_t(args.prefix_lens[b]) + tree);
  }
  const int64_t per_item = (args.num_tokens > 0 ? keys / args.num_tokens : 0) * args.head_dim + args.head_dim;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / per_item);
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) { tree_attention_cpu(args, begin, end); });
  return {out, lse};
}

// Meta (fake) kernel: shapes only.
std::tuple<at::Tensor, at::Tensor> tree_attention_meta(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
    const at::Tensor& block_table, const at::Tensor& prefix_lens, const at::Tensor& qo_indptr,
    const std::optional<at::Tensor>& tree_mask, double /*sm_scale*/) {
  check_tree_attention(q, k_cache, v_cache, block_table, prefix_lens, qo_indptr, tree_mask);
  return tree_attention_outputs(q);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("tree_attention", &tree_attention_cpu_op); }

TORCH_LIBRARY_IMPL(specdec, Meta, m) { m.impl("tree_attention", &tree_attention_meta); }

}  // namespace glue
}  // namespace specdec

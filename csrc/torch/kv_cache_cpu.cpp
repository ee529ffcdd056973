// CPU and Meta registrations of the KV-cache ops.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "kv_cache_args.h"

namespace specdec {
namespace glue {
namespace {

void append_kv_cpu_op(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
                      const at::Tensor& v_cache, const at::Tensor& block_table,
                      const at::Tensor& prefix_lens, const at::Tensor& qo_indptr) {
  check_append_kv(k, v, k_cache, v_cache, block_table, prefix_lens, qo_indptr);
  check_append_kv_values(k, k_cache, block_table, prefix_lens, qo_indptr);
  const AppendKVArgs args = append_kv_args(k, v, k_cache, v_cache, block_table, prefix_lens, qo_indptr);
  at::parallel_for(0, args.num_tokens, 16,
                   [&](int64_t begin, int64_t end) { append_kv_cpu(args, begin, end); });
}

void compact_kv_cpu_op(at::TensorList k_caches, at::TensorList v_caches, const at::Tensor& block_table,
                       const at::Tensor& prefix_lens, const at::Tensor& accepted_nodes,
                       const at::Tensor& num_accepted) {
  check_compact_kv(k_caches, v_caches, block_table, prefix_lens, accepted_nodes, num_accepted);
  check_compact_kv_values(k_caches[0], block_table, prefix_lens, accepted_nodes, num_accepted);
  std::vector<void*> k_layers, v_layers;
  const CompactKVArgs args = compact_kv_args(k_caches, v_caches, block_table, prefix_lens,
                                             accepted_nodes, num_accepted, &k_layers, &v_layers);
  at::parallel_for(0, compact_kv_cpu_work_items(args), 1,
                   [&](int64_t begin, int64_t end) { compact_kv_cpu(args, begin, end); });
}

// Meta (fake) kernels: the ops return nothing, so tracing needs only the checks.
void append_kv_meta(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
                    const at::Tensor& v_cache, const at::Tensor& block_table,
                    const at::Tensor& prefix_lens, const at::Tensor& qo_indptr) {
  check_append_kv(k, v, k_cache, v_cache, block_table, prefix_lens, qo_indptr);
}

void compact_kv_meta(at::TensorList k_caches, at::TensorList v_caches, const at::Tensor& block_table,
                     const at::Tensor& prefix_lens, const at::Tensor& accepted_nodes,
                     const at::Tensor& num_accepted) {
  check_compact_kv(k_caches, v_caches, block_table, prefix_lens, accepted_nodes, num_accepted);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("append_kv", &append_kv_cpu_op);
  m.impl("compact_kv", &compact_kv_cpu_op);
}

TORCH_LIBRARY_IMPL(specdec, Meta, m) {
  m.impl("append_kv", &append_kv_meta);
  m.impl("compact_kv", &compact_kv_meta);
}

}  // namespace glue
}  // namespace specdec

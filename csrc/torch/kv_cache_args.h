// Argument checks of the KV-cache ops and their translation into the
// torch-free argument structs. Shared by the CPU, CUDA and Meta registrations,
// so every backend rejects the same inputs with the same messages.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "specdec/kv_cache.h"

namespace specdec {
namespace glue {

// Shapes, dtypes, devices and strides; never reads tensor values, so it is safe
// for Meta tensors and for CUDA tensors (no synchronisation).
void check_append_kv(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
                     const at::Tensor& v_cache, const at::Tensor& block_table,
                     const at::Tensor& prefix_lens, const at::Tensor& qo_indptr);
void check_compact_kv(at::TensorList k_caches, at::TensorList v_caches, const at::Tensor& block_table,
                      const at::Tensor& prefix_lens, const at::Tensor& accepted_nodes,
                      const at::Tensor& num_accepted);

// Index ranges; reads values, so only for CPU tensors (the Python layer runs
// the same checks on any device on request).
void check_append_kv_values(const at::Tensor& k, const at::Tensor& k_cache,
                            const at::Tensor& block_table, const at::Tensor& prefix_lens,
                            const at::Tensor& qo_indptr);
void check_compact_kv_values(const at::Tensor& cache, const at::Tensor& block_table,
                             const at::Tensor& prefix_lens, const at::Tensor& accepted_nodes,
                             const at::Tensor& num_accepted);

AppendKVArgs append_kv_args(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& block_table,
                            const at::Tensor& prefix_lens, const at::Tensor& qo_indptr);

// The layer pointers live in the vectors, which must outlive the returned args.
CompactKVArgs compact_kv_args(at::TensorList k_caches, at::TensorList v_caches,
                              const at::Tensor& block_table, const at::Tensor& prefix_lens,
                              const at::Tensor& accepted_nodes, const at::Tensor& num_accepted,
                              std::vector<void*>* k_layers, std::vector<void*>* v_layers);

}  // namespace glue
}  // namespace specdec

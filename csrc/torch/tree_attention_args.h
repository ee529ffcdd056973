// Argument checks of tree_attention and their translation into the
// torch-free TreeAttentionArgs. Shared by the CPU, CUDA and Meta registrations.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "specdec/tree_attention.h"

namespace specdec {
namespace glue {

// Shapes, dtypes, devices, strides; reads no tensor values (safe for Meta and
// CUDA tensors). Names the offending argument in every message.
void check_tree_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& block_table, const at::Tensor& prefix_lens,
                          const at::Tensor& qo_indptr, const std::optional<at::Tensor>& tree_mask);

// Index values (CPU tensors only): qo_indptr monotone from 0 to N, T_b <= 256,
// mask wide enough, prefix_lens >= 0, every read position inside the block
// table and the pool.
void check_tree_attention_values(const at::Tensor& q, const at::Tensor& k_cache,
                                 const at::Tensor& block_table, const at::Tensor& prefix_lens,
                                 const at::Tensor& qo_indptr, const std::optional<at::Tensor>& tree_mask);

// Empty outputs: out [N, Hq, D] like q (contiguous), lse [N, Hq] float32.
std::tuple<at::Tensor, at::Tensor> tree_attention_outputs(const at::Tensor& q);

TreeAttentionArgs tree_attention_args(const at::Tensor& q, const at::Tensor& k_cache,
                                      const at::Tensor& v_cache, const at::Tensor& block_table,
                                      const at::Tensor& prefix_lens, const at::Tensor& qo_indptr,
                                      const std::optional<at::Tensor>& tree_mask, double sm_scale,
                                      at::Tensor& out, at::Tensor& lse);

}  // namespace glue
}  // namespace specdec

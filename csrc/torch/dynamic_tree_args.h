// Argument checks of build_dynamic_tree and their translation into the
// torch-free DynamicTreeArgs. Shared by the CPU, CUDA and Meta registrations.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "specdec/dynamic_tree.h"

namespace specdec {
namespace glue {

using DynamicTreeOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Shapes, dtypes, devices and num_keep; reads no tensor values.
void check_dynamic_tree(const at::Tensor& cand_parents, const at::Tensor& cand_tokens, const at::Tensor& cand_scores,
                        const at::Tensor& root_tokens, int64_t num_keep);

// Empty outputs on the inputs' device.
DynamicTreeOutputs dynamic_tree_outputs(const at::Tensor& cand_scores, int64_t num_keep);

DynamicTreeArgs dynamic_tree_args(const at::Tensor& cand_parents, const at::Tensor& cand_tokens,
                                  const at::Tensor& cand_scores, const at::Tensor& root_tokens, int64_t num_keep,
                                  DynamicTreeOutputs& out);

}  // namespace glue
}  // namespace specdec

// Argument checks of verify_tree and their translation into the torch-free
// VerifyArgs. Shared by the CPU, CUDA and Meta registrations.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "specdec/sampling.h"

namespace specdec {
namespace glue {

struct VerifyTensors {
  const at::Tensor& draft_tokens;
  const at::Tensor& parents;
  const at::Tensor& qo_indptr;
  const at::Tensor& target_logits;
  const std::optional<at::Tensor>& draft_probs;
  const std::optional<at::Tensor>& temperature;
  const std::optional<at::Tensor>& top_k;
  const std::optional<at::Tensor>& top_p;
  const std::optional<at::Tensor>& posterior_threshold;
  const std::optional<at::Tensor>& posterior_alpha;
  const std::optional<at::Tensor>& uniforms;
  const std::optional<at::Tensor>& philox;
  int64_t mode;
  int64_t width;
  bool target_is_probs;
  const std::optional<at::Tensor>& target_indptr;  // with bonus_tokens: the row map of VerifyArgs
  const std::optional<at::Tensor>& bonus_tokens;
  const std::optional<at::Tensor>& min_p;           // float32 [B], modes 1 and 3
  const std::optional<at::Tensor>& allowed_tokens;  // int32 [rows of target_logits, ceil(V / 32)]
};

// Shapes, dtypes, devices, strides, and which optional tensors the mode needs;
// reads no tensor values (safe for Meta and CUDA tensors).
void check_verify(const VerifyTensors& t);

// Index values (CPU tensors only): qo_indptr monotone from 0 to N and at most
// kMaxVerifyNodes nodes per request; target_indptr monotone from 0 to the rows
// of target_logits. Other values (tokens, parents) are safe
// by construction of the kernels.
void check_verify_values(const VerifyTensors& t);

// Empty outputs: num_accepted int32 [B], accepted_nodes int32 [B, width],
// tokens int64 [B, width], on the logits' device.
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_outputs(const VerifyTensors& t);

VerifyArgs verify_args(const VerifyTensors& t, at::Tensor& num_accepted, at::Tensor& accepted_nodes,
                       at::Tensor& tokens);

}  // namespace glue
}  // namespace specdec

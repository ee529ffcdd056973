#include "dynamic_tree_args.h"

#include "glue_util.h"

namespace specdec {
namespace glue {
namespace {

constexpr const char* kOp = "specdec::build_dynamic_tree";

void check_matrix(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t batch, int64_t m,
                  const at::Device& device) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == batch && t.size(1) == m, kOp, ": ", name, " must be [B=", batch,
              ", M=", m, "] (as cand_scores), got shape ", shape_of(t));
  TORCH_CHECK(t.scalar_type() == dtype, kOp, ": ", name, " must be ", dtype_name(dtype), ", got ",
              dtype_name(t.scalar_type()));
  TORCH_CHECK(t.device() == device, kOp, ": ", name, " is on ", t.device(), " but cand_scores is on ", device);
  TORCH_CHECK(t.is_contiguous(), kOp, ": ", name, " must be contiguous");
}

}  // namespace

void check_dynamic_tree(const at::Tensor& cand_parents, const at::Tensor& cand_tokens, const at::Tensor& cand_scores,
                        const at::Tensor& root_tokens, int64_t num_keep) {
  TORCH_CHECK(cand_scores.dim() == 2, kOp, ": cand_scores must be [B, M], got shape ", shape_of(cand_scores));
  const int64_t batch = cand_scores.size(0), m = cand_scores.size(1);
  const at::Device device = cand_scores.device();
  check_matrix(cand_scores, "cand_scores", at::kFloat, batch, m, device);
  check_matrix(cand_parents, "cand_parents", at::kInt, batch, m, device);
  check_matrix(cand_tokens, "cand_tokens", at::kLong, batch, m, device);
  TORCH_CHECK(m <= kMaxDynamicCandidates, kOp, ": at most ", kMaxDynamicCandidates,
              " candidates per request are supported, got M = ", m);
  TORCH_CHECK(root_tokens.dim() == 1 && root_tokens.size(0) == batch, kOp, ": root_tokens must be [B=", batch,
              "], got shape ", shape_of(root_tokens));
  TORCH_CHECK(root_tokens.scalar_type() == at::kLong, kOp, ": root_tokens must be int64, got ",
              dtype_name(root_tokens.scalar_type()));
  TORCH_CHECK(root_tokens.device() == device, kOp, ": root_tokens is on ", root_tokens.device(),
              " but cand_scores is on ", device);
  TORCH_CHECK(root_tokens.is_contiguous(), kOp, ": root_tokens must be contiguous");
  TORCH_CHECK(num_keep >= 0 && num_keep < kMaxDynamicNodes, kOp, ": num_keep must be in [0, ", kMaxDynamicNodes - 1,
              "], got ", num_keep);
}

DynamicTreeOutputs dynamic_tree_outputs(const at::Tensor& cand_scores, int64_t num_keep) {
  const int64_t batch = cand_scores.size(0), width = num_keep + 1, words = (width + 31) / 32;
  const auto opts = cand_scores.options();
  return {at::empty({batch, width}, opts.dtype(at::kLong)), at::empty({batch, width}, opts.dtype(at::kInt)),
          at::empty({batch, width}, opts.dtype(at::kInt)),  at::empty({batch, width, words}, opts.dtype(at::kInt)),
          at::empty({batch, width}, opts.dtype(at::kInt)),  at::empty({batch}, opts.dtype(at::kInt))};
}

DynamicTreeArgs dynamic_tree_args(const at::Tensor& cand_parents, const at::Tensor& cand_tokens,
                                  const at::Tensor& cand_scores, const at::Tensor& root_tokens, int64_t num_keep,
                                  DynamicTreeOutputs& out) {
  DynamicTreeArgs a{};
  a.cand_parents = cand_parents.data_ptr<int32_t>();
  a.cand_tokens = cand_tokens.data_ptr<int64_t>();
  a.cand_scores = cand_scores.data_ptr<float>();
  a.root_tokens = root_tokens.data_ptr<int64_t>();
  a.batch = cand_scores.size(0);
  a.num_cand = cand_scores.size(1);
  a.num_keep = static_cast<int32_t>(num_keep);
  a.words = static_cast<int32_t>((num_keep + 1 + 31) / 32);
  a.tokens = std::get<0>(out).data_ptr<int64_t>();
  a.parents = std::get<1>(out).data_ptr<int32_t>();
  a.depths = std::get<2>(out).data_ptr<int32_t>();
  a.tree_mask = std::get<3>(out).data_ptr<int32_t>();
  a.source = std::get<4>(out).data_ptr<int32_t>();
  a.num_nodes = std::get<5>(out).data_ptr<int32_t>();
  return a;
}

}  // namespace glue
}  // namespace specdec

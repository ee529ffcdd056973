#include "sampling_args.h"

#include "glue_util.h"

namespace specdec {
namespace glue {
namespace {

constexpr const char* kOp = "specdec::verify_tree";

void check_vector(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t length,
                  const at::Device& device) {
  TORCH_CHECK(t.dim() == 1, kOp, ": ", name, " must have 1 dim, got shape ", shape_of(t));
  TORCH_CHECK(t.scalar_type() == dtype, kOp, ": ", name, " must be ", dtype_name(dtype), ", got ",
              dtype_name(t.scalar_type()));
  TORCH_CHECK(t.device() == device, kOp, ": ", name, " is on ", t.device(), " but target_logits is on ", device);
  TORCH_CHECK(t.size(0) == length, kOp, ": ", name, " must be [", length, "], got shape ", shape_of(t));
  TORCH_CHECK(length <= 1 || t.stride(0) == 1, kOp, ": ", name, " must be contiguous, got strides ",
              t.strides());
}

void check_optional(const std::optional<at::Tensor>& t, bool needed, const char* name, at::ScalarType dtype,
                    int64_t length, const at::Device& device, int64_t mode) {
  TORCH_CHECK(t.has_value() || !needed, kOp, ": ", name, " is required in mode ", mode);
  TORCH_CHECK(!t.has_value() || needed, kOp, ": ", name, " is not used in mode ", mode, "; pass None");
  if (t.has_value()) check_vector(*t, name, dtype, length, device);
}

template <typename T>
const T* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

}  // namespace

void check_verify(const VerifyTensors& t) {
  const at::Tensor& logits = t.target_logits;
  TORCH_CHECK(logits.dim() == 2, kOp, ": target_logits must be [N, V], got shape ", shape_of(logits));
  TORCH_CHECK(is_float_dtype(logits.scalar_type()), kOp,
              ": target_logits must be float32, bfloat16 or float16, got ", dtype_name(logits.scalar_type()));
  TORCH_CHECK(logits.size(1) >= 1, kOp, ": target_logits must have a vocabulary of at least 1 (V >= 1)");
  TORCH_CHECK(logits.size(1) <= 1 || logits.stride(1) == 1, kOp,
              ": target_logits must be contiguous in its last dim, got strides ", logits.strides());
  const at::Device device = logits.device();
  const int64_t rows = logits.size(0);
  const int64_t vocab = logits.size(1);
  const bool mapped = t.target_indptr.has_value();
  TORCH_CHECK(mapped == t.bonus_tokens.has_value(), kOp, ": pass target_indptr and bonus_tokens together, got ",
              mapped ? "target_indptr alone" : "bonus_tokens alone");
  // Without a row map node i reads row i, so the nodes are the rows.
  const int64_t n = mapped ? t.draft_tokens.size(0) : rows;
  TORCH_CHECK(t.draft_tokens.dim() == 1, kOp, ": draft_tokens must have 1 dim, got shape ", shape_of(t.draft_tokens));
  check_vector(t.draft_tokens, "draft_tokens", at::kLong, n, device);
  check_vector(t.parents, "parents", at::kInt, n, device);
  TORCH_CHECK(t.qo_indptr.dim() == 1 && t.qo_indptr.size(0) >= 1, kOp,
              ": qo_indptr must be [B + 1], got shape ", shape_of(t.qo_indptr));
  const int64_t batch = t.qo_indptr.size(0) - 1;
  check_vector(t.qo_indptr, "qo_indptr", at::kInt, batch + 1, device);
  if (mapped) {
    check_vector(*t.target_indptr, "target_indptr", at::kInt, batch + 1, device);
    check_vector(*t.bonus_tokens, "bonus_tokens", at::kLong, batch, device);
  }

  const int64_t mode = t.mode;
  TORCH_CHECK(mode >= 0 && mode <= 3, kOp,
              ": mode must be 0 (greedy), 1 (rejection, token rule), 2 (typical) or 3 (rejection, traversal rule), "
              "got ", mode);
  const bool rejection = mode == 1 || mode == 3;
  TORCH_CHECK(t.width >= 1 && t.width <= kMaxVerifyNodes, kOp, ": width (max_depth + 1) must be in [1, ",
              kMaxVerifyNodes, "], got ", t.width);
  const bool sampled = mode != 0;
  check_optional(t.temperature, sampled, "temperature", at::kFloat, batch, device, mode);
  check_optional(t.top_k, rejection, "top_k", at::kInt, batch, device, mode);
  check_optional(t.top_p, rejection, "top_p", at::kFloat, batch, device, mode);
  check_optional(t.posterior_threshold, mode == 2, "posterior_threshold", at::kFloat, batch, device, mode);
  check_optional(t.posterior_alpha, mode == 2, "posterior_alpha", at::kFloat, batch, device, mode);
  TORCH_CHECK(!t.min_p.has_value() || rejection, kOp, ": min_p is only used in modes 1 and 3 (rejection); pass None");
  if (t.min_p.has_value()) check_vector(*t.min_p, "min_p", at::kFloat, batch, device);
  if (t.allowed_tokens.has_value()) {
    const at::Tensor& m = *t.allowed_tokens;
    const int64_t words = (vocab + 31) / 32;
    TORCH_CHECK(m.dim() == 2 && m.size(0) == rows && m.size(1) == words, kOp, ": allowed_tokens must be [",
                mapped ? "R" : "N", "=", rows, ", ceil(V / 32)=", words,
                "] (a packed bitmask per row of target_logits), got shape ", shape_of(m));
    TORCH_CHECK(m.scalar_type() == at::kInt, kOp, ": allowed_tokens must be int32, got ",
                dtype_name(m.scalar_type()));
    TORCH_CHECK(m.device() == device, kOp, ": allowed_tokens is on ", m.device(), " but target_logits is on ",
                device);
    TORCH_CHECK(words <= 1 || m.stride(1) == 1, kOp,
                ": allowed_tokens must be contiguous in its last dim, got strides ", m.strides());
  }
  if (t.draft_probs.has_value()) {
    const at::Tensor& q = *t.draft_probs;
    TORCH_CHECK(rejection, kOp, ": draft_probs is only used in modes 1 and 3 (rejection)");
    TORCH_CHECK(q.dim() == 2 && q.size(0) == rows && q.size(1) == vocab, kOp, ": draft_probs must be [",
                mapped ? "R" : "N", "=", rows, ", V=", vocab, "] (the rows of target_logits), got shape ",
                shape_of(q));
    TORCH_CHECK(is_float_dtype(q.scalar_type()), kOp, ": draft_probs must be float32, bfloat16 or float16, got ",
                dtype_name(q.scalar_type()));
    TORCH_CHECK(q.device() == device, kOp, ": draft_probs is on ", q.device(), " but target_logits is on ",
                device);
    TORCH_CHECK(vocab <= 1 || q.stride(1) == 1, kOp, ": draft_probs must be contiguous in its last dim, got strides ",
                q.strides());
  }
  TORCH_CHECK(!(t.uniforms.has_value() && t.philox.has_value()), kOp, ": pass uniforms or philox, not both");
  TORCH_CHECK(!sampled || t.uniforms.has_value() || t.philox.has_value(), kOp,
              ": mode ", mode, " samples and needs uniforms [N] or philox [2]");
  if (t.uniforms.has_value()) check_vector(*t.uniforms, "uniforms", at::kFloat, n, device);
  if (t.philox.has_value()) check_vector(*t.philox, "philox", at::kLong, 2, device);
}

void check_verify_values(const VerifyTensors& t) {
  const int64_t batch = t.qo_indptr.size(0) - 1;
  const int64_t n = t.draft_tokens.size(0);
  const int32_t* indptr = t.qo_indptr.data_ptr<int32_t>();
  check_indptr_values(kOp, "qo_indptr", indptr, batch, n, "nodes");
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t len = int64_t(indptr[b + 1]) - indptr[b];
    TORCH_CHECK(len <= kMaxVerifyNodes, kOp, ": request ", b, " has ", len, " nodes (qo_indptr); at most ",
                kMaxVerifyNodes, " are supported");
  }
  if (t.target_indptr.has_value()) {
    check_indptr_values(kOp, "target_indptr", t.target_indptr->data_ptr<int32_t>(), batch, t.target_logits.size(0),
                        "rows of target_logits");
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_outputs(const VerifyTensors& t) {
  const int64_t batch = t.qo_indptr.size(0) - 1;
  const auto opts = t.target_logits.options();
  return {at::empty({batch}, opts.dtype(at::kInt)), at::empty({batch, t.width}, opts.dtype(at::kInt)),
          at::empty({batch, t.width}, opts.dtype(at::kLong))};
}

VerifyArgs verify_args(const VerifyTensors& t, at::Tensor& num_accepted, at::Tensor& accepted_nodes,
                       at::Tensor& tokens) {
  TORCH_CHECK(accepted_nodes.is_contiguous() && tokens.is_contiguous(), kOp, ": outputs must be contiguous");
  VerifyArgs a{};
  a.mode = static_cast<VerifyMode>(t.mode);
  a.draft_tokens = t.draft_tokens.data_ptr<int64_t>();
  a.parents = t.parents.data_ptr<int32_t>();
  a.qo_indptr = t.qo_indptr.data_ptr<int32_t>();
  a.logits = t.target_logits.data_ptr();
  a.logits_dtype = dtype_of(kOp, t.target_logits);
  a.logits_stride = t.target_logits.stride(0);
  a.logits_are_probs = t.target_is_probs;
  if (t.draft_probs.has_value()) {
    a.draft_probs = t.draft_probs->data_ptr();
    a.probs_dtype = dtype_of(kOp, *t.draft_probs);
    a.probs_stride = t.draft_probs->stride(0);
  }
  a.temperature = ptr_or_null<float>(t.temperature);
  a.top_k = ptr_or_null<int32_t>(t.top_k);
  a.top_p = ptr_or_null<float>(t.top_p);
  a.posterior_threshold = ptr_or_null<float>(t.posterior_threshold);
  a.posterior_alpha = ptr_or_null<float>(t.posterior_alpha);
  a.uniforms = ptr_or_null<float>(t.uniforms);
  a.philox = ptr_or_null<int64_t>(t.philox);
  a.batch = t.qo_indptr.size(0) - 1;
  a.num_tokens = t.draft_tokens.size(0);
  a.num_rows = t.target_logits.size(0);
  a.target_indptr = ptr_or_null<int32_t>(t.target_indptr);
  a.bonus_tokens = ptr_or_null<int64_t>(t.bonus_tokens);
  a.vocab = t.target_logits.size(1);
  a.min_p = ptr_or_null<float>(t.min_p);
  if (t.allowed_tokens.has_value()) {
    a.allowed = t.allowed_tokens->data_ptr<int32_t>();
    a.allowed_stride = t.allowed_tokens->stride(0);
  }
  a.width = static_cast<int32_t>(t.width);
  a.num_accepted = num_accepted.data_ptr<int32_t>();
  a.accepted_nodes = accepted_nodes.data_ptr<int32_t>();
  a.tokens = tokens.data_ptr<int64_t>();
  return a;
}

}  // namespace glue
}  // namespace specdec

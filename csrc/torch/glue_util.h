// Message helpers shared by every op's argument checks.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "specdec/dtype.h"

namespace specdec {
namespace glue {

inline std::string shape_of(const at::Tensor& t) { return c10::str(t.sizes()); }

// The names the Python layer prints (float16, not Half).
inline std::string dtype_name(at::ScalarType s) {
  switch (s) {
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    default: return c10::toString(s);
  }
}

inline bool is_float_dtype(at::ScalarType s) { return s == at::kHalf || s == at::kBFloat16 || s == at::kFloat; }

inline DType dtype_of(const char* op, const at::Tensor& t) {
  const auto s = t.scalar_type();
  TORCH_CHECK(is_float_dtype(s), op, ": unsupported dtype ", dtype_name(s));
  return s == at::kHalf ? DType::kFloat16 : s == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat32;
}

// An indptr's values (host memory): [0] == 0, [batch] == total (the number of
// `what`), never decreasing. `name` names the argument in the message.
inline void check_indptr_values(const char* op, const char* name, const int32_t* indptr, int64_t batch,
                                int64_t total, const char* what) {
  TORCH_CHECK(indptr[0] == 0, op, ": ", name, "[0] must be 0, got ", indptr[0]);
  TORCH_CHECK(indptr[batch] == total, op, ": ", name, "[B] must equal the number of ", what, " ", total, ", got ",
              indptr[batch]);
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(indptr[b + 1] >= indptr[b], op, ": ", name, " must be non-decreasing, but ", name, "[", b + 1,
                "] = ", indptr[b + 1], " < ", name, "[", b, "] = ", indptr[b]);
  }
}

}  // namespace glue
}  // namespace specdec

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

}  // namespace glue
}  // namespace specdec

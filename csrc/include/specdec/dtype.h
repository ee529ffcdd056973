// Element types of the floating-point tensors the kernels read.
#pragma once

#include <cstdint>

namespace specdec {

enum class DType : int32_t { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2 };

}  // namespace specdec

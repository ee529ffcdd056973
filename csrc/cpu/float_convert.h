// Bit-exact conversions between float and the 16-bit float formats, and the
// element traits the CPU kernels are templated on. CPU-internal.
#pragma once

#include <cstdint>
#include <cstring>

#include "specdec/dtype.h"

namespace specdec {
namespace cpu {

inline float float_of_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t bits_of_float(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// IEEE binary16 -> float, exact (subnormals, inf and NaN included). Without
// branches, so a loop of conversions vectorises.
inline float half_to_float(uint16_t h) {
  constexpr uint32_t kShiftedExp = 0x7c00u << 13;  // binary16 exponent mask, moved to float's place
  const uint32_t bits = uint32_t(h & 0x7fffu) << 13;
  const uint32_t exp = bits & kShiftedExp;
  const uint32_t is_special = 0u - uint32_t(exp == kShiftedExp);  // all ones for inf / NaN
  const uint32_t is_subnormal = 0u - uint32_t(exp == 0);
  uint32_t u = bits + (uint32_t(127 - 15) << 23);  // rebias the exponent
  u += is_special & (uint32_t(128 - 16) << 23);    // inf / NaN: all exponent bits set
  // Subnormal (or zero): renormalise through a float subtraction.
  const uint32_t sub = bits_of_float(float_of_bits(u + (1u << 23)) - float_of_bits(uint32_t(113) << 23));
  u = (sub & is_subnormal) | (u & ~is_subnormal);
  return float_of_bits(u | (uint32_t(h & 0x8000u) << 16));
}

// float -> IEEE binary16, round to nearest even; overflow to inf, NaN stays NaN.
inline uint16_t float_to_half(float f) {
  uint32_t u = bits_of_float(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint16_t h;
  if (u >= (uint32_t(127 + 16) << 23)) {  // |f| >= 65536 (or inf, NaN)
    h = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (u < (uint32_t(113) << 23)) {  // result subnormal or zero
    // Adding 0.5 aligns the 10 mantissa bits at the bottom of the float; the
    // float addition rounds to nearest even.
    const uint32_t magic = uint32_t((127 - 15) + (23 - 10) + 1) << 23;
    h = uint16_t(bits_of_float(float_of_bits(u) + float_of_bits(magic)) - magic);
  } else {
    const uint32_t odd = (u >> 13) & 1u;
    u += (uint32_t(15 - 127) << 23) + 0xfffu + odd;  // rebias and round; may carry into inf
    h = uint16_t(u >> 13);
  }
  return uint16_t(h | (sign >> 16));
}

inline float bf16_to_float(uint16_t b) { return float_of_bits(uint32_t(b) << 16); }

// float -> bfloat16, round to nearest even; NaN stays NaN (quiet).
inline uint16_t float_to_bf16(float f) {
  const uint32_t u = bits_of_float(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

template <DType>
struct Elem;
template <>
struct Elem<DType::kFloat32> {
  using T = float;
  static float load(float x) { return x; }
  static float store(float x) { return x; }
};
template <>
struct Elem<DType::kFloat16> {
  using T = uint16_t;
  static float load(uint16_t x) { return half_to_float(x); }
  static uint16_t store(float x) { return float_to_half(x); }
};
template <>
struct Elem<DType::kBFloat16> {
  using T = uint16_t;
  static float load(uint16_t x) { return bf16_to_float(x); }
  static uint16_t store(float x) { return float_to_bf16(x); }
};

}  // namespace cpu
}  // namespace specdec

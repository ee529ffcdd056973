// The uniform draws of the verify ops when no explicit uniforms are given:
// Philox4x32-10 (Salmon et al. 2011) with key (seed lo, seed hi) and counter
// (counter lo, counter hi, 0, 0), the stream Triton's tl.randint(seed, counter)
// produces, so every backend and the Python reference draw the same numbers.
#pragma once

#include <cstdint>

#include "specdec/hd.h"

namespace specdec {

// Uniform in [0, 1): the top 24 bits of the first output word, exact in float.
SPECDEC_HD float philox_uniform(uint64_t seed, uint64_t counter) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * c0;
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p1);
    c3 = uint32_t(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return float(c0 >> 8) * (1.0f / 16777216.0f);
}

}  // namespace specdec

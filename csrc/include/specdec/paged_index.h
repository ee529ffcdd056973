// Position -> byte offset in a paged cache, shared by the CPU and CUDA kernels
// so both skip exactly the same out-of-range entries.
#pragma once

#include <cstdint>

#include "specdec/hd.h"
#include "specdec/kv_cache.h"

namespace specdec {

// Byte offset of (sequence b, position pos, head 0) inside a layer, or -1 when
// pos or the block id it maps to is out of range.
SPECDEC_HD int64_t paged_row_offset(const PagedLayout& layout, const BlockTable& blocks,
                                    int64_t b, int64_t pos) {
  if (pos < 0 || layout.block_size <= 0) return -1;
  const int64_t logical = pos / layout.block_size;
  if (logical >= blocks.max_blocks) return -1;
  const int64_t block = blocks.table[b * blocks.stride + logical];
  if (block < 0 || block >= layout.num_blocks) return -1;
  return block * layout.stride_block + (pos % layout.block_size) * layout.stride_token;
}

// Sequence owning ragged token t: the b with qo_indptr[b] <= t < qo_indptr[b+1],
// or -1. A binary search, so a malformed (non-monotone) indptr still ends.
SPECDEC_HD int64_t sequence_of_token(const int32_t* qo_indptr, int64_t batch, int64_t t) {
  int64_t lo = 0, hi = batch;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (qo_indptr[mid] <= t) lo = mid; else hi = mid;
  }
  if (batch <= 0 || t < qo_indptr[lo] || t >= qo_indptr[lo + 1]) return -1;
  return lo;
}

}  // namespace specdec

// CPU kernels of the KV-cache ops: the same byte moves and the same skipping
// of out-of-range entries as the CUDA kernels, one memmove per row.
#include <cstring>

#include "specdec/kv_cache.h"
#include "specdec/paged_index.h"

namespace specdec {

void append_kv_cpu(const AppendKVArgs& a, int64_t begin, int64_t end) {
  for (int64_t t = begin; t < end; ++t) {
    const int64_t b = sequence_of_token(a.qo_indptr, a.blocks.batch, t);
    if (b < 0 || a.blocks.prefix_lens[b] < 0) continue;
    const int64_t dst =
        paged_row_offset(a.layout, a.blocks, b, a.blocks.prefix_lens[b] + t - a.qo_indptr[b]);
    if (dst < 0) continue;
    for (int64_t h = 0; h < a.layout.num_heads; ++h) {
      const int64_t d = dst + h * a.layout.stride_head;
      std::memcpy(static_cast<char*>(a.k_cache) + d,
                  static_cast<const char*>(a.k) + t * a.k_stride_token + h * a.k_stride_head,
                  size_t(a.layout.row_bytes));
      std::memcpy(static_cast<char*>(a.v_cache) + d,
                  static_cast<const char*>(a.v) + t * a.v_stride_token + h * a.v_stride_head,
                  size_t(a.layout.row_bytes));
    }
  }
}

int64_t compact_kv_cpu_work_items(const CompactKVArgs& a) { return a.num_layers * a.blocks.batch; }

// Work item = (layer, sequence). Rows are moved in increasing j, which is
// safe in place: destination j is only ever the source of an earlier row.
void compact_kv_cpu(const CompactKVArgs& a, int64_t begin, int64_t end) {
  for (int64_t item = begin; item < end; ++item) {
    const int64_t layer = item / a.blocks.batch;
    const int64_t b = item % a.blocks.batch;
    const int64_t prefix = a.blocks.prefix_lens[b];
    int64_t n = int64_t(a.num_accepted[b]) + 1;
    if (n > a.path_width) n = a.path_width;
    if (prefix < 0) continue;
    const int32_t* nodes = a.accepted_nodes + b * a.accepted_stride;
    char* caches[2] = {static_cast<char*>(a.k_layers[layer]), static_cast<char*>(a.v_layers[layer])};
    for (int64_t j = 1; j < n; ++j) {
      const int64_t node = nodes[j];
      if (node <= j) continue;
      const int64_t src = paged_row_offset(a.layout, a.blocks, b, prefix + node);
      const int64_t dst = paged_row_offset(a.layout, a.blocks, b, prefix + j);
      if (src < 0 || dst < 0) continue;
      for (char* base : caches) {
        for (int64_t h = 0; h < a.layout.num_heads; ++h) {
          const int64_t off = h * a.layout.stride_head;
          std::memmove(base + dst + off, base + src + off, size_t(a.layout.row_bytes));
        }
      }
    }
  }
}

}  // namespace specdec

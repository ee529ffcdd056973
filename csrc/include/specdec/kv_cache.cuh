// CUDA kernels of the KV-cache ops, header-only and templated on the vector
// type that moves bytes (uint4 = 16 B down to uint8_t), so a runtime can
// instantiate them in its own translation units. Launchers: csrc/cuda/kv_cache.cu.
#pragma once

#include <cstdint>

#include "specdec/kv_cache.h"
#include "specdec/paged_index.h"

namespace specdec {
namespace kernels {

struct LayerPointers {
  void* k[kMaxLayersPerLaunch];
  void* v[kMaxLayersPerLaunch];
};

// One CTA per token (blockIdx.x); its threads stride over the token's
// num_heads * row_bytes / sizeof(Vec) vectors.
template <typename Vec>
__global__ void append_kv_kernel(AppendKVArgs a) {
  const int64_t t = blockIdx.x;
  const int64_t b = sequence_of_token(a.qo_indptr, a.blocks.batch, t);
  if (b < 0) return;
  const int64_t prefix = a.blocks.prefix_lens[b];
  if (prefix < 0) return;
  const int64_t dst = paged_row_offset(a.layout, a.blocks, b, prefix + t - a.qo_indptr[b]);
  if (dst < 0) return;

  const int64_t vecs_per_row = a.layout.row_bytes / sizeof(Vec);
  const int64_t total = a.layout.num_heads * vecs_per_row;
  const char* k_src = static_cast<const char*>(a.k) + t * a.k_stride_token;
  const char* v_src = static_cast<const char*>(a.v) + t * a.v_stride_token;
  char* k_dst = static_cast<char*>(a.k_cache) + dst;
  char* v_dst = static_cast<char*>(a.v_cache) + dst;
  for (int64_t i = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.y) * blockDim.x) {
    const int64_t h = i / vecs_per_row;
    const int64_t c = (i % vecs_per_row) * sizeof(Vec);
    const Vec kv = *reinterpret_cast<const Vec*>(k_src + h * a.k_stride_head + c);
    const Vec vv = *reinterpret_cast<const Vec*>(v_src + h * a.v_stride_head + c);
    *reinterpret_cast<Vec*>(k_dst + h * a.layout.stride_head + c) = kv;
    *reinterpret_cast<Vec*>(v_dst + h * a.layout.stride_head + c) = vv;
  }
}

// Rows of a path moved per round; each thread keeps 2 * kCompactChunk vectors
// in flight.
constexpr int kCompactChunk = 8;

// One CTA per (sequence, layer, column slice). The in-place move is race-free
// without barriers between the copy rounds: every thread owns a fixed set of
// (head, byte) columns and walks the path in increasing j, reading all sources
// of a round before writing its destinations. Destination j can only be the
// source of an earlier row k < j (accepted_nodes[k] = j), which this same
// thread has already read; sources of later rows lie at positions > j.
template <typename Vec>
__global__ void compact_kv_kernel(CompactKVArgs a, LayerPointers layers) {
  extern __shared__ int64_t offsets[];  // [2 * path_width]: src, dst byte offsets or -1
  const int64_t b = blockIdx.x;
  const int layer = blockIdx.y;

  const int64_t prefix = a.blocks.prefix_lens[b];
  int64_t n = int64_t(a.num_accepted[b]) + 1;
  if (n > a.path_width) n = a.path_width;
  if (prefix < 0 || n <= 1) return;  // the root is already in place
  const int32_t* nodes = a.accepted_nodes + b * a.accepted_stride;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const int64_t node = nodes[j];
    int64_t src = -1, dst = -1;
    if (node > j) {  // node == j: already in place; node < j: invalid, skipped
      src = paged_row_offset(a.layout, a.blocks, b, prefix + node);
      dst = paged_row_offset(a.layout, a.blocks, b, prefix + j);
    }
    offsets[2 * j] = (src < 0 || dst < 0) ? -1 : src;
    offsets[2 * j + 1] = dst;
  }
  __syncthreads();

  char* k_base = static_cast<char*>(layers.k[layer]);
  char* v_base = static_cast<char*>(layers.v[layer]);
  const int64_t vecs_per_row = a.layout.row_bytes / sizeof(Vec);
  const int64_t total = a.layout.num_heads * vecs_per_row;
  for (int64_t i = blockIdx.z * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.z) * blockDim.x) {
    const int64_t col = (i / vecs_per_row) * a.layout.stride_head + (i % vecs_per_row) * sizeof(Vec);
    for (int64_t j0 = 1; j0 < n; j0 += kCompactChunk) {
      Vec kr[kCompactChunk], vr[kCompactChunk];
#pragma unroll
      for (int u = 0; u < kCompactChunk; ++u) {
        const int64_t j = j0 + u;
        if (j < n && offsets[2 * j] >= 0) {
          kr[u] = *reinterpret_cast<const Vec*>(k_base + offsets[2 * j] + col);
          vr[u] = *reinterpret_cast<const Vec*>(v_base + offsets[2 * j] + col);
        }
      }
#pragma unroll
      for (int u = 0; u < kCompactChunk; ++u) {
        const int64_t j = j0 + u;
        if (j < n && offsets[2 * j] >= 0) {
          *reinterpret_cast<Vec*>(k_base + offsets[2 * j + 1] + col) = kr[u];
          *reinterpret_cast<Vec*>(v_base + offsets[2 * j + 1] + col) = vr[u];
        }
      }
    }
  }
}

}  // namespace kernels
}  // namespace specdec

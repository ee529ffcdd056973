// CUDA build_dynamic_tree (header-only): one CTA per request, the request's
// candidates staged in shared memory (rules in specdec/dynamic_tree.h). The
// reference's sequential parts become parallel ones: a candidate's depth and
// whether its ancestors are all selected come from walking its ancestor
// chain; its rank is a count of the eligible candidates ranking before it;
// node indices are a block-wide prefix count in index order. Every phase
// reads what other threads wrote in the one before it, so phases are
// separated by __syncthreads().
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "specdec/dynamic_tree.h"

namespace specdec {
namespace kernels {
namespace dynamic_tree {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ bool usable(float s) { return s == s && s != -__builtin_huge_valf(); }

// grid = batch, block = kThreads.
__global__ void __launch_bounds__(kThreads) build_kernel(const DynamicTreeArgs a) {
  __shared__ float score[kMaxDynamicCandidates];
  __shared__ int32_t par[kMaxDynamicCandidates];
  __shared__ int32_t depth[kMaxDynamicCandidates];  // 0: not eligible
  __shared__ int32_t node[kMaxDynamicCandidates];   // selected (1/0), then the node index (-1: not kept)
  __shared__ int32_t warp_count[kWarps];
  const int64_t b = blockIdx.x, m = a.num_cand, width = int64_t(a.num_keep) + 1;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int64_t j = tid; j < m; j += kThreads) {
    score[j] = a.cand_scores[b * m + j];
    par[j] = a.cand_parents[b * m + j];
  }
  // Inert rows; the kept ones are written over them after the barriers below.
  for (int64_t n = tid; n < width; n += kThreads) {
    a.tokens[b * width + n] = n == 0 ? a.root_tokens[b] : 0;
    a.parents[b * width + n] = -1;
    a.depths[b * width + n] = 0;
    a.source[b * width + n] = -1;
    for (int32_t w = 0; w < a.words; ++w) {
      a.tree_mask[(b * width + n) * a.words + w] = n / 32 == w ? int32_t(1u << (n % 32)) : 0;
    }
  }
  __syncthreads();
  for (int64_t j = tid; j < m; j += kThreads) {
    bool ok = usable(score[j]);
    int32_t d = 1;
    int64_t cur = j, p = par[j];
    while (ok && p != -1) {
      ok = p >= 0 && p < cur && usable(score[p]);
      if (!ok) break;  // p is out of range: never read par[p]
      ++d;
      cur = p;
      p = par[p];
    }
    depth[j] = ok ? d : 0;
  }
  __syncthreads();
  for (int64_t j = tid; j < m; j += kThreads) {
    int64_t rank = 0;
    if (depth[j] > 0) {
      for (int64_t i = 0; i < m && rank < a.num_keep; ++i) {
        rank += depth[i] > 0 && ranks_before(score[i], depth[i], i, score[j], depth[j], j);
      }
    }
    node[j] = depth[j] > 0 && rank < a.num_keep;
  }
  __syncthreads();
  // Kept: selected with every ancestor selected. Decided per chunk of
  // kThreads candidates, then numbered by a block-wide count.
  int32_t carry = 0;
  for (int64_t c0 = 0; c0 < m; c0 += kThreads) {
    const int64_t j = c0 + tid;
    bool kept = j < m && node[j] != 0;
    // An ancestor in an earlier chunk holds its node index (> 0) or -1; one in
    // this chunk still holds its selected flag (1 or 0): kept needs > 0 of all.
    for (int64_t p = kept ? par[j] : -1; kept && p != -1; p = par[p]) kept = node[p] > 0;
    const unsigned ballot = __ballot_sync(0xffffffffu, kept);
    if (lane == 0) warp_count[warp] = __popc(ballot);
    // The counts are in, and every thread has read this chunk's flags (node[]
    // is written below).
    __syncthreads();
    int32_t before = carry, total = carry;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) before += warp_count[w];
      total += warp_count[w];
    }
    before += __popc(ballot & ((1u << lane) - 1u));
    if (j < m) node[j] = kept ? before + 1 : -1;
    carry = total;
    __syncthreads();  // the next chunk reads these indices and rewrites warp_count
  }
  for (int64_t j = tid; j < m; j += kThreads) {
    const int32_t n = node[j];
    if (n <= 0) continue;
    const int32_t p = par[j];
    const int64_t row = b * width + n;
    a.tokens[row] = a.cand_tokens[b * m + j];
    a.parents[row] = p == -1 ? 0 : node[p];
    a.depths[row] = depth[j];
    a.source[row] = int32_t(j);
    for (int32_t w = 0; w < a.words; ++w) {
      uint32_t bits = (w == 0 ? 1u : 0u) | (n / 32 == w ? 1u << (n % 32) : 0u);
      for (int32_t q = p; q != -1; q = par[q]) {
        const int32_t na = node[q];
        if (na / 32 == w) bits |= 1u << (na % 32);
      }
      a.tree_mask[row * a.words + w] = int32_t(bits);
    }
  }
  if (tid == 0) a.num_nodes[b] = carry + 1;
}

}  // namespace dynamic_tree
}  // namespace kernels
}  // namespace specdec

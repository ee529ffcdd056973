// Torch-free interface of tree attention: T tree tokens per sequence attend to
// the sequence's paged prefix (always fully visible) plus the tree tokens their
// packed mask row allows. Strides are in elements, not bytes.
#pragma once

#include <cstdint>

#include "specdec/dtype.h"
#include "specdec/kv_cache.h"

namespace specdec {

// Tree tokens per sequence the op is specified for (a mask row spans at most
// kMaxTreeWords int32 words). Longer trees are rejected by the callers.
constexpr int64_t kMaxTreeLen = 256;
constexpr int64_t kMaxTreeWords = kMaxTreeLen / 32;

struct TreeAttentionArgs {
  DType dtype;                 // of q, the caches and out
  const void* q;               // [num_tokens, num_q_heads, head_dim]
  int64_t q_stride_token, q_stride_head;
  const void* k_cache;         // [num_blocks, block_size, num_kv_heads, head_dim]
  const void* v_cache;         // same shape and strides as k_cache
  int64_t cache_stride_block, cache_stride_token, cache_stride_head;
  int64_t num_blocks, block_size;
  const int32_t* block_table;  // [batch, max_blocks]
  int64_t block_table_stride, max_blocks;
  const int32_t* prefix_lens;  // [batch]: tree node i sits at position prefix_lens[b] + i
  const int32_t* qo_indptr;    // [batch + 1]
  int64_t batch;
  // Packed mask [num_tokens, mask_words] (row of token t: bit j of word j / 32
  // set iff tree node j is visible). nullptr: causal among the tree tokens
  // (node i sees nodes 0..i). Bits at or past the sequence's tree length are
  // ignored.
  const int32_t* tree_mask;
  int64_t mask_stride, mask_words;
  void* out;                   // [num_tokens, num_q_heads, head_dim], contiguous
  float* lse;                  // [num_tokens, num_q_heads], natural-log sum of exp(scores), contiguous
  int64_t num_tokens, num_q_heads, num_kv_heads, head_dim;
  float sm_scale;
};

// Every backend defines the same edge cases, so results agree exactly in what
// is written: a row that sees no key at all (empty prefix, empty mask row)
// gets out = 0 and lse = -inf; a token outside every sequence (qo_indptr does
// not cover it) gets out = 0 and lse = -inf; keys whose position maps outside
// the block table or the pool are skipped (invisible). Callers reject such
// input before the launch where they can.

// CPU kernel (csrc/cpu): `begin`/`end` select work items (token, q head)
// pairs, so the caller may parallelise.
void tree_attention_cpu(const TreeAttentionArgs& args, int64_t begin, int64_t end);

}  // namespace specdec

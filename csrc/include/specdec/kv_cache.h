// Torch-free interface of the KV-cache ops: plain structs, raw pointers and a
// cudaStream_t, so that runtimes without PyTorch can call the same launchers.
//
// All KV moves are byte moves: a "row" is the D contiguous elements of one
// (token, KV head), row_bytes = D * sizeof(element); fp16, bf16 and fp32 (or
// anything else) share one kernel. Strides are in bytes.
#pragma once

#include <cstdint>

namespace specdec {

// A paged cache layer: [num_blocks, block_size, num_heads, D], the last dim
// contiguous, the other three at arbitrary (byte) strides.
struct PagedLayout {
  int64_t num_blocks;
  int64_t block_size;
  int64_t num_heads;
  int64_t row_bytes;
  int64_t stride_block;
  int64_t stride_token;
  int64_t stride_head;
};

// Where each sequence's positions live: position p of sequence b is slot
// p % block_size of block block_table[b * block_table_stride + p / block_size].
struct BlockTable {
  const int32_t* table;       // [batch, max_blocks]
  int64_t stride;             // elements between rows
  int64_t max_blocks;
  const int32_t* prefix_lens; // [batch]
  int64_t batch;
};

// append_kv: token t of sequence b (qo_indptr[b] <= t < qo_indptr[b+1]) goes to
// position prefix_lens[b] + t - qo_indptr[b].
struct AppendKVArgs {
  const void* k;              // [num_tokens, num_heads, D]
  const void* v;
  int64_t k_stride_token, k_stride_head;
  int64_t v_stride_token, v_stride_head;
  int64_t num_tokens;
  const int32_t* qo_indptr;   // [batch + 1]
  void* k_cache;
  void* v_cache;
  PagedLayout layout;
  BlockTable blocks;
};

// compact_kv: for every layer, row j of sequence b (0 <= j <= num_accepted[b])
// moves from position prefix_lens[b] + accepted_nodes[b, j] to position
// prefix_lens[b] + j. Valid paths are root first and strictly increasing, so
// accepted_nodes[b, j] >= j. The positions of a tree (from prefix_lens[b] on)
// must lie in blocks that no other sequence maps (shared blocks are for
// common prefixes only); otherwise two CTAs could move the same rows.
struct CompactKVArgs {
  void* const* k_layers;      // host array of num_layers device pointers
  void* const* v_layers;
  int64_t num_layers;
  PagedLayout layout;         // shared by every layer, K and V
  BlockTable blocks;
  const int32_t* accepted_nodes;  // [batch, path_width]
  int64_t accepted_stride;
  int64_t path_width;
  const int32_t* num_accepted;    // [batch]
};

// Layers per CUDA launch: their pointers travel in the kernel's parameter
// block (no device-side pointer table, no host-to-device copy, graph-safe).
constexpr int kMaxLayersPerLaunch = 96;
// The CUDA compaction stages one path's row offsets in shared memory.
constexpr int64_t kMaxPathWidth = 2048;

// Entries out of range (a token past qo_indptr[batch], a position past the
// block table, a block id outside the pool, a node index < j) are skipped:
// neither the CPU nor the CUDA kernels ever touch memory outside the given
// tensors. Raising on such input is the callers' job (the torch glue and the
// Python layer do).

// CPU kernels (csrc/cpu). `begin`/`end` select a range of work items so the
// caller may parallelise: tokens for append, (layer, sequence) pairs for compact.
void append_kv_cpu(const AppendKVArgs& args, int64_t begin, int64_t end);
int64_t compact_kv_cpu_work_items(const CompactKVArgs& args);
void compact_kv_cpu(const CompactKVArgs& args, int64_t begin, int64_t end);

}  // namespace specdec

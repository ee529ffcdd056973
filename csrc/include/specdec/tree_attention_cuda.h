// Host-side declarations of the tree-attention CUDA launchers
// (csrc/cuda/tree_attention.cu). Plain C++ can include it; it needs the CUDA
// toolkit's include path for cudaError_t and cudaStream_t.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "specdec/tree_attention.h"

namespace specdec {

// Most KV splits (flash-decoding partitions) one launch uses.
constexpr int kTreeAttentionMaxSplits = 32;

// Bytes of float32 workspace tree_attention_cuda needs for `args` (0 when it
// writes out/lse directly), and the number of KV splits it will use (when
// num_splits_out is not null). Host-only: reads no device data and never
// synchronises; the split count depends on the shapes (batch, heads, tokens,
// the block table's reach max_blocks * block_size) and on the current
// device's SM count, so call it with the device current that will run the
// launch. 0 (and 1 split) for arguments tree_attention_cuda rejects.
size_t tree_attention_cuda_workspace_bytes(const TreeAttentionArgs& args, int* num_splits_out);

// Launches the attention (and, with several splits, the merge) kernel on
// `stream`. `workspace` is device memory of at least the size above (may be
// null when that size is 0); it is scratch, clobbered by the launch. Returns
// cudaErrorInvalidValue for unsupported arguments (head_dim not 64/128/256,
// Hq not a positive multiple of Hkv, an unknown dtype, a workspace that is too
// small, sizes past the grid's reach) without launching; otherwise the launch's
// error. Never throws, never synchronises. Every out/lse row is written.
cudaError_t tree_attention_cuda(const TreeAttentionArgs& args, void* workspace, size_t workspace_bytes,
                                cudaStream_t stream);

// The same with a fixed split count in 1 .. kTreeAttentionMaxSplits instead of
// the heuristic (tests and tuning). The workspace size is for that count.
size_t tree_attention_cuda_workspace_bytes_for_splits(const TreeAttentionArgs& args, int num_splits);
cudaError_t tree_attention_cuda_with_splits(const TreeAttentionArgs& args, int num_splits, void* workspace,
                                            size_t workspace_bytes, cudaStream_t stream);

}  // namespace specdec

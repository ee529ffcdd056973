// Torch-free interface of build_dynamic_tree (specdec_kernels/dynamic_tree.py
// has the contract; specdec_kernels/reference/dynamic_tree.py the ground
// truth). Per request b, from its num_cand candidates (parent, token, score):
//
//   * depth: candidate j is eligible iff its score is neither NaN nor -inf
//     and its parent is -1 (depth 1) or an eligible candidate p < j (depth
//     depth(p) + 1). Malformed parents make a candidate ineligible.
//   * selected: the num_keep best eligible candidates by (score descending,
//     depth ascending, index ascending); kept: selected with every ancestor
//     selected.
//   * node 0 is the root (root_tokens[b]); kept candidates are nodes 1, 2,
//     ... in increasing candidate index.
//   * outputs, [batch, width = num_keep + 1] each (mask [batch, width,
//     words]): tokens, parents (local, -1 at the root and in inert rows),
//     depths, source (candidate index, -1 at the root), the packed ancestor
//     mask (bit j of row i: node j is i or an ancestor of i), num_nodes.
//     Rows past num_nodes are inert: token 0, parent -1, depth 0, source -1,
//     only their own mask bit.
#pragma once

#include <cstdint>

namespace specdec {

// Candidates per request and nodes per tree the op is specified for.
constexpr int64_t kMaxDynamicCandidates = 2048;
constexpr int64_t kMaxDynamicNodes = 256;

struct DynamicTreeArgs {
  const int32_t* cand_parents;  // [batch, num_cand]
  const int64_t* cand_tokens;   // [batch, num_cand]
  const float* cand_scores;     // [batch, num_cand]
  const int64_t* root_tokens;   // [batch]
  int64_t batch, num_cand;
  int32_t num_keep;             // width - 1, < kMaxDynamicNodes
  int32_t words;                // ceil(width / 32)
  int64_t* tokens;              // [batch, width]
  int32_t* parents;             // [batch, width]
  int32_t* depths;              // [batch, width]
  int32_t* tree_mask;           // [batch, width, words]
  int32_t* source;              // [batch, width]
  int32_t* num_nodes;           // [batch]
};

// The ranking: true iff candidate i (score si, depth di) comes before j.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline bool ranks_before(float si, int32_t di, int64_t i, float sj, int32_t dj, int64_t j) {
  return si > sj || (si == sj && (di < dj || (di == dj && i < j)));
}

// CPU kernel (csrc/cpu/dynamic_tree.cpp): requests [begin, end).
void build_dynamic_tree_cpu(const DynamicTreeArgs& args, int64_t begin, int64_t end);

}  // namespace specdec

// CPU build_dynamic_tree: per request, depths in index order, a sort by the
// ranking, and the kept candidates laid out in index order (rules in
// specdec/dynamic_tree.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "specdec/dynamic_tree.h"

namespace specdec {

void build_dynamic_tree_cpu(const DynamicTreeArgs& a, int64_t begin, int64_t end) {
  const int64_t width = int64_t(a.num_keep) + 1, m = a.num_cand;
  std::vector<int32_t> depth(m), node(m);
  std::vector<int64_t> order;
  std::vector<char> selected(m);
  for (int64_t b = begin; b < end; ++b) {
    const int32_t* par = a.cand_parents + b * m;
    const float* score = a.cand_scores + b * m;
    int64_t* tokens = a.tokens + b * width;
    int32_t* parents = a.parents + b * width;
    int32_t* depths = a.depths + b * width;
    int32_t* source = a.source + b * width;
    int32_t* mask = a.tree_mask + b * width * a.words;
    for (int64_t n = 0; n < width; ++n) {
      tokens[n] = 0;
      parents[n] = -1;
      depths[n] = 0;
      source[n] = -1;
      for (int32_t w = 0; w < a.words; ++w) mask[n * a.words + w] = n / 32 == w ? int32_t(1u << (n % 32)) : 0;
    }
    tokens[0] = a.root_tokens[b];
    order.clear();
    for (int64_t j = 0; j < m; ++j) {
      const float s = score[j];
      depth[j] = 0;
      if (std::isnan(s) || s == -INFINITY) continue;
      if (par[j] == -1) {
        depth[j] = 1;
      } else if (par[j] >= 0 && par[j] < j && depth[par[j]] > 0) {
        depth[j] = depth[par[j]] + 1;
      }
      if (depth[j] > 0) order.push_back(j);
    }
    std::sort(order.begin(), order.end(), [&](int64_t i, int64_t j) {
      return ranks_before(score[i], depth[i], i, score[j], depth[j], j);
    });
    std::fill(selected.begin(), selected.end(), 0);
    for (size_t r = 0; r < order.size() && r < size_t(a.num_keep); ++r) selected[order[r]] = 1;
    int64_t count = 1;
    for (int64_t j = 0; j < m; ++j) {
      // Parents precede children, so node[] of a kept parent is already set.
      node[j] = -1;
      if (!selected[j] || (par[j] != -1 && node[par[j]] < 0)) continue;
      const int64_t n = count++;
      node[j] = int32_t(n);
      const int32_t p = par[j] == -1 ? 0 : node[par[j]];
      tokens[n] = a.cand_tokens[b * m + j];
      parents[n] = p;
      depths[n] = depth[j];
      source[n] = int32_t(j);
      for (int32_t w = 0; w < a.words; ++w) mask[n * a.words + w] = mask[p * a.words + w];
      mask[n * a.words + n / 32] |= int32_t(1u << (n % 32));
    }
    a.num_nodes[b] = int32_t(count);
  }
}

}  // namespace specdec

// build_dynamic_tree_cuda against build_dynamic_tree_cpu on random candidate
// sets, exactly (an index op): EAGLE-2-shaped sets, arbitrary forests with
// score ties, -inf padding (and candidates below it), rising scores,
// malformed parents, more candidates than a CTA has threads, masks of
// several words, num_keep 0 and above the candidates. Outputs are poisoned
// first, so an unwritten element fails. Exits 77 (skipped) without a CUDA
// device.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "specdec/dynamic_tree.h"
#include "specdec/dynamic_tree_cuda.h"
#include "cuda_test_util.h"

namespace {

struct Case {
  int64_t batch, m;
  int32_t keep;
  std::vector<int32_t> parents;
  std::vector<int64_t> tokens, roots;
  std::vector<float> scores;
};

// ties: scores on a grid of 1/2; padding: that fraction -inf; rising: some
// children above their parent; malformed: some parents out of range.
Case make_case(std::mt19937& rng, int64_t batch, int64_t m, int32_t keep, bool ties, float padding, bool rising,
               bool malformed) {
  Case c{batch, m, keep, {}, {}, {}, {}};
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < m; ++j) {
      int32_t p = j == 0 || u(rng) < 0.2f ? -1 : int32_t(rng() % uint32_t(j));
      if (malformed && u(rng) < 0.05f) p = u(rng) < 0.5f ? int32_t(j + rng() % 5) : -2 - int32_t(rng() % 3);
      float step = ties ? 0.5f * float(rng() % 3) : 2.f * u(rng);
      if (rising && u(rng) < 0.2f) step = -1.f;
      const float base = p >= 0 && p < j ? c.scores[b * m + p] : 0.f;
      c.parents.push_back(p);
      c.scores.push_back(u(rng) < padding ? -INFINITY : base - step);
      c.tokens.push_back(int64_t(rng() % 1000));
    }
    c.roots.push_back(int64_t(rng() % 1000));
  }
  return c;
}

specdec::DynamicTreeArgs args_for(const Case& c, const int32_t* par, const int64_t* tok, const float* sc,
                                  const int64_t* roots) {
  specdec::DynamicTreeArgs a{};
  a.cand_parents = par;
  a.cand_tokens = tok;
  a.cand_scores = sc;
  a.root_tokens = roots;
  a.batch = c.batch;
  a.num_cand = c.m;
  a.num_keep = c.keep;
  a.words = (c.keep + 1 + 31) / 32;
  return a;
}

// Returns the number of differing requests.
int compare(const Case& c) {
  const int64_t width = c.keep + 1, words = (width + 31) / 32, n = c.batch * width;
  std::vector<int64_t> tok(n);
  std::vector<int32_t> par(n), dep(n), src(n), mask(n * words), num(c.batch);
  specdec::DynamicTreeArgs h = args_for(c, c.parents.data(), c.tokens.data(), c.scores.data(), c.roots.data());
  h.tokens = tok.data();
  h.parents = par.data();
  h.depths = dep.data();
  h.tree_mask = mask.data();
  h.source = src.data();
  h.num_nodes = num.data();
  specdec::build_dynamic_tree_cpu(h, 0, c.batch);

  int32_t* d_par_in = to_device(c.parents);
  int64_t* d_tok_in = to_device(c.tokens);
  float* d_sc = to_device(c.scores);
  int64_t* d_roots = to_device(c.roots);
  int64_t* d_tok = to_device(std::vector<int64_t>(n, 0x5a5a5a5a));
  int32_t* d_par = to_device(std::vector<int32_t>(n, 0x5a5a5a5a));
  int32_t* d_dep = to_device(std::vector<int32_t>(n, 0x5a5a5a5a));
  int32_t* d_src = to_device(std::vector<int32_t>(n, 0x5a5a5a5a));
  int32_t* d_mask = to_device(std::vector<int32_t>(n * words, 0x5a5a5a5a));
  int32_t* d_num = to_device(std::vector<int32_t>(c.batch, 0x5a5a5a5a));
  specdec::DynamicTreeArgs d = args_for(c, d_par_in, d_tok_in, d_sc, d_roots);
  d.tokens = d_tok;
  d.parents = d_par;
  d.depths = d_dep;
  d.tree_mask = d_mask;
  d.source = d_src;
  d.num_nodes = d_num;
  CHECK_CUDA(specdec::build_dynamic_tree_cuda(d, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  const auto g_tok = to_host(d_tok, n);
  const auto g_par = to_host(d_par, n), g_dep = to_host(d_dep, n), g_src = to_host(d_src, n);
  const auto g_mask = to_host(d_mask, n * words), g_num = to_host(d_num, c.batch);
  int differ = 0;
  for (int64_t b = 0; b < c.batch; ++b) {
    bool same = g_num[b] == num[b];
    for (int64_t i = b * width; i < (b + 1) * width; ++i) {
      same &= g_tok[i] == tok[i] && g_par[i] == par[i] && g_dep[i] == dep[i] && g_src[i] == src[i];
      for (int64_t w = 0; w < words; ++w) same &= g_mask[i * words + w] == mask[i * words + w];
    }
    if (!same && differ == 0) std::printf("first difference: request %lld (m %lld, keep %d)\n", (long long)b,
                                          (long long)c.m, c.keep);
    differ += !same;
  }
  for (void* p : {(void*)d_par_in, (void*)d_tok_in, (void*)d_sc, (void*)d_roots, (void*)d_tok, (void*)d_par,
                  (void*)d_dep, (void*)d_src, (void*)d_mask, (void*)d_num}) {
    cudaFree(p);
  }
  return differ;
}

}  // namespace

int main() {
  if (no_cuda_device()) return 77;
  std::mt19937 rng(19);
  int differ = 0, requests = 0;
  struct Shape {
    int64_t batch, m;
    int32_t keep;
    bool ties;
    float padding;
    bool rising, malformed;
  };
  const Shape shapes[] = {
      {4, 60, 20, true, 0.f, false, false},    {3, 80, 30, false, 0.3f, false, false},
      {2, 12, 40, false, 0.5f, false, false},  {3, 50, 25, false, 0.f, true, false},
      {3, 70, 30, false, 0.1f, false, true},   {2, 600, 100, true, 0.05f, false, false},
      {1, 2048, 255, false, 0.f, false, false}, {2, 10, 0, false, 0.f, false, false},
      {0, 10, 5, false, 0.f, false, false},    {2, 0, 7, false, 0.f, false, false},
  };
  for (const Shape& s : shapes) {
    const Case c = make_case(rng, s.batch, s.m, s.keep, s.ties, s.padding, s.rising, s.malformed);
    differ += compare(c);
    requests += int(c.batch);
  }
  if (differ > 0) {
    std::printf("FAIL: %d of %d requests differ\n", differ, requests);
    return 1;
  }
  std::printf("test_dynamic_tree_cuda: %d requests, all equal to the CPU kernel, passed\n", requests);
  return 0;
}

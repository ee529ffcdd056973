// Torch-free checks of verify_cpu: known answers for greedy chains and trees,
// the Philox stream against values from the Python reference, invalid rows,
// empty requests, and point-mass rejection at its extremes. Exit status 1 on
// any failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

#include "specdec/philox.h"
#include "specdec/sampling.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

struct Batch {
  std::vector<int64_t> tokens;
  std::vector<int32_t> parents, indptr{0};
  std::vector<float> logits;  // [N, vocab]
  int64_t vocab;

  explicit Batch(int64_t v) : vocab(v) {}

  // A request whose node i has parent par[i], token tok[i] and logits rows[i].
  void add(const std::vector<int32_t>& par, const std::vector<int64_t>& tok, const std::vector<std::vector<float>>& rows) {
    parents.insert(parents.end(), par.begin(), par.end());
    tokens.insert(tokens.end(), tok.begin(), tok.end());
    for (const auto& r : rows) logits.insert(logits.end(), r.begin(), r.end());
    indptr.push_back(indptr.back() + int32_t(par.size()));
  }

  struct Result {
    std::vector<int32_t> num_accepted, nodes;
    std::vector<int64_t> out_tokens;
  };

  Result run(specdec::VerifyMode mode, int32_t width, const std::vector<float>* uniforms = nullptr,
             const int64_t* philox = nullptr) {
    const int64_t batch = int64_t(indptr.size()) - 1;
    Result r{std::vector<int32_t>(batch, 777), std::vector<int32_t>(batch * width, 777),
             std::vector<int64_t>(batch * width, 777)};
    std::vector<float> temperature(batch, 1.f), top_p(batch, 1.f);
    std::vector<int32_t> top_k(batch, 0);
    specdec::VerifyArgs a{};
    a.mode = mode;
    a.draft_tokens = tokens.data();
    a.parents = parents.data();
    a.qo_indptr = indptr.data();
    a.logits = logits.data();
    a.logits_dtype = specdec::DType::kFloat32;
    a.logits_stride = vocab;
    if (mode == specdec::VerifyMode::kRejection) {
      a.temperature = temperature.data();
      a.top_k = top_k.data();
      a.top_p = top_p.data();
    }
    a.uniforms = uniforms != nullptr ? uniforms->data() : nullptr;
    a.philox = philox;
    a.batch = batch;
    a.num_tokens = int64_t(tokens.size());
    a.vocab = vocab;
    a.width = width;
    a.num_accepted = r.num_accepted.data();
    a.accepted_nodes = r.nodes.data();
    a.tokens = r.out_tokens.data();
    specdec::verify_cpu(a, 0, batch);
    return r;
  }
};

std::vector<float> peak(int64_t vocab, int64_t at) {
  std::vector<float> row(vocab, 0.f);
  row[at] = 5.f;
  return row;
}

void test_philox_matches_reference() {
  // specdec_kernels.reference.sampling.philox_uniforms(seed, offset, 3) * 2^24.
  struct Case {
    uint64_t seed, offset;
    uint32_t expected[3];
  } cases[] = {{0, 0, {6694888, 16311500, 326307}},
               {12345, 7, {10419801, 6430331, 5510039}},
               {(uint64_t(1) << 40) + 3, (uint64_t(1) << 33) + 5, {8904439, 4435604, 4714071}}};
  for (const Case& c : cases) {
    for (int i = 0; i < 3; ++i) {
      const float u = specdec::philox_uniform(c.seed, c.offset + i);
      expect(u == float(c.expected[i]) / 16777216.f, "philox_uniform equals the Python reference");
    }
  }
}

void test_greedy_known_answers() {
  Batch batch(6);
  // Chain: argmax after root is 2, after node 1 is 4; node 2 drafts 1 but argmax is 3.
  batch.add({-1, 0, 1, 2}, {0, 2, 4, 1}, {peak(6, 2), peak(6, 4), peak(6, 3), peak(6, 0)});
  // Tree: root's children 1 (token 5) and 2 (token 1); argmax 1 -> node 2; node 3 child of 2 with argmax.
  batch.add({-1, 0, 0, 2}, {0, 5, 1, 0}, {peak(6, 1), peak(6, 5), peak(6, 0), peak(6, 3)});
  batch.indptr.push_back(batch.indptr.back());  // an empty request
  const auto r = batch.run(specdec::VerifyMode::kGreedy, 4);
  expect(r.num_accepted[0] == 2 && r.num_accepted[1] == 2 && r.num_accepted[2] == 0, "greedy num_accepted");
  const int32_t nodes[] = {0, 1, 2, -1, 0, 2, 3, -1, -1, -1, -1, -1};
  const int64_t toks[] = {2, 4, 3, -1, 1, 0, 3, -1, -1, -1, -1, -1};
  for (int i = 0; i < 12; ++i) {
    expect(r.nodes[i] == nodes[i], "greedy accepted_nodes");
    expect(r.out_tokens[i] == toks[i], "greedy tokens");
  }
  // Width 2 stops the walk after one drafted token; the bonus is read there.
  const auto narrow = batch.run(specdec::VerifyMode::kGreedy, 2);
  expect(narrow.num_accepted[0] == 1 && narrow.out_tokens[0] == 2 && narrow.out_tokens[1] == 4, "max_depth cut");
}

void test_invalid_rows_are_flagged() {
  Batch batch(4);
  std::vector<float> nan_row = peak(4, 1);
  nan_row[3] = std::numeric_limits<float>::quiet_NaN();
  batch.add({-1, 0}, {0, 1}, {peak(4, 1), nan_row});  // the walk reads row 1
  batch.add({-1, 0}, {0, 2}, {peak(4, 1), nan_row});  // row 1 is never read
  const auto r = batch.run(specdec::VerifyMode::kGreedy, 2);
  expect(r.num_accepted[0] == -1 && r.nodes[0] == -1 && r.out_tokens[0] == -1 && r.out_tokens[1] == -1,
         "NaN in a visited row flags the request");
  expect(r.num_accepted[1] == 0 && r.out_tokens[2] == 1, "NaN in an unvisited row is harmless");
}

void test_point_mass_rejection_extremes() {
  Batch batch(3);
  const std::vector<float> flat(3, 0.f);
  batch.add({-1, 0}, {0, 2}, {flat, flat});
  std::vector<float> accept_all{0.f, 0.f}, reject{0.5f, 0.9f};
  auto r = batch.run(specdec::VerifyMode::kRejection, 2, &accept_all);
  expect(r.num_accepted[0] == 1 && r.out_tokens[0] == 2 && r.out_tokens[1] == 0, "u = 0 accepts, draws token 0");
  r = batch.run(specdec::VerifyMode::kRejection, 2, &reject);
  // 0.9 >= p = 1/3: rejected; residual {1/2, 1/2, 0}, u_root = 0.5 -> token 1.
  expect(r.num_accepted[0] == 0 && r.out_tokens[0] == 1 && r.out_tokens[1] == -1, "rejection draws the residual");
  const int64_t philox[2] = {0, 0};
  r = batch.run(specdec::VerifyMode::kRejection, 2, nullptr, philox);
  // Draws 0.399 (root) and 0.972 (node 1): rejected, residual sample at 0.399 -> token 0.
  expect(r.num_accepted[0] == 0 && r.out_tokens[0] == 0, "in-kernel Philox draws");
}

}  // namespace

int main() {
  test_philox_matches_reference();
  test_greedy_known_answers();
  test_invalid_rows_are_flagged();
  test_point_mass_rejection_extremes();
  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("test_sampling_cpu: all passed\n");
  return 0;
}

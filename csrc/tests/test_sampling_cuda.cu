// verify_cuda against verify_cpu on random ragged batches of chains and
// trees, every mode, fp32 and bf16 logits or probabilities (logits_are_probs),
// with min_p and with an allowed_tokens bitmask
// with draft probabilities of the same dtype,
// explicit uniforms and in-kernel Philox, with and without a row map
// (target_indptr + bonus_tokens: a random suffix of each request's rows
// dropped). Outputs are poisoned first, so an unwritten element fails. Greedy
// must match exactly; sampled requests may differ only through rounding at a
// boundary (counted, at most 1% of each mode's requests). Exits 77 (skipped) without a CUDA device.
// Both of verify_cuda's paths run (the split pass at small batches, one
// launch at large ones; the test fails if either goes unused), on rows that
// are not 16-byte aligned, and on rows full of ties (top-k and top-p
// thresholds inside a run of equal values, the maximum in two chunks).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "specdec/sampling.h"
#include "specdec/sampling_cuda.h"
#include "cuda_test_util.h"

namespace {

// Under ThreadSanitizer every path runs once at smaller batches: races need
// no volume, and TSan's run stays a few minutes. AddressSanitizer runs all,
// unless --subset asks for the light set (the mutation test's runs: each
// planted bug breaks a path, not a batch size).
#if defined(__SANITIZE_THREAD__)
constexpr bool kTsan = true;
#else
constexpr bool kTsan = false;
#endif
bool kLight = kTsan;

uint16_t bf16_bits(float f) {  // round to nearest even (finite inputs)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

struct Case {
  int64_t vocab;
  bool bf16;
  bool target_probs;  // rows hold unnormalised probabilities (some exactly 0)
  std::vector<int64_t> tokens;
  std::vector<int32_t> parents, indptr{0};
  std::vector<float> logits, probs, uniforms;  // logits as stored (bf16-rounded when bf16)
  std::vector<uint16_t> logits_bf16;
  std::vector<uint16_t> probs_bf16;  // bf16 cases: the draft probabilities as read (probs holds them rounded)
  int32_t width = 1;
  std::vector<int32_t> row_indptr;  // the row map, empty when none
  std::vector<int64_t> bonus;
  // Layout of the logits as the kernels read them: rows `stride` elements
  // apart (0: vocab) from element `shift` of the buffer, the gaps NaN (a read
  // there makes the row invalid). Odd values misalign rows for 16-byte loads.
  int64_t stride = 0, shift = 0;
};

// The logits in the case's layout (stride, shift), gaps NaN.
template <typename T>
std::vector<T> laid_out(const Case& c, const std::vector<T>& rows, T nan) {
  const int64_t stride = c.stride ? c.stride : c.vocab, n = int64_t(rows.size()) / c.vocab;
  std::vector<T> out(size_t(c.shift + n * stride + 1), nan);
  for (int64_t r = 0; r < n; ++r) std::copy(rows.begin() + r * c.vocab, rows.begin() + (r + 1) * c.vocab,
                                            out.begin() + c.shift + r * stride);
  return out;
}

// The case with rows for a random prefix of each request's nodes only (all,
// all but the last, or any count), and random bonus tokens.
Case with_row_map(const Case& c, std::mt19937& rng) {
  Case m = c;
  m.logits.clear();
  m.probs.clear();
  m.logits_bf16.clear();
  m.probs_bf16.clear();
  m.row_indptr = {0};
  const int64_t batch = int64_t(c.indptr.size()) - 1;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start = c.indptr[b], size = c.indptr[b + 1] - start;
    const int64_t keep = b % 3 == 0 ? size : b % 3 == 1 ? std::max<int64_t>(size - 1, 0) : int64_t(rng() % (size + 1));
    for (int64_t r = start; r < start + keep; ++r) {
      m.logits.insert(m.logits.end(), c.logits.begin() + r * c.vocab, c.logits.begin() + (r + 1) * c.vocab);
      m.probs.insert(m.probs.end(), c.probs.begin() + r * c.vocab, c.probs.begin() + (r + 1) * c.vocab);
      if (c.bf16) {
        m.probs_bf16.insert(m.probs_bf16.end(), c.probs_bf16.begin() + r * c.vocab,
                            c.probs_bf16.begin() + (r + 1) * c.vocab);
        m.logits_bf16.insert(m.logits_bf16.end(), c.logits_bf16.begin() + r * c.vocab,
                             c.logits_bf16.begin() + (r + 1) * c.vocab);
      }
    }
    m.row_indptr.push_back(m.row_indptr.back() + int32_t(keep));
    m.bonus.push_back(int64_t(rng() % uint64_t(c.vocab)));
  }
  return m;
}

// levels > 0: logits rounded to multiples of 1/levels, so rows hold many
// exact ties (top-k / top-p thresholds inside a run of equal values).
Case make_case(std::mt19937& rng, int64_t vocab, bool bf16, bool target_probs, int batch, int levels = 0,
               int max_size = 12) {
  Case c;
  c.vocab = vocab;
  c.bf16 = bf16;
  c.target_probs = target_probs;
  std::uniform_int_distribution<int> size_d(0, max_size), tok_d(0, int(vocab) - 1);
  std::normal_distribution<float> n_d(0.f, 2.f);
  std::uniform_real_distribution<float> u_d(0.f, 1.f);
  for (int b = 0; b < batch; ++b) {
    const int size = size_d(rng);
    const bool chain = rng() % 2;
    const int64_t base = int64_t(c.tokens.size());
    for (int i = 0; i < size; ++i) {
      const int32_t par = i == 0 ? -1 : chain ? i - 1 : int32_t(rng() % i);
      std::vector<float> row(vocab);
      for (auto& v : row) {
        v = n_d(rng);
        if (levels > 0) v = std::round(v * levels) / levels;
        if (target_probs) v = u_d(rng) < 0.1f ? 0.f : std::exp(v);
        if (bf16) {
          const uint16_t h = bf16_bits(v);
          c.logits_bf16.push_back(h);
          const uint32_t u = uint32_t(h) << 16;
          std::memcpy(&v, &u, 4);
        }
      }
      if (levels > 0 && vocab > 8) {  // the maximum again near the end: a tie across split chunks
        const float top = *std::max_element(row.begin(), row.end());
        row[vocab - 1 - i % 8] = top;
        if (bf16) c.logits_bf16[c.logits_bf16.size() - 1 - i % 8] = bf16_bits(top);
      }
      c.logits.insert(c.logits.end(), row.begin(), row.end());
      int64_t tok = tok_d(rng);
      if (par >= 0 && u_d(rng) < 0.7f) {  // follow the parent's argmax often, so paths go deep
        const float* pr = &c.logits[(base + par) * vocab];
        tok = std::max_element(pr, pr + vocab) - pr;
      }
      c.parents.push_back(par);
      c.tokens.push_back(tok);
      float sum = 0.f;
      std::vector<float> q(vocab);
      for (auto& v : q) sum += (v = std::exp(n_d(rng)));
      for (auto& v : q) {
        float p = v / sum;
        if (bf16) {
          const uint16_t h = bf16_bits(p);
          c.probs_bf16.push_back(h);
          const uint32_t u = uint32_t(h) << 16;
          std::memcpy(&p, &u, 4);
        }
        c.probs.push_back(p);
      }
      c.uniforms.push_back(u_d(rng));
      c.width = std::max(c.width, i + 1);
    }
    c.indptr.push_back(int32_t(c.tokens.size()));
  }
  return c;
}

struct Result {
  std::vector<int32_t> num, nodes;
  std::vector<int64_t> toks;
};

specdec::VerifyArgs args_for(const Case& c, specdec::VerifyMode mode, bool with_q, bool philox, const void* logits,
                             const void* probs, const int64_t* tokens, const int32_t* parents, const int32_t* indptr,
                             const float* temp, const int32_t* top_k, const float* top_p, const float* eps,
                             const float* alpha, const float* uniforms, const int64_t* seed_offset,
                             const int32_t* row_indptr, const int64_t* bonus, const float* min_p,
                             const int32_t* allowed, int64_t allowed_stride) {
  specdec::VerifyArgs a{};
  a.mode = mode;
  a.draft_tokens = tokens;
  a.parents = parents;
  a.qo_indptr = indptr;
  a.logits = logits;
  a.logits_dtype = c.bf16 ? specdec::DType::kBFloat16 : specdec::DType::kFloat32;
  a.logits_stride = c.stride ? c.stride : c.vocab;
  a.logits_are_probs = c.target_probs;
  if (with_q) {
    a.draft_probs = probs;
    a.probs_dtype = c.bf16 ? specdec::DType::kBFloat16 : specdec::DType::kFloat32;
    a.probs_stride = c.vocab;
  }
  if (mode != specdec::VerifyMode::kGreedy) a.temperature = temp;
  if (mode == specdec::VerifyMode::kRejection || mode == specdec::VerifyMode::kTraversal) {
    a.top_k = top_k;
    a.top_p = top_p;
    a.min_p = min_p;
  }
  if (mode == specdec::VerifyMode::kTypical) {
    a.posterior_threshold = eps;
    a.posterior_alpha = alpha;
  }
  a.uniforms = philox ? nullptr : uniforms;
  a.philox = philox ? seed_offset : nullptr;
  a.batch = int64_t(c.indptr.size()) - 1;
  a.num_tokens = int64_t(c.tokens.size());
  a.vocab = c.vocab;
  a.width = c.width;
  a.allowed = allowed;
  a.allowed_stride = allowed_stride;
  if (!c.row_indptr.empty()) {
    a.target_indptr = row_indptr;
    a.bonus_tokens = bonus;
    a.num_rows = c.row_indptr.back();
  }
  return a;
}

// Requests verify_cuda ran through the split path (verify_partial_kernel
// first: its workspace holds more than the residual rows) and through one launch.
int split_requests = 0, single_requests = 0;
// Per mode: requests compared and how many differ (each mode is held to the 1%).
int mode_requests[4] = {}, mode_differ[4] = {};

// Beyond the filters: min_p (modes 1 and 3; 0 off) and an allowed_tokens
// bitmask (each token allowed with probability 0.7, every 7th row nothing
// allowed, the words past the vocabulary random, rows one word further apart
// than they need).
struct Extras {
  float min_p = 0.f;
  bool masked = false;
};

int compare(const Case& c, specdec::VerifyMode mode, bool with_q, bool philox, int64_t top_k, float top_p,
            int* requests, Extras ex = {}) {
  const int64_t batch = int64_t(c.indptr.size()) - 1;
  std::vector<float> temp(batch), tp(batch, top_p), eps(batch, 0.09f), alpha(batch, 0.3f), mp(batch, ex.min_p);
  const int64_t rows = c.row_indptr.empty() ? int64_t(c.tokens.size()) : int64_t(c.row_indptr.back());
  const int64_t words = (c.vocab + 31) / 32 + 1;
  std::vector<int32_t> allowed;
  if (ex.masked) {
    std::mt19937 mrng(uint32_t(rows * 31 + c.vocab));
    std::uniform_real_distribution<float> u(0.f, 1.f);
    allowed.assign(size_t(std::max<int64_t>(rows, 1) * words), 0);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t w = 0; w < words; ++w) {
        uint32_t bits = 0;
        for (int j = 0; j < 32; ++j) bits |= uint32_t(w * 32 + j >= c.vocab ? mrng() & 1u : u(mrng) < 0.7f) << j;
        allowed[r * words + w] = r % 7 == 6 ? 0 : int32_t(bits);
      }
    }
  }
  std::vector<int32_t> tk(batch, int32_t(top_k));
  for (int64_t b = 0; b < batch; ++b) temp[b] = b % 4 == 3 ? 0.f : 0.8f;  // mixed greedy requests
  const int64_t seed_offset[2] = {1234567, 89};

  // CPU: host pointers.
  Result cpu{std::vector<int32_t>(batch), std::vector<int32_t>(batch * c.width), std::vector<int64_t>(batch * c.width)};
  const std::vector<float> logits_f32 = laid_out(c, c.logits, std::nanf(""));
  const std::vector<uint16_t> logits_bf16 = laid_out(c, c.logits_bf16, uint16_t(0x7fc0));
  const void* host_logits = c.bf16 ? static_cast<const void*>(logits_bf16.data() + c.shift)
                                   : static_cast<const void*>(logits_f32.data() + c.shift);
  const void* host_probs = c.bf16 ? static_cast<const void*>(c.probs_bf16.data()) : c.probs.data();
  specdec::VerifyArgs ha = args_for(c, mode, with_q, philox, host_logits, host_probs, c.tokens.data(),
                                    c.parents.data(), c.indptr.data(), temp.data(), tk.data(), tp.data(), eps.data(),
                                    alpha.data(), c.uniforms.data(), seed_offset, c.row_indptr.data(),
                                    c.bonus.data(), ex.min_p > 0.f ? mp.data() : nullptr,
                                    ex.masked ? allowed.data() : nullptr, words);
  ha.num_accepted = cpu.num.data();
  ha.accepted_nodes = cpu.nodes.data();
  ha.tokens = cpu.toks.data();
  specdec::verify_cpu(ha, 0, batch);

  // CUDA: device copies, outputs poisoned.
  void* d_logits = c.bf16 ? static_cast<void*>(to_device(logits_bf16)) : static_cast<void*>(to_device(logits_f32));
  const void* d_logits_at = c.bf16 ? static_cast<const void*>(static_cast<const uint16_t*>(d_logits) + c.shift)
                                   : static_cast<const void*>(static_cast<const float*>(d_logits) + c.shift);
  void* d_probs = c.bf16 ? static_cast<void*>(to_device(c.probs_bf16)) : static_cast<void*>(to_device(c.probs));
  int64_t* d_tokens = to_device(c.tokens);
  int32_t* d_parents = to_device(c.parents);
  int32_t* d_indptr = to_device(c.indptr);
  float *d_temp = to_device(temp), *d_tp = to_device(tp), *d_eps = to_device(eps), *d_alpha = to_device(alpha);
  int32_t* d_tk = to_device(tk);
  float* d_unif = to_device(c.uniforms);
  int64_t* d_seed = to_device(std::vector<int64_t>(seed_offset, seed_offset + 2));
  int32_t* d_rows = to_device(c.row_indptr);
  int64_t* d_bonus = to_device(c.bonus);
  float* d_mp = to_device(mp);
  int32_t* d_allowed = to_device(allowed);
  int32_t* d_num = to_device(std::vector<int32_t>(batch, 0x5a5a5a5a));
  int32_t* d_nodes = to_device(std::vector<int32_t>(batch * c.width, 0x5a5a5a5a));
  int64_t* d_toks = to_device(std::vector<int64_t>(batch * c.width, 0x5a5a5a5a));
  specdec::VerifyArgs da = args_for(c, mode, with_q, philox, d_logits_at, d_probs, d_tokens, d_parents, d_indptr, d_temp,
                                    d_tk, d_tp, d_eps, d_alpha, d_unif, d_seed, d_rows, d_bonus,
                                    ex.min_p > 0.f ? d_mp : nullptr, ex.masked ? d_allowed : nullptr, words);
  da.num_accepted = d_num;
  da.accepted_nodes = d_nodes;
  da.tokens = d_toks;
  const size_t bytes = specdec::verify_cuda_workspace_bytes(da);
  const size_t residual_bytes = mode == specdec::VerifyMode::kRejection && with_q ? batch * c.vocab * sizeof(float) : 0;
  (bytes > residual_bytes ? split_requests : single_requests) += int(batch);
  void* ws = nullptr;
  if (bytes) CHECK_CUDA(cudaMalloc(&ws, bytes));
  CHECK_CUDA(specdec::verify_cuda(da, ws, bytes, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  const Result gpu{to_host(d_num, batch), to_host(d_nodes, batch * c.width), to_host(d_toks, batch * c.width)};
  int differ = 0;
  for (int64_t b = 0; b < batch; ++b) {
    bool same = gpu.num[b] == cpu.num[b];
    for (int j = 0; j < c.width; ++j) {
      same &= gpu.nodes[b * c.width + j] == cpu.nodes[b * c.width + j];
      same &= gpu.toks[b * c.width + j] == cpu.toks[b * c.width + j];
    }
    const bool greedy = mode == specdec::VerifyMode::kGreedy || temp[b] == 0.f;
    if (!same && greedy) {
      std::printf("FAIL: greedy request %lld differs (mode %d)\n", (long long)b, int(mode));
      differ += 1000;
    }
    differ += !same;
  }
  *requests += int(batch);
  mode_requests[int(mode)] += int(batch);
  mode_differ[int(mode)] += differ;
  for (void* p : {d_logits, d_probs, (void*)d_tokens, (void*)d_parents, (void*)d_indptr, (void*)d_temp,
                  (void*)d_tp, (void*)d_eps, (void*)d_alpha, (void*)d_tk, (void*)d_unif, (void*)d_seed, (void*)d_num,
                  (void*)d_nodes, (void*)d_toks, (void*)d_rows, (void*)d_bonus, (void*)d_mp, (void*)d_allowed, ws}) {
    cudaFree(p);
  }
  return differ;
}

}  // namespace

int main(int argc, char** argv) {
  if (no_cuda_device()) return 77;
  kLight = kLight || (argc > 1 && std::strcmp(argv[1], "--subset") == 0);
  std::mt19937 rng(7);
  int differ = 0, requests = 0;
  for (int64_t vocab : {1, 7, 50, 3000}) {
    for (int variant = 0; variant < 4; ++variant) {
      const bool bf16 = variant & 1, target_probs = variant & 2;
      if (target_probs && (vocab == 1 || vocab == 50)) continue;  // probabilities: two vocabularies suffice
      if (kLight && (vocab == 1 || vocab == 50)) continue;
      const Case plain = make_case(rng, vocab, bf16, target_probs, kLight ? 6 : 16);
      for (const Case& c : {plain, with_row_map(plain, rng)}) {
        differ += compare(c, specdec::VerifyMode::kGreedy, false, false, 0, 1.f, &requests);
        for (bool philox : {false, true}) {
          differ += compare(c, specdec::VerifyMode::kRejection, false, philox, 0, 1.f, &requests);
          differ += compare(c, specdec::VerifyMode::kRejection, true, philox, 5, 0.9f, &requests);
          differ += compare(c, specdec::VerifyMode::kTypical, false, philox, 0, 1.f, &requests);
          differ += compare(c, specdec::VerifyMode::kTraversal, false, philox, 0, 1.f, &requests);
          differ += compare(c, specdec::VerifyMode::kTraversal, true, philox, 5, 0.9f, &requests);
        }
        // min_p, alone and with top-k / top-p; the bitmask in every mode.
        differ += compare(c, specdec::VerifyMode::kRejection, false, false, 0, 1.f, &requests, {0.2f, false});
        differ += compare(c, specdec::VerifyMode::kTraversal, true, true, 5, 0.9f, &requests, {0.05f, false});
        differ += compare(c, specdec::VerifyMode::kGreedy, false, false, 0, 1.f, &requests, {0.f, true});
        differ += compare(c, specdec::VerifyMode::kRejection, true, false, 0, 0.9f, &requests, {0.1f, true});
        differ += compare(c, specdec::VerifyMode::kTypical, false, true, 0, 1.f, &requests, {0.f, true});
        differ += compare(c, specdec::VerifyMode::kTraversal, false, false, 0, 1.f, &requests, {0.f, true});
      }
    }
  }
  // Rows misaligned for 16-byte loads (the buffer starts 1-3 elements past a
  // 16-byte boundary, rows vocab + 1..3 apart, the gaps NaN), logits on a
  // grid of 1/2 so rows hold long runs of equal values: greedy's lowest-index
  // argmax, top-k and top-p thresholds inside a run of ties.
  for (int variant = 0; variant < 4; ++variant) {
    const bool bf16 = variant & 1, target_probs = variant & 2;
    for (int64_t vocab : {1000, 3001}) {
      if (kLight && vocab == 1000) continue;
      Case c = make_case(rng, vocab, bf16, target_probs, kLight ? 3 : 8, /*levels=*/2);
      c.stride = vocab + 1 + variant;
      c.shift = 1 + variant;
      differ += compare(c, specdec::VerifyMode::kGreedy, false, false, 0, 1.f, &requests);
      differ += compare(c, specdec::VerifyMode::kRejection, false, variant & 1, 7, 0.6f, &requests);
      differ += compare(c, specdec::VerifyMode::kRejection, true, false, 3, 0.5f, &requests);
      differ += compare(c, specdec::VerifyMode::kTypical, false, true, 0, 1.f, &requests);
      differ += compare(c, specdec::VerifyMode::kTraversal, variant & 1, true, 7, 0.6f, &requests);
    }
  }
  // Small batches of a larger vocabulary: 9 chunks of 1024 per row in the
  // split pass (fewer chunks than CTAs would allow, so every chunk is full
  // but the last).
  for (int variant = 0; variant < 4; ++variant) {
    const bool bf16 = variant & 1, target_probs = variant & 2;
    if (kLight && (variant == 1 || variant == 2)) continue;
    const Case plain = make_case(rng, 9000, bf16, target_probs, 2, 0, 5);
    for (const Case& c : {plain, with_row_map(plain, rng)}) {
      differ += compare(c, specdec::VerifyMode::kGreedy, false, false, 0, 1.f, &requests);
      differ += compare(c, specdec::VerifyMode::kRejection, false, true, 0, 1.f, &requests);
      differ += compare(c, specdec::VerifyMode::kRejection, true, false, 20, 0.8f, &requests);
      differ += compare(c, specdec::VerifyMode::kTypical, false, false, 0, 1.f, &requests);
      differ += compare(c, specdec::VerifyMode::kTraversal, true, false, 20, 0.8f, &requests);
      differ += compare(c, specdec::VerifyMode::kGreedy, false, false, 0, 1.f, &requests, {0.f, true});
      differ += compare(c, specdec::VerifyMode::kRejection, false, true, 0, 1.f, &requests, {0.3f, true});
    }
  }
  // A batch with more rows than the split pass takes (over 528): one launch,
  // one CTA per request, at a vocabulary that would otherwise split.
  {
    const Case c = make_case(rng, 1500, true, false, 80, 0, 16);
    differ += compare(c, specdec::VerifyMode::kGreedy, false, false, 0, 1.f, &requests);
    differ += compare(c, specdec::VerifyMode::kRejection, true, true, 5, 0.9f, &requests);
    if (!kLight) differ += compare(c, specdec::VerifyMode::kTypical, false, false, 0, 1.f, &requests);
    differ += compare(c, specdec::VerifyMode::kTraversal, false, true, 0, 1.f, &requests);
  }
  std::printf("test_sampling_cuda: %d requests through the split pass, %d through one launch\n", split_requests,
              single_requests);
  if (split_requests == 0 || single_requests == 0) {
    std::printf("FAIL: a path was not exercised\n");
    return 1;
  }
  for (int m = 0; m < 4; ++m) {
    std::printf("test_sampling_cuda: mode %d: %d of %d requests differ\n", m, mode_differ[m], mode_requests[m]);
    if (mode_requests[m] == 0 || mode_differ[m] * 100 > mode_requests[m]) {
      std::printf("FAIL: mode %d\n", m);
      return 1;
    }
  }
  std::printf("test_sampling_cuda: %d of %d requests differ (boundary rounding), passed\n", differ, requests);
  return 0;
}

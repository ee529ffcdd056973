// CPU verification: each request walks its tree as specdec_kernels/reference/
// sampling.py does, in float32, touching only the rows the rule reads. Rows
// are converted to float once per visit.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "float_convert.h"
#include "specdec/philox.h"
#include "specdec/sampling.h"

namespace specdec {
namespace {

using namespace cpu;  // float_convert.h

constexpr float kInf = std::numeric_limits<float>::infinity();

// One request's view of the inputs.
struct Request {
  const VerifyArgs& a;
  int64_t b, start, size;
  RowSpan rows;

  bool has_row(int64_t node) const { return node < rows.count; }
  int64_t row(int64_t node) const { return rows.start + node; }
  int64_t bonus() const { return a.bonus_tokens[b]; }

  int64_t token(int64_t node) const { return a.draft_tokens[start + node]; }
  bool in_vocab(int64_t x) const { return x >= 0 && x < a.vocab; }

  float uniform(int64_t node) const {
    const int64_t row = start + node;
    if (a.uniforms != nullptr) return a.uniforms[row];
    return philox_uniform(uint64_t(a.philox[0]), uint64_t(a.philox[1]) + uint64_t(row));
  }

  // The accepted path root .. node, root first.
  std::vector<int64_t> path_to(int64_t node) const {
    std::vector<int64_t> path;
    for (int64_t n = node; n != 0; n = a.parents[start + n]) path.push_back(n);
    path.push_back(0);
    std::reverse(path.begin(), path.end());
    return path;
  }

  // Children of `node` in increasing index: later nodes naming it as parent.
  template <typename F>
  bool first_child(int64_t node, F&& accept) const {
    for (int64_t c = node + 1; c < size; ++c) {
      if (a.parents[start + c] == node && accept(c)) return true;
    }
    return false;
  }
};

void load_row(const void* base, DType dtype, int64_t stride, int64_t row, int64_t vocab, std::vector<float>& out) {
  out.resize(vocab);
  const int64_t offset = row * stride;
  switch (dtype) {
    case DType::kFloat32: {
      const float* p = static_cast<const float*>(base) + offset;
      std::copy(p, p + vocab, out.begin());
      break;
    }
    case DType::kFloat16: {
      const uint16_t* p = static_cast<const uint16_t*>(base) + offset;
      for (int64_t i = 0; i < vocab; ++i) out[i] = half_to_float(p[i]);
      break;
    }
    case DType::kBFloat16: {
      const uint16_t* p = static_cast<const uint16_t*>(base) + offset;
      for (int64_t i = 0; i < vocab; ++i) out[i] = bf16_to_float(p[i]);
      break;
    }
  }
}

float load_one(const void* base, DType dtype, int64_t stride, int64_t row, int64_t x) {
  const int64_t i = row * stride + x;
  switch (dtype) {
    case DType::kFloat16: return half_to_float(static_cast<const uint16_t*>(base)[i]);
    case DType::kBFloat16: return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

// The value a disallowed token reads as (allowed_tokens): logit -inf, or
// probability 0 for a row of probabilities.
float masked_value(const VerifyArgs& a) { return a.logits_are_probs ? 0.f : -kInf; }

// Row `row` of the target, masked by allowed_tokens.
void load_target_row(const VerifyArgs& a, int64_t row, std::vector<float>& out) {
  load_row(a.logits, a.logits_dtype, a.logits_stride, row, a.vocab, out);
  if (a.allowed == nullptr) return;
  for (int64_t x = 0; x < a.vocab; ++x) {
    if (!token_allowed(a, row, x)) out[x] = masked_value(a);
  }
}

float load_target_one(const VerifyArgs& a, int64_t row, int64_t x) {
  return token_allowed(a, row, x) ? load_one(a.logits, a.logits_dtype, a.logits_stride, row, x) : masked_value(a);
}

// No NaN and a finite maximum: the row defines a distribution. For a row of
// probabilities (the same test on its log): no NaN or negative value, and a
// finite positive maximum.
bool row_valid(const std::vector<float>& x, bool probs) {
  float best = -kInf;
  for (float v : x) {
    if (std::isnan(v) || (probs && v < 0.f)) return false;
    best = std::max(best, v);
  }
  return std::isfinite(best) && (!probs || best > 0.f);
}

// A row of probabilities read as logits: z = log(p), so softmax(z) = p / sum(p).
void as_logits(std::vector<float>& row, bool probs) {
  if (probs) {
    for (float& v : row) v = std::log(v);
  }
}

int64_t argmax_lowest(const std::vector<float>& x) {
  int64_t best = 0;
  for (int64_t i = 1; i < int64_t(x.size()); ++i) {
    if (x[i] > x[best]) best = i;
  }
  return best;
}

// Sums accumulate in double (as torch's CPU reductions and scans do): over
// 100K-token rows a float running sum drifts by ~1e-3, enough to move an
// inverse-CDF draw by a few tokens.
float sum_of(const std::vector<float>& x) {
  double s = 0.0;
  for (float v : x) s += v;
  return float(s);
}

// p = softmax(z) over the tokens kept by min-p and top-k, then top-p, z = logits / t.
void target_probs(const std::vector<float>& logits, float temperature, int64_t top_k, float top_p, float min_p,
                  std::vector<float>& p) {
  const int64_t vocab = int64_t(logits.size());
  std::vector<float> z(vocab);
  for (int64_t i = 0; i < vocab; ++i) z[i] = logits[i] / temperature;
  float threshold = -kInf;  // keep z >= threshold (all of them: -inf >= -inf)
  if (top_k > 0 && top_k < vocab) {
    std::vector<float> sorted = z;
    std::nth_element(sorted.begin(), sorted.begin() + (top_k - 1), sorted.end(), std::greater<float>());
    threshold = sorted[top_k - 1];
  }
  if (min_p > 0.f) {
    // Keep expf(z - max z) >= min_p: the smallest such z (the max itself always qualifies).
    const float zmax = *std::max_element(z.begin(), z.end());
    float lowest = zmax;
    for (float v : z) {
      if (std::exp(v - zmax) >= min_p) lowest = std::min(lowest, v);
    }
    threshold = std::max(threshold, lowest);
  }
  float m = -kInf;
  for (float v : z) {
    if (v >= threshold) m = std::max(m, v);
  }
  p.assign(vocab, 0.f);
  for (int64_t i = 0; i < vocab; ++i) {
    if (z[i] >= threshold) p[i] = std::exp(z[i] - m);
  }
  if (top_p < 1.f) {
    // Kept iff the mass of strictly larger z is < top_p * total: walk tokens
    // by decreasing z, a run of equal z sharing the mass above it.
    const float limit = top_p * sum_of(p);
    std::vector<int64_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return z[x] > z[y]; });
    double before = 0.0;
    for (int64_t i = 0; i < vocab;) {
      int64_t j = i;
      double run = 0.0;
      const bool keep = float(before) < limit;
      for (; j < vocab && z[order[j]] == z[order[i]]; ++j) {
        run += p[order[j]];
        if (!keep) p[order[j]] = 0.f;
      }
      before += run;
      i = j;
    }
  }
  const float total = sum_of(p);
  for (float& v : p) v /= total;
}

// Inverse CDF: the first index whose running sum exceeds u * total; if
// rounding leaves none, the last index with weight.
int64_t sample_index(const std::vector<float>& w, float u) {
  const float threshold = u * sum_of(w);
  double running = 0.0;
  int64_t last = 0;
  for (int64_t i = 0; i < int64_t(w.size()); ++i) {
    running += w[i];
    if (w[i] > 0.f) last = i;
    if (float(running) > threshold) return i;
  }
  return last;
}

// r = norm(max(0, r - q)), or r with x zeroed for a point mass; unchanged if
// nothing would be left. A NaN in q stays NaN (as torch.clamp keeps it), so
// the mass is NaN and r is left unchanged, as in the reference.
void reject(std::vector<float>& r, const std::vector<float>* q, int64_t x, std::vector<float>& scratch) {
  scratch = r;
  if (q != nullptr) {
    for (size_t i = 0; i < r.size(); ++i) scratch[i] = std::max(r[i] - (*q)[i], 0.f);
  } else if (x >= 0 && x < int64_t(r.size())) {
    scratch[x] = 0.f;
  }
  const float mass = sum_of(scratch);
  if (!(mass > 0.f)) return;
  for (size_t i = 0; i < r.size(); ++i) r[i] = scratch[i] / mass;
}

struct Outcome {
  bool valid = true;
  std::vector<int64_t> path{0};
  int64_t bonus = -1;
};

Outcome walk_greedy(const Request& req, std::vector<float>& row) {
  const VerifyArgs& a = req.a;
  Outcome out;
  int64_t node = 0;
  while (true) {
    if (!req.has_row(node)) {
      out.bonus = req.bonus();
      return out;
    }
    load_target_row(a, req.row(node), row);
    if (!row_valid(row, a.logits_are_probs)) return Outcome{false, {}, -1};
    const int64_t best = argmax_lowest(row);  // of p itself for probabilities: log would only blur ties
    int64_t next = -1;
    if (int64_t(out.path.size()) < a.width) {
      req.first_child(node, [&](int64_t c) { return req.token(c) == best ? (next = c, true) : false; });
    }
    if (next < 0) {
      out.bonus = best;
      return out;
    }
    out.path.push_back(next);
    node = next;
  }
}

Outcome walk_rejection(const Request& req, std::vector<float>& row) {
  const VerifyArgs& a = req.a;
  const float temperature = a.temperature[req.b];
  const int64_t top_k = a.top_k[req.b];
  const float top_p = a.top_p[req.b];
  const float min_p = a.min_p != nullptr ? a.min_p[req.b] : 0.f;
  Outcome out;
  std::vector<float> r, q, scratch;
  int64_t node = 0;
  while (true) {
    if (!req.has_row(node)) {
      out.bonus = req.bonus();
      return out;
    }
    load_target_row(a, req.row(node), row);
    if (!row_valid(row, a.logits_are_probs)) return Outcome{false, {}, -1};
    as_logits(row, a.logits_are_probs);
    target_probs(row, temperature, top_k, top_p, min_p, r);
    const bool with_q = a.draft_probs != nullptr;
    if (with_q) load_row(a.draft_probs, a.probs_dtype, a.probs_stride, req.row(node), a.vocab, q);
    int64_t next = -1;
    if (int64_t(out.path.size()) < a.width) {
      req.first_child(node, [&](int64_t c) {
        const int64_t x = req.token(c);
        const bool in = req.in_vocab(x);
        const float rx = in ? r[x] : 0.f;
        const float qx = with_q ? (in ? q[x] : 0.f) : 1.f;
        if (req.uniform(c) * qx < rx) {
          next = c;
          return true;
        }
        reject(r, with_q ? &q : nullptr, x, scratch);
        return false;
      });
    }
    if (next < 0) {
      out.bonus = sample_index(r, req.uniform(0));
      return out;
    }
    out.path.push_back(next);
    node = next;
  }
}

// The traversal rule (reference/sampling.py _walk_traversal). A node's
// residual measure is W = max(alpha p - beta q, 0), or alpha p with the
// rejected children's tokens zeroed for point-mass proposals: scalars per
// node, so only the node being worked on holds vocabulary-sized rows (an
// ancestor's rows are loaded again when its child's subtree was rejected).
class Traversal {
 public:
  Traversal(const Request& req, std::vector<float>& row)
      : req_(req), a_(req.a), row_(row), with_q_(req.a.draft_probs != nullptr),
        temperature_(req.a.temperature[req.b]), top_k_(req.a.top_k[req.b]), top_p_(req.a.top_p[req.b]),
        min_p_(req.a.min_p != nullptr ? req.a.min_p[req.b] : 0.f),
        kids_(req.size), depth_(req.size, 0) {
    int64_t deepest = 0;
    for (int64_t c = 1; c < req.size; ++c) {
      const int64_t par = a_.parents[req.start + c];
      if (par >= 0 && par < c) {
        kids_[par].push_back(c);
        depth_[c] = depth_[par] + 1;
        deepest = std::max(deepest, depth_[c]);
      }
    }
    // One level per depth unless that would take more than kLevelBytes (a
    // deep chain over a large vocabulary): then one level, reloaded.
    const double bytes = double(deepest + 1) * double(a_.vocab) * sizeof(float) * (with_q_ ? 2 : 1);
    cached_ = bytes <= double(kLevelBytes);
    levels_.resize(cached_ ? size_t(deepest + 1) : 1);  // never resized again: visit holds references into it
  }

  Outcome run() {
    visit(0, 1.f);
    if (invalid_) return Outcome{false, {}, -1};
    Outcome out;
    out.path = req_.path_to(accepted_);
    if (!req_.has_row(accepted_)) {
      out.bonus = req_.bonus();
      return out;
    }
    Level& lv = level_of(accepted_);
    if (!cached_) load(accepted_, lv);  // else its level still holds its rows
    measure(final_, lv, w_);
    out.bonus = sample_index(w_, req_.uniform(0));
    return out;
  }

 private:
  struct State {
    float alpha = 0.f, beta = 0.f, zeroed_mass = 0.f;
    std::vector<int64_t> zeroed;  // point mass: rejected children's tokens
    bool is_zeroed(int64_t x) const { return std::find(zeroed.begin(), zeroed.end(), x) != zeroed.end(); }
  };

  // The rows of the node being worked on at one depth: a node's p (and q)
  // stay loaded while its subtree is walked (the children use the next
  // level), so returning to it reads and filters nothing again.
  struct Level {
    std::vector<float> p, q;
  };
  static constexpr int64_t kLevelBytes = int64_t(64) << 20;

  Level& level_of(int64_t node) { return levels_[cached_ ? depth_[node] : 0]; }

  // p (and q) of `node` into its level; false (and the request invalid) if
  // its row cannot define a distribution.
  bool load(int64_t node, Level& lv) {
    load_target_row(a_, req_.row(node), row_);
    if (!row_valid(row_, a_.logits_are_probs)) {
      invalid_ = true;
      return false;
    }
    as_logits(row_, a_.logits_are_probs);
    target_probs(row_, temperature_, top_k_, top_p_, min_p_, lv.p);
    if (with_q_) load_row(a_.draft_probs, a_.probs_dtype, a_.probs_stride, req_.row(node), a_.vocab, lv.q);
    return true;
  }

  // W of `s` over the vocabulary, from a level's p (and q).
  void measure(const State& s, const Level& lv, std::vector<float>& W) const {
    const std::vector<float>& p = lv.p;
    W.resize(p.size());
    for (size_t i = 0; i < p.size(); ++i) W[i] = with_q_ ? std::max(s.alpha * p[i] - s.beta * lv.q[i], 0.f)
                                                         : s.alpha * p[i];
    if (!with_q_) {
      for (int64_t x : s.zeroed) W[x] = 0.f;
    }
  }

  // True when a node of `node`'s subtree was accepted (or a row was invalid).
  bool visit(int64_t node, float w) {
    if (!req_.has_row(node)) {  // no row (row map): no candidate children
      if (!(req_.uniform(node) < w)) return false;
      accepted_ = node;
      return true;
    }
    Level& lv = level_of(node);
    if (!load(node, lv)) return true;
    const std::vector<float>& p = lv.p;
    State s;
    s.alpha = w;
    if (depth_[node] + 1 < a_.width) {
      for (int64_t c : kids_[node]) {
        const int64_t x = req_.token(c);
        const bool in = req_.in_vocab(x);
        float qx = 1.f, wx = 0.f;
        if (with_q_) {
          qx = in ? lv.q[x] : 0.f;
          wx = in ? std::max(s.alpha * p[x] - s.beta * qx, 0.f) : 0.f;
        } else if (in && !s.is_zeroed(x)) {
          wx = s.alpha * p[x];
        }
        const float wc = qx > 0.f ? std::min(1.f, wx / qx) : (wx > 0.f ? 1.f : 0.f);
        // A subtree of weight 0 is rejected whatever its uniforms: not visited (its rows unread).
        if (wc > 0.f) {
          if (visit(c, wc)) return true;
          if (!cached_ && !load(node, lv)) return true;  // the child's visit replaced the level
        }
        float m;
        if (with_q_) {  // R = max(alpha p - (beta + 1) q, 0)
          s.beta += 1.f;
          measure(s, lv, w_);
          m = sum_of(w_);
        } else {  // R = W with x zeroed
          if (in && !s.is_zeroed(x)) {
            s.zeroed.push_back(x);
            s.zeroed_mass += p[x];
          }
          m = s.alpha * std::max(1.f - s.zeroed_mass, 0.f);
        }
        // Divided by the probability 1 - w + m left after the rejection;
        // 1 - w + m = 0 (the child could not be rejected) only by rounding.
        const float den = 1.f - w + m;
        if (den > 0.f) {
          s.alpha /= den;
          s.beta /= den;
          w = m / den;
        } else {
          w = m;
        }
      }
    }
    if (node != 0 && !(req_.uniform(node) < w)) return false;
    accepted_ = node;
    final_ = s;
    return true;
  }

  const Request& req_;
  const VerifyArgs& a_;
  std::vector<float>& row_;
  const bool with_q_;
  const float temperature_;
  const int64_t top_k_;
  const float top_p_;
  const float min_p_;
  std::vector<std::vector<int64_t>> kids_;
  std::vector<int64_t> depth_;
  std::vector<Level> levels_;
  bool cached_ = true;
  std::vector<float> w_;
  bool invalid_ = false;
  int64_t accepted_ = 0;
  State final_;
};

// Per node: softmax max and normaliser of z and the acceptance threshold.
struct TypicalStats {
  bool computed = false, valid = false;
  float m = 0.f, total = 0.f, threshold = 0.f;
};

Outcome walk_typical(const Request& req, std::vector<float>& row) {
  const VerifyArgs& a = req.a;
  const float temperature = a.temperature[req.b];
  const float eps = a.posterior_threshold[req.b];
  const float alpha = a.posterior_alpha[req.b];
  std::vector<TypicalStats> stats(req.size);
  std::vector<float> z(a.vocab);
  auto stats_of = [&](int64_t n) -> const TypicalStats& {
    TypicalStats& s = stats[n];
    if (s.computed) return s;
    s.computed = true;
    load_target_row(a, req.row(n), row);
    s.valid = row_valid(row, a.logits_are_probs);
    if (!s.valid) return s;
    as_logits(row, a.logits_are_probs);
    for (int64_t i = 0; i < a.vocab; ++i) z[i] = row[i] / temperature;
    s.m = *std::max_element(z.begin(), z.end());
    double total = 0.0, entropy = 0.0;
    for (int64_t i = 0; i < a.vocab; ++i) total += std::exp(z[i] - s.m);
    s.total = float(total);
    for (int64_t i = 0; i < a.vocab; ++i) {
      const float p = std::exp(z[i] - s.m) / s.total;
      entropy -= p * std::log(p + kTypicalLogEps);
    }
    s.threshold = std::min(eps, alpha * std::exp(-float(entropy)));
    return s;
  };
  auto prob = [&](const TypicalStats& s, int64_t n, int64_t x) {
    const float v = load_target_one(a, req.row(n), x);
    return std::exp((a.logits_are_probs ? std::log(v) : v) / temperature - s.m) / s.total;
  };

  std::vector<char> ok(req.size, 0);
  std::vector<int64_t> depth(req.size, 0);
  std::vector<float> score(req.size, 0.f);
  ok[0] = 1;
  int64_t best = 0;
  for (int64_t c = 1; c < req.size; ++c) {
    const int64_t par = a.parents[req.start + c];
    if (par < 0 || par >= c || !ok[par] || depth[par] + 1 >= a.width || !req.has_row(par)) continue;
    const TypicalStats& s = stats_of(par);
    if (!s.valid) return Outcome{false, {}, -1};
    const int64_t x = req.token(c);
    const float px = req.in_vocab(x) ? prob(s, par, x) : 0.f;
    if (!(px > s.threshold)) continue;
    ok[c] = 1;
    depth[c] = depth[par] + 1;
    score[c] = score[par] + std::log(px);
    if (depth[c] > depth[best] || (depth[c] == depth[best] && score[c] > score[best])) best = c;
  }
  Outcome out;
  out.path = req.path_to(best);
  if (!req.has_row(best)) {
    out.bonus = req.bonus();
    return out;
  }
  const TypicalStats& s = stats_of(best);
  if (!s.valid) return Outcome{false, {}, -1};
  load_target_row(a, req.row(best), row);
  as_logits(row, a.logits_are_probs);
  std::vector<float> w(a.vocab);
  for (int64_t i = 0; i < a.vocab; ++i) {
    const float p = std::exp(row[i] / temperature - s.m) / s.total;
    w[i] = p >= s.threshold ? p : 0.f;
  }
  out.bonus = sample_index(w, req.uniform(0));
  return out;
}

void write(const VerifyArgs& a, int64_t b, const Request* req, const Outcome& out) {
  int32_t* nodes = a.accepted_nodes + b * a.width;
  int64_t* tokens = a.tokens + b * a.width;
  std::fill(nodes, nodes + a.width, -1);
  std::fill(tokens, tokens + a.width, int64_t(-1));
  if (req == nullptr) {  // empty request
    a.num_accepted[b] = 0;
    return;
  }
  if (!out.valid) {
    a.num_accepted[b] = -1;
    return;
  }
  const int64_t accepted = int64_t(out.path.size()) - 1;
  a.num_accepted[b] = int32_t(accepted);
  for (int64_t j = 0; j <= accepted; ++j) nodes[j] = int32_t(out.path[j]);
  for (int64_t j = 1; j <= accepted; ++j) tokens[j - 1] = req->token(out.path[j]);
  tokens[accepted] = out.bonus;
}

}  // namespace

void verify_cpu(const VerifyArgs& args, int64_t begin, int64_t end) {
  std::vector<float> row;
  for (int64_t b = begin; b < end; ++b) {
    const int64_t start = args.qo_indptr[b];
    const int64_t size = std::min<int64_t>(int64_t(args.qo_indptr[b + 1]) - start, kMaxVerifyNodes);
    if (size <= 0) {
      write(args, b, nullptr, Outcome{});
      continue;
    }
    const Request req{args, b, start, size, row_span(args, b, start, size)};
    const bool greedy = args.mode == VerifyMode::kGreedy || args.temperature[b] == 0.f;
    const Outcome out = greedy                                    ? walk_greedy(req, row)
                        : args.mode == VerifyMode::kRejection  ? walk_rejection(req, row)
                        : args.mode == VerifyMode::kTraversal ? Traversal(req, row).run()
                                                               : walk_typical(req, row);
    write(args, b, &req, out);
  }
}

}  // namespace specdec

// tree_attention_cpu against a naive float64 reference written here: random
// ragged paged cases in every dtype (fp16 / bf16 decoded independently of the
// kernel's conversions), odd head dims and cache layouts, and the edge cases
// the contract fixes (rows that see nothing, tokens no sequence owns, keys
// outside the block table or the pool, negative prefixes, narrow masks).
// Outputs are poisoned (NaN) and guarded first, so an unwritten row or a
// write outside out / lse fails. Prints each failure; exits nonzero on any.
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "specdec/tree_attention.h"

namespace {

using specdec::DType;
using specdec::TreeAttentionArgs;

// ---------------------------------------------------------------- harness

int g_failures = 0;
std::string g_case;

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
void fail(const char* file, int line, const char* fmt, ...) {
  if (++g_failures > 40) return;  // the first few tell the story
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "FAIL %s:%d [%s]: %s\n", file, line, g_case.c_str(), buf);
}

#define TA_EXPECT(cond, ...)                                  \
  do {                                                        \
    if (!(cond)) fail(__FILE__, __LINE__, __VA_ARGS__);       \
  } while (0)

using Rng = std::mt19937_64;

int64_t uniform(Rng& r, int64_t lo, int64_t hi) {  // inclusive
  return std::uniform_int_distribution<int64_t>(lo, hi)(r);
}
bool chance(Rng& r, double p) { return std::uniform_real_distribution<double>(0.0, 1.0)(r) < p; }
template <typename T>
T pick(Rng& r, std::initializer_list<T> values) {
  return values.begin()[uniform(r, 0, int64_t(values.size()) - 1)];
}

// ---------------------------------------------------------------- elements

const char* dtype_name(DType d) {
  return d == DType::kFloat16 ? "fp16" : d == DType::kBFloat16 ? "bf16" : "fp32";
}
size_t element_size(DType d) { return d == DType::kFloat32 ? 4 : 2; }

// Decoders written from the formats' definitions, not from the kernel's code.
double decode(DType d, const uint8_t* p) {
  if (d == DType::kFloat32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  if (d == DType::kBFloat16) {
    const uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  const int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  double v;
  if (exp == 0x1f) {
    v = mant ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (exp == 0) {
    v = std::ldexp(double(mant), -24);
  } else {
    v = std::ldexp(double(1024 + mant), exp - 25);
  }
  return sign ? -v : v;
}

// A random finite element of magnitude about 2^-4 .. 2 (fp16 sometimes
// subnormal or zero, to exercise the conversion's special paths).
void random_element(DType d, uint8_t* p, Rng& r) {
  if (d == DType::kFloat32) {
    const float f = float(std::uniform_real_distribution<double>(-2.0, 2.0)(r));
    std::memcpy(p, &f, 4);
    return;
  }
  const uint16_t sign = uint16_t(r() & 1) << 15;
  uint16_t h;
  if (d == DType::kFloat16) {
    const uint16_t exp = chance(r, 0.02) ? 0 : uint16_t(uniform(r, 11, 15));
    h = uint16_t(sign | (exp << 10) | uint16_t(r() & 0x3ff));
  } else {
    h = uint16_t(sign | (uint16_t(uniform(r, 123, 127)) << 7) | uint16_t(r() & 0x7f));
  }
  std::memcpy(p, &h, 2);
}

// ---------------------------------------------------------------- cases

// Everything a call needs, in host vectors; args() points into them.
struct Case {
  DType dtype = DType::kFloat32;
  int64_t num_tokens = 0, hq = 0, hkv = 0, D = 0;
  int64_t num_blocks = 0, block_size = 0, batch = 0, max_blocks = 0;
  int64_t q_stride_token = 0, q_stride_head = 0;
  int64_t stride_block = 0, stride_token = 0, stride_head = 0;
  int64_t table_stride = 0, mask_words = 0, mask_stride = 0;
  bool has_mask = false;
  float sm_scale = 1.0f;
  std::vector<uint8_t> q, k, v;  // elements, at the strides above
  std::vector<int32_t> table, prefix, indptr, mask;
  // out and lse with kGuard poisoned elements on each side
  static constexpr int64_t kGuard = 64;
  std::vector<uint8_t> out;
  std::vector<float> lse;

  uint8_t* out_data() { return out.data() + kGuard * element_size(dtype); }
  float* lse_data() { return lse.data() + kGuard; }

  void poison() {
    std::fill(out.begin(), out.end(), uint8_t(0xff));  // NaN in every dtype
    std::fill(lse.begin(), lse.end(), std::numeric_limits<float>::quiet_NaN());
  }

  TreeAttentionArgs args() {
    TreeAttentionArgs a{};
    a.dtype = dtype;
    a.q = q.data();
    a.q_stride_token = q_stride_token;
    a.q_stride_head = q_stride_head;
    a.k_cache = k.data();
    a.v_cache = v.data();
    a.cache_stride_block = stride_block;
    a.cache_stride_token = stride_token;
    a.cache_stride_head = stride_head;
    a.num_blocks = num_blocks;
    a.block_size = block_size;
    a.block_table = table.data();
    a.block_table_stride = table_stride;
    a.max_blocks = max_blocks;
    a.prefix_lens = prefix.data();
    a.qo_indptr = indptr.data();
    a.batch = batch;
    a.tree_mask = has_mask ? mask.data() : nullptr;
    a.mask_stride = mask_stride;
    a.mask_words = mask_words;
    a.out = out_data();
    a.lse = lse_data();
    a.num_tokens = num_tokens;
    a.num_q_heads = hq;
    a.num_kv_heads = hkv;
    a.head_dim = D;
    a.sm_scale = sm_scale;
    return a;
  }
};

struct Shape {
  DType dtype;
  int64_t hq, hkv, D, block_size;
  std::vector<int64_t> prefixes, trees;
  bool mask;
  int64_t extra_tokens = 0;  // rows past qo_indptr[B]: owned by no sequence
};

Case make_case(const Shape& s, Rng& r) {
  Case c;
  c.dtype = s.dtype;
  c.hq = s.hq;
  c.hkv = s.hkv;
  c.D = s.D;
  c.block_size = s.block_size;
  c.batch = int64_t(s.prefixes.size());
  c.has_mask = s.mask;
  const size_t es = element_size(s.dtype);

  c.indptr.assign(size_t(c.batch + 1), 0);
  int64_t longest = 0, need_blocks = 1;
  for (int64_t b = 0; b < c.batch; ++b) {
    c.indptr[size_t(b + 1)] = int32_t(c.indptr[size_t(b)] + s.trees[size_t(b)]);
    longest = std::max(longest, s.trees[size_t(b)]);
    const int64_t len = std::max<int64_t>(s.prefixes[size_t(b)], 0) + s.trees[size_t(b)];
    need_blocks = std::max(need_blocks, (len + s.block_size - 1) / s.block_size);
  }
  c.num_tokens = c.indptr[size_t(c.batch)] + s.extra_tokens;

  // q: [N, Hq, D], sometimes with padded token / head strides.
  const int64_t head_pad = chance(r, 0.3) ? uniform(r, 1, 8) : 0;
  c.q_stride_head = c.D + head_pad;
  c.q_stride_token = c.hq * c.q_stride_head + (chance(r, 0.3) ? uniform(r, 1, 8) : 0);
  c.q.resize(size_t(c.num_tokens * c.q_stride_token) * es);
  for (size_t i = 0; i < c.q.size() / es; ++i) random_element(c.dtype, &c.q[i * es], r);

  // Caches: token-major, head-major or padded, every slot filled.
  c.max_blocks = need_blocks + uniform(r, 0, 2);
  c.num_blocks = c.batch * c.max_blocks + uniform(r, 1, 4);
  const int style = int(uniform(r, 0, 2));
  if (style == 1) {  // [num_blocks, Hkv, block_size, D] viewed as [num_blocks, block_size, Hkv, D]
    c.stride_token = c.D;
    c.stride_head = c.block_size * c.D;
    c.stride_block = c.hkv * c.block_size * c.D;
  } else {
    c.stride_head = c.D + (style == 2 ? 3 : 0);
    c.stride_token = c.hkv * c.stride_head + (style == 2 ? 5 : 0);
    c.stride_block = c.block_size * c.stride_token + (style == 2 ? 7 : 0);
  }
  const size_t cache_elems = size_t(c.num_blocks * c.stride_block);
  c.k.resize(cache_elems * es);
  c.v.resize(cache_elems * es);
  for (size_t i = 0; i < cache_elems; ++i) {
    random_element(c.dtype, &c.k[i * es], r);
    random_element(c.dtype, &c.v[i * es], r);
  }

  // Block table: distinct random blocks per sequence, -1 past what it needs.
  c.table_stride = c.max_blocks + (chance(r, 0.3) ? 2 : 0);
  c.table.assign(size_t(c.batch * c.table_stride), -1);
  std::vector<int32_t> ids(size_t(c.num_blocks));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i);
  std::shuffle(ids.begin(), ids.end(), r);
  size_t next = 0;
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t j = 0; j < need_blocks; ++j) c.table[size_t(b * c.table_stride + j)] = ids[next++];
  }

  c.prefix.resize(size_t(c.batch));
  for (int64_t b = 0; b < c.batch; ++b) c.prefix[size_t(b)] = int32_t(s.prefixes[size_t(b)]);

  if (s.mask) {
    c.mask_words = std::max<int64_t>(1, (longest + 31) / 32) + (chance(r, 0.3) ? 1 : 0);
    c.mask_stride = c.mask_words + (chance(r, 0.3) ? 3 : 0);
    c.mask.resize(size_t(std::max<int64_t>(c.num_tokens, 1) * c.mask_stride));
    for (auto& w : c.mask) {
      // Dense, sparse or tree-like rows.
      const int kind = int(uniform(r, 0, 2));
      uint32_t bits = uint32_t(r());
      if (kind == 1) bits &= uint32_t(r()) & uint32_t(r());
      if (kind == 2) bits |= uint32_t(r());
      w = int32_t(bits);
    }
  }
  c.sm_scale = float(1.0 / std::sqrt(double(c.D)));

  c.out.resize(size_t(c.num_tokens * c.hq * c.D + 2 * Case::kGuard) * es);
  c.lse.resize(size_t(c.num_tokens * c.hq + 2 * Case::kGuard));
  c.poison();
  return c;
}

// ---------------------------------------------------------------- reference

// Element offset of (sequence b, position pos) in a cache, or -1 when the
// position maps outside the block table or the pool (such keys are skipped).
int64_t slot(const Case& c, int64_t b, int64_t pos) {
  if (pos < 0 || pos / c.block_size >= c.max_blocks) return -1;
  const int64_t id = c.table[size_t(b * c.table_stride + pos / c.block_size)];
  if (id < 0 || id >= c.num_blocks) return -1;
  return id * c.stride_block + (pos % c.block_size) * c.stride_token;
}

struct Expected {
  std::vector<double> out;  // [N, Hq, D]
  std::vector<double> lse;  // [N, Hq]; -inf where nothing is visible
  std::vector<double> tol;  // [N, Hq]: allowed |error| in out (before rounding to the dtype)
};

Expected reference(const Case& c) {
  const size_t es = element_size(c.dtype);
  Expected e;
  e.out.assign(size_t(c.num_tokens * c.hq * c.D), 0.0);
  e.lse.assign(size_t(c.num_tokens * c.hq), -std::numeric_limits<double>::infinity());
  e.tol.assign(size_t(c.num_tokens * c.hq), 0.0);
  const int64_t group = c.hq / c.hkv;
  for (int64_t b = 0; b < c.batch; ++b) {
    const int64_t first = c.indptr[size_t(b)], tree = c.indptr[size_t(b + 1)] - first;
    const int64_t prefix = c.prefix[size_t(b)];
    for (int64_t i = 0; i < tree; ++i) {
      const int64_t t = first + i;
      // Visible key offsets of this token: prefix positions, then tree nodes.
      std::vector<int64_t> keys;
      for (int64_t p = 0; p < prefix; ++p) {
        const int64_t off = slot(c, b, p);
        if (off >= 0) keys.push_back(off);
      }
      for (int64_t j = 0; j < tree; ++j) {
        bool seen;
        if (c.has_mask) {
          seen = j / 32 < c.mask_words &&
                 ((uint32_t(c.mask[size_t(t * c.mask_stride + j / 32)]) >> (j % 32)) & 1u);
        } else {
          seen = j <= i;
        }
        const int64_t off = seen ? slot(c, b, prefix + j) : -1;
        if (off >= 0) keys.push_back(off);
      }
      for (int64_t h = 0; h < c.hq; ++h) {
        if (keys.empty()) continue;
        const int64_t kv = h / group;
        std::vector<double> score(keys.size());
        double max_score = -std::numeric_limits<double>::infinity(), max_abs = 0.0;
        for (size_t k = 0; k < keys.size(); ++k) {
          double s = 0.0, a = 0.0;
          for (int64_t d = 0; d < c.D; ++d) {
            const double x = decode(c.dtype, &c.q[size_t(t * c.q_stride_token + h * c.q_stride_head + d) * es]);
            const double y = decode(c.dtype, &c.k[size_t(keys[k] + kv * c.stride_head + d) * es]);
            s += x * y;
            a += std::fabs(x * y);
          }
          score[k] = s * double(c.sm_scale);
          max_abs = std::max(max_abs, a * double(c.sm_scale));
          max_score = std::max(max_score, score[k]);
        }
        double sum = 0.0;
        for (double s : score) sum += std::exp(s - max_score);
        const size_t row = size_t(t * c.hq + h);
        double vmax = 0.0;
        for (int64_t d = 0; d < c.D; ++d) {
          double o = 0.0;
          for (size_t k = 0; k < keys.size(); ++k) {
            const double y = decode(c.dtype, &c.v[size_t(keys[k] + kv * c.stride_head + d) * es]);
            o += std::exp(score[k] - max_score) / sum * y;
            vmax = std::max(vmax, std::fabs(y));
          }
          e.out[row * size_t(c.D) + size_t(d)] = o;
        }
        e.lse[row] = max_score + std::log(sum);
        // float32 scores carry a few units of roundoff (2^-24) of sum |q k|;
        // a score error moves the weights, and the sums add a few ulps more.
        const double score_err = 16.0 * 6e-8 * max_abs;
        e.tol[row] = vmax * (2.0 * score_err + 1e-5) + 1e-6;
      }
    }
  }
  return e;
}

// ---------------------------------------------------------------- checks

void check_against(Case& c, const Expected& e) {
  const size_t es = element_size(c.dtype);
  // Guards: nothing written outside out and lse.
  for (int64_t g = 0; g < Case::kGuard; ++g) {
    for (size_t byte = 0; byte < es; ++byte) {
      const size_t tail = c.out.size() - size_t(g + 1) * es + byte;
      TA_EXPECT(c.out[size_t(g) * es + byte] == 0xff && c.out[tail] == 0xff, "out guard %lld overwritten",
                (long long)g);
    }
    TA_EXPECT(std::isnan(c.lse[size_t(g)]) && std::isnan(c.lse[c.lse.size() - 1 - size_t(g)]),
              "lse guard %lld overwritten", (long long)g);
  }
  // Rounding of the result to the output dtype.
  const double rel = c.dtype == DType::kFloat32 ? 0.0 : c.dtype == DType::kFloat16 ? 1.0 / 2048 : 1.0 / 256;
  const double ninf = -std::numeric_limits<double>::infinity();
  for (int64_t row = 0; row < c.num_tokens * c.hq; ++row) {
    const double lse = c.lse_data()[row];
    const double want_lse = e.lse[size_t(row)];
    const long long t = (long long)(row / c.hq), h = (long long)(row % c.hq);
    if (want_lse == ninf) {
      TA_EXPECT(lse == ninf, "token %lld head %lld sees no key: lse %g, want -inf", t, h, lse);
    } else {
      TA_EXPECT(std::fabs(lse - want_lse) <= 2e-6 * (1.0 + std::fabs(want_lse)) + e.tol[size_t(row)],
                "token %lld head %lld: lse %.9g, want %.9g", t, h, lse, want_lse);
    }
    for (int64_t d = 0; d < c.D; ++d) {
      const double got = decode(c.dtype, c.out_data() + size_t(row * c.D + d) * es);
      const double want = e.out[size_t(row * c.D + d)];
      if (want_lse == ninf) {
        TA_EXPECT(got == 0.0, "token %lld head %lld sees no key: out[%lld] = %g, want 0", t, h, (long long)d, got);
      } else {
        const double tol = e.tol[size_t(row)] * (1.0 + rel * 4) + std::fabs(want) * rel;
        TA_EXPECT(std::fabs(got - want) <= tol, "token %lld head %lld: out[%lld] = %.9g, want %.9g (tol %.3g)", t, h,
                  (long long)d, got, want, tol);
      }
      if (g_failures > 40) return;
    }
  }
}

// The whole range at once, then the same call split into random pieces: both
// must be checked against the reference and agree bit for bit.
void run_and_check(Case& c, Rng& r) {
  const Expected e = reference(c);
  const int64_t items = c.num_tokens * c.hq;
  TreeAttentionArgs a = c.args();
  specdec::tree_attention_cpu(a, 0, items);
  check_against(c, e);

  const std::vector<uint8_t> out = c.out;
  const std::vector<float> lse = c.lse;
  c.poison();
  for (int64_t begin = 0; begin < items;) {
    const int64_t end = std::min(items, begin + uniform(r, 1, 2 * c.hq + 3));
    specdec::tree_attention_cpu(a, begin, end);
    begin = end;
  }
  TA_EXPECT(out == c.out, "out differs when the work items are split");
  TA_EXPECT(std::memcmp(lse.data(), c.lse.data(), lse.size() * sizeof(float)) == 0,
            "lse differs when the work items are split");
}

void set_case(const Shape& s, const char* what) {
  char buf[512];
  std::snprintf(buf, sizeof buf, "%s %s Hq=%lld Hkv=%lld D=%lld bs=%lld B=%zu mask=%d", what,
                dtype_name(s.dtype), (long long)s.hq, (long long)s.hkv, (long long)s.D,
                (long long)s.block_size, s.prefixes.size(), int(s.mask));
  g_case = buf;
}

// ---------------------------------------------------------------- suites

void random_cases(Rng& r) {
  for (int it = 0; it < 150; ++it) {
    Shape s;
    s.dtype = pick(r, {DType::kFloat16, DType::kBFloat16, DType::kFloat32});
    s.D = it % 5 == 4 ? pick<int64_t>(r, {1, 3, 8, 20, 40}) : pick<int64_t>(r, {64, 128, 256});
    s.hkv = pick<int64_t>(r, {1, 2, 3});
    s.hq = s.hkv * pick<int64_t>(r, {1, 2, 4, 5, 8});
    s.block_size = pick<int64_t>(r, {1, 3, 4, 16});
    const int64_t batch = uniform(r, 1, 4);
    for (int64_t b = 0; b < batch; ++b) {
      s.prefixes.push_back(pick<int64_t>(r, {0, 0, 1, 5, 16, 33, 70}));
      s.trees.push_back(chance(r, 0.1) ? 0 : chance(r, 0.15) ? uniform(r, 33, 100) : uniform(r, 1, 20));
    }
    s.mask = chance(r, 0.6);
    set_case(s, "random");
    Case c = make_case(s, r);
    run_and_check(c, r);
  }
}

void edge_cases(Rng& r) {
  // Empty prefix and empty mask rows: out 0, lse -inf. Rows past qo_indptr[B]
  // too. Causal without a prefix: node 0 sees only itself.
  {
    Shape s{DType::kFloat16, 4, 2, 64, 4, {0, 0, 6}, {5, 3, 2}, true, 3};
    set_case(s, "empty rows");
    Case c = make_case(s, r);
    for (int64_t w = 0; w < c.mask_words; ++w) {
      c.mask[size_t(0 * c.mask_stride + w)] = 0;  // sequence 0, node 0: nothing
      c.mask[size_t(3 * c.mask_stride + w)] = 0;  // sequence 0, node 3: nothing
      c.mask[size_t(6 * c.mask_stride + w)] = 0;  // sequence 1, node 1: nothing
      c.mask[size_t(8 * c.mask_stride + w)] = 0;  // sequence 2 (prefix 6) still sees its prefix
    }
    run_and_check(c, r);
    const float ninf = -std::numeric_limits<float>::infinity();
    for (int64_t row : {0, 3, 6, 10, 11, 12}) {  // 10..12: no sequence owns the token
      for (int64_t h = 0; h < c.hq; ++h) {
        TA_EXPECT(c.lse_data()[row * c.hq + h] == ninf, "row %lld head %lld: lse %g, want -inf", (long long)row,
                  (long long)h, double(c.lse_data()[row * c.hq + h]));
      }
    }
    TA_EXPECT(std::isfinite(c.lse_data()[8 * c.hq]), "row 8 sees its prefix");
  }
  // Bits at or past T_b are ignored; a mask narrower than the tree hides the
  // nodes it does not cover.
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    Shape s{dt, 2, 1, 64, 16, {3, 0}, {40, 5}, true, 0};
    set_case(s, "narrow mask");
    Case c = make_case(s, r);
    c.mask_words = 1;
    run_and_check(c, r);
  }
  // Block ids out of the pool (-1, num_blocks, huge) and positions past the
  // table inside the range read: those keys are skipped, never read.
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    Shape s{dt, 8, 2, 128, 4, {9, 14, 0}, {6, 3, 7}, chance(r, 0.5), 0};
    set_case(s, "bad block ids");
    Case c = make_case(s, r);
    c.table[size_t(0 * c.table_stride + 1)] = -1;
    c.table[size_t(0 * c.table_stride + 3)] = int32_t(c.num_blocks);
    c.table[size_t(1 * c.table_stride + 0)] = std::numeric_limits<int32_t>::max();
    c.table[size_t(1 * c.table_stride + 4)] = std::numeric_limits<int32_t>::min();
    c.table[size_t(2 * c.table_stride + 0)] = -7;  // sequence 2: its first 4 nodes vanish
    c.max_blocks = 4;                               // sequence 1 needs 5 blocks: its last positions vanish
    run_and_check(c, r);
  }
  // A negative prefix: no prefix keys, tree nodes at negative positions skipped.
  {
    Shape s{DType::kFloat32, 2, 2, 64, 4, {0, 0}, {6, 4}, false, 0};
    set_case(s, "negative prefix");
    Case c = make_case(s, r);
    c.prefix[0] = -3;
    run_and_check(c, r);
  }
  // Decode-like T = 1, prefixes of non-multiples of the block size.
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    Shape s{dt, 16, 4, 128, 16, {1023, 17, 1}, {1, 1, 1}, false, 0};
    set_case(s, "T=1");
    Case c = make_case(s, r);
    run_and_check(c, r);
  }
  // Full trees (256 nodes, 8 mask words) and a large score spread (sm_scale
  // 1 with D 256): the running max must rescale correctly.
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    Shape s{dt, 4, 2, 256, 16, {40}, {256}, true, 0};
    set_case(s, "sharp");
    Case c = make_case(s, r);
    c.sm_scale = 1.0f;
    run_and_check(c, r);
  }
  // No batch / no tokens: nothing to do, nothing written.
  {
    Shape s{DType::kFloat32, 4, 4, 64, 4, {}, {}, false, 0};
    set_case(s, "empty batch");
    Case c = make_case(s, r);
    run_and_check(c, r);
  }
}

}  // namespace

int main() {
  Rng r(20261122);
  edge_cases(r);
  random_cases(r);
  std::printf("test_tree_attention_cpu: %s (%d failures)\n", g_failures == 0 ? "PASSED" : "FAILED", g_failures);
  return g_failures == 0 ? 0 : 1;
}

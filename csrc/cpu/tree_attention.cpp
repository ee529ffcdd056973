// CPU tree attention in float32: an online softmax over tiles of kTile keys
// (the prefix in tiles of 32 positions, then the tree in tiles of 32 nodes,
// one mask word each). Up to kBlockRows rows (token, q head) of one sequence
// and one KV head share every tile, so a K/V row is read and converted once
// per block rather than once per row. Vectorised with 4-float vectors
// (compiler vector extensions where available), no intrinsics.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "float_convert.h"
#include "specdec/paged_index.h"
#include "specdec/tree_attention.h"

namespace specdec {
namespace {

using namespace cpu;  // float_convert.h

// ------------------------------------------------------------ float vectors

// Four floats, in one SSE/NEON register under GCC and Clang (vector
// extensions; 16 bytes, so no ABI change whatever the -m flags), a plain
// array elsewhere. Loads and stores are unaligned.
#if defined(__GNUC__) || defined(__clang__)
typedef float F4 __attribute__((vector_size(16)));
inline F4 splat(float x) { return F4{x, x, x, x}; }
#else
struct F4 {
  float v[4];
  F4& operator+=(const F4& o) {
    for (int l = 0; l < 4; ++l) v[l] += o.v[l];
    return *this;
  }
  friend F4 operator*(const F4& a, const F4& b) {
    F4 r;
    for (int l = 0; l < 4; ++l) r.v[l] = a.v[l] * b.v[l];
    return r;
  }
  float operator[](int l) const { return v[l]; }
};
inline F4 splat(float x) { return F4{{x, x, x, x}}; }
#endif
inline F4 load4(const float* p) {
  F4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store4(float* p, const F4& v) { std::memcpy(p, &v, sizeof v); }
inline float lanes_sum(const F4& v) { return (v[0] + v[1]) + (v[2] + v[3]); }

// s0[c] = q0 . k[c] and s1[c] = q1 . k[c] for c < count (s1 may be s0 when q1
// is q0): two rows and four keys per pass, so each load feeds several products.
inline void dot_keys(const float* q0, const float* q1, const float* const* k, int64_t count, int64_t n,
                     float* s0, float* s1) {
  const int64_t n4 = n / 4 * 4;
  int64_t c = 0;
  for (; c + 4 <= count; c += 4) {
    const float *k0 = k[c], *k1 = k[c + 1], *k2 = k[c + 2], *k3 = k[c + 3];
    F4 a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
    for (int64_t i = 0; i < n4; i += 4) {
      const F4 x = load4(q0 + i), y = load4(q1 + i);
      const F4 v0 = load4(k0 + i), v1 = load4(k1 + i), v2 = load4(k2 + i), v3 = load4(k3 + i);
      a0 += x * v0;
      a1 += x * v1;
      a2 += x * v2;
      a3 += x * v3;
      b0 += y * v0;
      b1 += y * v1;
      b2 += y * v2;
      b3 += y * v3;
    }
    float t0[4] = {lanes_sum(a0), lanes_sum(a1), lanes_sum(a2), lanes_sum(a3)};
    float t1[4] = {lanes_sum(b0), lanes_sum(b1), lanes_sum(b2), lanes_sum(b3)};
    for (int64_t i = n4; i < n; ++i) {
      for (int j = 0; j < 4; ++j) {
        t0[j] += q0[i] * k[c + j][i];
        t1[j] += q1[i] * k[c + j][i];
      }
    }
    for (int j = 0; j < 4; ++j) {  // s1 may be s0 (then q1 is q0): same values
      s1[c + j] = t1[j];
      s0[c + j] = t0[j];
    }
  }
  for (; c < count; ++c) {
    F4 a = {}, b = {};
    for (int64_t i = 0; i < n4; i += 4) {
      const F4 v = load4(k[c] + i);
      a += load4(q0 + i) * v;
      b += load4(q1 + i) * v;
    }
    float t0 = lanes_sum(a), t1 = lanes_sum(b);
    for (int64_t i = n4; i < n; ++i) {
      t0 += q0[i] * k[c][i];
      t1 += q1[i] * k[c][i];
    }
    s1[c] = t1;
    s0[c] = t0;
  }
}

// y0 += sum_c w0[c] * x[c] and y1 += sum_c w1[c] * x[c] (y1 may be y0 only
// with w1 all zero): 8 floats of both rows stay in registers over all keys.
inline void accumulate_keys(float* y0, float* y1, const float* w0, const float* w1, const float* const* x,
                            int64_t count, int64_t n) {
  const int64_t n8 = n / 8 * 8;
  for (int64_t i = 0; i < n8; i += 8) {
    F4 a0 = load4(y0 + i), a1 = load4(y0 + i + 4), b0 = load4(y1 + i), b1 = load4(y1 + i + 4);
    for (int64_t c = 0; c < count; ++c) {
      const F4 u = splat(w0[c]), v = splat(w1[c]);
      const F4 x0 = load4(x[c] + i), x1 = load4(x[c] + i + 4);
      a0 += u * x0;
      a1 += u * x1;
      b0 += v * x0;
      b1 += v * x1;
    }
    store4(y1 + i, b0);
    store4(y1 + i + 4, b1);
    store4(y0 + i, a0);
    store4(y0 + i + 4, a1);
  }
  for (int64_t i = n8; i < n; ++i) {
    float a = y0[i], b = y1[i];
    for (int64_t c = 0; c < count; ++c) {
      a += w0[c] * x[c][i];
      b += w1[c] * x[c][i];
    }
    y1[i] = b;
    y0[i] = a;
  }
}

inline void scale(float* y, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= a;
}

// ------------------------------------------------------------ kernel

constexpr int64_t kTile = 32;       // keys per tile; a tree tile is one mask word
constexpr int64_t kBlockRows = 32;  // rows (token, q head) of one sequence and KV head sharing the tiles
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Row `src` as float in `buf`. Copied even for float32: the tile's rows then
// sit next to each other instead of a cache stride apart (often a multiple of
// 4 KiB, which makes them collide in the L1 cache).
template <DType kType>
inline const float* as_float(const typename Elem<kType>::T* src, float* buf, int64_t n) {
  for (int64_t i = 0; i < n; ++i) buf[i] = Elem<kType>::load(src[i]);
  return buf;
}

template <DType kType>
class Block {
 public:
  using T = typename Elem<kType>::T;

  explicit Block(const TreeAttentionArgs& a)
      : a_(a),
        D_(a.head_dim),
        layout_{a.num_blocks,         a.block_size,         a.num_kv_heads,     a.head_dim,
                a.cache_stride_block, a.cache_stride_token, a.cache_stride_head},
        blocks_{a.block_table, a.block_table_stride, a.max_blocks, a.prefix_lens, a.batch},
        buffers_(size_t((2 * kBlockRows + 2 * kTile) * a.head_dim)) {}

  bool full() const { return rows_ == kBlockRows; }
  bool holds(int64_t b, int64_t kv) const { return b == b_ && kv == kv_; }

  void start(int64_t b, int64_t kv) {
    b_ = b;
    kv_ = kv;
    rows_ = 0;
  }
  void add(int64_t t, int64_t h) {
    token_[rows_] = t;
    head_[rows_] = h;
    ++rows_;
  }

  // Attention of the gathered rows; writes their out and lse.
  void run() {
    if (rows_ == 0) return;
    const int64_t D = D_;
    const int64_t b = b_;
    float* qf = buffers_.data();     // [kBlockRows, D]
    float* acc = qf + kBlockRows * D;  // [kBlockRows, D]
    float* kbuf = acc + kBlockRows * D;  // [kTile, D]
    float* vbuf = kbuf + kTile * D;      // [kTile, D]
    const T* q = static_cast<const T*>(a_.q);
    const int64_t first = a_.qo_indptr[b];
    for (int64_t r = 0; r < rows_; ++r) {
      const T* src = q + token_[r] * a_.q_stride_token + head_[r] * a_.q_stride_head;
      for (int64_t d = 0; d < D; ++d) qf[r * D + d] = Elem<kType>::load(src[d]);
      std::fill(acc + r * D, acc + (r + 1) * D, 0.0f);
      m_[r] = kNegInf;
      l_[r] = 0.0f;
      node_[r] = token_[r] - first;
      mask_row_[r] = a_.tree_mask != nullptr ? a_.tree_mask + token_[r] * a_.mask_stride : nullptr;
    }

    // The prefix (positions 0 .. prefix - 1, seen by every row), then the
    // tree (node j at position prefix + j, seen where the row's mask bit is set).
    const int64_t prefix = a_.prefix_lens[b];
    const int64_t prefix_keys = prefix > 0 ? prefix : 0;
    const int64_t tree_len = int64_t(a_.qo_indptr[b + 1]) - first;
    for (int64_t p0 = 0; p0 < prefix_keys; p0 += kTile) {
      tile(p0, std::min(kTile, prefix_keys - p0), -1, kbuf, vbuf);
    }
    for (int64_t j0 = 0; j0 < tree_len; j0 += kTile) {
      tile(prefix + j0, std::min(kTile, tree_len - j0), j0 / kTile, kbuf, vbuf);
    }

    T* out = static_cast<T*>(a_.out);
    for (int64_t r = 0; r < rows_; ++r) {
      const int64_t row = token_[r] * a_.num_q_heads + head_[r];
      T* dst = out + row * D;
      if (l_[r] > 0.0f) {
        const float inv = 1.0f / l_[r];
        for (int64_t d = 0; d < D; ++d) dst[d] = Elem<kType>::store(acc[r * D + d] * inv);
        a_.lse[row] = m_[r] + std::log(l_[r]);
      } else {
        for (int64_t d = 0; d < D; ++d) dst[d] = Elem<kType>::store(0.0f);
        a_.lse[row] = kNegInf;
      }
    }
    rows_ = 0;
  }

 private:
  // Keys at positions pos0 .. pos0 + n - 1. word < 0: prefix keys, visible to
  // every row; else tree nodes 32 * word + c, visible per row.
  void tile(int64_t pos0, int64_t n, int64_t word, float* kbuf, float* vbuf) {
    const int64_t D = D_;
    int64_t offsets[kTile];
    int64_t node_of[kTile];  // the tree node's bit in the mask word
    int64_t keys = 0;
    for (int64_t c = 0; c < n; ++c) {
      const int64_t off = paged_row_offset(layout_, blocks_, b_, pos0 + c);
      if (off < 0) continue;  // outside the block table or the pool: skipped
      offsets[keys] = off + kv_ * a_.cache_stride_head;
      node_of[keys] = c;
      ++keys;
    }
    if (keys == 0) return;

    // Visibility bits of each row over the tile's (compacted) keys.
    uint32_t visible[kBlockRows];
    for (int64_t r = 0; r < rows_; ++r) {
      uint32_t bits;
      if (word < 0) {
        bits = ~0u;
      } else if (mask_row_[r] != nullptr) {
        bits = word < a_.mask_words ? uint32_t(mask_row_[r][word]) : 0u;
      } else {
        const int64_t last = node_[r] - 32 * word;  // causal: nodes 0 .. node visible
        bits = last < 0 ? 0u : last >= 31 ? ~0u : (2u << last) - 1u;
      }
      uint32_t compact = 0;
      for (int64_t c = 0; c < keys; ++c) compact |= ((bits >> node_of[c]) & 1u) << c;
      visible[r] = compact;
    }

    const T* k_cache = static_cast<const T*>(a_.k_cache);
    const float* rows[kTile];  // the tile's K rows, then its V rows, as float
    for (int64_t c = 0; c < keys; ++c) rows[c] = as_float<kType>(k_cache + offsets[c], kbuf + c * D, D);
    const float* qf = buffers_.data();
    for (int64_t r = 0; r < rows_; r += 2) {
      const int64_t r1 = r + 1 < rows_ ? r + 1 : r;
      dot_keys(qf + r * D, qf + r1 * D, rows, keys, D, scores_[r], scores_[r1]);
    }
    for (int64_t r = 0; r < rows_; ++r) {
      for (int64_t c = 0; c < keys; ++c) {
        scores_[r][c] = (visible[r] >> c) & 1u ? scores_[r][c] * a_.sm_scale : kNegInf;
      }
    }

    // Online softmax; afterwards scores_ holds the weights (0 where hidden).
    float* acc = buffers_.data() + kBlockRows * D;
    bool any = false;
    for (int64_t r = 0; r < rows_; ++r) {
      float tile_max = kNegInf;
      for (int64_t c = 0; c < keys; ++c) tile_max = std::max(tile_max, scores_[r][c]);
      const float m_new = std::max(m_[r], tile_max);
      if (visible[r] == 0 || m_new == kNegInf) {  // nothing (finite) to weigh
        std::fill(scores_[r], scores_[r] + keys, 0.0f);
        continue;
      }
      const float alpha = std::exp(m_[r] - m_new);  // 0 on the row's first keys (m = -inf)
      float sum = 0.0f;
      for (int64_t c = 0; c < keys; ++c) {
        const float p = (visible[r] >> c) & 1u ? std::exp(scores_[r][c] - m_new) : 0.0f;
        scores_[r][c] = p;
        sum += p;
      }
      if (alpha != 1.0f) scale(acc + r * D, alpha, D);
      l_[r] = l_[r] * alpha + sum;
      m_[r] = m_new;
      any = true;
    }
    if (!any) return;

    const T* v_cache = static_cast<const T*>(a_.v_cache);
    for (int64_t c = 0; c < keys; ++c) rows[c] = as_float<kType>(v_cache + offsets[c], vbuf + c * D, D);
    for (int64_t r = 0; r < rows_; r += 2) {
      if (r + 1 < rows_) {
        accumulate_keys(acc + r * D, acc + (r + 1) * D, scores_[r], scores_[r + 1], rows, keys, D);
      } else {
        accumulate_keys(acc + r * D, acc + r * D, scores_[r], zeros_, rows, keys, D);
      }
    }
  }

  const TreeAttentionArgs& a_;
  const int64_t D_;
  const PagedLayout layout_;  // element strides: paged_row_offset is unit-agnostic
  const BlockTable blocks_;
  std::vector<float> buffers_;  // q rows, accumulators, converted K and V tiles
  int64_t b_ = -1, kv_ = -1, rows_ = 0;
  int64_t token_[kBlockRows], head_[kBlockRows], node_[kBlockRows];
  const int32_t* mask_row_[kBlockRows];
  float m_[kBlockRows], l_[kBlockRows];
  float scores_[kBlockRows][kTile];
  const float zeros_[kTile] = {};
};

// Rows are gathered per (KV head, sequence) in token order and processed in
// blocks of up to kBlockRows; a row's result does not depend on its block
// (the tiles are fixed by position, the rows never mix), so any split of the
// work items gives the same bits.
template <DType kType>
void run_tree_attention(const TreeAttentionArgs& a, int64_t begin, int64_t end) {
  const int64_t Hq = a.num_q_heads;
  if (begin >= end || a.head_dim <= 0 || Hq <= 0 || a.num_kv_heads <= 0 || Hq % a.num_kv_heads != 0) return;
  const int64_t group = Hq / a.num_kv_heads;
  using T = typename Elem<kType>::T;
  Block<kType> block(a);
  const int64_t t_first = begin / Hq, t_last = (end - 1) / Hq;
  for (int64_t kv = 0; kv < a.num_kv_heads; ++kv) {
    for (int64_t t = t_first; t <= t_last; ++t) {
      const int64_t h_lo = std::max(kv * group, t == t_first ? begin % Hq : 0);
      const int64_t h_hi = std::min((kv + 1) * group, t == t_last ? (end - 1) % Hq + 1 : Hq);
      if (h_lo >= h_hi) continue;
      const int64_t b = sequence_of_token(a.qo_indptr, a.batch, t);
      if (b < 0) {  // no sequence owns the token
        for (int64_t h = h_lo; h < h_hi; ++h) {
          T* dst = static_cast<T*>(a.out) + (t * Hq + h) * a.head_dim;
          for (int64_t d = 0; d < a.head_dim; ++d) dst[d] = Elem<kType>::store(0.0f);
          a.lse[t * Hq + h] = kNegInf;
        }
        continue;
      }
      for (int64_t h = h_lo; h < h_hi; ++h) {
        if (!block.holds(b, kv) || block.full()) {
          block.run();
          block.start(b, kv);
        }
        block.add(t, h);
      }
    }
    block.run();
  }
}

}  // namespace

void tree_attention_cpu(const TreeAttentionArgs& args, int64_t begin, int64_t end) {
  switch (args.dtype) {
    case DType::kFloat16: run_tree_attention<DType::kFloat16>(args, begin, end); break;
    case DType::kBFloat16: run_tree_attention<DType::kBFloat16>(args, begin, end); break;
    case DType::kFloat32: run_tree_attention<DType::kFloat32>(args, begin, end); break;
  }
}

}  // namespace specdec

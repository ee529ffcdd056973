// Checks of the torch-free KV-cache kernels shared by test_kv_cache_cpu and
// test_kv_cache_cuda: random and hand-built cases, a deliberately naive
// reference, and buffers wrapped in guard bytes. A backend runs an op on a
// case's host buffers in place, so the CUDA test goes through the very same
// checks as the CPU one.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "specdec/kv_cache.h"

namespace kvtest {

using specdec::AppendKVArgs;
using specdec::BlockTable;
using specdec::CompactKVArgs;
using specdec::PagedLayout;

// ---------------------------------------------------------------- harness

inline int& failure_count() {
  static int n = 0;
  return n;
}
inline std::string& current_case() {
  static std::string s;
  return s;
}

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
inline std::string strf(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

inline void fail(const char* file, int line, const std::string& what) {
  // One broken kernel fails thousands of rows; the first few tell the story.
  if (++failure_count() <= 40) {
    std::fprintf(stderr, "FAIL %s:%d [%s]: %s\n", file, line, current_case().c_str(), what.c_str());
  }
}

#define KV_EXPECT(cond)                                     \
  do {                                                      \
    if (!(cond)) ::kvtest::fail(__FILE__, __LINE__, #cond); \
  } while (0)
#define KV_EXPECT_MSG(cond, ...)                                                    \
  do {                                                                              \
    if (!(cond)) ::kvtest::fail(__FILE__, __LINE__, ::kvtest::strf(__VA_ARGS__)); \
  } while (0)

using Rng = std::mt19937_64;

inline int64_t uniform(Rng& r, int64_t lo, int64_t hi) {  // inclusive
  return std::uniform_int_distribution<int64_t>(lo, hi)(r);
}
inline bool chance(Rng& r, double p) { return std::uniform_real_distribution<double>(0.0, 1.0)(r) < p; }
template <typename T>
T pick(Rng& r, std::initializer_list<T> values) {
  return values.begin()[uniform(r, 0, int64_t(values.size()) - 1)];
}

// ---------------------------------------------------------------- buffers

// Random bytes with a guard zone on each side. Kernels must only write inside
// [data(), data() + size); the guards catch writes just outside, which is
// where a missed bound check lands (block -1, block num_blocks, one token too
// many). The guard is a multiple of 256 so `misalign` alone decides the data's
// alignment once a device copy starts at a cudaMalloc'ed (256-aligned) address.
struct Guarded {
  std::vector<uint8_t> bytes;
  size_t offset = 0;
  size_t size = 0;

  uint8_t* data() { return bytes.data() + offset; }
  const uint8_t* data() const { return bytes.data() + offset; }
};

inline Guarded make_guarded(size_t size, size_t min_guard, size_t misalign, Rng& r) {
  const size_t guard = (min_guard + 64 + 255) / 256 * 256;
  Guarded g;
  g.offset = guard + misalign;
  g.size = size;
  g.bytes.resize(g.offset + size + guard);
  for (auto& byte : g.bytes) byte = uint8_t(r());
  return g;
}

// Mostly aligned, sometimes not: the CUDA launchers pick their vector width
// (16 bytes down to 1) from the alignment of every pointer and stride.
inline size_t draw_misalign(Rng& r) { return size_t(pick<int>(r, {0, 0, 0, 1, 2, 4, 8})); }

inline size_t layout_bytes(const PagedLayout& l) {
  if (l.num_blocks <= 0) return 0;
  return size_t((l.num_blocks - 1) * l.stride_block + (l.block_size - 1) * l.stride_token +
                (l.num_heads - 1) * l.stride_head + l.row_bytes);
}

enum Style { kNHD = 0, kHND = 1, kPadded = 2 };

inline PagedLayout make_layout(int64_t num_blocks, int64_t block_size, int64_t heads, int64_t row_bytes,
                               int style, int64_t esize, Rng& r) {
  PagedLayout l{num_blocks, block_size, heads, row_bytes, 0, 0, 0};
  if (style == kNHD) {
    l.stride_head = row_bytes;
    l.stride_token = heads * row_bytes;
    l.stride_block = block_size * l.stride_token;
  } else if (style == kHND) {
    l.stride_token = row_bytes;
    l.stride_head = block_size * row_bytes;
    l.stride_block = heads * l.stride_head;
  } else {
    // Odd pads make the CUDA launchers fall back to narrow vectors.
    auto pad = [&] { return esize * pick<int64_t>(r, {0, 1, 3, 8}); };
    l.stride_head = row_bytes + pad();
    l.stride_token = heads * l.stride_head + pad();
    l.stride_block = block_size * l.stride_token + pad();
  }
  return l;
}

// ------------------------------------------------------------ block tables

struct Table {
  std::vector<int32_t> table;  // [batch, stride]
  int64_t stride = 0;
  int64_t max_blocks = 0;
  std::vector<int32_t> prefix_lens;
  int64_t batch = 0;
  int64_t num_blocks = 0;
};

inline BlockTable view(const Table& t, const int32_t* table, const int32_t* prefix_lens) {
  return BlockTable{table, t.stride, t.max_blocks, prefix_lens, t.batch};
}

// A table giving sequence b room for `ends[b]` positions, each block id used at
// most once (so in-place moves of different rows never alias). Padding columns
// past max_blocks name spare blocks that nothing may write: a kernel reading
// past max_blocks shows up as a write to a spare block. With `inject`, some
// ids fall outside the pool and the table may be one block short.
inline Table make_table(std::vector<int32_t> prefix_lens, const std::vector<int64_t>& ends,
                        int64_t block_size, bool inject, Rng& r) {
  Table t;
  t.batch = int64_t(prefix_lens.size());
  t.prefix_lens = std::move(prefix_lens);
  for (int64_t e : ends) t.max_blocks = std::max(t.max_blocks, (e + block_size - 1) / block_size);
  t.max_blocks = std::max<int64_t>(t.max_blocks, 1);
  if (inject && t.max_blocks > 1 && chance(r, 0.5)) --t.max_blocks;
  t.stride = t.max_blocks + (chance(r, 0.5) ? uniform(r, 1, 3) : 0);
  const int64_t spare = uniform(r, 1, 3);
  t.num_blocks = t.batch * t.max_blocks + spare;
  std::vector<int32_t> ids(size_t(t.num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), r);
  t.table.assign(size_t(t.batch * t.stride), 0);
  for (int64_t b = 0; b < t.batch; ++b) {
    for (int64_t i = 0; i < t.stride; ++i) {
      int32_t id = i < t.max_blocks ? ids[size_t(b * t.max_blocks + i)]
                                    : ids[size_t(t.batch * t.max_blocks + uniform(r, 0, spare - 1))];
      if (inject && i < t.max_blocks && chance(r, 0.15)) {
        const int32_t nb = int32_t(t.num_blocks);
        id = pick<int32_t>(r, {-1, -2, nb, nb + 1, INT32_MIN, INT32_MAX});
      }
      t.table[size_t(b * t.stride + i)] = id;
    }
  }
  return t;
}

// Byte offset of (b, pos, head 0) in a layer, or -1: the reference's own,
// spelled out rather than shared with the kernels.
inline int64_t ref_row(const PagedLayout& l, const Table& t, int64_t b, int64_t pos) {
  if (pos < 0 || pos / l.block_size >= t.max_blocks) return -1;
  const int64_t id = t.table[size_t(b * t.stride + pos / l.block_size)];
  if (id < 0 || id >= l.num_blocks) return -1;
  return id * l.stride_block + (pos % l.block_size) * l.stride_token;
}

// --------------------------------------------------------------- append_kv

struct AppendCase {
  std::string name;
  PagedLayout layout{};
  Table t;
  std::vector<int32_t> qo_indptr;
  int64_t num_tokens = 0;
  int64_t k_stride_token = 0, k_stride_head = 0, v_stride_token = 0, v_stride_head = 0;
  Guarded k, v, k_cache, v_cache;
};

struct AppendParams {
  int64_t esize, head_dim, heads, block_size;
  int style;
  uint64_t seed;
  bool inject;            // out-of-range entries of every kind
  int64_t max_batch = 6;
};

inline AppendKVArgs append_args(const AppendCase& c, const void* k, const void* v, void* k_cache,
                                void* v_cache, const int32_t* qo_indptr, const int32_t* table,
                                const int32_t* prefix_lens) {
  return AppendKVArgs{k, v, c.k_stride_token, c.k_stride_head, c.v_stride_token, c.v_stride_head,
                      c.num_tokens, qo_indptr, k_cache, v_cache, c.layout,
                      view(c.t, table, prefix_lens)};
}

inline void input_strides(int64_t heads, int64_t row_bytes, int64_t esize, Rng& r, int64_t* st,
                          int64_t* sh) {
  switch (uniform(r, 0, 2)) {
    case 0: *sh = row_bytes; *st = heads * row_bytes; break;
    case 1: *sh = row_bytes; *st = (3 * heads + 2) * row_bytes; break;  // a slice of a fused qkv
    default:
      *sh = row_bytes + esize * uniform(r, 1, 4);
      *st = heads * *sh + esize * uniform(r, 0, 3);
  }
}

inline AppendCase make_append_case(const AppendParams& p) {
  Rng r(p.seed);
  AppendCase c;
  const int64_t row_bytes = p.head_dim * p.esize;
  const int64_t batch = uniform(r, 1, p.max_batch);
  std::vector<int32_t> prefix(size_t(batch), 0);
  std::vector<int64_t> ends(size_t(batch), 0);
  c.qo_indptr.assign(size_t(batch + 1), 0);
  if (p.inject && chance(r, 0.3)) c.qo_indptr[0] = int32_t(uniform(r, 1, 2));  // tokens before sequence 0
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t n = chance(r, 0.2) ? 0 : uniform(r, 1, 6);
    prefix[size_t(b)] = int32_t(uniform(r, 0, 3 * p.block_size + 3));
    ends[size_t(b)] = prefix[size_t(b)] + n;
    c.qo_indptr[size_t(b + 1)] = int32_t(c.qo_indptr[size_t(b)] + n);
    if (p.inject && chance(r, 0.1)) prefix[size_t(b)] = int32_t(-uniform(r, 1, 3));
  }
  c.num_tokens = c.qo_indptr[size_t(batch)] + (p.inject ? uniform(r, 1, 3) : 0);  // tokens past qo_indptr[B]
  c.t = make_table(prefix, ends, p.block_size, p.inject, r);
  c.layout = make_layout(c.t.num_blocks, p.block_size, p.heads, row_bytes, p.style, p.esize, r);
  input_strides(p.heads, row_bytes, p.esize, r, &c.k_stride_token, &c.k_stride_head);
  input_strides(p.heads, row_bytes, p.esize, r, &c.v_stride_token, &c.v_stride_head);
  auto input_bytes = [&](int64_t st, int64_t sh) {
    return c.num_tokens > 0 ? size_t((c.num_tokens - 1) * st + (p.heads - 1) * sh + row_bytes) : 0;
  };
  auto misalign = [&] { return draw_misalign(r); };
  c.k = make_guarded(input_bytes(c.k_stride_token, c.k_stride_head), 0, misalign(), r);
  c.v = make_guarded(input_bytes(c.v_stride_token, c.v_stride_head), 0, misalign(), r);
  const size_t cache = layout_bytes(c.layout);
  // Two blocks of guard: a write to block -1 or block num_blocks lands in it.
  c.k_cache = make_guarded(cache, size_t(2 * c.layout.stride_block), misalign(), r);
  c.v_cache = make_guarded(cache, size_t(2 * c.layout.stride_block), misalign(), r);
  c.name = strf("append esize=%lld D=%lld H=%lld bs=%lld style=%d B=%lld N=%lld seed=%llu inject=%d",
                (long long)p.esize, (long long)p.head_dim, (long long)p.heads, (long long)p.block_size,
                p.style, (long long)batch, (long long)c.num_tokens, (unsigned long long)p.seed,
                int(p.inject));
  return c;
}

// Token by token through the block table. Returns the rows written (per cache).
inline int64_t reference_append(AppendCase& c) {
  const PagedLayout& l = c.layout;
  int64_t written = 0;
  for (int64_t b = 0; b < c.t.batch; ++b) {
    const int64_t prefix = c.t.prefix_lens[size_t(b)];
    if (prefix < 0) continue;
    for (int64_t t = c.qo_indptr[size_t(b)]; t < c.qo_indptr[size_t(b + 1)]; ++t) {
      if (t < 0 || t >= c.num_tokens) continue;
      const int64_t dst = ref_row(l, c.t, b, prefix + t - c.qo_indptr[size_t(b)]);
      if (dst < 0) continue;
      for (int64_t h = 0; h < l.num_heads; ++h) {
        std::memcpy(c.k_cache.data() + dst + h * l.stride_head,
                    c.k.data() + t * c.k_stride_token + h * c.k_stride_head, size_t(l.row_bytes));
        std::memcpy(c.v_cache.data() + dst + h * l.stride_head,
                    c.v.data() + t * c.v_stride_token + h * c.v_stride_head, size_t(l.row_bytes));
        ++written;
      }
    }
  }
  return written;
}

// -------------------------------------------------------------- compact_kv

struct CompactCase {
  std::string name;
  PagedLayout layout{};
  Table t;
  int64_t num_layers = 0;
  // One buffer per layer, or (stacked, as a [L, num_blocks, ...] tensor) all
  // layers in k_bufs[0] / v_bufs[0], layer_step bytes apart.
  std::vector<Guarded> k_bufs, v_bufs;
  bool stacked = false;
  size_t layer_step = 0;
  std::vector<int32_t> accepted_nodes;  // [batch, accepted_stride]
  int64_t accepted_stride = 0;
  int64_t path_width = 0;
  std::vector<int32_t> num_accepted;

  uint8_t* layer(bool is_k, int64_t l) {
    std::vector<Guarded>& bufs = is_k ? k_bufs : v_bufs;
    return stacked ? bufs[0].data() + size_t(l) * layer_step : bufs[size_t(l)].data();
  }
};

struct CompactParams {
  int64_t esize, head_dim, heads, block_size;
  int style;
  uint64_t seed;
  bool inject;
  int64_t layers = 2;
  bool stacked = false;
  int64_t min_width = 1, max_width = 6;  // path_width
  int64_t min_tree = 1, max_tree = 9;    // draft positions per sequence, root included
  int64_t max_batch = 5;
};

inline CompactKVArgs compact_args(const CompactCase& c, void* const* k_layers, void* const* v_layers,
                                  const int32_t* table, const int32_t* prefix_lens,
                                  const int32_t* accepted_nodes, const int32_t* num_accepted) {
  return CompactKVArgs{k_layers, v_layers, c.num_layers, c.layout, view(c.t, table, prefix_lens),
                       accepted_nodes, c.accepted_stride, c.path_width, num_accepted};
}

// Fills the layer buffers once the table, layout and layer count are set.
inline void make_layers(CompactCase& c, bool stacked, Rng& r) {
  const size_t bytes = layout_bytes(c.layout);
  const size_t guard = size_t(2 * c.layout.stride_block);
  c.stacked = stacked;
  c.k_bufs.clear();
  c.v_bufs.clear();
  if (stacked) {
    c.layer_step = bytes + size_t(c.layout.row_bytes);  // a gap between layers that no kernel may touch
    c.k_bufs.push_back(make_guarded(c.layer_step * size_t(c.num_layers), guard, draw_misalign(r), r));
    c.v_bufs.push_back(make_guarded(c.layer_step * size_t(c.num_layers), guard, draw_misalign(r), r));
  } else {
    c.layer_step = 0;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      c.k_bufs.push_back(make_guarded(bytes, guard, draw_misalign(r), r));
      c.v_bufs.push_back(make_guarded(bytes, guard, draw_misalign(r), r));
    }
  }
}

inline CompactCase make_compact_case(const CompactParams& p) {
  Rng r(p.seed);
  CompactCase c;
  const int64_t row_bytes = p.head_dim * p.esize;
  const int64_t batch = uniform(r, 1, p.max_batch);
  c.num_layers = p.layers;
  c.path_width = uniform(r, p.min_width, p.max_width);
  c.accepted_stride = c.path_width + (chance(r, 0.5) ? uniform(r, 1, 3) : 0);
  std::vector<int32_t> prefix(size_t(batch), 0);
  std::vector<int64_t> ends(size_t(batch), 0);
  c.accepted_nodes.assign(size_t(batch * c.accepted_stride), 0);
  c.num_accepted.assign(size_t(batch), 0);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t tree = uniform(r, p.min_tree, p.max_tree);
    prefix[size_t(b)] = int32_t(uniform(r, 0, 2 * p.block_size + 3));
    ends[size_t(b)] = prefix[size_t(b)] + tree;
    int32_t* row = &c.accepted_nodes[size_t(b * c.accepted_stride)];
    // Past the accepted path and in the row padding: garbage the kernels must
    // not follow, much of it naming perfectly valid positions.
    for (int64_t j = 0; j < c.accepted_stride; ++j) row[j] = int32_t(uniform(r, -3, tree + 3));
    const int64_t most = std::min(c.path_width - 1, tree - 1);
    const int64_t accepted = chance(r, 0.4) ? most : uniform(r, 0, most);
    std::vector<int32_t> nodes(size_t(tree - 1));
    std::iota(nodes.begin(), nodes.end(), 1);
    std::shuffle(nodes.begin(), nodes.end(), r);
    std::sort(nodes.begin(), nodes.begin() + accepted);  // root first, strictly increasing
    row[0] = 0;
    for (int64_t j = 1; j <= accepted; ++j) row[j] = nodes[size_t(j - 1)];
    c.num_accepted[size_t(b)] = int32_t(accepted);
    if (p.inject) {
      for (int64_t j = 1; j <= accepted; ++j) {
        if (chance(r, 0.2)) row[j] = int32_t(uniform(r, -2, tree + 8));  // node <= j, or past the table
      }
      if (chance(r, 0.15)) c.num_accepted[size_t(b)] = int32_t(uniform(r, -2, c.path_width + 3));
      if (chance(r, 0.1)) prefix[size_t(b)] = int32_t(-uniform(r, 1, 3));
    }
  }
  c.t = make_table(prefix, ends, p.block_size, p.inject, r);
  c.layout = make_layout(c.t.num_blocks, p.block_size, p.heads, row_bytes, p.style, p.esize, r);
  make_layers(c, p.stacked, r);
  c.name = strf("compact esize=%lld D=%lld H=%lld bs=%lld style=%d L=%lld B=%lld W=%lld stacked=%d "
                "seed=%llu inject=%d",
                (long long)p.esize, (long long)p.head_dim, (long long)p.heads, (long long)p.block_size,
                p.style, (long long)p.layers, (long long)batch, (long long)c.path_width, int(p.stacked),
                (unsigned long long)p.seed, int(p.inject));
  return c;
}

// Row j of a path becomes the old row accepted_nodes[b, j], read from a copy
// of the layer taken before the op: what an in-place compaction must produce.
// Returns the rows written (per cache).
inline int64_t reference_compact(CompactCase& c) {
  const PagedLayout& l = c.layout;
  const size_t bytes = layout_bytes(l);
  int64_t written = 0;
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    for (bool is_k : {true, false}) {
      uint8_t* cache = c.layer(is_k, layer);
      const std::vector<uint8_t> old(cache, cache + bytes);
      for (int64_t b = 0; b < c.t.batch; ++b) {
        const int64_t prefix = c.t.prefix_lens[size_t(b)];
        if (prefix < 0) continue;
        const int64_t n = std::min<int64_t>(int64_t(c.num_accepted[size_t(b)]) + 1, c.path_width);
        for (int64_t j = 1; j < n; ++j) {
          const int64_t node = c.accepted_nodes[size_t(b * c.accepted_stride + j)];
          if (node <= j) continue;
          const int64_t src = ref_row(l, c.t, b, prefix + node);
          const int64_t dst = ref_row(l, c.t, b, prefix + j);
          if (src < 0 || dst < 0) continue;
          for (int64_t h = 0; h < l.num_heads; ++h) {
            std::memcpy(cache + dst + h * l.stride_head, old.data() + src + h * l.stride_head,
                        size_t(l.row_bytes));
            ++written;
          }
        }
      }
    }
  }
  return written / 2;
}

// ---------------------------------------------------------------- checks

// `actual` against `expected`, both grown from `initial`: the guards, then row
// by row (saying whether the row should have been rewritten or left alone),
// then the bytes between rows that strided layouts leave. The buffer holds
// `layers` caches laid out `layer_step` bytes apart.
inline void expect_buffer(const std::string& what, const Guarded& actual, const Guarded& expected,
                          const Guarded& initial, const PagedLayout& l, int64_t layers = 1,
                          size_t layer_step = 0) {
  KV_EXPECT_MSG(actual.bytes.size() == expected.bytes.size() && actual.offset == expected.offset,
                "%s: buffer shape changed", what.c_str());
  if (actual.bytes.size() != expected.bytes.size() || actual.offset != expected.offset) return;
  const size_t end = actual.offset + actual.size;
  KV_EXPECT_MSG(std::memcmp(actual.bytes.data(), initial.bytes.data(), actual.offset) == 0,
                "%s: guard bytes before the buffer were written", what.c_str());
  KV_EXPECT_MSG(std::memcmp(actual.bytes.data() + end, initial.bytes.data() + end,
                            actual.bytes.size() - end) == 0,
                "%s: guard bytes after the buffer were written", what.c_str());
  int reported = 0;
  for (int64_t layer = 0; layer < layers; ++layer) {
    for (int64_t blk = 0; blk < l.num_blocks; ++blk) {
      for (int64_t s = 0; s < l.block_size; ++s) {
        for (int64_t h = 0; h < l.num_heads; ++h) {
          const size_t off = actual.offset + size_t(layer) * layer_step +
                             size_t(blk * l.stride_block + s * l.stride_token + h * l.stride_head);
          const size_t n = size_t(l.row_bytes);
          if (std::memcmp(actual.bytes.data() + off, expected.bytes.data() + off, n) == 0) continue;
          const bool stays = std::memcmp(expected.bytes.data() + off, initial.bytes.data() + off, n) == 0;
          KV_EXPECT_MSG(false, "%s: layer %lld block %lld slot %lld head %lld differs (a row that %s)",
                        what.c_str(), (long long)layer, (long long)blk, (long long)s, (long long)h,
                        stays ? "must stay unchanged" : "must be rewritten");
          if (++reported == 4) return;
        }
      }
    }
  }
  if (reported == 0) {
    KV_EXPECT_MSG(std::memcmp(actual.data(), expected.data(), actual.size) == 0,
                  "%s: bytes outside every row were written", what.c_str());
  }
}

inline void expect_untouched(const std::string& what, const Guarded& actual, const Guarded& initial) {
  KV_EXPECT_MSG(actual.bytes == initial.bytes, "%s: buffer was modified", what.c_str());
}

inline void expect_compact_buffers(const CompactCase& actual, const CompactCase& expected,
                                   const CompactCase& initial, const char* against = "reference") {
  const int64_t layers = actual.stacked ? actual.num_layers : 1;
  for (size_t i = 0; i < actual.k_bufs.size(); ++i) {
    expect_buffer(strf("K buffer %zu vs %s", i, against), actual.k_bufs[i], expected.k_bufs[i],
                  initial.k_bufs[i], actual.layout, layers, actual.layer_step);
    expect_buffer(strf("V buffer %zu vs %s", i, against), actual.v_bufs[i], expected.v_bufs[i],
                  initial.v_bufs[i], actual.layout, layers, actual.layer_step);
  }
}

// ---------------------------------------------------------------- backends

// Runs an op on the case's host buffers in place.
struct Backend {
  virtual ~Backend() = default;
  virtual void append(AppendCase& c) = 0;
  virtual void compact(CompactCase& c) = 0;
};

// The CPU kernels, each op split at a random work item so that the
// begin/end ranges are exercised too.
struct CpuBackend : Backend {
  Rng split{12345};

  void append(AppendCase& c) override {
    const AppendKVArgs a = append_args(c, c.k.data(), c.v.data(), c.k_cache.data(), c.v_cache.data(),
                                       c.qo_indptr.data(), c.t.table.data(), c.t.prefix_lens.data());
    const int64_t mid = uniform(split, 0, c.num_tokens);
    specdec::append_kv_cpu(a, 0, mid);
    specdec::append_kv_cpu(a, mid, c.num_tokens);
  }

  void compact(CompactCase& c) override {
    std::vector<void*> k, v;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      k.push_back(c.layer(true, l));
      v.push_back(c.layer(false, l));
    }
    const CompactKVArgs a = compact_args(c, k.data(), v.data(), c.t.table.data(), c.t.prefix_lens.data(),
                                         c.accepted_nodes.data(), c.num_accepted.data());
    const int64_t items = specdec::compact_kv_cpu_work_items(a);
    KV_EXPECT_MSG(items == c.num_layers * c.t.batch, "compact_kv_cpu_work_items = %lld, want %lld",
                  (long long)items, (long long)(c.num_layers * c.t.batch));
    const int64_t mid = uniform(split, 0, items);
    specdec::compact_kv_cpu(a, 0, mid);
    specdec::compact_kv_cpu(a, mid, items);
  }
};

// ------------------------------------------------------------------ suite

struct Totals {
  int64_t cases = 0;
  int64_t rows_written = 0;
};

inline void check_append(Backend& be, AppendCase c, Totals* totals) {
  current_case() = c.name;
  const AppendCase initial = c;
  AppendCase expected = c;
  totals->rows_written += reference_append(expected);
  ++totals->cases;
  be.append(c);
  expect_buffer("k_cache vs reference", c.k_cache, expected.k_cache, initial.k_cache, c.layout);
  expect_buffer("v_cache vs reference", c.v_cache, expected.v_cache, initial.v_cache, c.layout);
  expect_untouched("k", c.k, initial.k);
  expect_untouched("v", c.v, initial.v);
}

inline void check_compact(Backend& be, CompactCase c, Totals* totals) {
  current_case() = c.name;
  const CompactCase initial = c;
  CompactCase expected = c;
  totals->rows_written += reference_compact(expected);
  ++totals->cases;
  be.compact(c);
  expect_compact_buffers(c, expected, initial);
}

// The in-place case the kernels' ordering argument is about: path [0, 2, 3]
// moves old rows 2 and 3 down to 1 and 2, so row 2 is both a destination and
// (earlier) a source. Checked against the old rows directly, not only against
// the reference.
inline void check_overlap(Backend& be, int64_t block_size, int style, bool stacked, Totals* totals) {
  Rng r(7 + uint64_t(block_size) * 31 + uint64_t(style));
  CompactCase c;
  c.num_layers = 3;
  c.path_width = 4;
  c.accepted_stride = 5;
  // Sequence 0's rows straddle a block boundary (rows 0-1 | 2-...); sequence
  // 1's path [0, 1, 3] leaves row 1 in place and moves row 3 only. Entries past
  // num_accepted are garbage.
  c.accepted_nodes = {0, 2, 3, 4, 1, /**/ 0, 1, 3, 2, 5};
  c.num_accepted = {2, 2};
  const int32_t p0 = int32_t(std::max<int64_t>(0, 2 * block_size - 2));
  c.t = make_table({p0, 0}, {p0 + 6, 6}, block_size, false, r);
  c.layout = make_layout(c.t.num_blocks, block_size, 2, 64 * 2, style, 2, r);
  make_layers(c, stacked, r);
  c.name = strf("overlap [0,2,3] bs=%lld style=%d stacked=%d", (long long)block_size, style, int(stacked));
  CompactCase old = c;
  check_compact(be, c, totals);
  be.compact(c);
  const size_t rb = size_t(c.layout.row_bytes);
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    for (bool is_k : {true, false}) {
      for (int64_t h = 0; h < c.layout.num_heads; ++h) {
        auto same = [&](int64_t b, int64_t new_row, int64_t old_row) {
          const int64_t p = c.t.prefix_lens[size_t(b)];
          const int64_t now = ref_row(c.layout, c.t, b, p + new_row), was = ref_row(c.layout, c.t, b, p + old_row);
          return now >= 0 && was >= 0 &&
                 std::memcmp(c.layer(is_k, layer) + now + h * c.layout.stride_head,
                             old.layer(is_k, layer) + was + h * c.layout.stride_head, rb) == 0;
        };
        KV_EXPECT_MSG(same(0, 0, 0) && same(0, 1, 2) && same(0, 2, 3) && same(0, 3, 3) && same(0, 4, 4),
                      "sequence 0, layer %lld %s head %lld: rows 0..4 must be old rows 0, 2, 3, 3, 4",
                      (long long)layer, is_k ? "K" : "V", (long long)h);
        KV_EXPECT_MSG(same(1, 0, 0) && same(1, 1, 1) && same(1, 2, 3) && same(1, 3, 3),
                      "sequence 1, layer %lld %s head %lld: rows 0..3 must be old rows 0, 1, 3, 3",
                      (long long)layer, is_k ? "K" : "V", (long long)h);
      }
    }
  }
}

// Cases whose every entry is out of range in one way: caches and inputs must
// come back byte for byte as they went in.
inline void check_append_all_skipped(Backend& be) {
  Rng r(99);
  for (int kind = 0; kind < 5; ++kind) {
    AppendCase c;
    for (uint64_t seed = 500;; ++seed) {  // a case with tokens, or there is nothing to skip
      c = make_append_case(AppendParams{2, 64, 2, 4, kNHD, seed, false, 3});
      if (c.num_tokens > 0) break;
    }
    const char* what = "";
    switch (kind) {
      case 0:
        what = "block ids outside the pool";
        for (int64_t b = 0; b < c.t.batch; ++b) {
          for (int64_t i = 0; i < c.t.max_blocks; ++i) {
            const int32_t nb = int32_t(c.t.num_blocks);
            c.t.table[size_t(b * c.t.stride + i)] = pick<int32_t>(r, {-1, nb, nb + 1, INT32_MAX, INT32_MIN});
          }
        }
        break;
      case 1:
        what = "positions past the block table";
        for (auto& p : c.t.prefix_lens) p = int32_t(c.t.max_blocks * c.layout.block_size + uniform(r, 0, 2));
        break;
      case 2:
        what = "tokens past qo_indptr[B]";
        std::fill(c.qo_indptr.begin(), c.qo_indptr.end(), 0);
        break;
      case 3:
        what = "negative prefix_lens";
        for (auto& p : c.t.prefix_lens) p = int32_t(-uniform(r, 1, 3));
        break;
      default:
        what = "tokens before qo_indptr[0]";
        std::fill(c.qo_indptr.begin(), c.qo_indptr.end(), int32_t(c.num_tokens));
    }
    c.name = strf("append, all skipped: %s", what);
    current_case() = c.name;
    const AppendCase initial = c;
    be.append(c);
    expect_untouched("k_cache", c.k_cache, initial.k_cache);
    expect_untouched("v_cache", c.v_cache, initial.v_cache);
    expect_untouched("k", c.k, initial.k);
    expect_untouched("v", c.v, initial.v);
  }
}

inline void check_compact_all_skipped(Backend& be) {
  for (int kind = 0; kind < 9; ++kind) {
    Rng r(700 + uint64_t(kind));
    // Two sequences, four logical blocks of 4 each, path width 4: rows 1..3
    // live in logical block 0, nodes j + 4 in logical block 1.
    CompactCase c;
    c.num_layers = 2;
    c.path_width = 4;
    c.accepted_stride = 4;
    c.t = make_table({0, 0}, {16, 16}, 4, false, r);
    c.layout = make_layout(c.t.num_blocks, 4, 2, 64 * 4, kPadded, 4, r);
    c.accepted_nodes = {0, 5, 6, 7, /**/ 0, 5, 6, 7};
    c.num_accepted = {3, 3};
    auto set_table = [&](int64_t logical, std::initializer_list<int32_t> ids) {
      for (int64_t b = 0; b < c.t.batch; ++b) c.t.table[size_t(b * c.t.stride + logical)] = pick(r, ids);
    };
    const int32_t nb = int32_t(c.t.num_blocks);
    const char* what = "";
    switch (kind) {
      case 0:
        what = "sources past the block table";
        c.accepted_nodes = {0, 17, 18, 19, /**/ 0, 16, 30, 1000};
        break;
      case 1:
        what = "source blocks outside the pool";
        set_table(1, {-1, nb, nb + 1, INT32_MAX});
        break;
      case 2:
        what = "destination blocks outside the pool";
        set_table(0, {-1, nb, nb + 1, INT32_MIN});
        break;
      case 3:
        what = "nodes <= j";
        c.accepted_nodes = {0, 1, 2, 3, /**/ 0, -1, 1, 0};
        break;
      case 4:
        what = "num_accepted 0 or negative";
        c.num_accepted = {0, -2};
        break;
      case 5:
        what = "negative prefix_lens";
        c.t.prefix_lens = {-1, -4};
        break;
      case 6:
        what = "path_width 1 (the root alone)";
        c.path_width = 1;
        break;
      case 7:
        what = "valid nodes after num_accepted";
        c.accepted_nodes = {0, 1, 6, 7, /**/ 0, 1, 2, 9};
        c.num_accepted = {1, 2};
        break;
      default:
        what = "valid nodes past path_width (num_accepted too large)";
        c.path_width = 2;
        c.accepted_nodes = {0, 1, 6, 7, /**/ 0, 1, 2, 9};
        c.num_accepted = {3, 100};
    }
    make_layers(c, kind % 2 == 1, r);
    c.name = strf("compact, all skipped: %s", what);
    current_case() = c.name;
    const CompactCase initial = c;
    be.compact(c);
    for (size_t i = 0; i < c.k_bufs.size(); ++i) {
      expect_untouched(strf("K buffer %zu", i), c.k_bufs[i], initial.k_bufs[i]);
      expect_untouched(strf("V buffer %zu", i), c.v_bufs[i], initial.v_bufs[i]);
    }
  }
}

// Everything above, over both element sizes, every head dim and a spread of
// block sizes, layouts, batch shapes and seeds.
inline void run_suite(Backend& be) {
  Totals append_totals, compact_totals;
  const int64_t block_sizes[] = {1, 5, 16, 64};
  uint64_t seed = 1;
  for (int64_t esize : {2, 4}) {
    for (int64_t head_dim : {64, 128, 256}) {
      for (int64_t bs : block_sizes) {
        for (int rep = 0; rep < 3; ++rep) {
          ++seed;
          const int style = int((seed + uint64_t(rep)) % 3);
          const int64_t heads = 1 + int64_t(seed % 4);
          const bool inject = rep == 2;
          check_append(be, make_append_case(AppendParams{esize, head_dim, heads, bs, style, seed, inject}),
                       &append_totals);
          CompactParams p{esize, head_dim, heads, bs, style, seed, inject};
          p.layers = 1 + int64_t(seed % 3);
          p.stacked = rep == 1;
          check_compact(be, make_compact_case(p), &compact_totals);
        }
      }
    }
  }
  // Many short sequences, so the token -> sequence search goes deep.
  for (uint64_t s = 0; s < 4; ++s) {
    check_append(be, make_append_case(AppendParams{2, 64, 1, 16, kNHD, 900 + s, s % 2 == 1, 64}),
                 &append_totals);
  }
  // More layers than one CUDA launch carries.
  for (uint64_t s = 0; s < 2; ++s) {
    CompactParams p{2, 64, 1, 4, int(s), 1000 + s, s == 1};
    p.layers = specdec::kMaxLayersPerLaunch + 5;
    p.stacked = s == 1;
    check_compact(be, make_compact_case(p), &compact_totals);
  }
  // The widest path the CUDA kernel stages in shared memory, taken in full.
  {
    CompactParams p{2, 64, 2, 16, kNHD, 1100, false};
    p.min_width = p.max_width = specdec::kMaxPathWidth;
    p.min_tree = specdec::kMaxPathWidth + 1;
    p.max_tree = specdec::kMaxPathWidth + 64;
    p.max_batch = 3;
    check_compact(be, make_compact_case(p), &compact_totals);
  }
  for (int64_t bs : block_sizes) {
    for (int style : {kNHD, kHND, kPadded}) check_overlap(be, bs, style, style == kHND, &compact_totals);
  }
  check_append_all_skipped(be);
  check_compact_all_skipped(be);
  // A generator that skipped everything would make the suite vacuous.
  current_case() = "suite";
  KV_EXPECT(append_totals.rows_written > 1000);
  KV_EXPECT(compact_totals.rows_written > 1000);
  std::printf("append_kv: %lld random cases, %lld rows written by the reference\n",
              (long long)append_totals.cases, (long long)append_totals.rows_written);
  std::printf("compact_kv: %lld random cases, %lld rows written by the reference\n",
              (long long)compact_totals.cases, (long long)compact_totals.rows_written);
}

}  // namespace kvtest

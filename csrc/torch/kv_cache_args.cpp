#include "kv_cache_args.h"

#include <string>

#include "glue_util.h"

namespace specdec {
namespace glue {
namespace {

void check_index_tensor(const at::Tensor& t, const char* op, const char* name, int64_t dim) {
  TORCH_CHECK(t.scalar_type() == at::kInt, op, ": ", name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must have ", dim, " dims, got shape ", shape_of(t));
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, op, ": ", name,
              " must be contiguous in its last dim");
}

void check_same_device(const at::Tensor& ref, const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but the caches are on ", ref.device());
}

// One paged cache layer [num_blocks, block_size, H, D] (or the trailing four
// dims of a stacked cache): float type, D contiguous.
void check_cache(const at::Tensor& c, const char* op, const char* name) {
  TORCH_CHECK(c.dim() == 4 || c.dim() == 5, op, ": ", name,
              " must be [num_blocks, block_size, H_kv, D] or [layers, num_blocks, block_size, H_kv, D], got ",
              shape_of(c));
  TORCH_CHECK(c.scalar_type() == at::kHalf || c.scalar_type() == at::kBFloat16 ||
                  c.scalar_type() == at::kFloat,
              op, ": ", name, " must be float16, bfloat16 or float32, got ", c.scalar_type());
  TORCH_CHECK(c.stride(-1) == 1, op, ": ", name, " must be contiguous in its last (head_dim) dim");
  TORCH_CHECK(c.size(-3) > 0, op, ": ", name, " has block_size 0");
}

void check_twin(const at::Tensor& a, const at::Tensor& b, const char* op, const char* name_a,
                const char* name_b) {
  TORCH_CHECK(a.sizes() == b.sizes() && a.strides() == b.strides(), op, ": ", name_a, " ",
              shape_of(a), " and ", name_b, " ", shape_of(b), " must have the same shape and strides");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", name_a, " and ", name_b,
              " must have the same dtype");
}

void check_block_table(const at::Tensor& ref, const at::Tensor& block_table,
                       const at::Tensor& prefix_lens, const char* op) {
  check_index_tensor(block_table, op, "block_table", 2);
  check_index_tensor(prefix_lens, op, "prefix_lens", 1);
  check_same_device(ref, block_table, op, "block_table");
  check_same_device(ref, prefix_lens, op, "prefix_lens");
  TORCH_CHECK(prefix_lens.size(0) == block_table.size(0), op, ": prefix_lens must be [B] with B = ",
              block_table.size(0), " (block_table's rows), got ", shape_of(prefix_lens));
}

PagedLayout layout_of(const at::Tensor& c) {
  const int64_t e = c.element_size();
  const int64_t d = c.dim();
  return PagedLayout{c.size(d - 4),          c.size(d - 3),          c.size(d - 2),
                     c.size(d - 1) * e,      c.stride(d - 4) * e,    c.stride(d - 3) * e,
                     c.stride(d - 2) * e};
}

BlockTable blocks_of(const at::Tensor& block_table, const at::Tensor& prefix_lens) {
  return BlockTable{block_table.data_ptr<int32_t>(), block_table.stride(0), block_table.size(1),
                    prefix_lens.data_ptr<int32_t>(), block_table.size(0)};
}

// Every logical block that positions [first, last] of sequence b map to names
// a block of the pool.
void check_positions(const int32_t* table, int64_t row, int64_t max_blocks, int64_t block_size,
                     int64_t num_blocks, int64_t b, int64_t first, int64_t last, const char* op) {
  if (last < first) return;
  TORCH_CHECK(last < max_blocks * block_size, op, ": sequence ", b, " needs position ", last,
              " but block_table holds only ", max_blocks, " blocks of ", block_size, " positions");
  for (int64_t blk = first / block_size; blk <= last / block_size; ++blk) {
    const int64_t id = table[b * row + blk];
    TORCH_CHECK(id >= 0 && id < num_blocks, op, ": block_table[", b, ", ", blk, "] = ", id,
                " is outside the pool of ", num_blocks, " blocks");
  }
}

}  // namespace

void check_append_kv(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
                     const at::Tensor& v_cache, const at::Tensor& block_table,
                     const at::Tensor& prefix_lens, const at::Tensor& qo_indptr) {
  const char* op = "specdec::append_kv";
  check_cache(k_cache, op, "k_cache");
  TORCH_CHECK(k_cache.dim() == 4, op, ": k_cache must be one layer [num_blocks, block_size, H_kv, D], got ",
              shape_of(k_cache));
  check_twin(k_cache, v_cache, op, "k_cache", "v_cache");
  check_same_device(k_cache, v_cache, op, "v_cache");
  TORCH_CHECK(k.dim() == 3 && k.size(1) == k_cache.size(2) && k.size(2) == k_cache.size(3), op,
              ": k must be [N, H_kv, D] = [N, ", k_cache.size(2), ", ", k_cache.size(3), "], got ",
              shape_of(k));
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": v must have k's shape ", shape_of(k), ", got ", shape_of(v));
  for (const auto* t : {&k, &v}) {
    const char* name = t == &k ? "k" : "v";
    TORCH_CHECK(t->scalar_type() == k_cache.scalar_type(), op, ": ", name, " must have the cache dtype ",
                k_cache.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK(t->stride(2) == 1, op, ": ", name, " must be contiguous in its last (head_dim) dim");
    check_same_device(k_cache, *t, op, name);
  }
  check_block_table(k_cache, block_table, prefix_lens, op);
  check_index_tensor(qo_indptr, op, "qo_indptr", 1);
  check_same_device(k_cache, qo_indptr, op, "qo_indptr");
  TORCH_CHECK(qo_indptr.size(0) == block_table.size(0) + 1, op, ": qo_indptr must be [B + 1] = [",
              block_table.size(0) + 1, "], got ", shape_of(qo_indptr));
}

void check_compact_kv(at::TensorList k_caches, at::TensorList v_caches, const at::Tensor& block_table,
                      const at::Tensor& prefix_lens, const at::Tensor& accepted_nodes,
                      const at::Tensor& num_accepted) {
  const char* op = "specdec::compact_kv";
  TORCH_CHECK(!k_caches.empty(), op, ": k_caches is empty");
  TORCH_CHECK(k_caches.size() == v_caches.size(), op, ": k_caches has ", k_caches.size(),
              " entries but v_caches has ", v_caches.size());
  const at::Tensor& ref = k_caches[0];
  for (size_t i = 0; i < k_caches.size(); ++i) {
    check_cache(k_caches[i], op, "k_caches");
    check_twin(k_caches[i], v_caches[i], op, "k_caches[i]", "v_caches[i]");
    check_same_device(ref, k_caches[i], op, "k_caches");
    check_same_device(ref, v_caches[i], op, "v_caches");
    TORCH_CHECK(k_caches[i].scalar_type() == ref.scalar_type(), op,
                ": every cache must have the same dtype");
    for (int64_t d = 1; d <= 4; ++d) {
      TORCH_CHECK(k_caches[i].size(-d) == ref.size(-d) && k_caches[i].stride(-d) == ref.stride(-d), op,
                  ": every layer must have the same [num_blocks, block_size, H_kv, D] shape and strides; ",
                  "k_caches[", i, "] is ", shape_of(k_caches[i]), ", k_caches[0] is ", shape_of(ref));
    }
  }
  check_block_table(ref, block_table, prefix_lens, op);
  check_index_tensor(accepted_nodes, op, "accepted_nodes", 2);
  check_index_tensor(num_accepted, op, "num_accepted", 1);
  check_same_device(ref, accepted_nodes, op, "accepted_nodes");
  check_same_device(ref, num_accepted, op, "num_accepted");
  const int64_t batch = block_table.size(0);
  TORCH_CHECK(accepted_nodes.size(0) == batch && accepted_nodes.size(1) >= 1, op,
              ": accepted_nodes must be [B, max_depth + 1] with B = ", batch, ", got ",
              shape_of(accepted_nodes));
  TORCH_CHECK(accepted_nodes.size(1) <= kMaxPathWidth, op, ": accepted_nodes has ",
              accepted_nodes.size(1), " columns; at most ", kMaxPathWidth, " are supported");
  TORCH_CHECK(num_accepted.size(0) == batch, op, ": num_accepted must be [B] = [", batch, "], got ",
              shape_of(num_accepted));
}

void check_append_kv_values(const at::Tensor& k, const at::Tensor& k_cache,
                            const at::Tensor& block_table, const at::Tensor& prefix_lens,
                            const at::Tensor& qo_indptr) {
  const char* op = "specdec::append_kv";
  const int32_t* indptr = qo_indptr.data_ptr<int32_t>();
  const int32_t* prefix = prefix_lens.data_ptr<int32_t>();
  const int64_t batch = prefix_lens.size(0);
  check_indptr_values(op, "qo_indptr", indptr, batch, k.size(0), "tokens");
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(prefix[b] >= 0, op, ": prefix_lens[", b, "] = ", prefix[b], " is negative");
    check_positions(block_table.data_ptr<int32_t>(), block_table.stride(0), block_table.size(1),
                    k_cache.size(-3), k_cache.size(-4), b, prefix[b],
                    int64_t(prefix[b]) + indptr[b + 1] - indptr[b] - 1, op);
  }
}

void check_compact_kv_values(const at::Tensor& cache, const at::Tensor& block_table,
                             const at::Tensor& prefix_lens, const at::Tensor& accepted_nodes,
                             const at::Tensor& num_accepted) {
  const char* op = "specdec::compact_kv";
  const int32_t* prefix = prefix_lens.data_ptr<int32_t>();
  const int32_t* count = num_accepted.data_ptr<int32_t>();
  const int32_t* nodes = accepted_nodes.data_ptr<int32_t>();
  const int64_t width = accepted_nodes.size(1);
  for (int64_t b = 0; b < prefix_lens.size(0); ++b) {
    TORCH_CHECK(prefix[b] >= 0, op, ": prefix_lens[", b, "] = ", prefix[b], " is negative");
    TORCH_CHECK(count[b] >= 0 && count[b] < width, op, ": num_accepted[", b, "] = ", count[b],
                " must be in [0, ", width - 1, "] (accepted_nodes has ", width, " columns)");
    const int32_t* row = nodes + b * accepted_nodes.stride(0);
    TORCH_CHECK(row[0] == 0, op, ": accepted_nodes[", b, ", 0] must be the root 0, got ", row[0]);
    for (int64_t j = 1; j <= count[b]; ++j) {
      TORCH_CHECK(row[j] > row[j - 1], op, ": accepted_nodes[", b,
                  "] must be strictly increasing over its first num_accepted + 1 entries, but entry ", j,
                  " is ", row[j], " after ", row[j - 1]);
    }
    check_positions(block_table.data_ptr<int32_t>(), block_table.stride(0), block_table.size(1),
                    cache.size(-3), cache.size(-4), b, prefix[b], int64_t(prefix[b]) + row[count[b]], op);
  }
}

AppendKVArgs append_kv_args(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& block_table,
                            const at::Tensor& prefix_lens, const at::Tensor& qo_indptr) {
  const int64_t e = k.element_size();
  return AppendKVArgs{k.data_ptr(),        v.data_ptr(),      k.stride(0) * e,
                      k.stride(1) * e,     v.stride(0) * e,   v.stride(1) * e,
                      k.size(0),           qo_indptr.data_ptr<int32_t>(),
                      k_cache.data_ptr(),  v_cache.data_ptr(), layout_of(k_cache),
                      blocks_of(block_table, prefix_lens)};
}

CompactKVArgs compact_kv_args(at::TensorList k_caches, at::TensorList v_caches,
                              const at::Tensor& block_table, const at::Tensor& prefix_lens,
                              const at::Tensor& accepted_nodes, const at::Tensor& num_accepted,
                              std::vector<void*>* k_layers, std::vector<void*>* v_layers) {
  k_layers->clear();
  v_layers->clear();
  for (size_t i = 0; i < k_caches.size(); ++i) {
    const at::Tensor& kc = k_caches[i];
    const int64_t layers = kc.dim() == 5 ? kc.size(0) : 1;
    const int64_t step = kc.dim() == 5 ? kc.stride(0) * kc.element_size() : 0;
    for (int64_t l = 0; l < layers; ++l) {
      k_layers->push_back(static_cast<char*>(kc.data_ptr()) + l * step);
      v_layers->push_back(static_cast<char*>(v_caches[i].data_ptr()) + l * step);
    }
  }
  return CompactKVArgs{k_layers->data(),
                       v_layers->data(),
                       int64_t(k_layers->size()),
                       layout_of(k_caches[0]),
                       blocks_of(block_table, prefix_lens),
                       accepted_nodes.data_ptr<int32_t>(),
                       accepted_nodes.stride(0),
                       accepted_nodes.size(1),
                       num_accepted.data_ptr<int32_t>()};
}

}  // namespace glue
}  // namespace specdec

#include "tree_attention_args.h"

#include <string>

#include "glue_util.h"

namespace specdec {
namespace glue {
namespace {

constexpr const char* kOp = "specdec::tree_attention";

void check_last_dim_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, kOp, ": ", name,
              " must be contiguous in its last dim (stride 1), got strides ", t.strides());
}

void check_device(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK(t.device() == device, kOp, ": ", name, " is on ", t.device(), " but the caches are on ",
              device);
}

// dims, dtype, device, last dim contiguous: the order of the Python checks.
void check_int32(const at::Tensor& t, const char* name, int64_t dim, const at::Device& device) {
  TORCH_CHECK(t.dim() == dim, kOp, ": ", name, " must have ", dim, " dims, got shape ", shape_of(t));
  TORCH_CHECK(t.scalar_type() == at::kInt, kOp, ": ", name, " must be int32, got ",
              dtype_name(t.scalar_type()));
  check_device(t, name, device);
}

void check_index_vector(const at::Tensor& t, const char* name, int64_t length, const at::Device& device) {
  check_int32(t, name, 1, device);
  TORCH_CHECK(t.size(0) == length, kOp, ": ", name, " must be [", length, "], got shape ", shape_of(t));
  check_last_dim_contiguous(t, name);
}

void check_cache(const at::Tensor& c, const char* name) {
  const auto s = c.scalar_type();
  TORCH_CHECK(s == at::kHalf || s == at::kBFloat16 || s == at::kFloat, kOp, ": ", name,
              " must be float16 or bfloat16 or float32, got ", dtype_name(s));
  TORCH_CHECK(c.dim() == 4, kOp, ": ", name, " must be [num_blocks, block_size, H_kv, D], got shape ",
              shape_of(c));
  check_last_dim_contiguous(c, name);
  TORCH_CHECK(c.size(1) > 0, kOp, ": ", name, " has block_size 0");
}

}  // namespace

void check_tree_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& block_table, const at::Tensor& prefix_lens,
                          const at::Tensor& qo_indptr, const std::optional<at::Tensor>& tree_mask) {
  check_cache(k_cache, "k_cache");
  check_cache(v_cache, "v_cache");
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes() && v_cache.strides() == k_cache.strides() &&
                  v_cache.scalar_type() == k_cache.scalar_type(),
              kOp, ": v_cache ", shape_of(v_cache), " ", dtype_name(v_cache.scalar_type()),
              " must have the shape, strides and dtype of k_cache ", shape_of(k_cache), " ",
              dtype_name(k_cache.scalar_type()));
  TORCH_CHECK(v_cache.device() == k_cache.device(), kOp, ": v_cache is on ", v_cache.device(),
              " but k_cache is on ", k_cache.device());
  const at::Device device = k_cache.device();
  const int64_t num_kv_heads = k_cache.size(2);
  const int64_t head_dim = k_cache.size(3);

  TORCH_CHECK(q.dim() == 3, kOp, ": q must have 3 dims, got shape ", shape_of(q));
  check_device(q, "q", device);
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type(), kOp, ": q must have the cache dtype ",
              dtype_name(k_cache.scalar_type()), ", got ", dtype_name(q.scalar_type()));
  TORCH_CHECK(q.size(2) == head_dim, kOp, ": q must be [N, Hq, D=", head_dim,
              "] (the cache's head dim), got shape ", shape_of(q));
  TORCH_CHECK(head_dim == 64 || head_dim == 128 || head_dim == 256, kOp,
              ": head dim D (last dim of q, k_cache and v_cache) must be one of (64, 128, 256), got ", head_dim);
  TORCH_CHECK(num_kv_heads > 0 && q.size(1) > 0 && q.size(1) % num_kv_heads == 0, kOp, ": q's head count Hq=",
              q.size(1), " must be a positive multiple of the cache's Hkv=", num_kv_heads);
  check_last_dim_contiguous(q, "q");

  check_int32(block_table, "block_table", 2, device);
  check_last_dim_contiguous(block_table, "block_table");
  const int64_t batch = block_table.size(0);
  check_index_vector(prefix_lens, "prefix_lens", batch, device);
  check_index_vector(qo_indptr, "qo_indptr", batch + 1, device);

  if (tree_mask.has_value()) {
    const at::Tensor& m = *tree_mask;
    check_int32(m, "tree_mask", 2, device);
    TORCH_CHECK(m.size(0) == q.size(0) && m.size(1) > 0, kOp, ": tree_mask must be [N=", q.size(0),
                ", ceil(T_max / 32)], got shape ", shape_of(m));
    check_last_dim_contiguous(m, "tree_mask");
  }
}

void check_tree_attention_values(const at::Tensor& q, const at::Tensor& k_cache,
                                 const at::Tensor& block_table, const at::Tensor& prefix_lens,
                                 const at::Tensor& qo_indptr, const std::optional<at::Tensor>& tree_mask) {
  const int64_t batch = prefix_lens.size(0);
  const int64_t num_tokens = q.size(0);
  // Vectors of one entry may have any stride, longer ones are contiguous
  // (check_tree_attention): plain indexing is right either way.
  const int32_t* indptr = qo_indptr.data_ptr<int32_t>();
  const int32_t* prefix = prefix_lens.data_ptr<int32_t>();
  auto ptr = [&](int64_t b) { return int64_t(indptr[b]); };
  auto pre = [&](int64_t b) { return int64_t(prefix[b]); };

  check_indptr_values(kOp, "qo_indptr", indptr, batch, num_tokens, "tokens");
  int64_t longest = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t t = ptr(b + 1) - ptr(b);
    TORCH_CHECK(t <= kMaxTreeLen, kOp, ": sequence ", b, " has ", t, " tree tokens (qo_indptr); at most ",
                kMaxTreeLen, " are supported");
    if (t > longest) longest = t;
  }
  if (tree_mask.has_value()) {
    const int64_t words = tree_mask->size(1);
    TORCH_CHECK(words * 32 >= longest, kOp, ": tree_mask has ", words, " words per row (", words * 32,
                " nodes) but a sequence has ", longest, " tree tokens; it needs ceil(", longest,
                " / 32) = ", (longest + 31) / 32, " words");
  }
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(pre(b) >= 0, kOp, ": prefix_lens[", b, "] = ", pre(b), " is negative");
  }

  // Positions 0 .. prefix + T - 1 are read; a sequence with no tree reads nothing.
  const int64_t block_size = k_cache.size(1);
  const int64_t num_blocks = k_cache.size(0);
  const int64_t max_blocks = block_table.size(1);
  auto last_of = [&](int64_t b) { return ptr(b + 1) > ptr(b) ? pre(b) + ptr(b + 1) - ptr(b) - 1 : -1; };
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t last = last_of(b);
    TORCH_CHECK(last < max_blocks * block_size, kOp, ": sequence ", b, " needs position ", last,
                " but block_table holds only ", max_blocks, " blocks of ", block_size, " positions");
  }
  const int32_t* table = block_table.data_ptr<int32_t>();
  const int64_t row = block_table.stride(0);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t last = last_of(b);
    if (last < 0) continue;
    for (int64_t blk = 0; blk <= last / block_size; ++blk) {
      const int64_t id = table[b * row + blk];
      TORCH_CHECK(id >= 0 && id < num_blocks, kOp, ": block_table[", b, ", ", blk, "] = ", id,
                  " is outside the pool of ", num_blocks, " blocks");
    }
  }
}

std::tuple<at::Tensor, at::Tensor> tree_attention_outputs(const at::Tensor& q) {
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  return {out, lse};
}

TreeAttentionArgs tree_attention_args(const at::Tensor& q, const at::Tensor& k_cache,
                                      const at::Tensor& v_cache, const at::Tensor& block_table,
                                      const at::Tensor& prefix_lens, const at::Tensor& qo_indptr,
                                      const std::optional<at::Tensor>& tree_mask, double sm_scale,
                                      at::Tensor& out, at::Tensor& lse) {
  TORCH_CHECK(out.is_contiguous() && lse.is_contiguous() && lse.scalar_type() == at::kFloat, kOp,
              ": out and lse must be contiguous, lse float32");
  TreeAttentionArgs a{};
  a.dtype = dtype_of(kOp, q);
  a.q = q.data_ptr();
  a.q_stride_token = q.stride(0);
  a.q_stride_head = q.stride(1);
  a.k_cache = k_cache.data_ptr();
  a.v_cache = v_cache.data_ptr();
  a.cache_stride_block = k_cache.stride(0);
  a.cache_stride_token = k_cache.stride(1);
  a.cache_stride_head = k_cache.stride(2);
  a.num_blocks = k_cache.size(0);
  a.block_size = k_cache.size(1);
  a.block_table = block_table.data_ptr<int32_t>();
  a.block_table_stride = block_table.stride(0);
  a.max_blocks = block_table.size(1);
  a.prefix_lens = prefix_lens.data_ptr<int32_t>();
  a.qo_indptr = qo_indptr.data_ptr<int32_t>();
  a.batch = block_table.size(0);
  if (tree_mask.has_value()) {
    a.tree_mask = tree_mask->data_ptr<int32_t>();
    a.mask_stride = tree_mask->stride(0);
    a.mask_words = tree_mask->size(1);
  } else {
    a.tree_mask = nullptr;
    a.mask_stride = 0;
    a.mask_words = 0;
  }
  a.out = out.data_ptr();
  a.lse = lse.data_ptr<float>();
  a.num_tokens = q.size(0);
  a.num_q_heads = q.size(1);
  a.num_kv_heads = k_cache.size(2);
  a.head_dim = k_cache.size(3);
  a.sm_scale = static_cast<float>(sm_scale);
  return a;
}

}  // namespace glue
}  // namespace specdec

// The `specdec` operator library: schemas, plus the Python module that
// carries build facts for specdec_kernels.info().
#include <torch/extension.h>
#include <torch/library.h>

#ifndef SPECDEC_CUDA_ARCHS
#define SPECDEC_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(specdec, m) {
  // k, v [N, H_kv, D]; caches [num_blocks, block_size, H_kv, D]; block_table int32 [B, max_blocks];
  // prefix_lens int32 [B]; qo_indptr int32 [B + 1].
  m.def(
      "append_kv(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor block_table, "
      "Tensor prefix_lens, Tensor qo_indptr) -> ()");
  // caches: per-layer [num_blocks, block_size, H_kv, D] or stacked [layers, ...] tensors;
  // accepted_nodes int32 [B, W]; num_accepted int32 [B].
  m.def(
      "compact_kv(Tensor(a!)[] k_caches, Tensor(b!)[] v_caches, Tensor block_table, "
      "Tensor prefix_lens, Tensor accepted_nodes, Tensor num_accepted) -> ()");
  // q [N, Hq, D]; caches [num_blocks, block_size, Hkv, D]; tree_mask int32 [N, W] or None (causal).
  // Returns out [N, Hq, D] (q's dtype) and lse [N, Hq] float32.
  m.def(
      "tree_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor prefix_lens, "
      "Tensor qo_indptr, Tensor? tree_mask, float sm_scale) -> (Tensor, Tensor)");
  // Verification sampling (specdec/sampling.h): draft_tokens int64 [N], parents int32 [N],
  // qo_indptr int32 [B + 1], target_logits [N, V], draft_probs [N, V] or None; per-request
  // float32/int32 [B] parameters as the mode needs them; uniforms float32 [N] or philox
  // int64 [2] (seed, offset). mode: 0 greedy, 1 rejection, 2 typical; width = max_depth + 1;
  // target_is_probs: target_logits holds probabilities, read as log(p);
  // target_indptr int32 [B + 1] + bonus_tokens int64 [B] (both or neither): target_logits and
  // draft_probs have their own rows, request b's being target_indptr[b]..[b+1]-1 for its nodes
  // 0, 1, ...; a path ending at a node past them emits bonus_tokens[b] (specdec/sampling.h).
  // Returns num_accepted int32 [B], accepted_nodes int32 [B, width], tokens int64 [B, width].
  m.def(
      "verify_tree(Tensor draft_tokens, Tensor parents, Tensor qo_indptr, Tensor target_logits, "
      "Tensor? draft_probs, Tensor? temperature, Tensor? top_k, Tensor? top_p, "
      "Tensor? posterior_threshold, Tensor? posterior_alpha, Tensor? uniforms, Tensor? philox, "
      "int mode, int width, bool target_is_probs=False, Tensor? target_indptr=None, "
      "Tensor? bonus_tokens=None, Tensor? min_p=None, Tensor? allowed_tokens=None) -> (Tensor, Tensor, Tensor)");
  // EAGLE-2's draft tree (specdec/dynamic_tree.h): cand_parents int32 [B, M], cand_tokens int64
  // [B, M], cand_scores float32 [B, M], root_tokens int64 [B]. Returns tokens int64 [B, K + 1],
  // parents, depths int32 [B, K + 1], tree_mask int32 [B, K + 1, ceil((K + 1) / 32)], source
  // int32 [B, K + 1], num_nodes int32 [B].
  m.def(
      "build_dynamic_tree(Tensor cand_parents, Tensor cand_tokens, Tensor cand_scores, Tensor root_tokens, "
      "int num_keep) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

PYBIND11_MODULE(_C, module) {
  module.doc() = "specdec_kernels compiled operators (registered as torch.ops.specdec.*)";
#ifdef SPECDEC_WITH_CUDA
  module.attr("with_cuda") = true;
#else
  module.attr("with_cuda") = false;
#endif
  module.attr("cuda_archs") = SPECDEC_CUDA_ARCHS;
  // Whether at::parallel_for really forks here (see setup.py's openmp_flags).
#ifdef _OPENMP
  module.attr("openmp") = true;
#else
  module.attr("openmp") = false;
#endif
}

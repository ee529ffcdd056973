// Torch-free interface of verification sampling: for each request of a ragged
// batch, walk its drafted tree, pick the accepted path and the bonus token.
// The rules are those of specdec_kernels/reference/sampling.py (the ground
// truth; read it alongside this header):
//
//   * Rows: request b owns rows qo_indptr[b] .. qo_indptr[b+1]-1; local node 0
//     is the root. Row i of `logits` is the target's distribution after node i.
//     A node's children are the later nodes c with parents[row of c] == local
//     index of the node, tried in increasing c.
//   * logits_are_probs: the rows hold probabilities (need not be normalised),
//     read as logits z = log(row) (so softmax(z) = row / sum(row)); greedy's
//     argmax is taken on the row itself, which log would only blur.
//   * A row is valid iff it holds no NaN and its largest logit is finite (for
//     probabilities: no NaN, nothing negative, a finite positive maximum). A
//     request that must read an invalid row gets num_accepted = -1 and all -1
//     rows in accepted_nodes and tokens.
//   * greedy (mode 0, and any request whose temperature is 0): accept the first
//     child whose token equals the argmax of the current row (lowest index on
//     ties); the bonus is the argmax of the last accepted row.
//   * allowed_tokens (bitmask): a row is masked before anything else, a
//     disallowed token reading as logit -inf (probability 0) whatever the row
//     holds there; so a row with no token allowed is invalid.
//   * rejection (mode 1): z = float(logit) / temperature (IEEE division);
//     min_p (> 0) keeps x iff expf(z - max z) >= min_p;
//     top-k (0 < k < V) keeps z >= the k-th largest z; softmax over the kept;
//     top-p (< 1) then keeps x iff the kept mass with z strictly above z(x) is
//     < top_p * (kept mass). p = the renormalised result. Children are tried
//     against a residual r (= p): with draft_probs q (row of the current node),
//     accept x iff u_c * q(x) < r(x) (float32), else r = max(0, r - q)
//     renormalised; without q, accept iff u_c < r(x), else r(x) = 0
//     renormalised. A rejection that would leave r without mass leaves r as it
//     was. If no child is accepted the token is sampled from r.
//   * typical (mode 2): p = softmax(z); thr = min(eps, alpha * exp(-H)),
//     H = -sum p log(p + 1e-5). Child c of an accepted node n is accepted iff
//     p_n(token c) > thr_n. The deepest accepted node wins (ties: larger float32
//     sum of log p along the path, then lower index); the bonus is sampled from
//     p restricted to p >= thr at that node.
//   * Uniforms: u_c = uniform of the row of child c (its acceptance test);
//     the root's uniform draws the final token. They come from `uniforms`
//     (float32 [num_tokens]) or, when that is null, from Philox4x32-10 with
//     key (seed lo, seed hi), counter (offset + row lo, hi, 0, 0): the first
//     output word w gives (w >> 8) * 2^-24. seed, offset = philox[0], philox[1].
//   * Sampling from weights w (an unnormalised r): the first index whose running
//     sum exceeds u * sum(w); if rounding leaves none, the last index with w > 0.
//   * Row map (target_indptr, bonus_tokens; see VerifyArgs): "the row of node
//     i" above is then row target_indptr[b] + local i, and a node without a
//     row ends the walk there with bonus_tokens[b].
//   * Nodes deeper than width - 1 are ignored; tokens outside [0, vocab) are
//     never accepted (they read as probability 0). Malformed parents simply
//     make nodes unreachable. No input makes a kernel read or write out of
//     bounds.
#pragma once

#include <cstdint>

#include "specdec/dtype.h"

namespace specdec {

// kRejection verifies with the token rule, kTraversal with the traversal rule
// (block verification on chains): specdec_kernels/reference/sampling.py.
enum class VerifyMode : int32_t { kGreedy = 0, kRejection = 1, kTypical = 2, kTraversal = 3 };

// Nodes per request and output width the op is specified for (the same bound
// as tree attention). Larger inputs are rejected by the callers.
constexpr int64_t kMaxVerifyNodes = 256;

// Medusa's entropy term log(p + kTypicalLogEps).
constexpr float kTypicalLogEps = 1e-5f;

struct VerifyArgs {
  VerifyMode mode;
  const int64_t* draft_tokens;  // [num_tokens]
  const int32_t* parents;       // [num_tokens], local indices, -1 at roots
  const int32_t* qo_indptr;     // [batch + 1]
  const void* logits;           // [num_tokens, vocab], row stride logits_stride (elements)
  DType logits_dtype;
  int64_t logits_stride;
  bool logits_are_probs;        // rows are probabilities (header comment)
  const void* draft_probs;      // [num_tokens, vocab] or nullptr (point-mass proposals); mode 1 only
  DType probs_dtype;
  int64_t probs_stride;
  // Per request [batch]; null where the mode does not use them (mode 0: all
  // null; mode 1: temperature, top_k, top_p; mode 2: temperature,
  // posterior_threshold, posterior_alpha).
  const float* temperature;
  const int32_t* top_k;
  const float* top_p;
  const float* posterior_threshold;
  const float* posterior_alpha;
  const float* uniforms;        // [num_tokens] or nullptr: then philox
  const int64_t* philox;        // [2] = seed, offset; read on the device
  int64_t batch, num_tokens, vocab;
  int32_t width;                // max_depth + 1, <= kMaxVerifyNodes
  int32_t* num_accepted;        // [batch]
  int32_t* accepted_nodes;      // [batch, width], contiguous
  int64_t* tokens;              // [batch, width], contiguous
  // Row map, both or neither (null: node i reads row i of logits and
  // draft_probs, so num_rows == num_tokens). Request b's rows are
  // target_indptr[b] .. target_indptr[b+1]-1 (clamped to [0, num_rows)) and
  // its node j reads row target_indptr[b] + j. A node past them has no row:
  // a path that ends there emits bonus_tokens[b] (the caller sampled it), and
  // its children are never accepted. vLLM's layout: one row per draft, none
  // for the bonus position.
  const int32_t* target_indptr; // [batch + 1] or nullptr
  const int64_t* bonus_tokens;  // [batch] or nullptr
  int64_t num_rows;             // rows of logits (and of draft_probs)
  // min_p [batch] (modes 1 and 3) or null (off).
  const float* min_p;
  // Packed bitmask [num_rows, ceil(vocab / 32)], row stride allowed_stride
  // words, or null: bit x % 32 of word x / 32 of a row set = token x allowed.
  const int32_t* allowed;
  int64_t allowed_stride;
};

// Whether token x of logits row r is allowed (always without a bitmask).
#if defined(__CUDACC__)
__host__ __device__
#endif
inline bool token_allowed(const VerifyArgs& a, int64_t r, int64_t x) {
  return a.allowed == nullptr || ((uint32_t(a.allowed[r * a.allowed_stride + (x >> 5)]) >> (x & 31)) & 1u) != 0;
}

// Where request b's rows lie: [start, start + count) of logits.
struct RowSpan {
  int64_t start, count;
};

#if defined(__CUDACC__)
__host__ __device__
#endif
inline RowSpan row_span(const VerifyArgs& a, int64_t b, int64_t node_start, int64_t size) {
  if (a.target_indptr == nullptr) return RowSpan{node_start, size};
  const int64_t lo = a.target_indptr[b] < 0 ? 0 : (a.target_indptr[b] > a.num_rows ? a.num_rows : a.target_indptr[b]);
  int64_t hi = a.target_indptr[b + 1];
  hi = hi < lo ? lo : (hi > a.num_rows ? a.num_rows : hi);
  return RowSpan{lo, hi - lo};
}

// CPU kernel (csrc/cpu/sampling.cpp): requests [begin, end), so callers can
// split a batch over threads. Reads qo_indptr etc. as host memory.
void verify_cpu(const VerifyArgs& args, int64_t begin, int64_t end);

}  // namespace specdec

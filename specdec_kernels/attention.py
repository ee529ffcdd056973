"""Tree attention: the verification forward's attention over a paged prefix
plus the tree's own tokens under a packed mask.

The mask covers only the tree block (T x T bits); the prefix is always fully
visible, so a kernel reads each prefix KV tile once per (sequence, KV head)
for all tree queries of all query heads of the group.
"""
from __future__ import annotations

import math

import torch

from . import _checks, backends, reference
from ._checks import fail

__all__ = ["tree_attention", "tree_attention_kernel", "HEAD_DIMS", "MAX_TREE_LEN"]

HEAD_DIMS = (64, 128, 256)
# Mirrors kMaxTreeLen in csrc/include/specdec/tree_attention.h.
MAX_TREE_LEN = 256


def tree_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    prefix_lens: torch.Tensor,
    qo_indptr: torch.Tensor,
    tree_mask: torch.Tensor | None = None,
    *,
    sm_scale: float | None = None,
    return_lse: bool = False,
    validate: bool = True,
    backend: str = "auto",
):
    """Attention of the tree tokens of B sequences over their paged KV.

    Query ``i`` of sequence ``b`` (row ``qo_indptr[b] + i``) attends to every
    cache position ``< prefix_lens[b]`` and to tree node ``j`` (at position
    ``prefix_lens[b] + j``) iff bit ``j`` of its mask row is set. The tree's
    K/V must already be in the cache (``append_kv``).

    Args:
        q: ``[N, Hq, D]`` float16, bfloat16 or float32, D in (64, 128, 256),
            D contiguous.
        k_cache, v_cache: one layer ``[num_blocks, block_size, Hkv, D]``, q's
            dtype, same shape and strides, D contiguous; ``Hq % Hkv == 0``.
        block_table: int32 ``[B, max_blocks]``.
        prefix_lens: int32 ``[B]``, cache length before the tree.
        qo_indptr: int32 ``[B + 1]``; sequence b has ``T_b = qo_indptr[b+1] -
            qo_indptr[b] <= 256`` tree tokens.
        tree_mask: int32 ``[N, W]`` packed rows, ``W >= ceil(max T_b / 32)``:
            bit ``j % 32`` of word ``j // 32`` of row ``i`` set iff node ``j`` is
            visible to node ``i`` (itself included, normally). Bits at or past
            ``T_b`` are ignored. ``None``: causal among the tree tokens (a chain).
            Any pattern is allowed, so lookahead masks pass through too.
        sm_scale: score scale, default ``1 / sqrt(D)``.
        return_lse: also return the log-sum-exp of the scaled scores.
        validate: check index values (qo_indptr, tree lengths, positions in the
            block table, block ids in the pool); a host-device sync on CUDA.
            Pass False in hot loops and CUDA graphs.
        backend: ``"auto"``, ``"reference"``, ``"triton"``, ``"cuda"`` or ``"cpu"``.

    Returns:
        ``out [N, Hq, D]`` in q's dtype, and with ``return_lse`` also
        ``lse [N, Hq]`` float32 (natural log). A row that sees no key (empty
        prefix and empty mask row) gets ``out = 0`` and ``lse = -inf``.
    """
    op = "tree_attention"
    device = _checks.check_cache_pair(op, k_cache, v_cache, ("k_cache", "v_cache"), allow_stacked=False)
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    _checks.check_tensor(op, "q", q, dim=3, device=device)
    if q.dtype != k_cache.dtype:
        fail(op, f"q must have the cache dtype {k_cache.dtype}, got {q.dtype}", TypeError)
    if q.shape[2] != head_dim:
        fail(op, f"q must be [N, Hq, D={head_dim}] (the cache's head dim), got shape {tuple(q.shape)}")
    if head_dim not in HEAD_DIMS:
        fail(op, f"head dim D must be one of {HEAD_DIMS}, got {head_dim}")
    if q.shape[1] % num_kv_heads != 0 or q.shape[1] == 0:
        fail(op, f"q's head count Hq={q.shape[1]} must be a positive multiple of the cache's Hkv={num_kv_heads}")
    _checks.check_last_dim_contiguous(op, "q", q)
    batch = _checks.check_block_table(op, block_table, prefix_lens, device)
    _checks.check_index_vector(op, "qo_indptr", qo_indptr, batch + 1, device)
    if tree_mask is not None:
        _checks.check_tensor(op, "tree_mask", tree_mask, dim=2, dtype=torch.int32, device=device)
        if tree_mask.shape[0] != q.shape[0] or tree_mask.shape[1] == 0:
            fail(op, f"tree_mask must be [N={q.shape[0]}, ceil(T_max / 32)], got shape {tuple(tree_mask.shape)}")
        _checks.check_last_dim_contiguous(op, "tree_mask", tree_mask)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    if validate:
        _validate(op, q.shape[0], k_cache, block_table, prefix_lens, qo_indptr, tree_mask)

    kernel = tree_attention_kernel(backend, device)
    out, lse = kernel(q, k_cache, v_cache, block_table, prefix_lens, qo_indptr, tree_mask, float(sm_scale))
    return (out, lse) if return_lse else out


def tree_attention_kernel(backend: str, device: torch.device):
    """The kernel ``backend`` resolves to for tensors on ``device``, unchecked:
    ``f(q, k_cache, v_cache, block_table, prefix_lens, qo_indptr, tree_mask,
    sm_scale: float) -> (out, lse)``. For callers that run one layout through
    many layers (the runtime's model): check it once with ``tree_attention``,
    then call this per layer; no shape or value checks, no backend choice."""
    chosen = backends.choose("tree_attention", backend, device)
    if chosen == "reference":
        return reference.tree_attention
    if chosen == "triton":
        from .triton import attention as triton_attention

        return triton_attention.tree_attention
    return torch.ops.specdec.tree_attention


def _validate(op, num_tokens, k_cache, block_table, prefix_lens, qo_indptr, tree_mask) -> None:
    lengths = _checks.check_indptr_values(op, qo_indptr, num_tokens)
    if (lengths > MAX_TREE_LEN).any():
        b = int((lengths > MAX_TREE_LEN).nonzero()[0, 0])
        fail(op, f"sequence {b} has {int(lengths[b])} tree tokens (qo_indptr); at most {MAX_TREE_LEN} are supported")
    longest = int(lengths.max()) if lengths.numel() else 0
    if tree_mask is not None and tree_mask.shape[1] * 32 < longest:
        fail(op, f"tree_mask has {tree_mask.shape[1]} words per row ({tree_mask.shape[1] * 32} nodes) but a "
                 f"sequence has {longest} tree tokens; it needs ceil({longest} / 32) = {-(-longest // 32)} words")
    prefix = prefix_lens.cpu().long()
    _checks.check_prefix_lens_values(op, prefix)
    # Positions 0 .. prefix + T - 1 are read; a sequence with no tree reads nothing.
    last = torch.where(lengths > 0, prefix + lengths - 1, torch.full_like(prefix, -1))
    _checks.check_positions(op, block_table, torch.zeros_like(prefix), last, k_cache.shape[0], k_cache.shape[1])

"""KV-cache ops: write new tokens' K/V into a paged cache, and cut the cache
back to the accepted path after verification.

Paged layout (DESIGN.md): a layer's cache is ``[num_blocks, block_size, H_kv, D]``
(any strides, D contiguous); position ``p`` of sequence ``b`` is slot
``p % block_size`` of block ``block_table[b, p // block_size]``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _checks, backends, reference
from ._checks import fail

__all__ = ["append_kv", "append_kv_kernel", "compact_kv"]

# Mirrors kMaxPathWidth in csrc/include/specdec/kv_cache.h: the CUDA kernel
# stages a path's row offsets in shared memory.
MAX_PATH_WIDTH = 2048


def append_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    prefix_lens: torch.Tensor,
    qo_indptr: torch.Tensor,
    *,
    validate: bool = True,
    backend: str = "auto",
) -> None:
    """Write the K/V of new tokens into a paged cache, in place.

    Token ``i`` of sequence ``b`` (row ``qo_indptr[b] + i`` of ``k``/``v``) goes
    to cache position ``prefix_lens[b] + i``.

    Args:
        k, v: ``[N, H_kv, D]``, the cache dtype (float16, bfloat16 or float32);
            any strides with D contiguous (e.g. slices of a fused QKV output).
        k_cache, v_cache: one layer, ``[num_blocks, block_size, H_kv, D]``,
            same shape and strides, D contiguous. Written in place.
        block_table: int32 ``[B, max_blocks]``, physical block ids.
        prefix_lens: int32 ``[B]``, tokens already in the cache per sequence.
        qo_indptr: int32 ``[B + 1]``, ragged offsets of each sequence's tokens
            in ``k``/``v``; ``qo_indptr[0] = 0``, ``qo_indptr[B] = N``.
        validate: also check index values (qo_indptr monotone, positions
            inside the block table, block ids inside the pool). On CUDA this
            reads the index tensors back (a host-device sync); pass False in
            hot loops and CUDA graphs. Unvalidated out-of-range entries are
            skipped by the triton and cuda kernels, never written out of
            bounds; the cpu backend always checks (free on CPU) and raises.
        backend: ``"auto"``, ``"reference"``, ``"triton"``, ``"cuda"`` or ``"cpu"``
            (see :mod:`specdec_kernels.backends`).
    """
    op = "append_kv"
    device = _checks.check_cache_pair(op, k_cache, v_cache, ("k_cache", "v_cache"), allow_stacked=False)
    num_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    for name, t in (("k", k), ("v", v)):
        _checks.check_tensor(op, name, t, dim=3, device=device)
        _checks.check_shape(op, name, t, (None, num_heads, head_dim), f"[N, H_kv={num_heads}, D={head_dim}]")
        if t.dtype != k_cache.dtype:
            fail(op, f"{name} must have the cache dtype {k_cache.dtype}, got {t.dtype}", TypeError)
        _checks.check_last_dim_contiguous(op, name, t)
    if v.shape != k.shape:
        fail(op, f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    batch = _checks.check_block_table(op, block_table, prefix_lens, device)
    _checks.check_index_vector(op, "qo_indptr", qo_indptr, batch + 1, device)
    if validate:
        _validate_append(op, k.shape[0], k_cache, block_table, prefix_lens, qo_indptr)

    append_kv_kernel(backend, device)(k, v, k_cache, v_cache, block_table, prefix_lens, qo_indptr)


def append_kv_kernel(backend: str, device: torch.device):
    """The kernel ``backend`` resolves to for tensors on ``device``, unchecked:
    ``f(k, v, k_cache, v_cache, block_table, prefix_lens, qo_indptr)``. For
    callers that run one layout through many layers: check it once with
    ``append_kv``, then call this per layer."""
    chosen = backends.choose("append_kv", backend, device)
    if chosen == "reference":
        return reference.append_kv
    if chosen == "triton":
        from .triton import kv_cache as triton_kv

        return triton_kv.append_kv
    return torch.ops.specdec.append_kv


Caches = torch.Tensor | Sequence[torch.Tensor]


def compact_kv(
    k_caches: Caches,
    v_caches: Caches,
    block_table: torch.Tensor,
    prefix_lens: torch.Tensor,
    accepted_nodes: torch.Tensor,
    num_accepted: torch.Tensor,
    *,
    validate: bool = True,
    backend: str = "auto",
) -> None:
    """Move the accepted path's K/V into place after verification, in every
    layer, in one launch, in place.

    For each sequence ``b`` and ``0 <= j <= num_accepted[b]``, the entry at
    position ``prefix_lens[b] + accepted_nodes[b, j]`` moves to position
    ``prefix_lens[b] + j`` (the tree's node ``i`` sits at ``prefix_lens[b] + i``).
    Sources and destinations overlap (path ``[0, 2, 3]`` moves 2 -> 1 and
    3 -> 2); every backend gives the result of reading all sources first.
    Rows already in place (``accepted_nodes[b, j] == j``, e.g. a fully
    accepted chain) are not moved. Other positions, sequences and layers are
    left untouched; positions past the path are not cleared (truncate the
    sequence length instead). Blocks holding a sequence's tree positions must
    not be mapped by another sequence (share blocks for common prefixes only).

    Args:
        k_caches, v_caches: the caches of all layers: one stacked tensor
            ``[layers, num_blocks, block_size, H_kv, D]``, one layer
            ``[num_blocks, block_size, H_kv, D]``, or a list of either; every
            layer with the same shape, strides and dtype (float16, bfloat16,
            float32), D contiguous. Modified in place.
        block_table: int32 ``[B, max_blocks]``.
        prefix_lens: int32 ``[B]``, cache length before the tree (the root's position).
        accepted_nodes: int32 ``[B, W]``, the accepted path as node indices
            relative to the tree start: root 0 first, strictly increasing,
            padding after ``num_accepted[b] + 1`` entries ignored (the output
            of the ``verify_*`` ops).
        num_accepted: int32 ``[B]``, drafted tokens accepted, in ``[0, W - 1]``.
        validate: also check index values (path root-first and increasing,
            counts in range, positions inside the block table, block ids inside
            the pool); on CUDA a host-device sync, so pass False in hot loops
            and CUDA graphs. Unvalidated out-of-range entries are skipped by
            the triton and cuda kernels, never written out of bounds; the cpu
            backend always checks (free on CPU) and raises.
        backend: ``"auto"``, ``"reference"``, ``"triton"``, ``"cuda"`` or ``"cpu"``.
    """
    op = "compact_kv"
    k_list, v_list = _cache_list(op, "k_caches", k_caches), _cache_list(op, "v_caches", v_caches)
    if len(k_list) != len(v_list):
        fail(op, f"k_caches has {len(k_list)} entries but v_caches has {len(v_list)}")
    first = k_list[0]
    device = first.device
    for i, (kc, vc) in enumerate(zip(k_list, v_list)):
        _checks.check_cache_pair(op, kc, vc, (f"k_caches[{i}]", f"v_caches[{i}]"), allow_stacked=True)
        if kc.device != device:
            fail(op, f"k_caches[{i}] is on {kc.device} but k_caches[0] is on {device}")
        if kc.dtype != first.dtype or kc.shape[-4:] != first.shape[-4:] or kc.stride()[-4:] != first.stride()[-4:]:
            fail(op, f"every layer must have the dtype, [num_blocks, block_size, H_kv, D] shape and strides "
                     f"of k_caches[0] {tuple(first.shape)}; k_caches[{i}] is {tuple(kc.shape)} {kc.dtype}")
    batch = _checks.check_block_table(op, block_table, prefix_lens, device)
    _checks.check_tensor(op, "accepted_nodes", accepted_nodes, dim=2, dtype=torch.int32, device=device)
    _checks.check_shape(op, "accepted_nodes", accepted_nodes, (batch, None), f"[B={batch}, max_depth + 1]")
    _checks.check_last_dim_contiguous(op, "accepted_nodes", accepted_nodes)
    if accepted_nodes.shape[1] == 0:
        fail(op, "accepted_nodes needs at least one column (the root)")
    if accepted_nodes.shape[1] > MAX_PATH_WIDTH:
        fail(op, f"accepted_nodes has {accepted_nodes.shape[1]} columns; at most {MAX_PATH_WIDTH} are supported")
    _checks.check_index_vector(op, "num_accepted", num_accepted, batch, device)
    if validate:
        _validate_compact(op, first, block_table, prefix_lens, accepted_nodes, num_accepted)

    chosen = backends.choose(op, backend, device)
    if chosen == "reference":
        layers = [layer for t in k_list for layer in _per_layer(t)]
        v_layers = [layer for t in v_list for layer in _per_layer(t)]
        reference.compact_kv(layers, v_layers, block_table, prefix_lens, accepted_nodes, num_accepted)
    elif chosen == "triton":
        from .triton import kv_cache as triton_kv

        triton_kv.compact_kv(k_list, v_list, block_table, prefix_lens, accepted_nodes, num_accepted)
    else:
        torch.ops.specdec.compact_kv(k_list, v_list, block_table, prefix_lens, accepted_nodes, num_accepted)


def _cache_list(op: str, name: str, caches: Caches) -> list[torch.Tensor]:
    if isinstance(caches, torch.Tensor):
        return [caches]
    if isinstance(caches, (list, tuple)) and caches:
        return list(caches)
    fail(op, f"{name} must be a tensor or a non-empty list of tensors, got {type(caches).__name__}", TypeError)


def _per_layer(cache: torch.Tensor) -> list[torch.Tensor]:
    return list(cache.unbind(0)) if cache.dim() == 5 else [cache]










def _validate_append(op, num_tokens, k_cache, block_table, prefix_lens, qo_indptr) -> None:
    lengths = _checks.check_indptr_values(op, qo_indptr, num_tokens)
    prefix = prefix_lens.cpu().long()
    _checks.check_prefix_lens_values(op, prefix)
    _checks.check_positions(op, block_table, prefix, prefix + lengths - 1, k_cache.shape[-4], k_cache.shape[-3])


def _validate_compact(op, cache, block_table, prefix_lens, accepted_nodes, num_accepted) -> None:
    prefix = prefix_lens.cpu().long()
    counts = num_accepted.cpu().long()
    nodes = accepted_nodes.cpu().long()
    width = nodes.shape[1]
    _checks.check_prefix_lens_values(op, prefix)
    bad = (counts < 0) | (counts >= width)
    if bad.any():
        b = int(bad.nonzero()[0, 0])
        fail(op, f"num_accepted[{b}] = {int(counts[b])} must be in [0, {width - 1}] "
                 f"(accepted_nodes has {width} columns)")
    if (nodes[:, 0] != 0).any():
        b = int((nodes[:, 0] != 0).nonzero()[0, 0])
        fail(op, f"accepted_nodes[{b}, 0] must be the root 0, got {int(nodes[b, 0])}")
    steps = nodes[:, 1:] <= nodes[:, :-1]
    on_path = torch.arange(1, width)[None, :] <= counts[:, None]
    bad = steps & on_path
    if bad.any():
        b, j = (int(x) for x in bad.nonzero()[0])
        fail(op, f"accepted_nodes[{b}] must be strictly increasing over its first num_accepted + 1 entries, "
                 f"but entry {j + 1} is {int(nodes[b, j + 1])} after {int(nodes[b, j])}")
    last = prefix + nodes.gather(1, counts[:, None]).squeeze(1)
    _checks.check_positions(op, block_table, prefix, last, cache.shape[-4], cache.shape[-3])

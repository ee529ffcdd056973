"""Triton KV-cache kernels. They move bits: the caches are viewed as same-width
integers, so NaN payloads and -0.0 survive exactly as in the CUDA kernels."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_BITS[t.element_size()])


@triton.jit
def _row_offsets(block_table, bt_stride, b, pos, valid, max_blocks, num_blocks, block_size,
                 stride_block, stride_token):
    """Element offset of (sequence b, position pos) and whether it is in range.
    Loads go through clamped indices rather than masks, which works for scalar
    and vector positions alike (the interpreter rejects scalar masks)."""
    logical = pos // block_size
    valid = valid & (pos >= 0) & (logical < max_blocks)
    block = tl.load(block_table + b * bt_stride + tl.where(valid, logical, 0)).to(tl.int64)
    valid = valid & (block >= 0) & (block < num_blocks)
    return block * stride_block + (pos % block_size) * stride_token, valid


@triton.jit
def _append_kv_kernel(
    k, v, k_cache, v_cache, block_table, prefix_lens, qo_indptr,
    batch, num_heads, head_dim, max_blocks, num_blocks, block_size,
    k_st, k_sh, v_st, v_sh, c_sb, c_st, c_sh, bt_stride,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    # Per-token scalars are kept as [BLOCK_H] vectors (one copy per head row):
    # the interpreter mishandles scalar/vector mixes in masks.
    t = tl.program_id(0) + tl.zeros([BLOCK_H], tl.int32)
    # The owning sequence: the number of ends qo_indptr[1..B] at or before t.
    seqs = tl.arange(0, BLOCK_B)
    ends = tl.load(qo_indptr + 1 + seqs, mask=seqs < batch, other=2147483647)
    b = tl.sum((ends[None, :] <= t[:, None]).to(tl.int32), axis=1)
    in_batch = b < batch
    b = tl.minimum(b, batch - 1)
    start = tl.load(qo_indptr + b)
    prefix = tl.load(prefix_lens + b)
    dst, valid = _row_offsets(block_table, bt_stride, b, prefix + t - start,
                              in_batch & (start <= t) & (prefix >= 0),
                              max_blocks, num_blocks, block_size, c_sb, c_st)
    d = tl.arange(0, BLOCK_D)
    mask = valid[:, None] & (heads[:, None] < num_heads) & (d[None, :] < head_dim)
    t64 = t.to(tl.int64)[:, None]
    h64 = heads.to(tl.int64)[:, None]
    kv = tl.load(k + t64 * k_st + h64 * k_sh + d[None, :], mask=mask)
    vv = tl.load(v + t64 * v_st + h64 * v_sh + d[None, :], mask=mask)
    dst = dst[:, None]
    tl.store(k_cache + dst + h64 * c_sh + d[None, :], kv, mask=mask)
    tl.store(v_cache + dst + h64 * c_sh + d[None, :], vv, mask=mask)


def _head_tiling(num_heads: int, head_dim: int):
    block_d = triton.next_power_of_2(head_dim)
    block_h = min(triton.next_power_of_2(num_heads), max(1, 4096 // block_d))
    return block_h, block_d


def append_kv(k, v, k_cache, v_cache, block_table, prefix_lens, qo_indptr) -> None:
    num_tokens, num_heads, head_dim = k.shape
    batch = block_table.shape[0]
    if num_tokens == 0 or batch == 0 or block_table.shape[1] == 0:
        return
    block_h, block_d = _head_tiling(num_heads, head_dim)
    grid = (num_tokens, triton.cdiv(num_heads, block_h))
    _append_kv_kernel[grid](
        _as_bits(k), _as_bits(v), _as_bits(k_cache), _as_bits(v_cache), block_table, prefix_lens, qo_indptr,
        batch, num_heads, head_dim, block_table.shape[1], k_cache.shape[0], k_cache.shape[1],
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_table.stride(0),
        BLOCK_B=triton.next_power_of_2(batch), BLOCK_H=block_h, BLOCK_D=block_d,
    )


@triton.jit
def _compact_kv_kernel(
    k_layers, v_layers, block_table, prefix_lens, accepted_nodes, num_accepted,
    path_width, num_heads, head_dim, max_blocks, num_blocks, block_size,
    c_sb, c_st, c_sh, bt_stride, acc_stride,
    ELEM_BYTES: tl.constexpr, CHUNK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0)
    layer = tl.program_id(1)
    heads = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    if ELEM_BYTES == 2:
        elem = tl.int16
    elif ELEM_BYTES == 4:
        elem = tl.int32
    else:
        elem = tl.int8
    k_base = tl.load(k_layers + layer).to(tl.pointer_type(elem))
    v_base = tl.load(v_layers + layer).to(tl.pointer_type(elem))
    prefix = tl.load(prefix_lens + b + tl.zeros([CHUNK], tl.int32))  # a vector: see _append_kv_kernel
    n = tl.minimum(tl.load(num_accepted + b) + 1, path_width)
    d = tl.arange(0, BLOCK_D)
    cols = heads.to(tl.int64)[:, None] * c_sh + d[None, :]
    col_mask = (heads[:, None] < num_heads) & (d[None, :] < head_dim)
    # Rows 1..n-1 (the root never moves), CHUNK at a time: all sources of a
    # chunk are read, then a barrier, then its destinations written. A
    # destination j can only be the source of an earlier row, already read
    # before an earlier barrier; later sources lie at positions > j.
    for j0 in range(1, n, CHUNK):
        j = j0 + tl.arange(0, CHUNK)
        node = tl.load(accepted_nodes + b * acc_stride + j, mask=j < n, other=0)
        moving = (j < n) & (node > j) & (prefix >= 0)
        src, ok_src = _row_offsets(block_table, bt_stride, b, prefix + node, moving,
                                   max_blocks, num_blocks, block_size, c_sb, c_st)
        dst, ok_dst = _row_offsets(block_table, bt_stride, b, prefix + j, moving,
                                   max_blocks, num_blocks, block_size, c_sb, c_st)
        ok = (ok_src & ok_dst)[:, None, None] & col_mask[None, :, :]
        src3 = src[:, None, None] + cols[None, :, :]
        dst3 = dst[:, None, None] + cols[None, :, :]
        k_rows = tl.load(k_base + src3, mask=ok)
        v_rows = tl.load(v_base + src3, mask=ok)
        tl.debug_barrier()
        tl.store(k_base + dst3, k_rows, mask=ok)
        tl.store(v_base + dst3, v_rows, mask=ok)
        tl.debug_barrier()


_pointer_tables: dict = {}


def _layer_pointers(caches: list[torch.Tensor]) -> torch.Tensor:
    """int64 device tensor of every layer's base address, stacked caches
    expanded. Built on the device for a single stacked cache (no copy); the
    table of a list of caches is cached so repeated calls do no host copy."""
    device = caches[0].device
    if len(caches) == 1 and caches[0].dim() == 5:
        c = caches[0]
        return torch.arange(c.shape[0], device=device, dtype=torch.int64) * (c.stride(0) * c.element_size()) + c.data_ptr()
    key = (device, tuple(c.data_ptr() for c in caches), tuple(c.shape[0] if c.dim() == 5 else 1 for c in caches))
    table = _pointer_tables.get(key)
    if table is None:
        ptrs = [c.data_ptr() + l * c.stride(0) * c.element_size()
                for c in caches for l in range(c.shape[0] if c.dim() == 5 else 1)]
        if len(_pointer_tables) >= 16:
            _pointer_tables.clear()
        table = _pointer_tables[key] = torch.tensor(ptrs, dtype=torch.int64, device=device)
    return table


def compact_kv(k_caches, v_caches, block_table, prefix_lens, accepted_nodes, num_accepted) -> None:
    k_ptrs, v_ptrs = _layer_pointers(k_caches), _layer_pointers(v_caches)
    ref = k_caches[0]
    num_blocks, block_size, num_heads, head_dim = ref.shape[-4:]
    batch, width = accepted_nodes.shape
    if batch == 0 or block_table.shape[1] == 0:
        return
    block_h, block_d = _head_tiling(num_heads, head_dim)
    block_h = max(1, block_h // 8)  # a CHUNK x BLOCK_H x BLOCK_D tile per load
    grid = (batch, k_ptrs.shape[0], triton.cdiv(num_heads, block_h))
    _compact_kv_kernel[grid](
        k_ptrs, v_ptrs, block_table, prefix_lens, accepted_nodes, num_accepted,
        width, num_heads, head_dim, block_table.shape[1], num_blocks, block_size,
        ref.stride(-4), ref.stride(-3), ref.stride(-2), block_table.stride(0), accepted_nodes.stride(0),
        ELEM_BYTES=ref.element_size(), CHUNK=8, BLOCK_H=block_h, BLOCK_D=block_d,
    )

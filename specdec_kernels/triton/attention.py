"""Triton tree attention.

One program per (sequence, KV head, KV split) for trees of up to 128 rows
(64 at D = 256; more query tiles, and programs, for larger ones). KV splits on
CUDA follow the CUDA launcher's rule (specdec_kernels.split_plan): enough to
fill the SMs, no more than their partials are worth. Its query tile packs
(tree token, query head of the group) pairs into BLOCK_M rows, so each K/V
tile of the prefix is read once for all tree queries of all query heads
sharing that KV head. The prefix needs no mask; tree positions test the
packed mask bits (or causality). Long KV ranges with few programs split across
programs (flash-decoding) and merge by log-sum-exp in a second kernel.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..attention import MAX_TREE_LEN
from ..backends import triton_interpreted
from ..split_plan import plan_splits

_LOG2E = 1.4426950408889634
_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _tree_attention_kernel(
    q, k_cache, v_cache, block_table, prefix_lens, qo_indptr, tree_mask,
    out, lse, part_out, part_lse,
    num_tokens, num_q_heads, group, max_blocks, num_blocks, block_size, split_len, num_q_programs,
    q_st, q_sh, c_sb, c_st, c_sh, bt_stride, mask_stride,
    scale_log2,
    HAS_MASK: tl.constexpr, SPLIT: tl.constexpr, OUT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    b = tl.program_id(0)
    kv_head = tl.program_id(1) // num_q_programs
    q_program = tl.program_id(1) % num_q_programs
    split = tl.program_id(2)

    start = tl.load(qo_indptr + b)
    tree_len = tl.load(qo_indptr + b + 1) - start
    prefix = tl.load(prefix_lens + b)
    kv_len = prefix + tree_len
    kv_lo = split * split_len
    kv_hi = tl.minimum(kv_lo + split_len, kv_len)
    num_q_tiles = tl.cdiv(tree_len * group, BLOCK_M)

    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)
    # A loop rather than one tile per program: any tree length is covered,
    # whatever the grid was sized for.
    for q_tile in range(q_program, num_q_tiles, num_q_programs):
        r = q_tile * BLOCK_M + rows
        node = r // group                     # tree node (query index within the sequence)
        head = kv_head * group + r % group    # query head
        row_ok = node < tree_len
        token = (start + node).to(tl.int64)
        qv = tl.load(q + token[:, None] * q_st + head.to(tl.int64)[:, None] * q_sh + d[None, :],
                     mask=row_ok[:, None], other=0.0)
        if UPCAST:
            qv = qv.to(tl.float32)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for n0 in range(kv_lo, kv_hi, BLOCK_N):
            pos = n0 + cols
            in_range = pos < kv_hi
            logical = pos // block_size
            in_range = in_range & (logical < max_blocks)
            blk = tl.load(block_table + b * bt_stride + tl.where(in_range, logical, 0)).to(tl.int64)
            in_range = in_range & (blk >= 0) & (blk < num_blocks)
            offs = blk * c_sb + (pos % block_size).to(tl.int64) * c_st + kv_head.to(tl.int64) * c_sh
            kt = tl.load(k_cache + offs[:, None] + d[None, :], mask=in_range[:, None], other=0.0)
            vt = tl.load(v_cache + offs[:, None] + d[None, :], mask=in_range[:, None], other=0.0)
            if UPCAST:
                kt = kt.to(tl.float32)
                vt = vt.to(tl.float32)

            s = tl.dot(qv, tl.trans(kt), input_precision=DOT_PRECISION) * scale_log2
            # Prefix keys are visible to every row; tree node j by the mask.
            j = pos - prefix
            is_tree = j >= 0
            if HAS_MASK:
                tree_cell = is_tree[None, :] & row_ok[:, None]
                words = tl.load(tree_mask + token[:, None] * mask_stride + (tl.where(is_tree, j, 0) // 32)[None, :],
                                mask=tree_cell, other=0)
                tree_ok = ((words >> (tl.where(is_tree, j, 0) % 32)[None, :]) & 1) != 0
            else:
                tree_ok = j[None, :] <= node[:, None]
            visible = in_range[None, :] & row_ok[:, None] & ((~is_tree)[None, :] | tree_ok)
            s = tl.where(visible, s, float("-inf"))

            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=DOT_PRECISION)
            m_i = m_new

        seen = l_i > 0
        o = acc / tl.where(seen, l_i, 1.0)[:, None]
        row_lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) / 1.4426950408889634, float("-inf"))
        out_row = token * num_q_heads + head.to(tl.int64)
        if SPLIT:
            part_row = split.to(tl.int64) * num_tokens * num_q_heads + out_row
            tl.store(part_out + part_row[:, None] * HEAD_DIM + d[None, :], o, mask=row_ok[:, None])
            tl.store(part_lse + part_row, row_lse, mask=row_ok)
        else:
            tl.store(out + out_row[:, None] * HEAD_DIM + d[None, :], o.to(OUT_DTYPE), mask=row_ok[:, None])
            tl.store(lse + out_row, row_lse, mask=row_ok)


@triton.jit
def _merge_splits_kernel(part_out, part_lse, out, lse, rows, num_splits,
                         OUT_DTYPE: tl.constexpr, BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr):
    """out = sum_s exp(lse_s - lse) out_s, lse = log sum_s exp(lse_s), per (token, head) row."""
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, HEAD_DIM)
    s_ok = s < num_splits
    lse_s = tl.load(part_lse + s.to(tl.int64) * rows + row, mask=s_ok, other=float("-inf"))
    m = tl.max(lse_s, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(lse_s - m_safe)
    total = tl.sum(w, axis=0)
    # A split that saw nothing may have left its partial row unwritten.
    o_s = tl.load(part_out + (s.to(tl.int64) * rows + row)[:, None] * HEAD_DIM + d[None, :],
                  mask=(s_ok & (w > 0))[:, None], other=0.0)
    o = tl.sum(o_s * w[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out + row * HEAD_DIM + d, o.to(OUT_DTYPE))
    tl.store(lse + row, tl.where(total > 0, m_safe + tl.log(tl.where(total > 0, total, 1.0)), float("-inf")))


# Keys per KV split on CUDA. Fixed, not derived from the batch, so a row's
# result never depends on the other sequences of the batch (the partition of
# its KV range, hence its rounding, is the same alone or batched).
@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count



def tree_attention(q, k_cache, v_cache, block_table, prefix_lens, qo_indptr, tree_mask, sm_scale,
                   split_len: int | None = None):
    """Same contract as specdec_kernels.tree_attention (arguments already
    checked); returns (out, lse). ``split_len`` (keys per KV split, rounded up
    to the key tile) overrides the default: on CUDA the splits of
    specdec_kernels.split_plan (the CUDA launcher's rule), no split in the
    interpreter; tests use it to exercise the merge on CPU."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    batch, max_blocks = block_table.shape
    group = num_q_heads // num_kv_heads
    # Rows never reached (tokens outside qo_indptr) read as "saw nothing".
    out = torch.zeros(num_tokens, num_q_heads, head_dim, dtype=q.dtype, device=q.device)
    lse = torch.full((num_tokens, num_q_heads), float("-inf"), dtype=torch.float32, device=q.device)
    if num_tokens == 0 or batch == 0 or max_blocks == 0:
        return out, lse

    # A query tile covers all (tree node, q head) rows of the average tree,
    # up to 128 (64 at D = 256), so one program per (sequence, KV head,
    # split) reads each K/V tile once for all of them; longer trees loop over
    # more tiles in the same programs.
    rows = min(triton.cdiv(num_tokens, batch), MAX_TREE_LEN) * group
    if q.is_cuda:
        block_m = min(128 if head_dim <= 128 else 64, max(16, triton.next_power_of_2(rows)))
    else:
        block_m = 16
    block_n = 64 if q.is_cuda and head_dim <= 128 else 32 if q.is_cuda else 16
    num_q_programs = triton.cdiv(rows, block_m)
    kv_bound = max_blocks * block_size
    if split_len is None:
        if q.is_cuda:
            # As the CUDA launcher plans them: enough splits to fill the SMs, no
            # more than their fp32 partials are worth (one program per SM a wave).
            sms = _sm_count(q.device)
            splits, _ = plan_splits(batch=batch, tokens=num_tokens, q_heads=num_q_heads, kv_heads=num_kv_heads,
                                    head_dim=head_dim, reach=kv_bound, elem_bytes=q.element_size(),
                                    programs=batch * num_kv_heads * num_q_programs, slots=sms, sms=sms)
            split_len = triton.cdiv(kv_bound, splits)
        else:
            split_len = kv_bound
    split_len = triton.cdiv(split_len, block_n) * block_n
    splits = triton.cdiv(kv_bound, split_len)
    if splits > 1:
        part_out = torch.empty(splits, num_tokens, num_q_heads, head_dim, dtype=torch.float32, device=q.device)
        part_lse = torch.full((splits, num_tokens, num_q_heads), float("-inf"), dtype=torch.float32, device=q.device)
    else:
        part_out = part_lse = out  # unused
    mask = tree_mask if tree_mask is not None else qo_indptr  # placeholder pointer when absent
    # The interpreter's bfloat16 tl.dot returns garbage (triton 3.9): there,
    # bfloat16 tiles are multiplied in float32. Compiled kernels keep bfloat16.
    upcast = q.dtype == torch.bfloat16 and triton_interpreted()
    grid = (batch, num_kv_heads * num_q_programs, splits)
    _tree_attention_kernel[grid](
        q, k_cache, v_cache, block_table, prefix_lens, qo_indptr, mask,
        out, lse, part_out, part_lse,
        num_tokens, num_q_heads, group, max_blocks, num_blocks, block_size, split_len, num_q_programs,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_table.stride(0),
        tree_mask.stride(0) if tree_mask is not None else 0,
        sm_scale * _LOG2E,
        HAS_MASK=tree_mask is not None, SPLIT=splits > 1, OUT_DTYPE=_TL_DTYPES[q.dtype],
        DOT_PRECISION="ieee" if q.dtype == torch.float32 or upcast else "tf32",
        UPCAST=upcast,
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim,
        num_warps=8 if block_m == 128 else 4,
    )
    if splits > 1:
        _merge_splits_kernel[(num_tokens * num_q_heads,)](
            part_out, part_lse, out, lse, num_tokens * num_q_heads, splits,
            OUT_DTYPE=_TL_DTYPES[q.dtype], BLOCK_S=triton.next_power_of_2(splits), HEAD_DIM=head_dim,
        )
    return out, lse

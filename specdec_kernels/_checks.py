"""Argument checks shared by the public ops: every message names the argument
and says what was expected."""
from __future__ import annotations

from collections.abc import Sequence

import torch

CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def fail(op: str, message: str, error=ValueError):
    raise error(f"{op}: {message}")


def check_tensor(op: str, name: str, t, *, dim: int | None = None, dtype=None, device=None):
    if not isinstance(t, torch.Tensor):
        fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    if dim is not None and t.dim() != dim:
        fail(op, f"{name} must have {dim} dims, got shape {tuple(t.shape)}")
    if dtype is not None:
        allowed = dtype if isinstance(dtype, tuple) else (dtype,)
        if t.dtype not in allowed:
            names = " or ".join(str(d).removeprefix("torch.") for d in allowed)
            fail(op, f"{name} must be {names}, got {str(t.dtype).removeprefix('torch.')}", TypeError)
    if device is not None and t.device != device:
        fail(op, f"{name} is on {t.device} but the caches are on {device}")
    return t


def check_shape(op: str, name: str, t: torch.Tensor, expected: Sequence, what: str):
    """``expected`` holds ints or None (any size) per dim."""
    ok = t.dim() == len(expected) and all(e is None or s == e for s, e in zip(t.shape, expected))
    if not ok:
        fail(op, f"{name} must be {what}, got shape {tuple(t.shape)}")


def check_last_dim_contiguous(op: str, name: str, t: torch.Tensor):
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        fail(op, f"{name} must be contiguous in its last dim (stride 1), got strides {t.stride()}")


def check_index_vector(op: str, name: str, t, length: int, device):
    check_tensor(op, name, t, dim=1, dtype=torch.int32, device=device)
    check_shape(op, name, t, (length,), f"[{length}]")
    check_last_dim_contiguous(op, name, t)
    return t


def check_cache_pair(op, k_cache, v_cache, names, *, allow_stacked: bool) -> torch.device:
    k_name, v_name = names
    shapes = "[num_blocks, block_size, H_kv, D]" + (" or [layers, num_blocks, block_size, H_kv, D]" if allow_stacked else "")
    for name, t in ((k_name, k_cache), (v_name, v_cache)):
        check_tensor(op, name, t, dtype=CACHE_DTYPES)
        if t.dim() not in ((4, 5) if allow_stacked else (4,)):
            fail(op, f"{name} must be {shapes}, got shape {tuple(t.shape)}")
        check_last_dim_contiguous(op, name, t)
        if t.shape[-3] == 0:
            fail(op, f"{name} has block_size 0")
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride() or v_cache.dtype != k_cache.dtype:
        fail(op, f"{v_name} {tuple(v_cache.shape)} {v_cache.dtype} must have the shape, strides and dtype of "
                 f"{k_name} {tuple(k_cache.shape)} {k_cache.dtype}")
    if v_cache.device != k_cache.device:
        fail(op, f"{v_name} is on {v_cache.device} but {k_name} is on {k_cache.device}")
    return k_cache.device


def check_block_table(op, block_table, prefix_lens, device) -> int:
    check_tensor(op, "block_table", block_table, dim=2, dtype=torch.int32, device=device)
    check_last_dim_contiguous(op, "block_table", block_table)
    batch = block_table.shape[0]
    check_index_vector(op, "prefix_lens", prefix_lens, batch, device)
    return batch


def check_positions(op, block_table, first, last, num_blocks: int, block_size: int) -> None:
    """Positions first[b]..last[b] (CPU int64 tensors; empty where last < first)
    must lie inside the block table, in blocks of the pool."""
    max_blocks = block_table.shape[1]
    used = last >= first
    too_far = used & (last >= max_blocks * block_size)
    if too_far.any():
        b = int(too_far.nonzero()[0, 0])
        fail(op, f"sequence {b} needs position {int(last[b])} but block_table holds only "
                 f"{max_blocks} blocks of {block_size} positions")
    cols = torch.arange(max_blocks)
    touched = used[:, None] & (cols >= (first // block_size)[:, None]) & (cols <= (last // block_size)[:, None])
    table = block_table.cpu().long()
    bad = touched & ((table < 0) | (table >= num_blocks))
    if bad.any():
        b, blk = (int(x) for x in bad.nonzero()[0])
        fail(op, f"block_table[{b}, {blk}] = {int(table[b, blk])} is outside the pool of {num_blocks} blocks")


def check_prefix_lens_values(op, prefix: torch.Tensor) -> None:
    if (prefix < 0).any():
        b = int((prefix < 0).nonzero()[0, 0])
        fail(op, f"prefix_lens[{b}] = {int(prefix[b])} is negative")


def check_indptr_values(op, qo_indptr, num_tokens: int, name: str = "qo_indptr",
                        what: str = "tokens") -> torch.Tensor:
    """``name`` (an indptr) starts at 0, ends at num_tokens (the number of
    ``what``), never decreases; returns the per-sequence lengths (CPU int64)."""
    indptr = qo_indptr.cpu().long()
    if indptr[0] != 0:
        fail(op, f"{name}[0] must be 0, got {int(indptr[0])}")
    if indptr[-1] != num_tokens:
        fail(op, f"{name}[B] must equal the number of {what} {num_tokens}, got {int(indptr[-1])}")
    lengths = indptr[1:] - indptr[:-1]
    if (lengths < 0).any():
        b = int((lengths < 0).nonzero()[0, 0])
        fail(op, f"{name} must be non-decreasing, but {name}[{b + 1}] = {int(indptr[b + 1])} "
                 f"< {name}[{b}] = {int(indptr[b])}")
    return lengths

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

"""Backend choice shared by every op.

Backends: ``reference`` (pure PyTorch, any device), ``triton`` (CUDA tensors;
CPU tensors only under ``TRITON_INTERPRET=1``), ``cuda`` and ``cpu`` (the
compiled extension, for tensors on that device).

Precedence: an explicit ``backend=`` argument, else the ``SPECDEC_BACKEND``
environment variable, else ``auto``. ``auto`` takes the first backend of the
op's preference list that can run tensors on the given device; a backend that
is named explicitly but cannot run them raises ``BackendUnavailableError``
(it is never swapped for another one silently).
"""
from __future__ import annotations

import importlib.util
import os

import torch

from . import _extension

BACKENDS = ("reference", "triton", "cuda", "cpu")

# Fastest first. The interpreted Triton backend is never chosen automatically.
AUTO_ORDER = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run the given tensors here."""


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """None if ``backend`` can run tensors on ``device``, else why not."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; expected one of {('auto',) + BACKENDS}"
    if backend == "reference":
        return None
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpreted():
            return None
        return f"triton runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got {device.type}"
    if not _extension.loaded():
        return _extension.load_error()
    if backend == "cuda":
        if not _extension.with_cuda():
            return "specdec_kernels._C was built without CUDA (CPU torch or no nvcc at build time)"
        if device.type != "cuda":
            return f"the cuda backend runs CUDA tensors, got {device.type}"
        return None
    if device.type != "cpu":
        return f"the cpu backend runs CPU tensors, got {device.type}"
    return None


def choose(op: str, backend: str, device: torch.device) -> str:
    """The backend that runs ``op`` on ``device``, per the precedence above."""
    requested = backend if backend != "auto" else os.environ.get("SPECDEC_BACKEND", "auto") or "auto"
    if requested != "auto":
        reason = unavailable_reason(requested, device)
        if reason is not None:
            source = "backend=" if backend != "auto" else "SPECDEC_BACKEND="
            raise BackendUnavailableError(f"{op}: {source}{requested!r} cannot run here: {reason}")
        return requested
    return auto_choice(op, device)


def auto_choice(op: str, device: torch.device) -> str:
    """What ``auto`` picks for tensors on ``device``, ignoring SPECDEC_BACKEND."""
    for candidate in AUTO_ORDER.get(device.type, ("reference",)):
        if unavailable_reason(candidate, device) is None:
            return candidate
    raise BackendUnavailableError(f"{op}: no backend can run tensors on {device}")

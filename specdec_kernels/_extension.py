"""Loads the compiled extension specdec_kernels._C, which registers the
torch.ops.specdec.* operators, and says why when it cannot."""
from __future__ import annotations

import importlib

_module = None
_error: str | None = None


def _load():
    global _module, _error
    if _module is None and _error is None:
        try:
            _module = importlib.import_module("specdec_kernels._C")
        except ImportError as exc:
            _error = f"specdec_kernels._C is not built ({exc}); run `pip install --no-build-isolation -e .`"
    return _module


def loaded() -> bool:
    return _load() is not None


def load_error() -> str | None:
    _load()
    return _error


def with_cuda() -> bool:
    return loaded() and bool(_module.with_cuda)


def with_openmp() -> bool:
    """Whether the CPU kernels were compiled with OpenMP (``at::parallel_for``
    forks onto torch's threads); False for an extension built before the flag
    existed or with SPECDEC_NO_OPENMP=1."""
    return loaded() and bool(getattr(_module, "openmp", False))


def cuda_archs() -> list[str]:
    if not with_cuda():
        return []
    return [a for a in str(_module.cuda_archs).replace(",", ";").split(";") if a]

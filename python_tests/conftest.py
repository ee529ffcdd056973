"""Shared test fixtures: the (device, backend) cases every op is checked on.

Without a GPU, Triton kernels run on CPU tensors through TRITON_INTERPRET=1
(set here before triton is imported, unless the caller chose otherwise). GPU
cases are always listed and skip cleanly when there is no CUDA device.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from specdec_kernels import backends  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


CASES = (("cpu", "reference"), ("cpu", "cpu"), ("cpu", "triton"),
         ("cuda", "reference"), ("cuda", "triton"), ("cuda", "cuda"))


def backend_cases():
    """pytest params of (device, backend). Only the interpreted Triton case may
    skip for lack of support on a machine; a missing compiled backend fails."""
    cases = []
    for device, backend in CASES:
        marks = [pytest.mark.gpu, gpu] if device == "cuda" else []
        if device == "cpu" and backend == "triton" and not backends.triton_interpreted():
            marks.append(pytest.mark.skip(reason="Triton on CPU tensors needs TRITON_INTERPRET=1"))
        cases.append(pytest.param(device, backend, marks=marks, id=f"{device}-{backend}"))
    return cases


def bits(t: torch.Tensor) -> torch.Tensor:
    """Same-width integer view, for exact (bitwise) comparison of moved data."""
    return t.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor, what: str = ""):
    a, e = bits(actual).cpu(), bits(expected).cpu()
    diff = a != e
    assert not diff.any(), f"{what}: {int(diff.sum())} of {diff.numel()} elements differ, first at {tuple(diff.nonzero()[0].tolist())}"

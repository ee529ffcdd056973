"""What this installation can do: versions, devices, and which backend each op
can use on each device (and why not)."""
from __future__ import annotations

import importlib.util
import os
import platform

import torch

from . import _extension, backends
from ._version import __version__

OPS = ("append_kv", "compact_kv", "tree_attention", "verify_greedy", "verify_rejection", "verify_typical",
       "build_dynamic_tree")


def _triton_version() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    import triton

    return triton.__version__


def _extension_build() -> str:
    """What the loaded extension was built with, said plainly where it surprises:
    a CPU-only extension under a CUDA torch has no cuda backend on any GPU."""
    if not _extension.loaded():
        return "not built"
    if _extension.with_cuda():
        return f"cuda+cpu (archs {';'.join(_extension.cuda_archs())})"
    if torch.version.cuda is not None:
        return (f"cpu-only under a CUDA torch (CUDA {torch.version.cuda}): the cuda backend is unavailable; "
                "rebuild without SPECDEC_CPU_ONLY=1 and with a CUDA toolkit to get it")
    return "cpu-only (CPU torch)"


def _cpu_kernels() -> dict:
    """How the compiled CPU kernels use the cores, said plainly when they don't."""
    threads = torch.get_num_threads()
    if not _extension.loaded():
        text = "not built (the cpu backend is unavailable)"
    elif _extension.with_openmp():
        text = (f"multi-threaded: at::parallel_for on torch's OpenMP runtime, {threads} thread(s) "
                "(torch.set_num_threads); bench/bench_cpu_threads.py measures the scaling")
    else:
        text = ("single-threaded: this extension was built without OpenMP (SPECDEC_NO_OPENMP=1, or torch "
                "has no OpenMP), so at::parallel_for runs every CPU kernel on one thread")
    return {"backend": backends.auto_choice("info", torch.device("cpu")), "openmp": _extension.with_openmp(),
            "threads": threads, "threading": text}


def _cuda_tree_attention_kernel() -> str:
    """Which CUDA tree-attention kernel fp16/bf16 calls run on this device: the
    launcher's rule (csrc/cuda/tree_attention.cu, pick_kernel) restated, so a
    Hopper that runs the slower mma.sync kernel (an extension built without
    sm_90a, or the variable set) says so."""
    want = os.environ.get("SPECDEC_TREE_ATTENTION_KERNEL", "auto")
    if not _extension.with_cuda():
        return "none: the extension has no CUDA kernels"
    if not torch.cuda.is_available():
        return f"no CUDA device (SPECDEC_TREE_ATTENTION_KERNEL={want})"
    major, minor = torch.cuda.get_device_capability()
    sm90a = (major, minor) == (9, 0) and "9.0a" in _extension.cuda_archs()
    if want == "simt" or major < 8:
        kernel = "CUDA-core kernel"
    elif sm90a and want != "mma":
        kernel = "wgmma kernel (sm_90a, FlashAttention-3 style)"
    elif (major, minor) == (9, 0) and want != "mma":
        kernel = ("mma.sync kernel: this extension has no sm_90a code, so the wgmma kernel cannot run "
                  "(rebuild with TORCH_CUDA_ARCH_LIST including 9.0a)")
    else:
        kernel = "mma.sync kernel (FlashAttention-2 style)"
    return f"{kernel}; fp32 always takes the CUDA-core kernel (SPECDEC_TREE_ATTENTION_KERNEL={want})"


def info() -> dict:
    """A dict of facts; ``python -m specdec_kernels info`` prints it."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    per_device = {}
    for dev in devices:
        device = torch.device(dev)
        avail = {b: backends.unavailable_reason(b, device) or "available" for b in backends.BACKENDS}
        auto = backends.auto_choice("info", device)
        entry = {"auto": auto, "backends": avail}
        if dev == "cpu" and auto == "reference":
            entry["note"] = ("the compiled cpu backend is unavailable, so auto falls back to the slow "
                             "pure-PyTorch reference on CPU tensors")
        per_device[dev] = entry
    return {
        "specdec_kernels": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton_version(),
        "triton_interpret": backends.triton_interpreted(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "extension": "loaded" if _extension.loaded() else _extension.load_error(),
        "extension_cuda": _extension.with_cuda(),
        "extension_build": _extension_build(),
        "cuda_archs": _extension.cuda_archs(),
        "cpu_kernels": _cpu_kernels(),
        "cuda_attention": _cuda_tree_attention_kernel(),
        "backend_override": os.environ.get("SPECDEC_BACKEND") or None,
        "verify_allowed_tokens": ("cuda, cpu: the bitmask is read as the rows are; triton: a masking pass "
                                  "first writes a masked copy of the rows (one more launch, the rows read and "
                                  "written once more)"),
        # Every op shares the same backend availability today; listed per op
        # so later ops with narrower support can say so.
        "ops": {op: per_device for op in OPS},
    }


def format_info(facts: dict) -> str:
    lines = [f"specdec_kernels {facts['specdec_kernels']}"]
    for key in ("python", "torch", "torch_cuda", "triton", "triton_interpret", "cuda_device",
                "extension", "extension_cuda", "extension_build", "cuda_archs", "backend_override",
                "cuda_attention", "verify_allowed_tokens"):
        lines.append(f"  {key:18} {facts[key]}")
    lines.append(f"  {'cpu_kernels':18} {facts['cpu_kernels']['threading']}")
    for op, per_device in facts["ops"].items():
        lines.append(f"  {op}:")
        for dev, entry in per_device.items():
            lines.append(f"    {dev:5} auto -> {entry['auto']}")
            for b, state in entry["backends"].items():
                lines.append(f"          {b:10} {state}")
            if "note" in entry:
                lines.append(f"          note: {entry['note']}")
    return "\n".join(lines)


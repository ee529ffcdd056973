"""Shared benchmark plumbing: timing, the memory-bandwidth roofline, paged-cache
scenarios, environment facts, table and JSON output.

Self-contained on purpose (no import from python_tests): benchmarks must run
from an installed package without the test tree.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import specdec_kernels

# ---------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, *, warmup_ms: float, rep_ms: float,
            min_reps: int = 5, max_reps: int = 2000) -> dict:
    """Median time of one call of ``fn``, in microseconds.

    CUDA: triton's ``do_bench``, which times each call with its own pair of
    events and clears L2 before each one, so every timed call starts cold, as
    it would after a forward pass has streamed the weights through L2.
    CPU: a perf_counter around each call; the median resists the scheduler
    noise of a small shared machine better than the mean.
    """
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            return _time_cuda_events(fn, device, warmup_ms=warmup_ms, rep_ms=rep_ms, min_reps=min_reps)
        ms = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
        return {"median_us": ms * 1e3, "method": "triton.testing.do_bench(return_mode='median'), L2 cleared per call"}

    if warmup_ms > 0:
        fn()
        start = time.perf_counter()
        while (time.perf_counter() - start) * 1e3 < warmup_ms:
            fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or (time.perf_counter() - start) * 1e3 < rep_ms):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_us": statistics.median(times) * 1e6, "reps": len(times),
            "method": "time.perf_counter per call, median"}


def _time_cuda_events(fn, device, *, warmup_ms, rep_ms, min_reps) -> dict:
    """do_bench's method for machines without triton: per-call events, L2 cleared."""
    flush = torch.empty(256 << 20, dtype=torch.int8, device=device)
    fn()
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    estimate_ms = max((time.perf_counter() - t0) * 1e3, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate_ms))):
        fn()
    n = max(min_reps, int(rep_ms / estimate_ms))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    ms = statistics.median(s.elapsed_time(e) for s, e in events)
    return {"median_us": ms * 1e3, "reps": n, "method": "cuda events per call, median, L2 cleared per call"}


def host_time_us(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Wall time per call of ``iters`` back-to-back calls, one sync at the end.

    On CUDA the per-call event time hides the host side (Python checks,
    launch overhead) whenever the GPU is slower than the host; at batch 1 the
    host side is usually the larger cost, so it is reported beside it.
    """
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters * 1e6


def measure_peak_bandwidth(device: torch.device, mib: int, *, warmup_ms: float, rep_ms: float) -> dict:
    """Achievable bandwidth of a plain device-to-device copy of ``mib`` MiB,
    counting bytes read plus bytes written: the roofline the KV ops are held to."""
    n = mib << 20
    src = torch.empty(n, dtype=torch.uint8, device=device)
    src.fill_(1)  # touch every page before timing
    dst = torch.empty_like(src)
    dst.fill_(0)
    timing = time_fn(lambda: dst.copy_(src), device, warmup_ms=warmup_ms, rep_ms=rep_ms, min_reps=5)
    moved = 2 * n
    del src, dst
    return {"gbps": moved / (timing["median_us"] * 1e-6) / 1e9, "bytes": moved, "copy_mib": mib,
            "median_us": timing["median_us"], "method": timing["method"]}


def measure_peak_flops(device: torch.device, n: int, dtype: torch.dtype, *, warmup_ms: float, rep_ms: float) -> dict:
    """Achievable matmul throughput: one ``n x n @ n x n`` ``torch.matmul`` in
    ``dtype`` (2 n^3 FLOPs), the compute roofline. Random inputs (not zeros),
    so no data-dependent shortcut can flatter it."""
    gen = device_generator(device, 0)
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    timing = time_fn(lambda: torch.matmul(a, b, out=out), device, warmup_ms=warmup_ms, rep_ms=rep_ms, min_reps=3)
    flops = 2 * n ** 3
    del a, b, out
    return {"tflops": flops / (timing["median_us"] * 1e-6) / 1e12, "flops": flops, "n": n, "dtype": str(dtype),
            "median_us": timing["median_us"], "method": timing["method"]}


def resolve_device_defaults(parser, args, defaults: dict):
    """--device auto -> cuda when torch sees one; then fill every option left
    unset from ``defaults[(device, args.quick)]``."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    for key, value in defaults[(args.device, args.quick)].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ---------------------------------------------------------------- scenarios


@dataclass
class PagedCache:
    """One batch's block table over a pool of ``num_blocks`` blocks.

    Each sequence owns just enough blocks for its prefix plus ``new_tokens``,
    in a random permutation of the pool (a fragmented cache, as after many
    allocations and frees), plus a few spare blocks nobody owns.
    """
    block_table: torch.Tensor  # int32 [B, max_blocks], -1 padded
    prefix_lens: torch.Tensor  # int32 [B]
    num_blocks: int
    block_size: int


def make_paged_cache(rng: np.random.Generator, *, batch: int, max_prefix: int, new_tokens: int,
                     block_size: int, device: torch.device, spare_blocks: int = 3) -> PagedCache:
    """Prefix lengths drawn uniformly from [0, max_prefix]."""
    prefix = rng.integers(0, max_prefix + 1, batch)
    return paged_cache_for(rng, prefix, new_tokens=new_tokens, block_size=block_size, device=device,
                           spare_blocks=spare_blocks)


def paged_cache_for(rng: np.random.Generator, prefix_lens, *, new_tokens: int, block_size: int,
                    device: torch.device, spare_blocks: int = 3) -> PagedCache:
    """As ``make_paged_cache``, for given prefix lengths (one per sequence)."""
    prefix = np.asarray(prefix_lens, dtype=np.int64)
    batch = len(prefix)
    need = -(-(prefix + new_tokens) // block_size)
    num_blocks = int(need.sum()) + spare_blocks
    owners = rng.permutation(num_blocks)
    table = np.full((batch, int(need.max())), -1, dtype=np.int32)
    used = 0
    for b in range(batch):
        table[b, : need[b]] = owners[used: used + need[b]]
        used += need[b]
    return PagedCache(torch.from_numpy(table).to(device), torch.from_numpy(prefix.astype(np.int32)).to(device),
                      num_blocks, block_size)


def random_paths(rng: np.random.Generator, *, batch: int, tree_size: int, accepted: int):
    """Every sequence accepts ``accepted`` drafted tokens: root 0, then random
    strictly increasing nodes of a ``tree_size``-node tree, so almost every
    accepted row really moves. Returns int32 CPU (accepted_nodes [B, accepted + 1],
    num_accepted [B])."""
    if not 0 <= accepted < tree_size:
        raise ValueError(f"accepted={accepted} must be in [0, tree_size - 1 = {tree_size - 1}]")
    nodes = np.zeros((batch, accepted + 1), dtype=np.int32)
    for b in range(batch):
        nodes[b, 1:] = np.sort(rng.choice(np.arange(1, tree_size), size=accepted, replace=False))
    return torch.from_numpy(nodes), torch.full((batch,), accepted, dtype=torch.int32)


# Exclusive upper bounds of the positive finite bit patterns of each dtype.
_FINITE = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80, torch.float32: 0x7F800000}


def random_fill(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random finite values drawn as bit patterns (far cheaper than randn on a
    small CPU), so a row written to the wrong place or not at all cannot match
    by accident. Finite, so no copy path can canonicalize a NaN payload and
    fail a bitwise comparison that the data itself would pass."""
    as_bits(t).random_(0, _FINITE[t.dtype], generator=gen)
    return t


_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def as_bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_BITS[t.element_size()])


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(as_bits(a), as_bits(b))


def relative_l2_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float32 (0-norm reference guarded)."""
    ref = ref.float()
    return ((out.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ---------------------------------------------------------------- environment


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_kind(device: torch.device) -> str:
    """A file-name-safe tag: ``cpu``, or the GPU's name, e.g. ``nvidia-h100-80gb-hbm3``."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-") or "cuda"


def l2_cache_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", None)


def _nvidia_driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0].strip() if out.strip() else None


def _git_state() -> dict | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_name": device_name(device),
        "driver_version": _nvidia_driver() if cuda else None,
        "l2_cache_bytes": l2_cache_bytes(device),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "specdec_kernels": specdec_kernels.__version__,
        "specdec_kernels_info": specdec_kernels.info(),
        "env": {k: os.environ[k] for k in ("TRITON_INTERPRET", "SPECDEC_BACKEND", "SPECDEC_TREE_ATTENTION_KERNEL",
                                           "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")
                if k in os.environ},
        "git": _git_state(),
        "argv": list(sys.argv),
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# ---------------------------------------------------------------- output


def format_table(rows: list[dict], columns: list[tuple[str, str, Callable[[object], str]]]) -> str:
    """``columns``: (key, header, formatter); a missing or None value prints as ``-``."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([("-" if row.get(key) is None else fmt(row[key])) for key, _, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i < 3 or i == len(r) - 1 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")

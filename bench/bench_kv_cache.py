"""Microbenchmark of append_kv and compact_kv: every backend this machine can
run, beside the obvious PyTorch code, held to the device's measured copy
bandwidth in the same process.

    python bench/bench_kv_cache.py                       # CUDA if present, else CPU at small sizes
    python bench/bench_kv_cache.py --quick               # smoke run
    TRITON_INTERPRET=1 python bench/bench_kv_cache.py --quick   # adds interpreted triton rows (not speeds)

Each backend's result is first checked bitwise against the PyTorch baseline's
on the same inputs; a mismatch or error gets no time and makes the exit status 1.
Results go to bench/results/kv_cache-<device>-<timestamp>.json (or --out).

On small shared VMs, libgomp's default spin-then-sleep wait can stall
multi-threaded CPU ops by a scheduler tick (~8 ms); if CPU rows look like
that, rerun with OMP_WAIT_POLICY=PASSIVE or --threads 1.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import specdec_kernels
from specdec_kernels import backends

import common

BASELINE = "torch-baseline"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Per (device type, quick). CPU sizes keep the default run well under a minute
# on 2 cores, where first-touching a large pool dominates: the pool is
# allocated three times (pristine, expected, work), so the prefix is kept short.
# The cost of compact_kv does not depend on the prefix, only the pool size does.
DEFAULTS = {
    ("cuda", False): dict(layers=32, compact_batches=[1, 8, 64], accepted=[4, 8], append_batches=[1, 8],
                          max_prefix=1024, peak_mib=1024, warmup_ms=25, rep_ms=100, slow_limit=None),
    ("cuda", True): dict(layers=32, compact_batches=[1, 8], accepted=[4], append_batches=[1],
                         max_prefix=256, peak_mib=256, warmup_ms=5, rep_ms=20, slow_limit=None),
    ("cpu", False): dict(layers=32, compact_batches=[1, 8, 64], accepted=[4, 8], append_batches=[1, 8],
                         max_prefix=16, peak_mib=128, warmup_ms=10, rep_ms=150, slow_limit=64),
    ("cpu", True): dict(layers=4, compact_batches=[1, 4], accepted=[4], append_batches=[1, 2],
                        max_prefix=16, peak_mib=32, warmup_ms=2, rep_ms=20, slow_limit=16),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--quick", action="store_true", help="small smoke run (fewer, smaller cases, short timing)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--layers", type=int, help="layers moved by compact_kv (default 32; 4 with --quick on CPU)")
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--tree-size", type=int, default=64, help="draft tree nodes the accepted path is drawn from")
    p.add_argument("--accepted", type=int, nargs="+", help="drafted tokens accepted per sequence (path = root + these)")
    p.add_argument("--compact-batches", type=int, nargs="+")
    p.add_argument("--append-batches", type=int, nargs="+")
    p.add_argument("--append-tokens", type=int, default=64, help="tree tokens appended per sequence")
    p.add_argument("--max-prefix", type=int, help="prefix lengths are drawn from [0, max_prefix]")
    p.add_argument("--peak-mib", type=int, help="size of the bandwidth-reference copy")
    p.add_argument("--warmup-ms", type=float)
    p.add_argument("--rep-ms", type=float)
    p.add_argument("--slow-limit", type=int,
                   help="largest batch*layers at which the slow backends (reference, interpreted triton) "
                        "are timed; default unlimited on CUDA")
    p.add_argument("--backends", nargs="+", choices=backends.BACKENDS, help="default: every one that can run")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/kv_cache-<device>-<timestamp>.json)")
    p.add_argument("--no-json", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    common.resolve_device_defaults(p, args, DEFAULTS)
    return args


# ---------------------------------------------------------------- baselines


def flat_slots(block_table: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Row of each position in a [num_blocks * block_size, H, D] view of a layer."""
    blocks = block_table.gather(1, (positions // block_size).long()).long()
    return blocks * block_size + (positions % block_size).long()


def torch_compact(k_flat, v_flat, block_table, prefix_lens, accepted_nodes, num_accepted, block_size) -> None:
    """Medusa-style rollback on a paged cache: per layer, gather the path's rows
    (every source read before any write), then index_copy_ them into place.
    Off-path padding maps to the root copying onto itself, which handles
    ragged paths without a host sync. Slot indices are computed once per call:
    they are per step, shared by all layers."""
    j = torch.arange(accepted_nodes.shape[1], device=accepted_nodes.device, dtype=torch.int32)
    on_path = j[None, :] <= num_accepted[:, None]
    src = flat_slots(block_table, prefix_lens[:, None] + torch.where(on_path, accepted_nodes, 0), block_size)
    dst = flat_slots(block_table, prefix_lens[:, None] + torch.where(on_path, j, 0), block_size)
    src, dst = src.flatten(), dst.flatten()
    for kf, vf in zip(k_flat, v_flat):
        kf.index_copy_(0, dst, kf.index_select(0, src))
        vf.index_copy_(0, dst, vf.index_select(0, src))


def torch_append(k, v, k_flat, v_flat, slots) -> None:
    """One layer's write, vLLM-style: the slot mapping is computed once per
    step and shared by every layer, so it is not part of a layer's cost."""
    k_flat[slots] = k
    v_flat[slots] = v


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    op: str
    name: str
    params: dict
    bytes_moved: int
    work: int  # batch * layers, what the slow backends' cost scales with
    pristine: list[torch.Tensor]  # the caches before the op
    # bind(caches, backend) -> fn(validate) running the op once on those caches
    bind: Callable[[list[torch.Tensor], str], Callable[[bool], None]]
    facts: dict = field(default_factory=dict)


def compact_case(args, device, dtype, batch: int, accepted: int, rng, gen) -> Case:
    L, H, D, bs = args.layers, args.kv_heads, args.head_dim, args.block_size
    paged = common.make_paged_cache(rng, batch=batch, max_prefix=args.max_prefix, new_tokens=args.tree_size,
                                    block_size=bs, device=device)
    nodes, counts = common.random_paths(rng, batch=batch, tree_size=args.tree_size, accepted=accepted)
    on_path = torch.arange(nodes.shape[1])[None, :] <= counts[:, None]
    moved_rows = int((on_path & (nodes != torch.arange(nodes.shape[1]))).sum())
    nodes, counts = nodes.to(device), counts.to(device)
    shape = (L, paged.num_blocks, bs, H, D)
    caches = [common.random_fill(torch.empty(shape, dtype=dtype, device=device), gen) for _ in range(2)]
    row_bytes = H * D * dtype.itemsize

    def bind(c, backend):
        k, v = c
        if backend == BASELINE:
            k_flat = [k[layer].view(-1, H, D) for layer in range(L)]
            v_flat = [v[layer].view(-1, H, D) for layer in range(L)]
            return lambda validate: torch_compact(k_flat, v_flat, paged.block_table, paged.prefix_lens,
                                                  nodes, counts, bs)
        return lambda validate: specdec_kernels.compact_kv(k, v, paged.block_table, paged.prefix_lens, nodes, counts,
                                                           validate=validate, backend=backend)

    return Case(
        op="compact_kv", name=f"B={batch} L={L} acc={accepted}",
        params=dict(batch=batch, layers=L, accepted=accepted, tree_size=args.tree_size, kv_heads=H, head_dim=D,
                    block_size=bs, dtype=str(dtype), max_prefix=args.max_prefix, num_blocks=paged.num_blocks),
        bytes_moved=2 * L * moved_rows * row_bytes * 2, work=batch * L, pristine=caches, bind=bind,
        facts=dict(moved_rows_per_layer=moved_rows, path_rows_per_layer=int(on_path.sum())),
    )


def append_case(args, device, dtype, batch: int, rng, gen) -> Case:
    H, D, bs, T = args.kv_heads, args.head_dim, args.block_size, args.append_tokens
    paged = common.make_paged_cache(rng, batch=batch, max_prefix=args.max_prefix, new_tokens=T,
                                    block_size=bs, device=device)
    n = batch * T
    qo_indptr = torch.arange(0, n + 1, T, dtype=torch.int32, device=device)
    k, v = (common.random_fill(torch.empty(n, H, D, dtype=dtype, device=device), gen) for _ in range(2))
    positions = paged.prefix_lens[:, None] + torch.arange(T, device=device, dtype=torch.int32)
    slots = flat_slots(paged.block_table, positions, bs).flatten()
    shape = (paged.num_blocks, bs, H, D)
    caches = [common.random_fill(torch.empty(shape, dtype=dtype, device=device), gen) for _ in range(2)]

    def bind(c, backend):
        k_cache, v_cache = c
        if backend == BASELINE:
            k_flat, v_flat = k_cache.view(-1, H, D), v_cache.view(-1, H, D)
            return lambda validate: torch_append(k, v, k_flat, v_flat, slots)
        return lambda validate: specdec_kernels.append_kv(k, v, k_cache, v_cache, paged.block_table,
                                                          paged.prefix_lens, qo_indptr,
                                                          validate=validate, backend=backend)

    return Case(
        op="append_kv", name=f"B={batch} T={T} L=1",
        params=dict(batch=batch, tokens_per_seq=T, layers=1, kv_heads=H, head_dim=D, block_size=bs,
                    dtype=str(dtype), max_prefix=args.max_prefix, num_blocks=paged.num_blocks),
        bytes_moved=n * H * D * dtype.itemsize * 2 * 2, work=batch, pristine=caches, bind=bind,
    )


# ---------------------------------------------------------------- running


def interpreted(backend: str) -> bool:
    return backend == "triton" and backends.triton_interpreted()


def skip_reason(backend: str, case: Case, args) -> str | None:
    slow = backend == "reference" or interpreted(backend)
    if slow and args.slow_limit is not None and case.work > args.slow_limit:
        return f"skipped: too slow here (batch*layers {case.work} > --slow-limit {args.slow_limit})"
    return None


def run_case(case: Case, backend_names: list[str], device, args, peak_gbps: float, l2_bytes) -> tuple[list, dict]:
    expected = [t.clone() for t in case.pristine]
    case.bind(expected, BASELINE)(False)
    work = [t.clone() for t in case.pristine]

    def reset():
        for w, p in zip(work, case.pristine):
            w.copy_(p)

    pool_bytes = sum(t.numel() * t.element_size() for t in case.pristine)
    info = dict(op=case.op, case=case.name, params=case.params, bytes_moved=case.bytes_moved,
                cache_pool_bytes=pool_bytes, working_set_bytes=case.bytes_moved,
                fits_in_l2=None if l2_bytes is None else case.bytes_moved <= l2_bytes, **case.facts)
    rows, baseline_us = [], None
    for backend in [BASELINE] + backend_names:
        row = dict(op=case.op, case=case.name, backend=backend, bytes_moved=case.bytes_moved,
                   interpreted=interpreted(backend), status="ok", note=None)
        rows.append(row)
        if (reason := skip_reason(backend, case, args)) is not None:
            row["status"] = reason
            continue
        reset()
        fn = case.bind(work, backend)
        try:
            fn(True)
        except Exception as e:  # a broken backend must not stop the others
            row["status"] = f"error: {type(e).__name__}: {e}"
            continue
        if not all(common.bitwise_equal(w, e) for w, e in zip(work, expected)):
            row["status"] = "MISMATCH vs torch-baseline"
            continue
        # Repeated in-place calls move the same rows again: the same work each time.
        timed = partial(fn, False)
        slow = interpreted(backend)
        t = common.time_fn(timed, device, warmup_ms=0 if slow else args.warmup_ms,
                           rep_ms=0 if slow else args.rep_ms, min_reps=1 if slow else 5)
        row["median_us"] = t["median_us"]
        row["timing"] = t["method"] + (f", {t['reps']} reps" if "reps" in t else "")
        if device.type == "cuda":
            iters = max(3, min(1000, int(args.rep_ms * 1e3 / max(t["median_us"], 1.0))))
            row["host_us"] = common.host_time_us(timed, device, iters)
        if slow:
            row["note"] = "interpreted (TRITON_INTERPRET=1): not a speed"
            continue
        row["gbps"] = case.bytes_moved / (t["median_us"] * 1e-6) / 1e9
        row["frac_peak"] = row["gbps"] / peak_gbps
        if backend == BASELINE:
            baseline_us = t["median_us"]
            row["note"] = ("per-layer index_select + index_copy_" if case.op == "compact_kv"
                           else "cache_flat[slots] = k, slots precomputed")
        elif baseline_us is not None:
            row["speedup_vs_torch"] = baseline_us / t["median_us"]
    del expected, work
    return rows, info


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if args.device == "cuda":
        torch.cuda.set_device(device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    available = {b: backends.unavailable_reason(b, device) for b in backends.BACKENDS}
    names = [b for b in (args.backends or backends.BACKENDS) if available[b] is None]
    env = common.environment(device)
    l2_bytes = env["l2_cache_bytes"]

    with torch.inference_mode():
        print(f"device: {env['device_name']} ({device}); measuring copy bandwidth ({args.peak_mib} MiB) ...",
              file=sys.stderr)
        peak = common.measure_peak_bandwidth(device, args.peak_mib, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms)
        rng = np.random.default_rng(args.seed)
        gen = common.device_generator(device, args.seed)
        specs = [("compact", b, a) for b in args.compact_batches for a in args.accepted]
        specs += [("append", b, None) for b in args.append_batches]
        rows, cases = [], []
        for kind, batch, acc in specs:
            case = (compact_case(args, device, dtype, batch, acc, rng, gen) if kind == "compact"
                    else append_case(args, device, dtype, batch, rng, gen))
            print(f"  {case.op} {case.name} ...", file=sys.stderr)
            case_rows, case_info = run_case(case, names, device, args, peak["gbps"], l2_bytes)
            rows += case_rows
            cases.append(case_info)
            del case

    columns = [
        ("op", "op", str), ("case", "case", str), ("backend", "backend", str),
        ("median_us", "median us", lambda x: f"{x:.1f}"),
        ("host_us", "host us", lambda x: f"{x:.1f}"),
        ("bytes_moved", "MB moved", lambda x: f"{x / 1e6:.3f}"),
        ("gbps", "GB/s", lambda x: f"{x:.1f}"),
        ("frac_peak", "% peak", lambda x: f"{100 * x:.1f}"),
        ("speedup_vs_torch", "vs torch", lambda x: f"{x:.2f}x"),
        ("status_note", "note", str),
    ]
    for row in rows:
        note = row["note"] if row["status"] == "ok" else row["status"]
        row["status_note"] = note if note is None or len(note) <= 90 else note[:87] + "..."  # full text in the JSON
    print(f"\n{env['device_name']} ({device}), {args.dtype}, H_kv={args.kv_heads} D={args.head_dim} "
          f"block={args.block_size} tree={args.tree_size}; measured copy peak {peak['gbps']:.1f} GB/s "
          f"({args.peak_mib} MiB copy_, read+write)")
    if device.type == "cuda":
        print("median us: per-call GPU time, L2 cleared before each call; "
              "host us: wall time per call back to back (includes Python and launch overhead)")
    else:
        print(f"median us: wall time per call, {torch.get_num_threads()} threads")
    print(common.format_table(rows, columns))
    for row in rows:
        del row["status_note"]
    unavailable = {b: r for b, r in available.items() if r is not None}
    if unavailable:
        print("not run here: " + "; ".join(f"{b}: {r}" for b, r in unavailable.items()))

    failed = [r for r in rows if r["status"].startswith(("error", "MISMATCH"))]
    if not args.no_json:
        out = args.out or Path(__file__).resolve().parent / "results" / (
            f"kv_cache-{common.device_kind(device)}-{common.timestamp()}.json")
        common.write_json(out, {
            "benchmark": "kv_cache",
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "peak_bandwidth": peak,
            "l2": {"bytes": l2_bytes,
                   "note": ("do_bench clears L2 before every timed call, so median_us is cold-cache even when "
                            "a case's working set fits; host_us runs back to back and is warm when it fits")
                   if device.type == "cuda" else
                   "CPU: no L2 flush; a working set that fits in the CPU caches can beat the DRAM copy peak"},
            "bytes_convention": ("each moved row read once and written once, K and V; compact_kv counts only "
                                 "rows whose node index differs from their destination index"),
            "backends_unavailable": unavailable,
            "cases": cases,
            "rows": rows,
            "environment": env,
            "failed": len(failed),
        })
        print(f"wrote {out}")
    if failed:
        print(f"{len(failed)} backend result(s) failed validation; see the note column", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

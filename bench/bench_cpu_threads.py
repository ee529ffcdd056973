"""Thread scaling of the compiled CPU kernels (``backend="cpu"``): each op at
one thread and at every core, side by side in one run, on the shapes a CPU
verify step of the tiny runtime models uses.

The kernels split their work with ``at::parallel_for`` on torch's own OpenMP
runtime (setup.py's ``openmp_flags``); an extension built without ``-fopenmp``
runs them on one thread whatever ``torch.get_num_threads()`` says, which is
what this benchmark exposes (``info()["cpu_kernels"]`` says which build is
loaded).

    python bench/bench_cpu_threads.py [--threads 1 2] [--quick]

Prints a table and writes JSON to bench/results/cpu-threads-<timestamp>.json:
per op and thread count the median time, bytes moved, bandwidth as a fraction
of the measured copy peak, and the speed-up over one thread. The verify ops'
bytes count every logits row once, an upper bound (greedy reads only the rows
its walk visits), and the KV ops' small working sets sit in cache, so their
fractions can pass 100 %; the column to read is the speed-up.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

import specdec_kernels as sk

import common


def cases(quick: bool):
    """name -> (callable, bytes moved): fresh random inputs, fixed seed."""
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    dev = torch.device("cpu")
    batch, hq, hkv, d, prefix = (4, 8, 2, 64, 256) if quick else (8, 8, 2, 64, 1024)
    tree = sk.Tree.from_choices(sk.MC_SIM_7B_63)
    t = tree.size
    paged = common.paged_cache_for(rng, [prefix] * batch, new_tokens=t, block_size=16, device=dev)
    shape = (paged.num_blocks, 16, hkv, d)
    k_cache = torch.randn(shape, generator=gen)
    v_cache = torch.randn(shape, generator=gen)
    q = torch.randn(batch * t, hq, d, generator=gen)
    k_new = torch.randn(batch * t, hkv, d, generator=gen)
    v_new = torch.randn(batch * t, hkv, d, generator=gen)
    indptr = torch.arange(0, (batch + 1) * t, t, dtype=torch.int32)
    mask = tree.packed_mask().repeat(batch, 1)
    kv_bytes = 2 * batch * (prefix + t) * hkv * d * 4
    out = {
        "tree_attention": (lambda: sk.tree_attention(q, k_cache, v_cache, paged.block_table, paged.prefix_lens,
                                                     indptr, mask, backend="cpu", validate=False),
                           kv_bytes + 2 * q.numel() * 4),
        "append_kv": (lambda: sk.append_kv(k_new, v_new, k_cache, v_cache, paged.block_table, paged.prefix_lens,
                                           indptr, backend="cpu", validate=False), 4 * k_new.numel() * 4),
    }
    layers = 4
    k_layers = torch.randn((layers,) + shape, generator=gen)
    v_layers = torch.randn((layers,) + shape, generator=gen)
    accepted, counts = common.random_paths(rng, batch=batch, tree_size=t, accepted=4)
    out["compact_kv"] = (lambda: sk.compact_kv(k_layers, v_layers, paged.block_table, paged.prefix_lens, accepted,
                                               counts, backend="cpu", validate=False),
                         2 * 2 * layers * batch * 4 * hkv * d * 4)
    vb, vocab = (8, 4096) if quick else (64, 32000)
    logits = torch.randn(vb * t, vocab, generator=gen)
    draft = torch.randint(0, vocab, (vb * t,), generator=gen)
    parents = tree.parents_tensor().repeat(vb)
    vindptr = torch.arange(0, (vb + 1) * t, t, dtype=torch.int32)
    uniforms = torch.rand(vb * t, generator=gen)
    out["verify_rejection"] = (lambda: sk.verify_rejection(draft, parents, vindptr, logits, uniforms=uniforms,
                                                           temperature=0.8, top_p=0.9, backend="cpu",
                                                           validate=False),
                               logits.numel() * 4)
    out["verify_greedy"] = (lambda: sk.verify_greedy(draft, parents, vindptr, logits, backend="cpu",
                                                     validate=False), logits.numel() * 4)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 and every core")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rep-ms", type=float, default=300.0)
    p.add_argument("--out", type=Path)
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
    facts = sk.info()
    if facts["cpu_kernels"]["backend"] != "cpu":
        print(f"the compiled cpu backend is unavailable: {facts['extension']}", file=sys.stderr)
        return 2
    threads = args.threads or sorted({1, os.cpu_count() or 1})
    dev = torch.device("cpu")
    saved = torch.get_num_threads()
    peak = common.measure_peak_bandwidth(dev, 64, warmup_ms=20, rep_ms=200)
    rows = []
    work = cases(args.quick)
    for name, (fn, moved) in work.items():
        base = None
        for n in threads:
            torch.set_num_threads(n)
            us = common.time_fn(fn, dev, warmup_ms=20, rep_ms=args.rep_ms)["median_us"]
            base = base or us
            gbps = moved / (us * 1e-6) / 1e9
            rows.append(dict(op=name, threads=n, median_us=us, bytes=moved, gbps=gbps,
                             peak_fraction=gbps / peak["gbps"], speedup_vs_1_thread=base / us))
    torch.set_num_threads(saved)
    print(common.format_table(rows, [
        ("op", "op", str), ("threads", "threads", str), ("median_us", "us", lambda v: f"{v:.0f}"),
        ("gbps", "GB/s", lambda v: f"{v:.2f}"), ("peak_fraction", "of peak", lambda v: f"{v:.1%}"),
        ("speedup_vs_1_thread", "vs 1 thread", lambda v: f"{v:.2f}x")]))
    print(f"\npeak: copy {peak['gbps']:.1f} GB/s; cpu kernels: {facts['cpu_kernels']['threading']}")
    if not args.no_json:
        out = args.out or Path(__file__).parent / "results" / f"cpu-threads-{common.timestamp()}.json"
        common.write_json(out, dict(benchmark="cpu_threads", environment=common.environment(dev), peak=peak,
                                    quick=args.quick, cpu_kernels=facts["cpu_kernels"], rows=rows))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

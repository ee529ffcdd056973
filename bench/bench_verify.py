"""Microbenchmark of the verify ops: every backend this machine can run, beside
the pure-PyTorch reference and FlashInfer's chain_speculative_sampling (with
the softmax it needs first), held to the bandwidth floor of one read of the
logits (and of the draft probabilities when the rule reads them), the copy
bandwidth measured in the same process.

    python bench/bench_verify.py                  # CUDA if present, else CPU at small sizes
    python bench/bench_verify.py --quick          # smoke run

Cases (CUDA defaults, the issue's): B in {1, 8, 64}; V in {32000, 128256};
chains of K = 4 and 8 drafted tokens and the 64-node Medusa tree
(mc_sim_7b_63); logits in bf16 and fp32. Rules:
  greedy       verify_greedy
  rejection-q  verify_rejection with draft_probs (chains: the work FlashInfer's sampler does)
  rejection    verify_rejection without draft_probs (point-mass proposals; trees)
Drafted tokens follow the target's argmax with probability 0.7, so paths go
deep and the walk does real work.

"% peak" follows the issue's accounting (all N rows of logits once), so a rule
that reads only the accepted path's rows (greedy and point-mass rejection on a
64-node tree) can show more than 100%.

Each of our results is checked against the reference first where the
reference runs (greedy exactly; sampled with the same uniforms, all requests
but rare rounding ties equal); a mismatch gets no time and exit status 1.
JSON goes to bench/results/verify-<device>-<timestamp>.json (or --out).

Baselines:
  reference    specdec_kernels' pure-PyTorch rules (a Python loop per request; only run
               where B * rows <= --reference-max-rows, it is slow by design)
  flashinfer   flashinfer.sampling.chain_speculative_sampling on [B, K, V] draft probs
               and [B, K+1, V] target probs = softmax(logits / T) computed in the timed call
"""
from __future__ import annotations

import argparse
import inspect
import os
import shlex
import sys
import time
from pathlib import Path

import torch

import specdec_kernels as sk
from specdec_kernels import backends

import common

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
OURS = ("cuda", "triton", "cpu", "reference")
FLASHINFER = "flashinfer"
TARGET_PEAK_FRAC, TARGET_VS_FLASHINFER = 0.70, 2.0
SHAPES = {"chain4": "chain of 4", "chain8": "chain of 8", "tree64": "medusa mc_sim_7b_63"}

DEFAULTS = {
    ("cuda", False): dict(batches=[1, 8, 64], vocabs=[32000, 128256], shapes=["chain4", "chain8", "tree64"],
                          dtypes=["bf16", "fp32"], peak_mib=1024, warmup_ms=25, rep_ms=100),
    ("cuda", True): dict(batches=[1, 64], vocabs=[128256], shapes=["chain8", "tree64"], dtypes=["bf16"],
                         peak_mib=256, warmup_ms=5, rep_ms=20),
    ("cpu", False): dict(batches=[1, 8], vocabs=[4096, 32000], shapes=["chain4", "tree64"], dtypes=["bf16", "fp32"],
                         peak_mib=128, warmup_ms=10, rep_ms=150),
    ("cpu", True): dict(batches=[1, 4], vocabs=[2048], shapes=["chain4", "tree64"], dtypes=["fp32"],
                        peak_mib=32, warmup_ms=2, rep_ms=20),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batches", type=int, nargs="+")
    p.add_argument("--vocabs", type=int, nargs="+")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES))
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES))
    p.add_argument("--rules", nargs="+", choices=["greedy", "rejection-q", "rejection"],
                   default=["greedy", "rejection-q", "rejection"])
    p.add_argument("--backends", nargs="+", choices=OURS + (FLASHINFER,))
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--triton-rows", choices=["auto", "multi", "single"],
                   help="Triton verify's row statistics: multi-program pre-pass, the walk's own scans, or the "
                        "size rule (sets SPECDEC_TRITON_VERIFY_ROWS; see specdec_kernels/triton/verify_rows.py)")
    p.add_argument("--reference-max-rows", type=int, default=600)
    p.add_argument("--peak-mib", type=int)
    p.add_argument("--warmup-ms", type=float)
    p.add_argument("--rep-ms", type=float)
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
    common.resolve_device_defaults(p, args, DEFAULTS)
    return args


def tree_of(shape: str) -> sk.Tree:
    return sk.Tree.from_choices(sk.MC_SIM_7B_63) if shape == "tree64" else sk.Tree.chain(int(shape[5:]))


class Case:
    """B copies of one tree, logits [B*T, V], draft probs, tokens that follow
    the target's argmax with probability 0.7."""

    def __init__(self, shape, batch, vocab, dtype, device, seed):
        tree = tree_of(shape)
        self.shape, self.batch, self.vocab, self.dtype, self.tree_size = shape, batch, vocab, dtype, tree.size
        gen = common.device_generator(device, seed)
        n = batch * tree.size
        self.logits = (torch.randn(n, vocab, device=device, generator=gen) * 3).to(dtype)
        self.draft_probs = torch.softmax(torch.randn(n, vocab, device=device, generator=gen) * 3, 1).to(dtype)
        local_parents = torch.tensor(tree.parents, dtype=torch.int32)
        self.parents = local_parents.repeat(batch).to(device)
        self.qo_indptr = (torch.arange(batch + 1, dtype=torch.int32) * tree.size).to(device)
        offsets = (torch.arange(batch) * tree.size).repeat_interleave(tree.size)
        parent_rows = (local_parents.long().repeat(batch).clamp(min=0) + offsets).to(device)
        follow = torch.rand(n, device=device, generator=gen) < 0.7
        random_tokens = torch.randint(0, vocab, (n,), device=device, generator=gen)
        self.draft_tokens = torch.where(follow, self.logits.float().argmax(1)[parent_rows], random_tokens)
        self.uniforms = torch.rand(n, device=device, generator=gen)
        self.max_depth = tree.max_depth

    def rows(self) -> int:
        return self.batch * self.tree_size

    def bytes_read(self, rule: str) -> int:
        per = self.rows() * self.vocab * self.logits.element_size()
        return per * (2 if rule == "rejection-q" else 1)

    def run(self, rule, backend, temperature):
        common_args = (self.draft_tokens, self.parents, self.qo_indptr, self.logits)
        kw = dict(max_depth=self.max_depth, validate=False, backend=backend)
        if rule == "greedy":
            return sk.verify_greedy(*common_args, **kw)
        q = self.draft_probs if rule == "rejection-q" else None
        return sk.verify_rejection(*common_args, q, temperature=temperature, uniforms=self.uniforms, **kw)


def flashinfer_status(device):
    try:
        import flashinfer  # noqa: F401
        from flashinfer.sampling import chain_speculative_sampling
    except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
        return None, f"flashinfer not importable ({type(e).__name__}: {e})"
    if device.type != "cuda":
        return None, "flashinfer runs CUDA tensors only"
    return chain_speculative_sampling, None


def flashinfer_runner(sampler, case: Case, temperature: float):
    """Chains only: [B, K, V] draft probs of the drafted tokens, [B, K+1, V]
    target probs (softmax in the timed call), [B, K] drafted ids."""
    k = case.tree_size - 1
    b, v = case.batch, case.vocab
    logits = case.logits.view(b, k + 1, v)
    draft = case.draft_probs.view(b, k + 1, v)[:, :k].float().contiguous()
    ids = case.draft_tokens.view(b, k + 1)[:, 1:].to(torch.int32).contiguous()
    params = inspect.signature(sampler).parameters

    def run():
        target = torch.softmax(logits.float() / temperature, dim=-1)
        if "uniform_samples" in params:  # older FlashInfer releases take explicit uniforms
            uniforms = case.uniforms.view(b, k + 1)
            return sampler(draft, ids, uniforms, target)
        return sampler(draft, ids, target)

    return run


def check(case, rule, backend, temperature) -> str | None:
    """None if ``backend`` agrees with the reference on this case, else why not."""
    if case.rows() > ARGS.reference_max_rows:
        return None
    expected = case.run(rule, "reference", temperature)
    got = case.run(rule, backend, temperature)
    differ = torch.zeros(case.batch, dtype=torch.bool)
    for a, e in zip(got, expected):
        d = (a.cpu() != e.cpu())
        differ |= d if d.dim() == 1 else d.any(1)
    allowed = 0 if rule == "greedy" else max(1, case.batch // 100)
    if int(differ.sum()) > allowed:
        return f"{int(differ.sum())} of {case.batch} requests differ from the reference"
    return None


def time_row(row: dict, fn, device, args, peak) -> float:
    t = common.time_fn(fn, device, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms)
    row["median_us"] = t["median_us"]
    row["gbps"] = row["bytes"] / (t["median_us"] * 1e-6) / 1e9
    row["peak_frac"] = row["gbps"] / peak["gbps"]
    return t["median_us"]


def main(argv=None) -> int:
    global ARGS
    started = time.perf_counter()
    args = ARGS = parse_args(argv)
    if args.triton_rows:
        os.environ["SPECDEC_TRITON_VERIFY_ROWS"] = args.triton_rows
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    wanted = args.backends or [b for b in OURS if backends.unavailable_reason(b, device) is None
                               and not (b == "triton" and device.type == "cpu")] + [FLASHINFER]
    sampler, fi_reason = flashinfer_status(device) if FLASHINFER in wanted else (None, "not requested")
    env = common.environment(device)
    print(f"device: {env['device_name']} ({device}); measuring copy bandwidth ({args.peak_mib} MiB)", flush=True)
    peak = common.measure_peak_bandwidth(device, args.peak_mib, warmup_ms=max(args.warmup_ms, 20.0),
                                         rep_ms=max(args.rep_ms, 100.0))
    rows, failures = [], []
    for dtype_name in args.dtypes:
        for vocab in args.vocabs:
            for shape in args.shapes:
                for batch in args.batches:
                    case = Case(shape, batch, vocab, DTYPES[dtype_name], device, args.seed)
                    for rule in args.rules:
                        if rule == "rejection-q" and shape == "tree64":
                            continue  # a 64-node static tree has no sampled q: point-mass rule only
                        base = dict(rule=rule, shape=shape, batch=batch, vocab=vocab, dtype=dtype_name,
                                    bytes=case.bytes_read(rule))
                        times, case_rows = {}, []
                        for backend in [b for b in wanted if b != FLASHINFER]:
                            if backend == "reference" and case.rows() > args.reference_max_rows:
                                continue
                            row = dict(base, backend=backend)
                            problem = check(case, rule, backend, args.temperature) if backend != "reference" else None
                            if problem:
                                row["error"] = problem
                                failures.append(f"{backend} {rule} {shape} B={batch} V={vocab}: {problem}")
                            else:
                                fn = lambda: case.run(rule, backend, args.temperature)  # noqa: E731
                                times[backend] = time_row(row, fn, device, args, peak)
                            case_rows.append(row)
                        if sampler is not None and rule == "rejection-q":
                            row = dict(base, backend=FLASHINFER)
                            times[FLASHINFER] = time_row(row, flashinfer_runner(sampler, case, args.temperature),
                                                         device, args, peak)
                            case_rows.append(row)
                        for row in case_rows:
                            for ref_name in ("reference", FLASHINFER):
                                if ref_name in times and "median_us" in row and row["backend"] != ref_name:
                                    row[f"speedup_vs_{ref_name}"] = times[ref_name] / row["median_us"]
                        rows += case_rows
                        print(f"  {rule:11} {shape:7} B={batch:<3} V={vocab:<6} {dtype_name}: "
                              + ", ".join(f"{k} {v:.1f} us" for k, v in times.items()), flush=True)
    columns = [("rule", "rule", str), ("shape", "tree", str), ("dtype", "dtype", str),
               ("batch", "B", str), ("vocab", "V", str), ("backend", "backend", str),
               ("median_us", "us", lambda x: f"{x:.1f}"), ("gbps", "GB/s", lambda x: f"{x:.1f}"),
               ("peak_frac", "% peak", lambda x: f"{100 * x:.1f}"),
               ("speedup_vs_reference", "vs ref", lambda x: f"{x:.1f}x"),
               ("speedup_vs_flashinfer", "vs FI", lambda x: f"{x:.2f}x"), ("error", "error", str)]
    print()
    print(common.format_table(rows, columns))
    print(f"\npeak: copy {peak['gbps']:.1f} GB/s (read+write, {args.peak_mib} MiB); bytes = one read of the "
          f"logits (+ draft probs for rejection-q); FlashInfer: {fi_reason or 'available'}")
    if device.type == "cpu":
        print("CPU: small sizes, not representative of a GPU")
    mine = [r for r in rows if r["backend"] in ("cuda", "triton") and "peak_frac" in r]
    targets = {
        "peak_fraction": {"target": TARGET_PEAK_FRAC, "cases": len(mine),
                          "failing": [f"{r['backend']} {r['rule']} {r['shape']} B={r['batch']} V={r['vocab']}: "
                                      f"{100 * r['peak_frac']:.1f}%" for r in mine
                                      if r["peak_frac"] < TARGET_PEAK_FRAC]},
        "vs_flashinfer": {"target": TARGET_VS_FLASHINFER,
                          "failing": [f"{r['backend']} {r['shape']} B={r['batch']} V={r['vocab']}: "
                                      f"{r['speedup_vs_flashinfer']:.2f}x" for r in mine
                                      if r.get("speedup_vs_flashinfer", TARGET_VS_FLASHINFER) < TARGET_VS_FLASHINFER]},
    }
    payload = {"benchmark": "verify", "command": " ".join(shlex.quote(a) for a in sys.argv), "environment": env,
               "peak_bandwidth": peak, "flashinfer": fi_reason or "available", "targets": targets, "rows": rows,
               "failures": failures, "runtime_s": time.perf_counter() - started}
    if not args.no_json:
        out = args.out or Path(__file__).parent / "results" / f"verify-{common.device_kind(device)}-{common.timestamp()}.json"
        common.write_json(out, payload)
        print(f"wrote {out}")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


ARGS: argparse.Namespace


if __name__ == "__main__":
    sys.exit(main())

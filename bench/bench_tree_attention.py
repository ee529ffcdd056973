"""Microbenchmark of tree_attention: every backend this machine can run, beside
PyTorch SDPA with a dense mask and FlashInfer's custom-mask paged prefill, held
to the roofline floor max(bytes / peak bandwidth, FLOPs / peak matmul rate),
both peaks measured in the same process.

    python bench/bench_tree_attention.py                 # CUDA if present, else CPU at tiny sizes
    python bench/bench_tree_attention.py --quick         # smoke run
    TRITON_INTERPRET=1 python bench/bench_tree_attention.py --quick   # adds interpreted triton (smallest case only)

Shapes (CUDA defaults, the issue's): Hq=32, Hkv=8, D=128, bf16, block size 16;
trees T=8 (a chain of 7 drafted tokens), T=64 (Medusa mc_sim_7b_63), T=120
(lookahead W=15, N=5, G=15); prefix 1k/4k/16k/32k; batch 1/8/64. On CPU the
sizes are tiny (Hq=8, Hkv=2, prefix 64/256, batch 1/2): not representative.

Every result (ours and the baselines') is first checked against the reference
backend (relative L2 error under 1e-2 for bf16); a mismatch or error gets no
time. A mismatch or error of one of our backends makes the exit status 1;
baseline failures are reported only. Results go to
bench/results/tree_attention-<device>-<timestamp>.json (or --out).

On small shared VMs, libgomp's default spin-then-sleep wait can stall
multi-threaded CPU ops by a scheduler tick (~8-12 ms); if CPU rows look like
that, rerun with OMP_WAIT_POLICY=PASSIVE or --threads 1.

Baselines:
  torch-sdpa         F.scaled_dot_product_attention on K/V already gathered
                     from the paged cache into contiguous [B, H, L, D] and a
                     dense bool mask [B, 1, T, L] (prefix all True, tree block
                     the tree's mask); the gather, the GQA expansion and the
                     mask are built once, outside the timed call.
  torch-sdpa+gather  the same with the paged-cache gather (and GQA repeat) in
                     the timed call; the mask is still prebuilt.
  flashinfer         BatchPrefillWithPagedKVCacheWrapper (NHD, page size =
                     block size) planned once with the custom mask over each
                     request's whole qo_len x kv_len square; .run() is timed.
"""
from __future__ import annotations

import time

_STARTED = time.perf_counter()  # the reported runtime includes the imports

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

import specdec_kernels as sk
from specdec_kernels import backends

import common

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Relative L2 error bound against the reference (as python_tests/test_tree_attention.py,
# fp32 loosened to 1e-4 for the baselines' own accumulation orders).
REL_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}

SDPA, SDPA_GATHER, FLASHINFER = "torch-sdpa", "torch-sdpa+gather", "flashinfer"
BASELINES = (SDPA, SDPA_GATHER, FLASHINFER)
OURS = ("reference", "cuda", "triton", "cpu")
TARGET_FLOOR_FRAC, TARGET_FLOOR_MIN_PREFIX = 0.70, 4096
TARGET_VS_FLASHINFER, TARGET_VS_FLASHINFER_T = 1.5, 64
CPU_BANNER = "CPU: tiny sizes, not representative"

DEFAULTS = {
    ("cuda", False): dict(batches=[1, 8, 64], prefixes=[1024, 4096, 16384, 32768], tree_sizes=[8, 64, 120],
                          q_heads=32, kv_heads=8, peak_mib=1024, flops_n=8192, warmup_ms=25, rep_ms=100,
                          sdpa_max_gb=16.0),
    ("cuda", True): dict(batches=[1, 8], prefixes=[1024, 4096], tree_sizes=[8, 64, 120],
                         q_heads=32, kv_heads=8, peak_mib=256, flops_n=4096, warmup_ms=5, rep_ms=20,
                         sdpa_max_gb=16.0),
    ("cpu", False): dict(batches=[1, 2], prefixes=[64, 256], tree_sizes=[8, 64, 120],
                         q_heads=8, kv_heads=2, peak_mib=128, flops_n=1024, warmup_ms=10, rep_ms=150,
                         sdpa_max_gb=2.0),
    ("cpu", True): dict(batches=[1, 2], prefixes=[64], tree_sizes=[8, 64, 120],
                        q_heads=8, kv_heads=2, peak_mib=32, flops_n=1024, warmup_ms=2, rep_ms=20,
                        sdpa_max_gb=2.0),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--quick", action="store_true", help="small smoke run (fewer cases, short timing)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes B")
    p.add_argument("--prefixes", type=int, nargs="+", help="prefix lengths (every sequence of a case has it)")
    p.add_argument("--tree-sizes", type=int, nargs="+",
                   help="T per sequence: 64 = Medusa mc_sim_7b_63, 120 = lookahead W=15 N=5 G=15, "
                        "any other T = a chain of T nodes (8 = chain of 7 drafted tokens)")
    p.add_argument("--q-heads", type=int, help="Hq (default 32 on CUDA, 8 on CPU)")
    p.add_argument("--kv-heads", type=int, help="Hkv (default 8 on CUDA, 2 on CPU)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16, help="paged-cache block (FlashInfer page) size")
    p.add_argument("--backends", nargs="+", choices=OURS + BASELINES,
                   help="default: every one that can run here")
    p.add_argument("--sdpa-gqa", choices=["auto", "repeat", "enable_gqa", "fold"], default="auto",
                   help="how SDPA handles Hq > Hkv: repeat_interleave K/V to Hq heads (auto on CUDA: the "
                        "memory-efficient kernel takes a mask then), enable_gqa=True (auto on CPU when torch "
                        "has it), or fold the query heads of a group into the query length")
    p.add_argument("--sdpa-max-gb", type=float,
                   help="skip SDPA when its extra memory (gathered K/V, dense mask, math-path scores) "
                        "would exceed this (default 16 on CUDA, 2 on CPU)")
    p.add_argument("--flashinfer-workspace-mib", type=int, default=256)
    p.add_argument("--peak-mib", type=int, help="size of the bandwidth-reference copy")
    p.add_argument("--flops-n", type=int, help="n of the n^3 matmul that measures peak FLOP/s")
    p.add_argument("--warmup-ms", type=float)
    p.add_argument("--rep-ms", type=float)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path,
                   help="JSON path (default bench/results/tree_attention-<device>-<timestamp>.json)")
    p.add_argument("--no-json", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    common.resolve_device_defaults(p, args, DEFAULTS)
    if args.q_heads % args.kv_heads:
        p.error(f"--q-heads {args.q_heads} must be a multiple of --kv-heads {args.kv_heads}")
    if args.head_dim not in sk.attention.HEAD_DIMS:
        p.error(f"--head-dim must be one of {sk.attention.HEAD_DIMS}")
    for t in args.tree_sizes:
        if not 1 <= t <= sk.attention.MAX_TREE_LEN:
            p.error(f"tree size {t} must be in [1, {sk.attention.MAX_TREE_LEN}]")
    if args.sdpa_gqa == "auto":
        args.sdpa_gqa = "enable_gqa" if args.device == "cpu" and sdpa_has_enable_gqa() else "repeat"
    elif args.sdpa_gqa == "enable_gqa" and not sdpa_has_enable_gqa():
        p.error(f"--sdpa-gqa enable_gqa: torch {torch.__version__} has no enable_gqa")
    return args


def sdpa_has_enable_gqa() -> bool:
    q = torch.zeros(1, 2, 1, 8)
    kv = torch.zeros(1, 1, 1, 8)
    try:
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
    except TypeError:
        return False
    return True


# ---------------------------------------------------------------- trees


@dataclass
class TreeSpec:
    kind: str
    size: int
    mask_bool: torch.Tensor  # bool [T, T], CPU
    packed: torch.Tensor  # int32 [T, W], CPU


def make_tree(t: int) -> TreeSpec:
    if t == 64:
        tree, kind = sk.Tree.from_choices(sk.MC_SIM_7B_63), "medusa mc_sim_7b_63"
    elif t == 120:
        tree, kind = sk.lookahead_mask(15, 5, 15), "lookahead W=15 N=5 G=15"
    else:
        tree, kind = sk.Tree.chain(t - 1), f"chain of {t - 1}"
    assert tree.size == t, (kind, tree.size, t)
    return TreeSpec(kind, t, tree.mask_bool(), tree.packed_mask())


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    tree: TreeSpec
    batch: int
    prefix: int
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    paged: common.PagedCache
    qo_indptr: torch.Tensor
    tree_mask: torch.Tensor
    sm_scale: float
    bytes: int
    flops: int
    facts: dict = field(default_factory=dict)

    @property
    def kv_len(self) -> int:
        return self.prefix + self.tree.size

    @property
    def label(self) -> tuple[str, str]:
        return f"T={self.tree.size} {self.tree.kind.split()[0]}", f"P={self.prefix} B={self.batch}"

    def ours(self, backend: str, validate: bool) -> torch.Tensor:
        return sk.tree_attention(self.q, self.k_cache, self.v_cache, self.paged.block_table, self.paged.prefix_lens,
                                 self.qo_indptr, self.tree_mask, sm_scale=self.sm_scale, validate=validate,
                                 backend=backend)

    def visible(self) -> torch.Tensor:
        """bool [T, L] on the device: the whole prefix, then the tree's mask."""
        t, device = self.tree.size, self.q.device
        return torch.cat([torch.ones(t, self.prefix, dtype=torch.bool, device=device),
                          self.tree.mask_bool.to(device)], dim=1)


def make_case(args, device, dtype, tree: TreeSpec, batch: int, prefix: int, rng, gen) -> Case:
    hq, hkv, d, bs, t = args.q_heads, args.kv_heads, args.head_dim, args.block_size, tree.size
    paged = common.paged_cache_for(rng, np.full(batch, prefix), new_tokens=t, block_size=bs, device=device)
    shape = (paged.num_blocks, bs, hkv, d)
    k_cache = torch.randn(shape, dtype=dtype, device=device, generator=gen)
    v_cache = torch.randn(shape, dtype=dtype, device=device, generator=gen)
    q = torch.randn(batch * t, hq, d, dtype=dtype, device=device, generator=gen)
    qo_indptr = torch.arange(0, batch * t + 1, t, dtype=torch.int32, device=device)
    tree_mask = tree.packed.repeat(batch, 1).to(device)
    elem = dtype.itemsize
    kv_len = prefix + t
    kv_bytes = batch * kv_len * hkv * d * 2 * elem
    q_bytes = batch * t * hq * d * elem
    return Case(tree, batch, prefix, q, k_cache, v_cache, paged, qo_indptr, tree_mask, d ** -0.5,
                bytes=kv_bytes + 2 * q_bytes, flops=4 * batch * t * hq * kv_len * d,
                facts=dict(kv_bytes=kv_bytes, q_bytes=q_bytes, out_bytes=q_bytes,
                           cache_pool_bytes=2 * k_cache.numel() * elem))


# ---------------------------------------------------------------- baselines


def sdpa_memory(case: Case, args, dtype) -> dict:
    """Extra memory SDPA needs beyond the paged cache: gathered K/V (Hq heads
    with repeat), the dense bool mask and its additive float copy, and with
    enable_gqa on CUDA (math backend) fp32 scores and probabilities."""
    b, t, l, d = case.batch, case.tree.size, case.kv_len, args.head_dim
    heads = args.q_heads if args.sdpa_gqa == "repeat" else args.kv_heads
    rows = t * (args.q_heads // args.kv_heads) if args.sdpa_gqa == "fold" else t
    kv = 2 * b * heads * l * d * dtype.itemsize
    mask = b * rows * l
    scores = 2 * b * args.q_heads * t * l * 4 if (args.sdpa_gqa == "enable_gqa" and case.q.is_cuda) else 0
    return dict(gathered_kv_bytes=kv, mask_bytes=mask, mask_float_bytes=mask * dtype.itemsize,
                math_scores_bytes=scores, total_bytes=kv + mask * (1 + dtype.itemsize) + scores)


def sdpa_runners(case: Case, args) -> tuple[Callable[[], Callable], Callable[[], Callable], Callable]:
    """(make attention-only fn, make gather+attention fn, output -> [N, Hq, D])."""
    b, t, l = case.batch, case.tree.size, case.kv_len
    hq, hkv, d = case.q.shape[1], case.k_cache.shape[2], case.q.shape[2]
    g = hq // hkv
    bs = case.paged.block_size
    pos = torch.arange(l, device=case.q.device)
    slots = (case.paged.block_table[:, pos // bs].long() * bs + pos % bs).reshape(-1)  # [B * L]
    k_flat, v_flat = case.k_cache.view(-1, hkv, d), case.v_cache.view(-1, hkv, d)
    mode = args.sdpa_gqa
    visible = case.visible()
    if mode == "fold":
        # Row t * G + g of group k is query head k * G + g of tree token t.
        q = case.q.view(b, t, hkv, g, d).permute(0, 2, 1, 3, 4).reshape(b, hkv, t * g, d)
        mask = visible.repeat_interleave(g, dim=0).expand(b, 1, t * g, l).contiguous()
    else:
        q = case.q.view(b, t, hq, d).transpose(1, 2)  # [B, Hq, T, D] view
        mask = visible.expand(b, 1, t, l).contiguous()  # one dense mask per sequence
    extra = {"enable_gqa": True} if mode == "enable_gqa" else {}

    def gather(flat):
        kv = flat.index_select(0, slots).view(b, l, hkv, d).transpose(1, 2)  # [B, Hkv, L, D]
        return kv.repeat_interleave(g, dim=1) if mode == "repeat" else kv

    def attend(k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=case.sm_scale, **extra)

    def attention_only():
        k, v = gather(k_flat).contiguous(), gather(v_flat).contiguous()
        return lambda: attend(k, v)

    def with_gather():
        return lambda: attend(gather(k_flat), gather(v_flat))

    def rows(o):
        if mode == "fold":
            return o.view(b, hkv, t, g, d).permute(0, 2, 1, 3, 4).reshape(b * t, hq, d)
        return o.transpose(1, 2).reshape(b * t, hq, d)

    return attention_only, with_gather, rows


def flashinfer_status(device: torch.device) -> tuple[object | None, str | None]:
    """(module, None) when FlashInfer can run here, else (None, why not)."""
    try:
        import flashinfer
    except ImportError as e:
        return None, f"flashinfer not installed ({type(e).__name__}: {e})"
    except Exception as e:  # a broken install must not stop the run
        return None, f"flashinfer import failed ({type(e).__name__}: {e})"
    if device.type != "cuda":
        return None, "flashinfer runs CUDA tensors only"
    return flashinfer, None


def flashinfer_runner(flashinfer, case: Case, args, dtype) -> Callable[[], torch.Tensor]:
    """Plan FlashInfer's paged prefill (0.2.x API) with a custom mask; returns
    the run call. The paged cache is used as is: our [num_blocks, block_size,
    Hkv, D] is FlashInfer's NHD layout, pages in block-table order."""
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"FlashInfer prefill takes fp16/bf16, not {dtype}")
    device = case.q.device
    b, t, l, bs = case.batch, case.tree.size, case.kv_len, case.paged.block_size
    pages = -(-l // bs)
    kv_indptr = torch.arange(0, b + 1, dtype=torch.int32, device=device) * pages
    kv_indices = case.paged.block_table[:, :pages].reshape(-1).to(torch.int32).contiguous()
    last_page_len = torch.full((b,), l - (pages - 1) * bs, dtype=torch.int32, device=device)
    # Flattened bool mask: request b's qo_len x kv_len square, row-major, requests concatenated.
    custom_mask = case.visible().expand(b, t, l).reshape(-1)
    workspace = torch.empty(args.flashinfer_workspace_mib << 20, dtype=torch.uint8, device=device)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, kv_layout="NHD")
    # Positional up to page_size: head_dim is named head_dim (0.2.0) or head_dim_qk (0.2.5+).
    wrapper.plan(case.qo_indptr, kv_indptr, kv_indices, last_page_len,
                 case.q.shape[1], case.k_cache.shape[2], case.q.shape[2], bs,
                 custom_mask=custom_mask, sm_scale=case.sm_scale, q_data_type=dtype, kv_data_type=dtype)
    kv = (case.k_cache, case.v_cache)
    return lambda: wrapper.run(case.q, kv)


# ---------------------------------------------------------------- running


def interpreted(backend: str) -> bool:
    return backend == "triton" and backends.triton_interpreted()


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().replace("\n", " ")
    return text if len(text) <= 400 else text[:397] + "..."


def run_case(case: Case, names: list[str], device, dtype, args, peaks: dict, *, smallest: bool,
             flashinfer) -> tuple[list[dict], dict]:
    tree_label, shape_label = case.label
    floor_bw_us = case.bytes / (peaks["gbps"] * 1e9) * 1e6
    floor_fl_us = case.flops / (peaks["tflops"] * 1e12) * 1e6
    floor_us = max(floor_bw_us, floor_fl_us)
    sdpa_mem = sdpa_memory(case, args, dtype)
    info = dict(tree=case.tree.kind, tree_size=case.tree.size, prefix=case.prefix, batch=case.batch,
                kv_len=case.kv_len, q_heads=args.q_heads, kv_heads=args.kv_heads, head_dim=args.head_dim,
                block_size=args.block_size, dtype=str(dtype), bytes=case.bytes, flops=case.flops,
                floor_us=floor_us, floor_bandwidth_us=floor_bw_us, floor_flops_us=floor_fl_us,
                bound="memory" if floor_bw_us >= floor_fl_us else "compute",
                sdpa_memory=sdpa_mem, **case.facts)
    tol = REL_TOL[dtype]
    expected = case.ours("reference", True)
    rows = []
    base_us: dict[str, float] = {}

    def row_for(backend):
        row = dict(tree=tree_label, shape=shape_label, tree_size=case.tree.size, prefix=case.prefix,
                   batch=case.batch, backend=backend, interpreted=interpreted(backend), status="ok", note=None,
                   bytes=case.bytes, flops=case.flops, floor_us=floor_us)
        rows.append(row)
        return row

    def measure(row, fn, to_rows=lambda o: o):
        try:
            out = to_rows(fn())
        except Exception as e:  # a broken backend must not stop the others
            row["status"] = f"error: {_short(e)}"
            return
        err = common.relative_l2_error(out, expected)
        row["rel_err"] = err
        if not (out.shape == expected.shape and err < tol):  # NaN fails too
            row["status"] = f"MISMATCH vs reference: rel L2 error {err:.2e} >= {tol:g}"
            return
        del out
        slow = interpreted(row["backend"])
        try:
            t = common.time_fn(fn, device, warmup_ms=0 if slow else args.warmup_ms,
                               rep_ms=0 if slow else args.rep_ms, min_reps=1 if slow else 5)
        except Exception as e:
            row["status"] = f"error while timing: {_short(e)}"
            return
        row["median_us"] = t["median_us"]
        row["timing"] = t["method"] + (f", {t['reps']} reps" if "reps" in t else "")
        if device.type == "cuda" and not slow:
            iters = max(3, min(1000, int(args.rep_ms * 1e3 / max(t["median_us"], 1.0))))
            row["host_us"] = common.host_time_us(fn, device, iters)
        if slow:
            row["note"] = "interpreted (TRITON_INTERPRET=1): not a speed"
            return
        sec = t["median_us"] * 1e-6
        row["gbps"] = case.bytes / sec / 1e9
        row["tflops"] = case.flops / sec / 1e12
        row["frac_floor"] = floor_us / t["median_us"]
        for base in (SDPA, FLASHINFER):
            if base in base_us and row["backend"] != base:
                row["speedup_vs_" + ("sdpa" if base == SDPA else "flashinfer")] = base_us[base] / t["median_us"]

    # Baselines first, so our rows can be compared with them.
    sdpa_wanted = [b for b in (SDPA, SDPA_GATHER) if b in names]
    if sdpa_wanted:
        too_big = sdpa_mem["total_bytes"] > args.sdpa_max_gb * 1e9
        runners = None if too_big else sdpa_runners(case, args)
        for backend in sdpa_wanted:
            row = row_for(backend)
            if too_big:
                row["status"] = (f"skipped: SDPA would need ~{sdpa_mem['total_bytes'] / 1e9:.3g} GB "
                                 f"(bool mask {sdpa_mem['mask_bytes'] / 1e9:.3g} GB) > --sdpa-max-gb "
                                 f"{args.sdpa_max_gb:g}")
                continue
            make_fn = runners[0] if backend == SDPA else runners[1]
            try:
                fn = make_fn()
            except Exception as e:
                row["status"] = f"error: {_short(e)}"
                continue
            measure(row, fn, runners[2])
            row["note"] = row["note"] or (f"GQA: {args.sdpa_gqa}; " +
                                          ("K/V pre-gathered, mask prebuilt" if backend == SDPA
                                           else "gather in the call, mask prebuilt"))
            if "median_us" in row and row["status"] == "ok" and backend == SDPA:
                base_us[SDPA] = row["median_us"]
            del fn
            _free(device)
        del runners
        _free(device)
    if FLASHINFER in names:
        row = row_for(FLASHINFER)
        try:
            fn = flashinfer_runner(flashinfer, case, args, dtype)
        except Exception as e:
            row["status"] = f"error in plan: {_short(e)}"
        else:
            measure(row, fn)
            row["note"] = row["note"] or "custom_mask over qo_len x kv_len, plan() not timed"
            if "median_us" in row and row["status"] == "ok":
                base_us[FLASHINFER] = row["median_us"]
            del fn
        _free(device)
    for backend in OURS:
        if backend not in names:
            continue
        row = row_for(backend)
        if interpreted(backend) and not smallest:
            row["status"] = "skipped: interpreted triton runs only the smallest case"
            continue
        # First call validates the indices; the timed calls skip that (a host sync on CUDA).
        try:
            case.ours(backend, True)
        except Exception as e:
            row["status"] = f"error: {_short(e)}"
            continue
        measure(row, lambda: case.ours(backend, False))
        _free(device)
    del expected
    return rows, info


def _free(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- targets


def evaluate_targets(rows: list[dict]) -> dict:
    """Pass/fail of the issue's targets for each of our (compiled or JIT)
    backends, over the cases where the quantities exist."""
    ours = [r for r in rows if r["backend"] in ("cuda", "triton", "cpu") and not r["interpreted"]
            and r["status"] == "ok" and "median_us" in r]
    floor_target = {}
    vs_fi_target = {}
    for backend in sorted({r["backend"] for r in ours}):
        mine = [r for r in ours if r["backend"] == backend]
        floor_rows = [r for r in mine if r["prefix"] >= TARGET_FLOOR_MIN_PREFIX]
        for r in floor_rows:
            r["meets_floor_target"] = r["frac_floor"] >= TARGET_FLOOR_FRAC
        floor_target[backend] = (
            {"pass": all(r["meets_floor_target"] for r in floor_rows), "cases": len(floor_rows),
             "failing": [f"{r['tree']} {r['shape']}: {100 * r['frac_floor']:.1f}%" for r in floor_rows
                         if not r["meets_floor_target"]],
             "min_frac_floor": min(r["frac_floor"] for r in floor_rows)}
            if floor_rows else {"pass": None, "cases": 0,
                                "note": f"no timed case with prefix >= {TARGET_FLOOR_MIN_PREFIX}"})
        fi_rows = [r for r in mine if r["tree_size"] == TARGET_VS_FLASHINFER_T and "speedup_vs_flashinfer" in r]
        for r in fi_rows:
            r["meets_flashinfer_target"] = r["speedup_vs_flashinfer"] >= TARGET_VS_FLASHINFER
        vs_fi_target[backend] = (
            {"pass": all(r["meets_flashinfer_target"] for r in fi_rows), "cases": len(fi_rows),
             "failing": [f"{r['tree']} {r['shape']}: {r['speedup_vs_flashinfer']:.2f}x" for r in fi_rows
                         if not r["meets_flashinfer_target"]],
             "min_speedup": min(r["speedup_vs_flashinfer"] for r in fi_rows)}
            if fi_rows else {"pass": None, "cases": 0,
                             "note": f"no T={TARGET_VS_FLASHINFER_T} case with both this backend and "
                                     f"FlashInfer timed"})
    return {
        "floor": {"description": f">= {100 * TARGET_FLOOR_FRAC:.0f}% of the roofline floor at prefix >= "
                                 f"{TARGET_FLOOR_MIN_PREFIX}", "by_backend": floor_target},
        "vs_flashinfer": {"description": f">= {TARGET_VS_FLASHINFER}x FlashInfer at T={TARGET_VS_FLASHINFER_T}",
                          "by_backend": vs_fi_target},
    }


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if args.device == "cuda":
        torch.cuda.set_device(device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    wanted = list(args.backends or (BASELINES + OURS))
    unavailable = {b: backends.unavailable_reason(b, device) for b in OURS if b in wanted}
    unavailable = {b: r for b, r in unavailable.items() if r is not None}
    flashinfer, flashinfer_reason = flashinfer_status(device) if FLASHINFER in wanted else (None, "not requested")
    if FLASHINFER in wanted and flashinfer is None:
        unavailable[FLASHINFER] = flashinfer_reason
    names = [b for b in wanted if b not in unavailable]
    env = common.environment(device)
    if flashinfer is not None:
        env["flashinfer"] = getattr(flashinfer, "__version__", "unknown")
    # CPUs without native half matmul (bf16 is ~100x slower than fp32 here) would
    # make the compute floor meaningless; the kernels accumulate in fp32 anyway.
    flops_dtype = dtype if device.type == "cuda" else torch.float32

    with torch.inference_mode():
        print(f"device: {env['device_name']} ({device}); measuring copy bandwidth ({args.peak_mib} MiB) and "
              f"{args.flops_n}^3 {flops_dtype} matmul ...", file=sys.stderr)
        # The peaks get at least 20 ms of warmup and 100 ms of timing even with --quick:
        # every % floor divides by them.
        peak_timing = dict(warmup_ms=max(args.warmup_ms, 20.0), rep_ms=max(args.rep_ms, 100.0))
        peak_bw = common.measure_peak_bandwidth(device, args.peak_mib, **peak_timing)
        peak_fl = common.measure_peak_flops(device, args.flops_n, flops_dtype, **peak_timing)
        peaks = {"gbps": peak_bw["gbps"], "tflops": peak_fl["tflops"]}
        rng = np.random.default_rng(args.seed)
        gen = common.device_generator(device, args.seed)
        trees = {t: make_tree(t) for t in args.tree_sizes}
        specs = [(t, p, b) for t in args.tree_sizes for p in args.prefixes for b in args.batches]
        smallest = min(specs, key=lambda s: (s[2] * s[0] * (s[1] + s[0]), s[0], s[1]))
        rows, cases = [], []
        for t, p, b in specs:
            case = make_case(args, device, dtype, trees[t], b, p, rng, gen)
            print(f"  {' '.join(case.label)} ...", file=sys.stderr)
            case_rows, case_info = run_case(case, names, device, dtype, args, peaks,
                                            smallest=(t, p, b) == smallest, flashinfer=flashinfer)
            rows += case_rows
            cases.append(case_info)
            del case
            _free(device)
    targets = evaluate_targets(rows)
    elapsed = time.perf_counter() - _STARTED

    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    columns = [
        ("tree", "tree", str), ("shape", "case", str), ("backend", "backend", str),
        ("median_us", "time us", lambda x: f"{x:.1f}"),
        *([("host_us", "host us", lambda x: f"{x:.1f}")] if device.type == "cuda" else []),
        ("gbps", "GB/s", lambda x: f"{x:.1f}"),
        ("tflops", "TFLOP/s", lambda x: f"{x:.3f}" if x < 10 else f"{x:.1f}"),
        ("frac_floor", "% floor", pct),
        ("speedup_vs_sdpa", "vs SDPA", lambda x: f"{x:.2f}x"),
        ("speedup_vs_flashinfer", "vs FI", lambda x: f"{x:.2f}x"),
        ("rel_err", "rel err", lambda x: f"{x:.1e}"),
        ("status_note", "note", str),
    ]
    for row in rows:
        note = row["note"] if row["status"] == "ok" else row["status"]
        row["status_note"] = note if note is None or len(note) <= 100 else note[:97] + "..."  # full text in the JSON
    print()
    if device.type != "cuda":
        print(f"*** {CPU_BANNER} ***")
    print(f"{env['device_name']} ({device}), {args.dtype}, Hq={args.q_heads} Hkv={args.kv_heads} D={args.head_dim} "
          f"block={args.block_size}; peaks measured here: copy {peak_bw['gbps']:.1f} GB/s ({args.peak_mib} MiB "
          f"copy_, read+write), matmul {peak_fl['tflops']:.3f} TFLOP/s ({args.flops_n}^3 {flops_dtype})")
    print("% floor = max(bytes / copy peak, FLOPs / matmul peak) / time; bytes = K+V of prefix+tree once per "
          "(sequence, KV head) + q + out; FLOPs = 4*B*T*Hq*(P+T)*D (tree block counted as T*T)")
    print(f"torch-sdpa: dense bool mask [B,1,T,L], GQA by {args.sdpa_gqa}; K/V gather from the paged cache "
          f"excluded (torch-sdpa) or included (torch-sdpa+gather); vs SDPA is against torch-sdpa")
    print(f"FlashInfer: {'v' + env['flashinfer'] if flashinfer is not None else flashinfer_reason}")
    if device.type == "cuda":
        print("time us: per-call GPU time (median, L2 cleared before each call); "
              "host us: wall time per call back to back (includes Python and launch overhead)")
    else:
        print(f"time us: wall time per call (median), {torch.get_num_threads()} threads")
    print(common.format_table(rows, columns))
    for row in rows:
        del row["status_note"]
    if unavailable:
        print("not run here: " + "; ".join(f"{b}: {r}" for b, r in unavailable.items()))
    for name, target in targets.items():
        verdicts = ", ".join(f"{b}: {'-' if v['pass'] is None else ('PASS' if v['pass'] else 'FAIL')}"
                             for b, v in target["by_backend"].items()) or "no timed backend"
        print(f"target {target['description']}: {verdicts}")
    print(f"total runtime {elapsed:.1f} s (imports included)")

    failed = [r for r in rows if r["backend"] in OURS and r["status"].startswith(("error", "MISMATCH"))]
    if not args.no_json:
        out = args.out or Path(__file__).resolve().parent / "results" / (
            f"tree_attention-{common.device_kind(device)}-{common.timestamp()}.json")
        common.write_json(out, {
            "benchmark": "tree_attention",
            "representative": device.type == "cuda",
            "note": None if device.type == "cuda" else CPU_BANNER,
            "command": shlex.join([sys.executable] + sys.argv),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "peaks": {"bandwidth": peak_bw, "flops": peak_fl,
                      "note": "both measured in this run; FLOP/s by torch.matmul in "
                              f"{flops_dtype}" + ("" if device.type == "cuda" else
                                                  " (CPU: no native half-precision matmul)")},
            "conventions": {
                "bytes": "K and V of prefix + tree read once per (sequence, KV head): B*(P+T)*Hkv*D*2*elem, "
                         "plus q read and out written (B*T*Hq*D*elem each); block table and mask not counted",
                "flops": "4*B*T*Hq*(P+T)*D: QK^T and PV over the full visible region; the tree block counts "
                         "T*T (as if dense), though the tree mask hides part of it",
                "floor": "max(bytes / peak bandwidth, flops / peak FLOP/s); frac_floor = floor / time",
                "sdpa": f"torch-sdpa: F.scaled_dot_product_attention with a dense bool mask [B,1,T,P+T] "
                        f"(prefix visible, tree block = tree mask), GQA by {args.sdpa_gqa}; K/V gathered from the "
                        f"paged cache into contiguous [B,H,L,D] beforehand (not timed). torch-sdpa+gather: "
                        f"the gather (and GQA repeat) inside the timed call. Mask built beforehand in both. "
                        f"speedup_vs_sdpa is against torch-sdpa.",
                "flashinfer": "BatchPrefillWithPagedKVCacheWrapper(workspace, kv_layout='NHD').plan(qo_indptr, "
                              "kv_indptr, kv_indices, last_page_len, Hq, Hkv, D, page_size=block_size, "
                              "custom_mask=flattened qo_len x kv_len bool squares, sm_scale, q/kv dtype); "
                              "only .run(q, (k_cache, v_cache)) timed",
                "validation": f"every backend and baseline checked against the reference backend before timing: "
                              f"relative L2 error < {REL_TOL[dtype]:g} ({dtype})",
                "trees": {str(t): trees[t].kind for t in args.tree_sizes},
                "tree_mask": "our backends get the packed tree mask for every tree, the chain included "
                             "(tree_mask=None, the causal shortcut, is not used)",
                "cache": f"paged, block size {args.block_size}, blocks of a batch a random permutation of the "
                         f"pool; every sequence of a case has the same prefix; q, K, V ~ N(0, 1)",
            },
            "targets": targets,
            "flashinfer": ({"available": True, "version": env["flashinfer"]} if flashinfer is not None
                           else {"available": False, "reason": flashinfer_reason}),
            "backends_unavailable": unavailable,
            "cases": cases,
            "rows": rows,
            "environment": env,
            "runtime_s": elapsed,
            "failed": len(failed),
        })
        print(f"wrote {out}")
    if failed:
        print(f"{len(failed)} result(s) of our backends failed; see the note column", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

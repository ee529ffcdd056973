"""The per-tile model of the CUDA tree-attention kernel, for bench/NOTES.md.

    python bench/attention_model.py [--device h200|a100] [--kernel mma|wgmma] [--json out.json]

For every shape bench_tree_attention.py runs on CUDA (Hq 32, Hkv 8, D 128, bf16;
trees of 8, 64 and 120 nodes; prefix 1k..32k; batch 1, 8, 64) it prints the
floor (bytes over HBM bandwidth, FLOPs over the mma.sync rate, the larger one),
the launch the planner makes (warps per CTA, CTAs, KV splits) and the time the
design should take by a simple model:

  memory   all bytes moved (K/V once per (sequence, KV head), Q, out, the split
           partials written and merged) over bandwidth x the fraction of SMs
           that hold a CTA;
  compute  waves x key tiles per CTA x the issue cycles of one tile on the
           busiest sub-partition (each active warp: 64 HMMA.16816 at
           hmma_cycles each, plus about 350 issue slots of masking, exp2,
           rescale and ldmatrix), the CTAs an SM holds sharing its four
           sub-partitions;
  expected max(memory, compute) + launch latency (two launches with splits).

--kernel wgmma (H200 only) models the sm_90a kernel (tree_attention_wgmma.cuh):
its configuration per tree (64, 128 or 256 rows per CTA; 32- or 64-key tiles;
2 CTAs per SM at 64 rows, else 1: WgmmaConfig), the floor at wgmma's dense
rate (989 TFLOP/s), and per tile on a sub-partition max(u (w + s) / 2, u w,
u s, m (w + s)) cycles for its u units of consumer work (consumer warps on
the sub-partition x m, the m-tiles per consumer warpgroup), where w is one
unit's wgmma work (16 rows x keys x D x 4 FLOP at 1024 FLOP/cycle) and s its
other issue slots (masking, exp2, rescale: about 8.5 per key; the copies are
the producer warp's, on one sub-partition, and fewer): a warp waits for its
own wgmmas before its softmax, so w + s is serial within a warp, while other
warps' softmax overlaps its tensor-core time (taken as half-overlapped).

Device numbers are datasheet leads, not measurements (no GPU ran this); the
GPU run (bench/gpu_check.sh) measures both peaks and the kernel. The split
rule is plan_splits in csrc/cuda/tree_attention.cu, restated in
specdec_kernels/split_plan.py (which the Triton kernel plans with too); the C++
test (check_planner) pins three of its answers, and this model prints the same
three shapes first, so a drift between the two shows.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, asdict
from pathlib import Path
import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from specdec_kernels import split_plan  # noqa: E402  (the launcher's split rule, restated once)

DEVICES = {
    # SMs, clock (GHz), HBM (TB/s), mma.sync dense fp16/bf16 (TFLOP/s), cycles of one
    # HMMA.16816 on one sub-partition, CTAs per SM for 4- and 8-warp CTAs (check_sass).
    "h200": dict(sms=132, ghz=1.83, tbps=4.8, tflops=660.0, hmma_cycles=6.0, ctas4=2, ctas8=1),
    "a100": dict(sms=108, ghz=1.41, tbps=2.0, tflops=312.0, hmma_cycles=8.0, ctas4=2, ctas8=1),
}
# The wgmma kernel (sm_90a): dense fp16/bf16 rate, FLOP per cycle per sub-partition, consumer issue slots per
# key besides the wgmma (masking, exp2, rescale).
WGMMA = dict(tflops=989.0, flop_per_cycle_sp=1024.0, slots_per_key=8.5)


def wgmma_configs(rows: int, d: int) -> list[dict]:
    """The WgmmaConfig<T, D, R> candidates for a tree of `rows` rows (the launcher's pick_kernels)."""
    r = 64 if rows <= 64 and d <= 128 else 128 if rows <= 128 or d > 128 else 256
    return [wgmma_config(r, d)] + ([wgmma_config(128, d)] if r == 256 else [])


def wgmma_config(r: int, d: int) -> dict:
    return dict(rows=r, warps=(1 + (1 if r == 64 else 2)) * 4, consumer_warps=4 if r == 64 else 8,
                m_tiles=2 if r == 256 else 1, keys=32 if (d == 256 or r == 256 or (r == 64 and d == 128)) else 64,
                ctas_per_sm=2 if r == 64 else 1)
KEYS_PER_TILE = 32
SOFTMAX_SLOTS = 350  # issue slots per warp per 32-key tile besides the HMMA
LAUNCH_US = 2.5


@dataclass
class Row:
    tree: int
    prefix: int
    batch: int
    bytes: float
    flops: float
    floor_us: float
    bound: str
    warps: int
    ctas: int
    splits: int
    memory_us: float
    compute_us: float
    expected_us: float
    fraction_of_floor: float


def plan_splits(batch, tokens, hq, hkv, d, reach, elem, ctas, slots, sms):
    return split_plan.plan_splits(batch=batch, tokens=tokens, q_heads=hq, kv_heads=hkv, head_dim=d, reach=reach,
                                  elem_bytes=elem, programs=ctas, slots=slots, sms=sms)


def model(dev, tree, prefix, batch, hq=32, hkv=8, d=128, elem=2, block=16, kernel="mma"):
    g = hq // hkv
    rows = tree * g
    wg = kernel == "wgmma"
    reach = math.ceil(prefix / block) * block
    # The launcher's choice: the cheapest plan over the candidate kernels (ties within 1 %: the first).
    best = None
    for cand in (wgmma_configs(rows, d) if wg else [None]):
        if wg:
            warps, rows_per_cta, per_sm = cand["warps"], cand["rows"], cand["ctas_per_sm"]
        else:
            warps = 8 if rows > 64 else 4
            rows_per_cta, per_sm = 16 * warps, dev["ctas4" if warps == 4 else "ctas8"]
        q_ctas = math.ceil(rows / rows_per_cta)
        ctas = batch * hkv * q_ctas
        s, cost = plan_splits(batch, batch * tree, hq, hkv, d, reach, elem, ctas, per_sm * dev["sms"], dev["sms"])
        if best is None or cost < best[0] * 0.99:
            best = (cost, cand, warps, rows_per_cta, per_sm, ctas, s)
    _, cfg, warps, rows_per_cta, per_sm, ctas, splits = best
    keys = prefix + tree
    kv = batch * hkv * keys * d * 2 * elem
    q_out = 2 * batch * tree * hq * d * elem
    partial = (splits * batch * tree * hq * (d + 1) * 4 * 2) if splits > 1 else 0
    flops = 4.0 * batch * tree * hq * keys * d
    bw, rate = dev["tbps"] * 1e12, (WGMMA if wg else dev)["tflops"] * 1e12
    floor = max((kv + q_out) / bw, flops / rate)
    total_ctas = ctas * splits
    busy = min(1.0, total_ctas / dev["sms"])
    # q_ctas > 1 re-reads the prefix per query tile; the re-reads run together, so from L2.
    memory = (kv + q_out + partial) / (bw * busy)
    tiles = math.ceil(keys / splits / (cfg["keys"] if wg else KEYS_PER_TILE))
    ctas_on_sm = min(per_sm, math.ceil(total_ctas / dev["sms"]))
    waves = math.ceil(total_ctas / (per_sm * dev["sms"]))
    if wg:
        # Live 64-row m-tiles per CTA, dealt to the consumer warpgroups; each is 4 warp units.
        live = math.ceil(min(rows, rows_per_cta) / 64)
        m = cfg["m_tiles"] if live > cfg["consumer_warps"] // 4 else 1
        units = math.ceil(min(live * 4, cfg["consumer_warps"] * cfg["m_tiles"]) * ctas_on_sm / 4)
        w = 16 * cfg["keys"] * d * 4 / WGMMA["flop_per_cycle_sp"]
        s = WGMMA["slots_per_key"] * cfg["keys"]
        tile_cycles = max(units * (w + s) / 2, units * w, units * s, m * (w + s))
    else:
        active = min(warps, math.ceil(min(rows, rows_per_cta) / 16))
        warps_per_sp = math.ceil(active * ctas_on_sm / 4)
        tile_cycles = warps_per_sp * (64 * dev["hmma_cycles"] + SOFTMAX_SLOTS)
    compute = waves * tiles * tile_cycles / (dev["ghz"] * 1e9)
    expected = max(memory, compute) + LAUNCH_US * 1e-6 * (2 if splits > 1 else 1)
    return Row(tree, prefix, batch, kv + q_out, flops, floor * 1e6,
               "memory" if (kv + q_out) / bw >= flops / rate else "compute", warps, total_ctas, splits,
               memory * 1e6, compute * 1e6, expected * 1e6, floor / expected)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=sorted(DEVICES), default="h200")
    ap.add_argument("--kernel", choices=("mma", "wgmma"), default="mma")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.kernel == "wgmma" and args.device != "h200":
        ap.error("the wgmma kernel runs on sm_90 (H100/H200) only")
    dev = DEVICES[args.device]
    rows = [model(dev, t, p, b, kernel=args.kernel) for t in (8, 64, 120) for p in (1024, 4096, 16384, 32768)
            for b in (1, 8, 64)]
    pinned = [(1, 4096, 1, 4), (4, 4096, 128, 4), (64, 4096, 1, 4)]
    print(f"planner pins (device {args.device}): " + ", ".join(
        f"T={t} P={p} B={b}: {model(dev, t, p, b, kernel=args.kernel).splits} splits" for t, p, b, _ in pinned))
    print(f"| T | prefix | B | floor µs | bound | warps | CTAs | splits | memory µs | compute µs | expected µs | floor/expected |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.tree} | {r.prefix} | {r.batch} | {r.floor_us:.1f} | {r.bound} | {r.warps} | {r.ctas} | "
              f"{r.splits} | {r.memory_us:.1f} | {r.compute_us:.1f} | {r.expected_us:.1f} | "
              f"{r.fraction_of_floor:.0%} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "kernel": args.kernel,
                       "assumptions": {**dev, **(WGMMA if args.kernel == "wgmma" else {})},
                       "rows": [asdict(r) for r in rows]}, f, indent=1)


if __name__ == "__main__":
    main()

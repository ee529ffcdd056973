"""Host time of building one verify step's inputs (``VerifyStep._host_inputs``:
flattened tokens, positions, parents, packed mask rows, uniforms, block table),
the work a GPU would wait on each step. Side by side in one run:

* ``general``: drafts given as per-sequence parents lists, laid out row by row
  in Python (the path every draft took before templates; still the path of
  drafts whose structures differ);
* ``template``: drafts sharing a ``DraftTemplate`` (what the Medusa and
  lookahead drafters and equal-length chains use), broadcast on the device.

Rejection mode (uniforms drawn), no draft probabilities, prefix 4000 tokens
in 16-token blocks, the 64-node Medusa tree (MC_SIM_7B_63) and a 4-token chain.

    python bench/bench_step_inputs.py [--device cpu|cuda] [--batches 1 8 64]

Prints a table and writes JSON to bench/results/step-inputs-<device>-<timestamp>.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import specdec_kernels as sk
from specdec_kernels.runtime import LlamaModel, ModelConfig, PagedKVCache
from specdec_kernels.runtime.step import Draft, VerifyStep
from specdec_kernels.runtime.templates import DraftTemplate

import common

TARGET_US = 300.0  # issue 16: <= 0.3 ms of host work at batch 64 x 64 nodes on a 2-core CPU


def measure(model, batch, tree, prefix, path, device, iters):
    """Microseconds per ``_host_inputs`` call for ``batch`` sequences of
    ``prefix`` tokens drafting ``tree`` through ``path`` ("general" or "template")."""
    cache = PagedKVCache(model.config, num_blocks=batch * (-(-(prefix + tree.size) // 16)) + 1, block_size=16,
                         device=device)
    seqs = list(range(batch))
    for s in seqs:
        cache.allocator.add(s, prefix)
        cache.allocator.reserve(s, prefix + tree.size)
    step = VerifyStep(model, cache, mode="rejection", max_blocks=-(-(prefix + tree.size) // 16))
    gen = torch.Generator().manual_seed(0)
    tmpl = DraftTemplate(tree.parents[1:])
    drafts = []
    for _ in seqs:
        toks = torch.randint(0, model.config.vocab_size, (tree.size - 1,), generator=gen).to(device)
        drafts.append(Draft(tokens=toks, template=tmpl) if path == "template"
                      else Draft(tokens=toks, parents=list(tree.parents[1:])))
    roots = [1] * batch
    prefix_lens = [cache.allocator.length(s) for s in seqs]
    return common.host_time_us(lambda: step._host_inputs(seqs, roots, prefix_lens, drafts), device, iters)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--prefix", type=int, default=4000)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", type=Path)
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = ModelConfig(vocab_size=4096, hidden_size=128, intermediate_size=128, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=64)
    model = LlamaModel.random(cfg, seed=0, std=0.02, device=device)
    rows = []
    for name, tree in (("chain-4", sk.Tree.chain(4)), ("medusa-64", sk.Tree.from_choices(sk.MC_SIM_7B_63))):
        for batch in args.batches:
            general = measure(model, batch, tree, args.prefix, "general", device, args.iters)
            template = measure(model, batch, tree, args.prefix, "template", device, args.iters)
            rows.append(dict(tree=name, batch=batch, rows=batch * tree.size, general_us=general,
                             template_us=template, speedup=general / template))
            print(f"  {name} batch {batch}: general {general:.0f} us, template {template:.0f} us", flush=True)
    print(common.format_table(rows, [("tree", "tree", str), ("batch", "batch", str), ("rows", "rows", str),
                                     ("general_us", "general µs", lambda v: f"{v:.0f}"),
                                     ("template_us", "template µs", lambda v: f"{v:.0f}"),
                                     ("speedup", "×", lambda v: f"{v:.1f}")]))
    big = [r for r in rows if r["tree"] == "medusa-64" and r["batch"] == 64]
    if big:
        print(f"batch 64 x 64 nodes: {big[0]['template_us']:.0f} us (target <= {TARGET_US:.0f} us)")
    if not args.no_json:
        out = args.out or Path(__file__).parent / "results" / f"step-inputs-{device.type}-{common.timestamp()}.json"
        common.write_json(out, dict(environment=common.environment(device), prefix=args.prefix, rows=rows,
                                    target_us=TARGET_US))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

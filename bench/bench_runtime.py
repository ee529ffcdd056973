"""Per-step cost of the runtime: an autoregressive step (T = 1) against a
verify step over T tree tokens (T = 4 and 8 chains, the 64-node Medusa tree),
each one runtime verify step (target forward with append_kv + tree_attention
in every layer, one verify_greedy launch, compact_kv; a replayed CUDA graph on
CUDA, including the inputs' host-to-device copies and the read-back), on
random models shaped like Llama 3.2 1B and Llama 3 8B on GPU (a tiny one on
CPU). Also one generate() run per method (ar,
draft, medusa, eagle, lookahead, prompt_lookup) for tau, per-step cost and the share
of each phase. The shipped models (``--shipped-prompts`` held-out prompts):
tau, tokens/s and draft passes of the draft model, Medusa and EAGLE (dynamic
depth off and on), greedy (identical to ar) and sampled (``--shipped-temperature``).
And our AR tokens/s against transformers' greedy ``generate``
on the shipped models at batch 1, same prompts, same run (aim: >= 2x).

    python bench/bench_runtime.py                 # CUDA if present, else CPU (tiny model)
    python bench/bench_runtime.py --quick

Goal on GPU: verify/AR <= 1.15 at T = 64, batch 1. JSON to
bench/results/runtime-<device>-<timestamp>.json (or --out).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

import specdec_kernels as sk
from specdec_kernels.runtime import LlamaModel, ModelConfig, PagedKVCache, generate
from specdec_kernels.runtime.eagle import EagleHead
from specdec_kernels.runtime.medusa import MedusaHeads
from specdec_kernels.runtime.step import Draft, VerifyStep, bucket_size
from specdec_kernels.runtime.templates import DraftTemplate

import common
from bench_step_inputs import measure as host_input_us

AR_TARGET = 2.0  # issue 16: our AR tokens/s over transformers' greedy generate, shipped models, batch 1

SHAPES = {
    "tiny": dict(vocab_size=4096, hidden_size=256, intermediate_size=512, num_layers=4, num_heads=4,
                 num_kv_heads=2, head_dim=64),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                     num_kv_heads=8, head_dim=64),
    "llama-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                     num_kv_heads=8, head_dim=128),
}
DEFAULTS = {
    ("cuda", False): dict(models=["llama-1b", "llama-8b"], batches=[1, 8, 64], trees=[4, 8, 64], prefix=1024,
                          warmup_ms=25, rep_ms=200),
    ("cuda", True): dict(models=["llama-1b"], batches=[1], trees=[8, 64], prefix=512, warmup_ms=5, rep_ms=50),
    ("cpu", False): dict(models=["tiny"], batches=[1, 8, 64], trees=[4, 8, 64], prefix=128, warmup_ms=10, rep_ms=200),
    ("cpu", True): dict(models=["tiny"], batches=[1], trees=[8, 64], prefix=64, warmup_ms=2, rep_ms=30),
}
TARGET_RATIO = 1.15


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", nargs="+", choices=sorted(SHAPES))
    p.add_argument("--batches", type=int, nargs="+")
    p.add_argument("--trees", type=int, nargs="+", help="T: 64 = Medusa mc_sim_7b_63, else a chain of T nodes")
    p.add_argument("--prefix", type=int, help="cached tokens per sequence before the step")
    p.add_argument("--warmup-ms", type=float)
    p.add_argument("--rep-ms", type=float)
    p.add_argument("--threads", type=int)
    p.add_argument("--ar-prompts", type=int, default=4, help="prompts of the AR-vs-transformers row (0: skip it)")
    p.add_argument("--ar-new-tokens", type=int, default=128)
    p.add_argument("--shipped-prompts", type=int, help="prompts of the shipped-models section (0: skip; default 8, "
                   "--quick 2)")
    p.add_argument("--shipped-new-tokens", type=int, help="default 128, --quick 32")
    p.add_argument("--shipped-batch", type=int, default=1)
    p.add_argument("--shipped-temperature", type=float, default=1.0, help="the sampled rows' temperature")
    p.add_argument("--out", type=Path)
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
    if args.shipped_prompts is None:
        args.shipped_prompts = 2 if args.quick else 8
    if args.shipped_new_tokens is None:
        args.shipped_new_tokens = 32 if args.quick else 128
    return common.resolve_device_defaults(p, args, DEFAULTS)


def tree_of(t: int) -> sk.Tree:
    return sk.Tree.from_choices(sk.MC_SIM_7B_63) if t == 64 else sk.Tree.chain(t - 1)


def step_runner(model, batch, tree, prefix, device):
    """One verify step (runtime.step.VerifyStep: target forward + verify_greedy
    + compact_kv, replayed as a CUDA graph on CUDA) over ``tree`` for ``batch``
    sequences holding ``prefix`` tokens; each call rolls the caches back."""
    cfg = model.config
    rows = bucket_size(tree.size)
    blocks = -(-(prefix + rows) // 16)
    cache = PagedKVCache(cfg, num_blocks=2 * batch * blocks + 1, block_size=16,
                         dtype=next(model.parameters()).dtype, device=device)
    seqs = list(range(batch))
    for b in seqs:
        cache.allocator.add(b, prefix)
    step = VerifyStep(model, cache, max_blocks=blocks, cuda_graph=device.type == "cuda")
    gen = torch.Generator().manual_seed(0)
    template = DraftTemplate(tree.parents[1:])  # as the Medusa drafter hands it over
    drafts = [Draft(tokens=torch.randint(0, cfg.vocab_size, (tree.size - 1,), generator=gen).tolist(),
                    template=template) for _ in seqs]
    roots = [1] * batch

    def run():
        step(seqs, roots, drafts)
        for b in seqs:
            cache.allocator.truncate(b, prefix)

    return run


def method_rows(name, model, cfg, batch, dtype, device):
    """One generate() run per method on random weights: tau, passes, per-step cost, phase shares."""
    draft_cfg = ModelConfig(**dict(SHAPES[name], num_layers=1))
    drafter = LlamaModel.random(draft_cfg, seed=1, std=0.02, dtype=dtype, device=device)
    heads = MedusaHeads.random(cfg.hidden_size, cfg.vocab_size, num_heads=4, seed=2, std=0.02, dtype=dtype,
                               device=device)
    gen = torch.Generator().manual_seed(0)
    # Half random, half repetitive prompts, so prompt lookup and lookahead find n-grams.
    prompts = [torch.randint(0, cfg.vocab_size, (32,), generator=gen).tolist() if b % 2 == 0
               else torch.randint(0, cfg.vocab_size, (4,), generator=gen).tolist() * 8 for b in range(batch)]
    eagle = EagleHead.from_target(model, seed=3, std=0.02)
    methods = {"ar": {}, "draft": dict(draft_model=drafter, num_draft_tokens=4), "medusa": dict(medusa_heads=heads),
               "eagle": dict(eagle_head=eagle), "lookahead": {}, "prompt_lookup": dict(num_draft_tokens=4)}
    rows = []
    for method, kwargs in methods.items():
        out = generate(model, prompts, method=method, max_new_tokens=16, **kwargs)
        st = out.stats
        total = sum(st.phase_seconds.values())
        rows.append(dict(model=name, method=method, batch=batch, tau=st.tau, target_passes=st.target_passes,
                         draft_passes=st.draft_passes, step_ms=1e3 * st.seconds / max(1, st.verify_steps),
                         tokens_per_s=st.tokens_per_s,
                         phase_share={k: v / total for k, v in st.phase_seconds.items()}))
        print(f"  generate {name} {method}: tau {st.tau:.2f}, {rows[-1]['step_ms']:.1f} ms/step", flush=True)
    return rows


SHIPPED = {  # name -> generate kwargs (models filled in by shipped_rows)
    "ar": dict(method="ar"),
    "draft (K=5)": dict(method="draft", num_draft_tokens=5),
    "medusa": dict(method="medusa"),
    "eagle": dict(method="eagle"),
    "eagle (dynamic depth)": dict(method="eagle", eagle_min_mass=0.2),
    "eagle (16 nodes, dynamic depth)": dict(method="eagle", eagle_topk=4, eagle_nodes=16, eagle_min_mass=0.2),
}


def shipped_rows(device, prompts: int, max_new: int, batch: int, temperature: float) -> list[dict]:
    """The shipped models on held-out prompts: each drafter's tau, tokens/s,
    draft passes per step, greedy (must equal ar) and sampled."""
    from specdec_kernels.demo import DEFAULT_MODELS, decode_all, held_out_prompts, load_eagle_head, load_models

    target, draft, heads = load_models(DEFAULT_MODELS, device=device)
    models = dict(draft=dict(draft_model=draft), medusa=dict(medusa_heads=heads),
                  eagle=dict(eagle_head=load_eagle_head(target)))
    texts = [p for _, p in held_out_prompts(prompts, 256)]
    rows, reference = [], None
    for temp in (0.0, temperature):
        for name, kwargs in SHIPPED.items():
            extra = models.get(kwargs["method"], {})
            tokens, stats = decode_all(target, texts, batch, max_new_tokens=max_new, temperature=temp, seed=0,
                                       **kwargs, **extra)
            if temp == 0 and name == "ar":
                reference = tokens
            row = dict(name=name, temperature=temp, batch=batch, tau=stats["tau"], tokens_per_s=stats["tokens_per_s"],
                       target_passes=stats["target_passes"], identical=tokens == reference if temp == 0 else None)
            rows.append(row)
            print(f"  shipped {name} T={temp}: tau {row['tau']:.2f}, {row['tokens_per_s']:.1f} tok/s", flush=True)
    for temp in (0.0, temperature):
        base = next(r["tokens_per_s"] for r in rows if r["temperature"] == temp and r["name"] == "ar")
        for r in rows:
            if r["temperature"] == temp:
                r["speedup"] = r["tokens_per_s"] / base
    return rows


def ar_vs_transformers(device, prompts: int, max_new: int) -> dict:
    """Our AR decoding against transformers' greedy ``generate`` on the
    shipped models at batch 1, the same prompts, in this run (bench_e2e's
    runners); the outputs must be identical."""
    try:
        from transformers import LlamaForCausalLM
    except ImportError as exc:
        return dict(skipped=f"transformers is not installed ({exc})")
    from specdec_kernels.demo import DEFAULT_MODELS, held_out_prompts, load_models
    from bench_e2e import PassCounter, run_ours, run_transformers

    hf = LlamaForCausalLM.from_pretrained(DEFAULT_MODELS / "target", dtype=torch.float32).to(device).eval()
    counter = PassCounter(hf)
    target, _, _ = load_models(DEFAULT_MODELS, device=device)
    texts = [p for _, p in held_out_prompts(prompts, 256)]
    run_transformers(hf, None, texts[:1], {}, 4, device, counter)  # warm-up
    run_ours(target, None, texts[:1], dict(method="ar"), 4, 1)
    theirs_out, theirs = run_transformers(hf, None, texts, {}, max_new, device, counter)
    ours_out, ours = run_ours(target, None, texts, dict(method="ar"), max_new, 1)
    return dict(prompts=prompts, max_new_tokens=max_new, transformers_tokens_per_s=theirs["tokens_per_s"],
                ours_tokens_per_s=ours["tokens_per_s"], ratio=ours["tokens_per_s"] / theirs["tokens_per_s"],
                identical=ours_out == theirs_out, target_ratio=AR_TARGET)


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    env = common.environment(device)
    rows, generate_rows = [], []
    for name in args.models:
        cfg = ModelConfig(**SHAPES[name])
        model = LlamaModel.random(cfg, seed=0, std=0.02, dtype=dtype, device=device)
        for batch in args.batches:
            ar_us = None
            for t in [1] + args.trees:
                fn = step_runner(model, batch, tree_of(t), args.prefix, device)
                us = common.time_fn(fn, device, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms)["median_us"]
                ar_us = us if t == 1 else ar_us
                # The host phase: building the step's inputs (what a GPU would wait on).
                host_us = host_input_us(model, batch, tree_of(t), args.prefix, "template", device, 20)
                rows.append(dict(model=name, batch=batch, tree=t, step="ar" if t == 1 else "verify", median_us=us,
                                 host_us=host_us, ratio_vs_ar=us / ar_us))
                print(f"  {name} B={batch} T={t}: {us:.0f} us ({us / ar_us:.2f}x AR), host {host_us:.0f} us",
                      flush=True)
        generate_rows += method_rows(name, model, cfg, max(args.batches), dtype, device)
    columns = [("model", "model", str), ("batch", "B", str), ("tree", "T", str), ("step", "step", str),
               ("median_us", "us", lambda x: f"{x:.0f}"), ("host_us", "host us", lambda x: f"{x:.0f}"),
               ("ratio_vs_ar", "vs AR", lambda x: f"{x:.2f}x")]
    print()
    print(common.format_table(rows, columns))
    print()
    print(common.format_table(generate_rows, [
        ("model", "model", str), ("method", "method", str), ("batch", "B", str),
        ("tau", "tau", lambda x: f"{x:.2f}"), ("target_passes", "passes", str),
        ("step_ms", "ms/step", lambda x: f"{x:.1f}"), ("tokens_per_s", "tok/s", lambda x: f"{x:.1f}"),
        ("phase_share", "phases", lambda d: ", ".join(f"{k} {100 * v:.0f}%" for k, v in d.items() if v >= 0.005))]))
    print("generate rows: random weights, so tau says little (drafts from random drafters rarely match); "
          "ms/step is the per-step cost of each method")
    if device.type == "cpu":
        print("CPU: a tiny model, not representative of a GPU")
    shipped = (shipped_rows(device, args.shipped_prompts, args.shipped_new_tokens, args.shipped_batch,
                            args.shipped_temperature) if args.shipped_prompts else [])
    if shipped:
        print()
        print(common.format_table(shipped, [
            ("name", "shipped models", str), ("temperature", "temp", lambda x: f"{x:g}"), ("batch", "B", str),
            ("tau", "tau", lambda x: f"{x:.2f}"), ("target_passes", "passes", str),
            ("tokens_per_s", "tok/s", lambda x: f"{x:.1f}"), ("speedup", "vs ar", lambda x: f"{x:.2f}x"),
            ("identical", "= ar", lambda x: "n/a" if x is None else ("yes" if x else "NO"))]))
    ar = (ar_vs_transformers(device, args.ar_prompts, args.ar_new_tokens) if args.ar_prompts
          else dict(skipped="--ar-prompts 0"))
    if "skipped" in ar:
        print(f"AR vs transformers: skipped: {ar['skipped']}")
    else:
        print(f"AR vs transformers greedy generate (shipped models, batch 1, {ar['prompts']} prompts x "
              f"{ar['max_new_tokens']} tokens): {ar['ours_tokens_per_s']:.0f} vs "
              f"{ar['transformers_tokens_per_s']:.0f} tok/s = {ar['ratio']:.2f}x (aim >= {AR_TARGET:.0f}x), "
              f"identical output: {ar['identical']}")
    at64 = [r for r in rows if r["tree"] == 64 and r["batch"] == 1]
    payload = {"benchmark": "runtime", "command": " ".join(shlex.quote(a) for a in sys.argv), "environment": env,
               "rows": rows, "generate": generate_rows, "shipped": shipped, "ar_vs_transformers": ar,
               "target": {"verify_over_ar_at_T64_B1": TARGET_RATIO,
                          "measured": {r["model"]: r["ratio_vs_ar"] for r in at64}},
               "runtime_s": time.perf_counter() - started}
    if not args.no_json:
        file_name = f"runtime-{common.device_kind(device)}-{common.timestamp()}.json"
        out_path = args.out or Path(__file__).parent / "results" / file_name
        common.write_json(out_path, payload)
        print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
Each rejection rule runs under every verification rule of ``--verify-rules``
(verify_rejection's ``rule``: token, block on chains, traversal); the "vs
token" column is a row's time over the same backend's token row. A backend
that raises NotImplementedError for a rule gets a row "n/a: not implemented"
(printed), nothing else. Drafted tokens follow the target's argmax with
probability 0.7, so paths go deep and the walk does real work.

``--quick`` keeps to the token rule and the synthetic cases (pass
``--verify-rules`` / ``--sections`` for more).

Shipped models (``--sections model``, on by default; bench/train_tiny.py's
byte-level target, draft, Medusa and EAGLE heads, demo.py's held-out prompts): each
setting runs generate() at ``--model-temperature`` (1) with the token rule
and every verify_rejection call is recorded (its logits, drafts, q). On those
recorded steps each rule then verifies the same drafts under
``--model-draws`` fresh sets of uniforms, shared by the rules: tau is the
mean accepted drafts + 1 (the bonus) per request and step, as generate()
counts it, here in expectation over the draws for fixed drafts, so the rules
compare on paired inputs (``se`` is the standard error of the difference to
token, over the (step, request) units). Beside it, the time of one recorded
step's verify call per rule and backend (mean over the first
``--model-time-steps`` steps). bench_e2e.py measures tau per rule end to end
(each rule's own trajectories).

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
from specdec_kernels.reference.sampling import RULES

import common

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
VERIFY_RULES = RULES  # verify_rejection's rule
SECTIONS = ("kernels", "model")
# The shipped-model settings: generate() kwargs (models filled in), and whether the drafts are chains.
MODEL_SETTINGS = {
    "draft constant": (dict(method="draft", num_draft_tokens=5, schedule="constant"), True),
    "draft BPE vocab": (dict(method="draft", num_draft_tokens=4, schedule="constant", other_vocab=True), True),
    "prompt lookup": (dict(method="prompt_lookup", num_draft_tokens=10, max_ngram=3), True),
    "medusa": (dict(method="medusa"), False),
    "eagle": (dict(method="eagle"), False),  # EAGLE-2's top-k tree (point-mass)
    "eagle sampled": (dict(method="eagle", eagle_sample=True), False),  # sampled children, with q
    "lookahead": (dict(method="lookahead"), False),
}
OURS = ("cuda", "triton", "cpu", "reference")
FLASHINFER = "flashinfer"
TARGET_PEAK_FRAC, TARGET_VS_FLASHINFER = 0.70, 2.0
SHAPES = {"chain4": "chain of 4", "chain8": "chain of 8", "tree64": "medusa mc_sim_7b_63"}

FULL = dict(verify_rules=list(VERIFY_RULES), sections=list(SECTIONS))
QUICK = dict(verify_rules=["token"], sections=["kernels"])  # what gpu_check.sh and CI's dry run time: unchanged
DEFAULTS = {
    ("cuda", False): dict(batches=[1, 8, 64], vocabs=[32000, 128256], shapes=["chain4", "chain8", "tree64"],
                          dtypes=["bf16", "fp32"], peak_mib=1024, warmup_ms=25, rep_ms=100, **FULL),
    ("cuda", True): dict(batches=[1, 64], vocabs=[128256], shapes=["chain8", "tree64"], dtypes=["bf16"],
                         peak_mib=256, warmup_ms=5, rep_ms=20, **QUICK),
    ("cpu", False): dict(batches=[1, 8], vocabs=[4096, 32000], shapes=["chain4", "tree64"], dtypes=["bf16", "fp32"],
                         peak_mib=128, warmup_ms=10, rep_ms=150, **FULL),
    ("cpu", True): dict(batches=[1, 4], vocabs=[2048], shapes=["chain4", "tree64"], dtypes=["fp32"],
                        peak_mib=32, warmup_ms=2, rep_ms=20, **QUICK),
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
    p.add_argument("--verify-rules", nargs="+", choices=VERIFY_RULES,
                   help="verify_rejection rules to run each rejection case under (block: chains only); default "
                        "all three, --quick: token")
    p.add_argument("--sections", nargs="+", choices=SECTIONS,
                   help="kernels: synthetic cases; model: tau and time per rule on the shipped models; default "
                        "both, --quick: kernels")
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
    p.add_argument("--models", type=Path, help="folder written by bench/train_tiny.py (default: the shipped one)")
    p.add_argument("--model-settings", nargs="+", choices=list(MODEL_SETTINGS), default=list(MODEL_SETTINGS))
    p.add_argument("--model-prompts", type=int, default=8)
    p.add_argument("--model-max-new-tokens", type=int, default=128)
    p.add_argument("--model-batch", type=int, default=8)
    p.add_argument("--model-temperature", type=float, default=1.0)
    p.add_argument("--model-draws", type=int, default=32, help="uniform sets per recorded step (shared by rules)")
    p.add_argument("--model-time-steps", type=int, default=8, help="recorded steps timed per rule and backend")
    p.add_argument("--out", type=Path)
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
    common.resolve_device_defaults(p, args, DEFAULTS)
    if args.model_temperature <= 0:
        p.error("--model-temperature must be > 0 (greedy verification has no rule)")
    return args


def tree_of(shape: str) -> sk.Tree:
    return sk.Tree.from_choices(sk.MC_SIM_7B_63) if shape == "tree64" else sk.Tree.chain(int(shape[5:]))


class Case:
    """B copies of one tree, logits [B*T, V], draft probs, tokens that follow
    the target's argmax with probability 0.7."""

    def __init__(self, shape, batch, vocab, dtype, device, seed):
        tree = tree_of(shape)
        self.shape, self.batch, self.vocab, self.dtype, self.tree_size = shape, batch, vocab, dtype, tree.size
        self.dtype_name = next(k for k, v in DTYPES.items() if v == dtype)
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

    def run(self, rule, backend, temperature, verify_rule="token"):
        common_args = (self.draft_tokens, self.parents, self.qo_indptr, self.logits)
        kw = dict(max_depth=self.max_depth, validate=False, backend=backend)
        if rule == "greedy":
            return sk.verify_greedy(*common_args, **kw)
        q = self.draft_probs if rule == "rejection-q" else None
        return sk.verify_rejection(*common_args, q, temperature=temperature, uniforms=self.uniforms,
                                   rule=verify_rule, **kw)


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


NOT_IMPLEMENTED = "n/a: not implemented"


def check(case, rule, backend, temperature, verify_rule="token") -> str | None:
    """None if ``backend`` agrees with the reference on this case, else why
    not (NOT_IMPLEMENTED where the backend raises NotImplementedError)."""
    try:
        got = case.run(rule, backend, temperature, verify_rule)
    except NotImplementedError:
        return NOT_IMPLEMENTED
    if case.rows() > ARGS.reference_max_rows:
        return None
    expected = case.run(rule, "reference", temperature, verify_rule)
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


def run_kernel_case(case, rule, verify_rule, wanted, sampler, peak, device, args, failures, token_times) -> list:
    """Rows of one (case, rule, verify rule): every backend, FlashInfer beside
    the token rule's rejection-q. ``token_times`` (backend -> us) is filled by
    the token rule's call and read by the others' (their "vs token")."""
    base = dict(rule=rule, verify_rule=verify_rule, shape=case.shape, batch=case.batch, vocab=case.vocab,
                dtype=case.dtype_name, bytes=case.bytes_read(rule))
    label = f"{rule}{'' if verify_rule is None else ' rule=' + verify_rule}"
    times, case_rows = {}, []
    for backend in [b for b in wanted if b != FLASHINFER]:
        if backend == "reference" and case.rows() > args.reference_max_rows:
            continue
        row = dict(base, backend=backend)
        vr = verify_rule or "token"
        problem = check(case, rule, backend, args.temperature, vr) if backend != "reference" else None
        if problem == NOT_IMPLEMENTED:
            row["note"] = problem
            print(f"  {backend} {label} {case.shape} B={case.batch} V={case.vocab}: {problem}", flush=True)
        elif problem:
            row["error"] = problem
            failures.append(f"{backend} {label} {case.shape} B={case.batch} V={case.vocab}: {problem}")
        else:
            fn = lambda: case.run(rule, backend, args.temperature, vr)  # noqa: E731
            times[backend] = time_row(row, fn, device, args, peak)
        case_rows.append(row)
    if sampler is not None and rule == "rejection-q" and verify_rule == "token":
        row = dict(base, backend=FLASHINFER)
        times[FLASHINFER] = time_row(row, flashinfer_runner(sampler, case, args.temperature), device, args, peak)
        case_rows.append(row)
    if verify_rule == "token":
        token_times.update(times)
    for row in case_rows:
        for ref_name in ("reference", FLASHINFER):
            if ref_name in times and "median_us" in row and row["backend"] != ref_name:
                row[f"speedup_vs_{ref_name}"] = times[ref_name] / row["median_us"]
        if verify_rule not in (None, "token") and "median_us" in row and row["backend"] in token_times:
            row["time_vs_token"] = row["median_us"] / token_times[row["backend"]]
    print(f"  {label:26} {case.shape:7} B={case.batch:<3} V={case.vocab:<6} {case.dtype_name}: "
          + ", ".join(f"{k} {v:.1f} us" for k, v in times.items()), flush=True)
    return case_rows


# ---------------------------------------------------------------- the shipped models


class Recorded:
    """One verify_rejection call of the runtime, kept for replay under other rules."""

    def __init__(self, args, kwargs):
        self.draft_tokens, self.parents, self.qo_indptr, self.logits = (t.clone() for t in args[:4])
        q = kwargs.get("draft_probs")
        self.draft_probs = None if q is None else q.clone()
        self.params = {k: kwargs[k] for k in ("temperature", "top_k", "top_p") if k in kwargs}
        self.max_depth = kwargs["max_depth"]
        self.batch = self.qo_indptr.numel() - 1

    def run(self, rule, uniforms, backend="auto"):
        return sk.verify_rejection(self.draft_tokens, self.parents, self.qo_indptr, self.logits, self.draft_probs,
                                   uniforms=uniforms, rule=rule, max_depth=self.max_depth, validate=False,
                                   backend=backend, **self.params)


def record_steps(target, prompts, setting, extra, args, device) -> list:
    """generate() with the token rule; every verify_rejection call it makes, recorded (eager: no CUDA graph)."""
    from specdec_kernels.demo import decode_all
    from specdec_kernels.runtime import step as step_module

    recorded, real = [], step_module.verify_rejection

    def spy(*a, **kw):
        out = real(*a, **kw)
        recorded.append(Recorded(a, kw))
        return out

    step_module.verify_rejection = spy
    try:
        decode_all(target, prompts, args.model_batch, max_new_tokens=args.model_max_new_tokens,
                   temperature=args.model_temperature, seed=args.seed, verify_rule="token", cuda_graph=False,
                   **setting, **extra)
    finally:
        step_module.verify_rejection = real
    return recorded


def run_model_section(args, device, backends_wanted) -> dict:
    """tau per rule on recorded steps of the shipped models (paired draws), and each rule's verify time."""
    from specdec_kernels.demo import DEFAULT_MODELS, held_out_prompts, load_bpe_draft, load_eagle_head, load_models

    folder = args.models or DEFAULT_MODELS
    torch.set_grad_enabled(False)
    target, draft, heads = load_models(folder, device=device)
    bpe_model, bpe_tok = load_bpe_draft(folder, device=device)
    prompts = [p for _, p in held_out_prompts(args.model_prompts)]
    rows = []
    for name in args.model_settings:
        setting, chain = MODEL_SETTINGS[name]
        setting = dict(setting)
        extra = dict(draft_model=draft) if setting["method"] == "draft" else {}
        if setting["method"] == "medusa":
            extra = dict(medusa_heads=heads)
        if setting["method"] == "eagle":
            extra = dict(eagle_head=load_eagle_head(target, folder))
        if setting.pop("other_vocab", False):
            extra = dict(draft_model=bpe_model, draft_tokenizer=bpe_tok, target_tokenizer="bytes")
        began = time.perf_counter()
        steps = record_steps(target, prompts, setting, extra, args, device)
        rules = [r for r in VERIFY_RULES if chain or r != "block"]
        gen = torch.Generator().manual_seed(args.seed)
        accepted = {r: [] for r in rules}  # per rule: float [units] mean accepted + 1 over the draws
        tau_backend = {r: "auto" for r in rules}  # the reference where this device's kernel lacks the rule
        for st in steps:
            n = st.draft_tokens.numel()
            totals = {r: torch.zeros(st.batch, dtype=torch.float64) for r in rules}
            for _ in range(args.model_draws):
                uniforms = torch.rand(n, generator=gen).to(device)
                for r in rules:
                    try:
                        out = st.run(r, uniforms, tau_backend[r])
                    except NotImplementedError:
                        tau_backend[r] = "reference"
                        out = st.run(r, uniforms, "reference")
                    totals[r] += out.num_accepted.cpu().double() + 1
            for r in rules:
                accepted[r].append(totals[r] / args.model_draws)
        units = {r: torch.cat(v) for r, v in accepted.items()}
        token = units["token"]
        nodes = sum(st.draft_tokens.numel() for st in steps) / max(1, sum(st.batch for st in steps))
        print(f"  {name}: {len(steps)} recorded steps, {token.numel()} (step, request) units, {nodes:.1f} rows "
              f"per request, x {args.model_draws} draws ({time.perf_counter() - began:.1f} s)", flush=True)
        timed = steps[:args.model_time_steps]
        for r in rules:
            diff = units[r] - token
            row = dict(setting=name, rule=r, chain=chain, tau_backend=tau_backend[r], steps=len(steps),
                       units=token.numel(),
                       draws=args.model_draws, rows_per_request=nodes, tau=float(units[r].mean()),
                       tau_vs_token=float(units[r].mean() / token.mean()),
                       diff_se=float(diff.std() / diff.numel() ** 0.5) if diff.numel() > 1 and r != "token" else None)
            uniforms = [torch.rand(st.draft_tokens.numel(), generator=gen).to(device) for st in timed]
            for backend in backends_wanted:
                try:
                    for st, u in zip(timed, uniforms):
                        st.run(r, u, backend)
                except NotImplementedError:
                    row[f"us_{backend}"] = NOT_IMPLEMENTED
                    print(f"    {backend} rule={r}: {NOT_IMPLEMENTED}", flush=True)
                    continue

                def fn(backend=backend):
                    for st, u in zip(timed, uniforms):
                        st.run(r, u, backend)

                t = common.time_fn(fn, device, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms, min_reps=3)
                row[f"us_{backend}"] = t["median_us"] / len(timed)
            rows.append(row)
            print(f"    rule={r:9} tau {row['tau']:.3f} ({row['tau_vs_token']:.3f}x token)  "
                  + "  ".join(f"{b} {row[f'us_{b}']:.1f} us" if isinstance(row[f'us_{b}'], float)
                              else f"{b} {row[f'us_{b}']}" for b in backends_wanted), flush=True)
    for row in rows:
        base = next(r for r in rows if r["setting"] == row["setting"] and r["rule"] == "token")
        for b in backends_wanted:
            if isinstance(row.get(f"us_{b}"), float) and isinstance(base.get(f"us_{b}"), float):
                row[f"time_vs_token_{b}"] = row[f"us_{b}"] / base[f"us_{b}"]

    def us(key):
        return lambda x: x if isinstance(x, str) else f"{x:.1f}"

    columns = [("setting", "setting", str), ("rule", "rule", str),
               ("tau", "tau", lambda x: f"{x:.3f}"), ("tau_vs_token", "vs token", lambda x: f"{x:.3f}x"),
               ("diff_se", "se", lambda x: f"{x:.4f}")]
    for b in backends_wanted:
        columns += [(f"us_{b}", f"{b} us/step", us(b)), (f"time_vs_token_{b}", f"{b} vs token",
                                                           lambda x: f"{x:.2f}x")]
    print(f"\nshipped models ({folder.name}), temperature {args.model_temperature}, {args.model_prompts} prompts x "
          f"{args.model_max_new_tokens} tokens, batch {args.model_batch}, drafts recorded under the token rule, "
          f"{args.model_draws} shared draws per step; tau = accepted + 1 per request and step")
    print(common.format_table(rows, columns))
    return {"models": str(folder), "temperature": args.model_temperature, "prompts": args.model_prompts,
            "max_new_tokens": args.model_max_new_tokens, "batch": args.model_batch, "draws": args.model_draws,
            "time_steps": args.model_time_steps, "rows": rows}


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
    peak = None
    if "kernels" in args.sections:
        print(f"device: {env['device_name']} ({device}); measuring copy bandwidth ({args.peak_mib} MiB)", flush=True)
        peak = common.measure_peak_bandwidth(device, args.peak_mib, warmup_ms=max(args.warmup_ms, 20.0),
                                             rep_ms=max(args.rep_ms, 100.0))
    rows, failures = [], []
    for dtype_name in args.dtypes if "kernels" in args.sections else ():
        for vocab in args.vocabs:
            for shape in args.shapes:
                for batch in args.batches:
                    case = Case(shape, batch, vocab, DTYPES[dtype_name], device, args.seed)
                    for rule in args.rules:
                        if rule == "rejection-q" and shape == "tree64":
                            continue  # a 64-node static tree has no sampled q: point-mass rule only
                        verify_rules = [None] if rule == "greedy" else [
                            v for v in args.verify_rules if not (v == "block" and shape == "tree64")]  # block: chains
                        token_times = {}
                        for verify_rule in verify_rules:
                            rows += run_kernel_case(case, rule, verify_rule, wanted, sampler, peak, device, args,
                                                    failures, token_times)
    columns = [("rule", "rule", str), ("verify_rule", "v-rule", str), ("shape", "tree", str),
               ("dtype", "dtype", str), ("batch", "B", str), ("vocab", "V", str), ("backend", "backend", str),
               ("median_us", "us", lambda x: f"{x:.1f}"), ("gbps", "GB/s", lambda x: f"{x:.1f}"),
               ("peak_frac", "% peak", lambda x: f"{100 * x:.1f}"),
               ("speedup_vs_reference", "vs ref", lambda x: f"{x:.1f}x"),
               ("speedup_vs_flashinfer", "vs FI", lambda x: f"{x:.2f}x"),
               ("time_vs_token", "vs token", lambda x: f"{x:.2f}x"), ("note", "note", str), ("error", "error", str)]
    if rows:
        print()
        print(common.format_table(rows, columns))
        print(f"\npeak: copy {peak['gbps']:.1f} GB/s (read+write, {args.peak_mib} MiB); bytes = one read of the "
              f"logits (+ draft probs for rejection-q); FlashInfer: {fi_reason or 'available'}; vs token: time over "
              "the same backend's rule=token row")
        if device.type == "cpu":
            print("CPU: small sizes, not representative of a GPU")
    model = run_model_section(args, device, [b for b in wanted if b != FLASHINFER]) if "model" in args.sections \
        else None
    mine = [r for r in rows if r["backend"] in ("cuda", "triton") and "peak_frac" in r
            and r["verify_rule"] in (None, "token")]  # the targets are the token rule's
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
               "model": model, "failures": failures, "runtime_s": time.perf_counter() - started}
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

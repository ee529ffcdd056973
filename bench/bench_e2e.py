"""End to end against Hugging Face transformers, side by side in one run.

The shipped byte-level checkpoints (or ``--models``) are loaded into
``transformers.LlamaForCausalLM`` and into this library's runtime. Both
decode the same held-out standard-library prompts greedily:

* transformers: plain greedy ``generate``; assisted generation with the same
  draft (``num_assistant_tokens_schedule`` constant and heuristic, and
  ``assistant_confidence_threshold`` for the dynamic schedule; both reset
  before each prompt, as ours are); prompt-lookup
  decoding (``prompt_lookup_num_tokens``, ``max_matching_ngram_size``); and
  universal assisted generation with the draft of another vocabulary
  (``draft_bpe/``: ``assistant_model``, ``tokenizer``, ``assistant_tokenizer``).
  Batch 1 (its assisted generation supports no more).
* ours: ``ar`` and the same settings, at batch 1 and at batch 8.

Reported per row: tokens/s, tau (tokens per target forward after the prompt;
for transformers counted with a forward hook on the target), and whether the
output equals transformers' greedy output token for token (it must, in fp32).

Then, ours alone (transformers has no such rules), the sampled section: tau
per verification rule (generate's ``verify_rule``: ``token``; ``block`` on
the chain methods; ``traversal``) at ``--rule-temperature`` (1) for the draft
model (K = 5, its q), the BPE draft (point-mass chains), prompt lookup,
Medusa (the shipped heads, mc_sim_7b_63 cut to them) and lookahead, batch
``--rule-batch``, over ``--rule-seeds`` seeds (the same seeds for every rule,
so the rules see the same first drafts and draws). tau is the same quantity
as above: tokens emitted per sequence per verify step (accepted drafts plus
the bonus), over all steps of all seeds.

    python bench/bench_e2e.py                 # CUDA if present, else CPU
    python bench/bench_e2e.py --prompts 2 --max-new-tokens 32   # quick
    python bench/bench_e2e.py --sections rules  # only the sampled tau per rule

JSON to bench/results/e2e-<device>-<timestamp>.json (e2e-rules-... with
``--sections rules``; or --out).
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from specdec_kernels.demo import DEFAULT_MODELS, decode_all, held_out_prompts, load_bpe_draft, load_models

import common

K, MAX_NGRAM, CONFIDENCE = 5, 3, 0.4
K_BPE = 4
SETTINGS = {  # name: (ours: generate kwargs, transformers: generate kwargs or None for plain greedy)
    "greedy": (dict(method="ar"), {}),
    "draft constant": (dict(method="draft", num_draft_tokens=K, schedule="constant"),
                       dict(assistant=dict(num_assistant_tokens=K, num_assistant_tokens_schedule="constant",
                                           assistant_confidence_threshold=0.0))),
    "draft heuristic": (dict(method="draft", num_draft_tokens=K, schedule="heuristic"),
                        dict(assistant=dict(num_assistant_tokens=K, num_assistant_tokens_schedule="heuristic",
                                            assistant_confidence_threshold=0.0))),
    "draft dynamic": (dict(method="draft", num_draft_tokens=K, schedule="dynamic", confidence_threshold=CONFIDENCE),
                      dict(assistant=dict(num_assistant_tokens=K, num_assistant_tokens_schedule="constant",
                                          assistant_confidence_threshold=CONFIDENCE))),
    "prompt lookup": (dict(method="prompt_lookup", num_draft_tokens=10, max_ngram=MAX_NGRAM),
                      dict(prompt_lookup_num_tokens=10, max_matching_ngram_size=MAX_NGRAM)),
    # The draft of another vocabulary (a byte-level BPE): K of its tokens, about 2.6 bytes each.
    "draft BPE vocab": (dict(method="draft", num_draft_tokens=K_BPE, schedule="constant", other_vocab=True),
                        dict(assistant=dict(num_assistant_tokens=K_BPE, num_assistant_tokens_schedule="constant",
                                            assistant_confidence_threshold=0.0), universal=True)),
}
# The sampled section: name -> (generate kwargs, the rules it runs). block takes chains only.
CHAIN_RULES, TREE_RULES = ("token", "block", "traversal"), ("token", "traversal")
RULE_SETTINGS = {
    "draft constant": (dict(method="draft", num_draft_tokens=K, schedule="constant"), CHAIN_RULES),
    "draft BPE vocab": (dict(method="draft", num_draft_tokens=K_BPE, schedule="constant", other_vocab=True),
                        CHAIN_RULES),
    "prompt lookup": (dict(method="prompt_lookup", num_draft_tokens=10, max_ngram=MAX_NGRAM), CHAIN_RULES),
    "medusa": (dict(method="medusa"), TREE_RULES),
    "lookahead": (dict(method="lookahead"), TREE_RULES),
}
SECTIONS = ("hf", "rules")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--prompt-bytes", type=int, default=256)
    p.add_argument("--threads", type=int)
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   help="hf: greedy against transformers; rules: sampled tau per verification rule (ours)")
    p.add_argument("--rule-settings", nargs="+", choices=list(RULE_SETTINGS), default=list(RULE_SETTINGS))
    p.add_argument("--rule-temperature", type=float, default=1.0)
    p.add_argument("--rule-seeds", type=int, default=3)
    p.add_argument("--rule-batch", type=int, default=8)
    p.add_argument("--out", type=Path)
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
    if args.rule_temperature <= 0:
        p.error("--rule-temperature must be > 0 (greedy steps ignore the rule)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


class PassCounter:
    """Counts a module's forward calls (transformers' target passes)."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(lambda *_: self._hit())

    def _hit(self):
        self.calls += 1


def run_transformers(hf_target, hf_draft, prompts, setting, max_new, device, counter, universal=None):
    """``universal``: (BPE draft, target tokenizer, draft tokenizer) for the
    settings that draft across vocabularies."""
    extra = dict(setting)
    assistant = extra.pop("assistant", None)
    if extra.pop("universal", False):
        hf_draft, target_tok, draft_tok = universal
        extra.update(tokenizer=target_tok, assistant_tokenizer=draft_tok)
    if assistant is not None:
        extra["assistant_model"] = hf_draft
    outputs, passes, seconds = [], 0, 0.0
    for prompt in prompts:
        # transformers reads these from the assistant's config and carries the
        # heuristic K and the confidence threshold it adapts over to the next
        # call; reset them per prompt, as each of our generate() calls starts afresh.
        for key, value in (assistant or {}).items():
            setattr(hf_draft.generation_config, key, value)
        ids = torch.tensor([prompt], device=device)
        counter.calls = 0
        began = time.perf_counter()
        out = hf_target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                 min_new_tokens=max_new, do_sample=False, pad_token_id=0, **extra)
        common.sync(torch.device(device))
        seconds += time.perf_counter() - began
        outputs.append(out[0, len(prompt):].tolist())
        passes += counter.calls - 1  # the prefill pass emits the first token
    new = sum(len(o) for o in outputs)
    return outputs, dict(tokens_per_s=new / seconds, tau=(new - len(prompts)) / max(1, passes), seconds=seconds)


def run_ours(target, draft, prompts, setting, max_new, batch, bpe=None, heads=None, **sampling):
    """``bpe``: (draft model, tokenizers.Tokenizer) of the draft of another
    vocabulary; ``heads``: the Medusa heads; ``sampling``: more generate
    keyword arguments (temperature, seed, verify_rule)."""
    setting = dict(setting)
    extra = dict(draft_model=draft) if setting["method"] == "draft" else {}
    if setting["method"] == "medusa":
        extra = dict(medusa_heads=heads)
    if setting.pop("other_vocab", False):
        extra = dict(draft_model=bpe[0], draft_tokenizer=bpe[1], target_tokenizer="bytes")
    outputs, stats = decode_all(target, prompts, batch, max_new_tokens=max_new, **setting, **extra, **sampling)
    return outputs, dict(tokens_per_s=stats["tokens_per_s"], tau=stats["tau"], seconds=stats["seconds"],
                         steps=stats.get("steps"), emitted=stats.get("emitted"))


def run_rules(args, target, draft, heads, bpe, prompts) -> list[dict]:
    """The sampled section: one row per (setting, rule), tau over every step of
    every seed, tokens/s over all of them."""
    rows = []
    for name in args.rule_settings:
        setting, rules = RULE_SETTINGS[name]
        for rule in rules:
            steps = emitted = tokens = 0
            seconds, per_seed = 0.0, []
            for seed in range(args.rule_seeds):
                out, stats = run_ours(target, draft, prompts, setting, args.max_new_tokens, args.rule_batch, bpe,
                                      heads, temperature=args.rule_temperature, seed=seed, verify_rule=rule)
                steps += stats["steps"]
                emitted += stats["emitted"]
                tokens += sum(len(o) for o in out)
                seconds += stats["seconds"]
                per_seed.append(stats["tau"])
            spread = statistics.stdev(per_seed) / len(per_seed) ** 0.5 if len(per_seed) > 1 else None
            row = dict(setting=name, rule=rule, batch=args.rule_batch, temperature=args.rule_temperature,
                       seeds=args.rule_seeds, steps=steps, tau=emitted / steps, tau_per_seed=per_seed,
                       tau_se=spread, tokens_per_s=tokens / seconds, seconds=seconds)
            rows.append(row)
            print(f"  specdec {name} rule={rule}: tau {row['tau']:.3f} over {steps} steps, "
                  f"{row['tokens_per_s']:.1f} tok/s", flush=True)
        token_tau = next(r["tau"] for r in rows if r["setting"] == name and r["rule"] == "token")
        for r in rows:
            if r["setting"] == name:
                r["tau_vs_token"] = r["tau"] / token_tau
    return rows


def rules_table(rows) -> str:
    """Settings down, rules across: tau ± the standard error of the per-seed
    taus (and its ratio to token's)."""
    table = []
    for name in dict.fromkeys(r["setting"] for r in rows):
        line = dict(setting=name)
        for r in rows:
            if r["setting"] == name:
                line[r["rule"]] = (r["tau"], None if r["rule"] == "token" else r["tau_vs_token"], r["tau_se"])
        table.append(line)

    def cell(v):
        se = "" if v[2] is None else f" ±{v[2]:.3f}"
        return f"{v[0]:.3f}{se}" + ("" if v[1] is None else f" ({v[1]:.3f}x)")

    columns = [("setting", "setting", str)] + [(rule, f"tau {rule}", cell) for rule in CHAIN_RULES]
    return common.format_table(table, columns)


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    target, draft, heads = load_models(args.models, device=device)
    bpe = load_bpe_draft(args.models, device=device)
    prompts = [p for _, p in held_out_prompts(args.prompts, args.prompt_bytes)]
    if "hf" in args.sections:
        from transformers import AutoTokenizer, LlamaForCausalLM

        hf_target = LlamaForCausalLM.from_pretrained(args.models / "target", dtype=torch.float32).to(device).eval()
        hf_draft = LlamaForCausalLM.from_pretrained(args.models / "draft", dtype=torch.float32).to(device).eval()
        counter = PassCounter(hf_target)
        universal = (LlamaForCausalLM.from_pretrained(args.models / "draft_bpe", dtype=torch.float32)
                     .to(device).eval(),
                     AutoTokenizer.from_pretrained(args.models / "target"),
                     AutoTokenizer.from_pretrained(args.models / "draft_bpe"))
        # Warm transformers up (allocators, first-call dispatch) outside the timings.
        run_transformers(hf_target, hf_draft, prompts[:1], {}, 4, device, counter)
    run_ours(target, draft, prompts[:1], dict(method="ar"), 4, 1)  # and ours
    rows, reference = [], None
    for name, (ours, theirs) in SETTINGS.items() if "hf" in args.sections else ():
        out, stats = run_transformers(hf_target, hf_draft, prompts, theirs, args.max_new_tokens, device, counter,
                                      universal)
        reference = out if reference is None else reference
        rows.append(dict(setting=name, impl="transformers", batch=1, identical=out == reference, **stats))
        print(f"  transformers {name}: {stats['tokens_per_s']:.1f} tok/s, tau {stats['tau']:.2f}", flush=True)
        for batch in (1, 8):
            out, stats = run_ours(target, draft, prompts, ours, args.max_new_tokens, batch, bpe)
            rows.append(dict(setting=name, impl="specdec", batch=batch, identical=out == reference, **stats))
            print(f"  specdec {name} B={batch}: {stats['tokens_per_s']:.1f} tok/s, tau {stats['tau']:.2f}",
                  flush=True)
    rule_rows = run_rules(args, target, draft, heads, bpe, prompts) if "rules" in args.sections else []
    if rows:
        base = rows[0]["tokens_per_s"]
        for r in rows:
            r["speedup_vs_transformers_greedy"] = r["tokens_per_s"] / base
        columns = [("setting", "setting", str), ("impl", "impl", str), ("batch", "B", str),
                   ("tokens_per_s", "tok/s", lambda x: f"{x:.1f}"), ("tau", "tau", lambda x: f"{x:.2f}"),
                   ("speedup_vs_transformers_greedy", "vs HF greedy", lambda x: f"{x:.2f}x"),
                   ("identical", "= HF greedy", lambda x: "yes" if x else "NO")]
        print()
        print(common.format_table(rows, columns))
    if rule_rows:
        print(f"\nsampled, temperature {args.rule_temperature}, batch {args.rule_batch}, {args.rule_seeds} seeds x "
              f"{args.prompts} prompts x {args.max_new_tokens} tokens: tau per verification rule ± standard error over the "
              "seeds (ratio to token)")
        print(rules_table(rule_rows))
    env = common.environment(device)
    payload = {"benchmark": "e2e", "command": " ".join(shlex.quote(a) for a in sys.argv), "environment": env,
               "models": str(args.models), "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
               "prompt_bytes": args.prompt_bytes, "sections": args.sections, "rows": rows,
               "verify_rules": {"temperature": args.rule_temperature, "batch": args.rule_batch,
                                "seeds": args.rule_seeds, "rows": rule_rows},
               "runtime_s": time.perf_counter() - started}
    if not args.no_json:
        kind = "e2e-rules" if args.sections == ["rules"] else "e2e"
        file_name = f"{kind}-{common.device_kind(device)}-{common.timestamp()}.json"
        out_path = args.out or Path(__file__).parent / "results" / file_name
        common.write_json(out_path, payload)
        print(f"wrote {out_path}")
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

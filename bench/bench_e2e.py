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

    python bench/bench_e2e.py                 # CUDA if present, else CPU
    python bench/bench_e2e.py --prompts 2 --max-new-tokens 32   # quick

JSON to bench/results/e2e-<device>-<timestamp>.json (or --out).
"""
from __future__ import annotations

import argparse
import shlex
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--prompt-bytes", type=int, default=256)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path)
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
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


def run_ours(target, draft, prompts, setting, max_new, batch, bpe=None):
    """``bpe``: (draft model, tokenizers.Tokenizer) of the draft of another vocabulary."""
    setting = dict(setting)
    extra = dict(draft_model=draft) if setting["method"] == "draft" else {}
    if setting.pop("other_vocab", False):
        extra = dict(draft_model=bpe[0], draft_tokenizer=bpe[1], target_tokenizer="bytes")
    outputs, stats = decode_all(target, prompts, batch, max_new_tokens=max_new, **setting, **extra)
    return outputs, dict(tokens_per_s=stats["tokens_per_s"], tau=stats["tau"], seconds=stats["seconds"])


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import LlamaForCausalLM

    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    hf_target = LlamaForCausalLM.from_pretrained(args.models / "target", dtype=torch.float32).to(device).eval()
    hf_draft = LlamaForCausalLM.from_pretrained(args.models / "draft", dtype=torch.float32).to(device).eval()
    counter = PassCounter(hf_target)
    target, draft, _ = load_models(args.models, device=device)
    from transformers import AutoTokenizer

    bpe = load_bpe_draft(args.models, device=device)
    universal = (LlamaForCausalLM.from_pretrained(args.models / "draft_bpe", dtype=torch.float32).to(device).eval(),
                 AutoTokenizer.from_pretrained(args.models / "target"),
                 AutoTokenizer.from_pretrained(args.models / "draft_bpe"))
    prompts = [p for _, p in held_out_prompts(args.prompts, args.prompt_bytes)]
    # Warm both up (allocators, first-call dispatch) outside the timings.
    run_transformers(hf_target, hf_draft, prompts[:1], {}, 4, device, counter)
    run_ours(target, draft, prompts[:1], dict(method="ar"), 4, 1)
    rows, reference = [], None
    for name, (ours, theirs) in SETTINGS.items():
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
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["speedup_vs_transformers_greedy"] = r["tokens_per_s"] / base
    columns = [("setting", "setting", str), ("impl", "impl", str), ("batch", "B", str),
               ("tokens_per_s", "tok/s", lambda x: f"{x:.1f}"), ("tau", "tau", lambda x: f"{x:.2f}"),
               ("speedup_vs_transformers_greedy", "vs HF greedy", lambda x: f"{x:.2f}x"),
               ("identical", "= HF greedy", lambda x: "yes" if x else "NO")]
    print()
    print(common.format_table(rows, columns))
    env = common.environment(device)
    payload = {"benchmark": "e2e", "command": " ".join(shlex.quote(a) for a in sys.argv), "environment": env,
               "models": str(args.models), "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
               "prompt_bytes": args.prompt_bytes, "rows": rows, "runtime_s": time.perf_counter() - started}
    if not args.no_json:
        file_name = f"e2e-{common.device_kind(device)}-{common.timestamp()}.json"
        out_path = args.out or Path(__file__).parent / "results" / file_name
        common.write_json(out_path, payload)
        print(f"wrote {out_path}")
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m specdec_kernels demo``: the shipped byte-level models (a target,
a draft, Medusa heads and an EAGLE head trained on the Python standard library
by ``bench/train_tiny.py``, and a draft of another vocabulary, a byte-level BPE)
decode held-out standard-library files with every
method of the runtime; a table compares them with plain autoregressive
decoding.
"""
from __future__ import annotations

import argparse
import sysconfig
import time
from pathlib import Path

import torch

DEFAULT_MODELS = Path(__file__).resolve().parent / "data" / "tiny_stdlib"

METHODS = {  # name: generate() keyword arguments (models are filled in later)
    "ar": dict(method="ar"),
    "draft (constant)": dict(method="draft", num_draft_tokens=5, schedule="constant"),
    "draft (heuristic)": dict(method="draft", num_draft_tokens=5, schedule="heuristic"),
    "draft (dynamic)": dict(method="draft", num_draft_tokens=8, schedule="dynamic", confidence_threshold=0.4),
    # The draft of another vocabulary (a byte-level BPE): proposals translated through text.
    "draft (BPE vocab)": dict(method="draft", num_draft_tokens=4, schedule="constant", other_vocab=True),
    "medusa": dict(method="medusa"),
    "eagle": dict(method="eagle"),  # EAGLE-2's defaults: top-k 10, depth 6, 60 nodes
    # Dynamic Depth Decoding: stop growing once the frontier's path probability mass falls below 0.2.
    "eagle (dynamic depth)": dict(method="eagle", eagle_min_mass=0.2),
    # What suits the tiny models on a CPU, where a verify step costs about its row count in decode steps.
    "eagle (16 nodes)": dict(method="eagle", eagle_topk=4, eagle_nodes=16, eagle_min_mass=0.2),
    "lookahead": dict(method="lookahead"),
    "prompt_lookup": dict(method="prompt_lookup", num_draft_tokens=10, max_ngram=3),
}


def stdlib_files() -> tuple[list[Path], list[Path]]:
    """(train, held-out) ``*.py`` files of this interpreter's standard library,
    sorted; every 20th is held out. The training script and the demo share it."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    return ([p for i, p in enumerate(files) if i % 20 != 0], [p for i, p in enumerate(files) if i % 20 == 0])


def held_out_prompts(count: int, length: int = 256) -> list[tuple[str, list[int]]]:
    """``count`` prompts of ``length`` bytes, each from the middle of a
    different held-out file (deterministic), as (file name, byte ids)."""
    prompts = []
    for path in stdlib_files()[1]:
        data = path.read_bytes()
        if len(data) < 4 * length:
            continue
        start = data.rfind(b"\n", 0, len(data) // 2) + 1
        prompts.append((path.name, list(data[start:start + length])))
        if len(prompts) == count:
            break
    if len(prompts) < count:
        raise ValueError(f"only {len(prompts)} held-out standard-library files are long enough for {count} prompts")
    return prompts


def load_models(folder: Path = DEFAULT_MODELS, *, dtype=torch.float32, device="cpu"):
    """(target, draft, medusa_heads) from a folder written by bench/train_tiny.py."""
    from .runtime import LlamaModel
    from .runtime.medusa import MedusaHeads

    folder = Path(folder)
    if not (folder / "target" / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no trained models (target/config.json); run "
                                "python bench/train_tiny.py --out <folder> to train them")
    target = LlamaModel.from_pretrained(folder / "target", dtype=dtype, device=device)
    draft = LlamaModel.from_pretrained(folder / "draft", dtype=dtype, device=device)
    heads = MedusaHeads.from_file(folder / "medusa_heads.safetensors", dtype=dtype, device=device)
    return target, draft, heads


def load_eagle_head(target, folder: Path = DEFAULT_MODELS):
    """The EAGLE head of ``eagle_head.safetensors``, attached to ``target``
    (in its dtype and device)."""
    from .runtime.eagle import EagleHead

    path = Path(folder) / "eagle_head.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run python bench/train_tiny.py --only eagle")
    return EagleHead.load(path, target)


def load_bpe_draft(folder: Path = DEFAULT_MODELS, *, dtype=torch.float32, device="cpu"):
    """(draft model, its ``tokenizers.Tokenizer``) of ``draft_bpe/``: the draft
    of another vocabulary ``bench/train_tiny.py`` trains."""
    from tokenizers import Tokenizer

    from .runtime import LlamaModel

    folder = Path(folder) / "draft_bpe"
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} holds no BPE draft; run python bench/train_tiny.py --only draft_bpe")
    return (LlamaModel.from_pretrained(folder, dtype=dtype, device=device),
            Tokenizer.from_file(str(folder / "tokenizer.json")))


def decode_all(target, prompts, batch: int, on_batch=None, **kwargs):
    """``generate`` over ``prompts`` in groups of ``batch``: -> (tokens per
    prompt, dict of tau, steps and emitted (tau's denominator and numerator:
    (sequence, step) pairs and the tokens they emitted), target_passes,
    tokens_per_s, seconds)."""
    from .runtime import generate

    tokens, passes, steps, emitted, seconds = [], 0, 0, 0, 0.0
    for i in range(0, len(prompts), batch):
        began = time.perf_counter()
        out = generate(target, prompts[i:i + batch], **kwargs)
        if target.lm_head.weight.is_cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - began
        tokens += out.tokens
        passes += out.stats.target_passes
        steps += out.stats.step_sequences
        emitted += out.stats.step_tokens
        if on_batch is not None:
            on_batch()
    return tokens, dict(tau=emitted / steps, steps=steps, emitted=emitted, target_passes=passes,
                        tokens_per_s=sum(len(t) for t in tokens) / seconds, seconds=seconds)


def run(args) -> list[dict]:
    from tqdm import tqdm

    from .runtime.generate import TREE_METHODS

    target, draft, heads = load_models(args.models, device=args.device)
    eagle_head = load_eagle_head(target, args.models)
    bpe_draft, bpe_tokenizer = load_bpe_draft(args.models, device=args.device)
    prompts = [p for _, p in held_out_prompts(args.prompts, args.prompt_bytes)]
    rows, reference = [], None
    with tqdm(total=len(METHODS) * -(-len(prompts) // args.batch), desc="demo", unit="batch") as bar:
        for name, kwargs in METHODS.items():
            kwargs = dict(kwargs)
            extra = {"draft": dict(draft_model=draft), "medusa": dict(medusa_heads=heads),
                     "eagle": dict(eagle_head=eagle_head)}.get(kwargs["method"], {})
            if kwargs.pop("other_vocab", False):
                extra = dict(draft_model=bpe_draft, draft_tokenizer=bpe_tokenizer, target_tokenizer="bytes")
            bar.set_postfix_str(name)
            rule = getattr(args, "verify_rule", "token")
            if rule == "block" and kwargs["method"] in TREE_METHODS:
                rule = "traversal"  # block verification takes chains; traversal is its tree form
            tokens, stats = decode_all(target, prompts, args.batch, bar.update, max_new_tokens=args.max_new_tokens,
                                       temperature=args.temperature, seed=args.seed, verify_rule=rule, **kwargs,
                                       **extra)
            if reference is None:
                reference = tokens
            rows.append(dict(method=name, identical=tokens == reference, **stats))
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base
    return rows


def format_rows(rows, temperature) -> str:
    header = ("method", "tau", "target passes", "tokens/s", "speed-up", "identical to ar")
    lines = []
    for r in rows:
        same = ("yes" if r["identical"] else "NO") if temperature == 0 else "n/a (sampled)"
        lines.append((r["method"], f"{r['tau']:.2f}", str(r["target_passes"]), f"{r['tokens_per_s']:.1f}",
                      f"{r['speedup']:.2f}x", same))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*l) for l in lines])


def plot(rows, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(f"--plot needs matplotlib: pip install matplotlib ({exc})")
    names = [r["method"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].bar(names, [r["speedup"] for r in rows])
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_title("speed-up over ar (tokens/s)")
    axes[1].bar(names, [r["tau"] for r in rows], color="tab:orange")
    axes[1].set_title("tau: tokens per target pass")
    for ax in axes:
        ax.tick_params(axis="x", rotation=35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--batch", type=int, default=1, help="prompts per generate() call")
    p.add_argument("--prompts", type=int, default=8, help="held-out files to take prompts from")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--prompt-bytes", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (every method must be identical)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verify-rule", choices=["token", "block", "traversal"], default="token",
                   help="lossless rule of sampled steps (generate's verify_rule); block is for chains, so the tree "
                        "methods (medusa, eagle, lookahead) use traversal with it; greedy ignores it")
    p.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="folder written by bench/train_tiny.py")
    p.add_argument("--plot", type=Path, help="write a PNG of speed-up and tau per method (matplotlib)")


def main(args) -> int:
    for name in ("batch", "prompts", "max_new_tokens", "prompt_bytes"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_grad_enabled(False)
    rows = run(args)
    print()
    print(format_rows(rows, args.temperature))
    print(f"\n{args.prompts} held-out stdlib files, {args.prompt_bytes}-byte prompts, {args.max_new_tokens} new "
          f"tokens, batch {args.batch}, temperature {args.temperature}, device {args.device}"
          + (f", verify rule {args.verify_rule}" if args.temperature > 0 else ""))
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    if args.temperature == 0 and not all(r["identical"] for r in rows):
        print("ERROR: a greedy method differs from ar")
        return 1
    return 0

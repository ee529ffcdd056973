"""Train the embedded default models: a byte-level Llama-family target, a
draft with under a tenth of its parameters, Medusa heads on the target, an
EAGLE draft head on the target, and a draft of another vocabulary (a
byte-level BPE trained here, ``draft_bpe/`` with its ``tokenizer.json``) for
drafting across tokenizers.

Corpus: the source files (``*.py``) of the Python standard library of the
interpreter running this script, split by file (every 20th file of the
sorted list is held out). Byte-level: token = byte value (vocabulary 256).
Seeds are fixed; on another interpreter version or machine the corpus or the
float reductions differ, so weights differ slightly.

    python bench/train_tiny.py                          # about 35 minutes on 2 CPU cores
    python bench/train_tiny.py --target-steps 50 --draft-steps 20 --heads-steps 20 --eagle-steps 20 \
        --draft-bpe-steps 20 --out /tmp/tiny            # smoke run
    python bench/train_tiny.py --only draft_bpe         # just the BPE draft, a few minutes
    python bench/train_tiny.py --only eagle             # just the EAGLE head on the shipped target, 8-14 minutes
    python bench/train_tiny.py --only eagle --eagle-steps 3000 --out DIR   # longer (DIR: a copy of the models)

Writes Hugging Face folders ``target/`` and ``draft/`` (``config.json`` +
``model.safetensors``, bf16, loadable by ``transformers.LlamaForCausalLM``),
``medusa_heads.safetensors``, ``eagle_head.safetensors`` (bf16,
``specdec_kernels.runtime.eagle.EagleHead``) and ``training.json`` (held-out
losses, times, machine) under ``--out`` (default: the package's shipped
models folder). ``--only`` stages keep the rest of ``--out`` and merge into
its ``training.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from specdec_kernels.runtime.eagle import EagleHead  # noqa: E402
from specdec_kernels.runtime.medusa import MedusaHeads  # noqa: E402
from specdec_kernels.demo import DEFAULT_MODELS, stdlib_files  # noqa: E402

VOCAB = 256
# Sized by CPU training time (2 cores, about half an hour in all), not by the
# 25 MB budget: a larger target trained on fewer bytes would be worse.
TARGET = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=64)
DRAFT = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, head_dim=64)
MEDUSA_HEADS = 3
# EAGLE's loss weights (its train config's v_w and p_w) and input-feature noise
# (its data_noise: uniform, "std" 0.2, i.e. U(-0.1, 0.1) here).
EAGLE_V_WEIGHT, EAGLE_P_WEIGHT, EAGLE_NOISE = 1.0, 0.1, 0.2


def load_bytes(files: list[Path]) -> torch.Tensor:
    chunks = []
    for p in files:
        try:
            chunks.append(p.read_bytes() + b"\n\n")
        except OSError:
            continue
    data = b"".join(chunks)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def batches(data: torch.Tensor, batch: int, length: int, gen: torch.Generator):
    while True:
        starts = torch.randint(0, data.numel() - length - 1, (batch,), generator=gen)
        idx = starts[:, None] + torch.arange(length + 1)
        yield data[idx]


def llama_config(shape: dict, vocab: int = VOCAB):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None, **shape)


def lr_at(step: int, steps: int, peak: float) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


@torch.no_grad()
def held_out_loss(loss_fn, held: torch.Tensor, length: int, windows: int = 64) -> float:
    gen = torch.Generator().manual_seed(1234)
    batch = next(batches(held, windows, length, gen))
    return float(loss_fn(batch))


def train(name, params, loss_fn, data, held, steps, batch, length, lr, log):
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    stream = batches(data, batch, length, gen)
    started = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss = loss_fn(next(stream))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"{name} step {step}/{steps} loss {float(loss):.3f} ({time.perf_counter() - started:.0f}s)")
    seconds = time.perf_counter() - started
    return seconds, held_out_loss(loss_fn, held, length)


def lm_loss(model, vocab: int = VOCAB):
    def loss_fn(tokens):
        logits = model(input_ids=tokens[:, :-1]).logits
        return F.cross_entropy(logits.reshape(-1, vocab).float(), tokens[:, 1:].reshape(-1))
    return loss_fn


def byte_tokenizer():
    """The byte-level models' tokenizer as a transformers fast tokenizer (id =
    byte value; a BPE over GPT-2's byte alphabet with no merges), so
    transformers' universal assisted generation can pair them with a BPE
    draft. Saved beside target/ and draft/ (tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from specdec_kernels.runtime.tokenization import _byte_alphabet

    chars, _ = _byte_alphabet()
    tok = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def train_bpe(files: list[Path], vocab: int):
    """A byte-level BPE (GPT-2's pre-tokenizer and byte alphabet) trained on
    the training files, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator((p.read_bytes().decode("utf-8", errors="replace") for p in files), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def bpe_tokens(tokenizer, files: list[Path]) -> tuple[torch.Tensor, int]:
    """(token ids of the files, joined as load_bytes joins them; their byte count)."""
    texts = [p.read_bytes().decode("utf-8", errors="replace") + "\n\n" for p in files]
    ids = [i for enc in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False) for i in enc.ids]
    return torch.tensor(ids, dtype=torch.long), sum(len(t.encode("utf-8")) for t in texts)


def train_draft_bpe(args, train_files, held_files, log) -> dict:
    """The draft of another vocabulary (issue 20): a BPE tokenizer and the
    draft's shape over it, trained on the same corpus; written to draft_bpe/."""
    began = time.perf_counter()
    tokenizer = train_bpe(train_files, args.bpe_vocab)
    data, data_bytes = bpe_tokens(tokenizer, train_files)
    held, held_bytes = bpe_tokens(tokenizer, held_files)
    log(f"draft_bpe: tokenizer {args.bpe_vocab} tokens in {time.perf_counter() - began:.0f}s, "
        f"{data_bytes / data.numel():.2f} bytes/token on the training files")
    from transformers import LlamaForCausalLM

    torch.manual_seed(3)
    model = LlamaForCausalLM(llama_config(DRAFT, args.bpe_vocab)).train()
    count = sum(p.numel() for p in model.parameters())
    seconds, loss = train("draft_bpe", list(model.parameters()), lm_loss(model, args.bpe_vocab), data, held,
                          args.draft_bpe_steps, args.batch, args.length, 3e-3, log)
    per_byte = loss * held.numel() / held_bytes
    log(f"draft_bpe: held-out loss {loss:.3f} nats/token = {per_byte:.3f} nats/byte after {seconds:.0f}s")
    model.eval().to(torch.bfloat16).save_pretrained(args.out / "draft_bpe", safe_serialization=True)
    tokenizer.save_pretrained(args.out / "draft_bpe")
    return dict(parameters=count, steps=args.draft_bpe_steps, seconds=seconds, held_out_loss_per_token=loss,
                held_out_loss_per_byte=per_byte, bytes_per_token=data_bytes / data.numel(),
                vocab_size=args.bpe_vocab, tokenizer_seconds=time.perf_counter() - began - seconds,
                batch=args.batch, length_tokens=args.length, **DRAFT)


def medusa_loss(target, heads):
    """Head h at position t predicts token t + h + 2 (the target's own next
    token is t + 1), from the frozen target's final hidden state."""
    def loss_fn(tokens):
        with torch.no_grad():
            hidden = target(input_ids=tokens[:, :-1], output_hidden_states=True).hidden_states[-1]
        logits = heads(hidden.reshape(-1, hidden.shape[-1])).reshape(*hidden.shape[:2], heads.num_heads, VOCAB)
        length = hidden.shape[1]
        losses = []
        for h in range(heads.num_heads):
            pred = logits[:, :length - h - 1, h]
            gold = tokens[:, h + 2:length + 1]
            losses.append(F.cross_entropy(pred.reshape(-1, VOCAB).float(), gold.reshape(-1)))
        return torch.stack(losses).mean()
    return loss_fn


def eagle_inputs(target, head, tokens):
    """From the frozen target over ``tokens [B, T + 1]``: the head's input
    features of elements ``j = 0..T-1`` (element j = (feature j, token j + 1)),
    the target's next features (post-norm last hidden state of token j + 1,
    the regression target) and its next-token distributions there (softmax
    of the LM head on them: the distribution of token j + 2)."""
    with torch.no_grad():
        out = target.model(input_ids=tokens, output_hidden_states=head.capture is not None)
        final = out.last_hidden_state  # after the final norm (= hidden_states[-1])
        feats = final if head.capture is None else torch.cat([out.hidden_states[i] for i in head.capture], -1)
        probs = F.softmax(target.lm_head(final[:, 1:]).float(), dim=-1)
    return feats[:, :-1], final[:, 1:], probs


def eagle_loss(target, head, stats: dict, noise: float = EAGLE_NOISE, seed: int = 4):
    """EAGLE's loss: ``1.0 * smooth_l1(out, next feature) + 0.1 * CE(target's
    next-token distribution, softmax(lm_head(out)))`` (soft labels: the
    target's own distribution, as EAGLE's ``compute_loss``), with uniform
    noise on the input features while training (not under no_grad)."""
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(tokens):
        feats, next_feat, next_p = eagle_inputs(target, head, tokens)
        if noise and torch.is_grad_enabled():
            feats = feats + (torch.rand(feats.shape, generator=gen) - 0.5) * noise
        out = head.forward_dense(feats, tokens[:, 1:])
        ploss = -(next_p * F.log_softmax(head.logits(out).float(), dim=-1)).sum(-1).mean()
        vloss = F.smooth_l1_loss(out.float(), next_feat.float())
        stats.update(vloss=float(vloss.detach()), ploss=float(ploss.detach()))
        return EAGLE_V_WEIGHT * vloss + EAGLE_P_WEIGHT * ploss
    return loss_fn


@torch.no_grad()
def eagle_chains(target, head, seqs: torch.Tensor, starts: torch.Tensor, depth: int) -> torch.Tensor:
    """Greedy chain drafting from every element ``j`` in ``starts`` of
    ``seqs [B, S]`` at once: depth 1 from element j's logits (token j + 2),
    depth d from the element (out at depth d - 1, token drafted there) at
    position j + d - 1, which sees the elements up to j and its own chain
    (dense SDPA under that mask, depth by depth). Returns the drafted tokens
    ``[B, len(starts), depth]``."""
    b, s = seqs.shape
    feats, _, _ = eagle_inputs(target, head, seqs)
    base = head.fuse(feats)  # [B, S - 1, H]: elements 0..S-2
    toks = seqs[:, 1:]
    n, m = base.shape[1], len(starts)
    committed = torch.ones(n, n).tril().bool()
    out = head.forward_dense(base, toks)[:, starts]  # depth 1
    drafted = [head.logits(out).argmax(-1)]
    chain_f, chain_t, chain_p = [out], [drafted[-1]], [starts]
    for d in range(2, depth + 1):
        k = len(chain_f)  # draft elements per start so far
        rows = n + k * m
        mask = torch.zeros(rows, rows, dtype=torch.bool)
        mask[:n, :n] = committed
        for i in range(k):  # draft element (depth i + 2, start j) sees elements <= j and its chain
            r = n + i * m
            mask[r:r + m, :n] = torch.arange(n)[None] <= starts[:, None]
            for i2 in range(i + 1):
                mask[r:r + m, n + i2 * m:n + (i2 + 1) * m] = torch.eye(m, dtype=torch.bool)
        f = torch.cat([base] + chain_f, 1)
        t = torch.cat([toks] + chain_t, 1)
        pos = torch.cat([torch.arange(n)] + [starts + i + 1 for i in range(k)])
        o = head.forward_dense(f, t, pos.expand(b, -1), mask.expand(b, -1, -1))[:, n + (k - 1) * m:]
        drafted.append(head.logits(o).argmax(-1))
        chain_f.append(o)
        chain_t.append(drafted[-1])
    return torch.stack(drafted, -1)


def accepted_lengths(drafts: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Leading matches of each chain ``[..., K]`` with the truth ``[..., K]``."""
    return (drafts == truth).long().cumprod(-1).sum(-1)


def chain_stats(prefix: str, drafts: torch.Tensor, truth: torch.Tensor) -> dict:
    """Mean leading accepted tokens of chains ``[..., K]`` (at K = 3 and the
    full K) and the acceptance rate at each depth given the depths before."""
    res = {f"{prefix}chain{k}_mean_accepted": float(accepted_lengths(drafts[..., :k], truth[..., :k]).float().mean())
           for k in sorted({min(3, drafts.shape[-1]), drafts.shape[-1]})}
    ok = (drafts == truth[..., :drafts.shape[-1]]).long().cumprod(-1).float().reshape(-1, drafts.shape[-1]).mean(0)
    res[f"{prefix}accept_rate_per_depth"] = [float(ok[0])] + [float(ok[d] / ok[d - 1]) if ok[d - 1] > 0 else 0.0
                                                              for d in range(1, len(ok))]
    return res


@torch.no_grad()
def eagle_eval(target, head, medusa, held, greedy, windows=32, length=256, depth=5) -> dict:
    """Held-out numbers for the head, and for the Medusa heads on the same inputs:

    * ``top1_*``: teacher-forced on held-out text, how often the depth-1 draft
      (element j -> token j + 2; Medusa head 0 from feature j: both predict
      the token after the one just accepted) equals the target's greedy token
      there (``vs_target``: what greedy verification accepts) and the text's
      own byte (``vs_text``).
    * ``text_chain*``: from 440 positions j of held-out text, a greedy chain
      of ``depth`` drafts (EAGLE: autoregressive through the head; Medusa:
      heads 0..2's top-1) against the target's own greedy continuation of
      x[0..j+1] (``greedy(prompts, n)``: the runtime's ``generate``, ar):
      mean leading accepted tokens, acceptance rate per depth.
    * ``greedy_text_chain*``: the same from every position of 16 greedy
      continuations of 128 tokens (what a greedy demo decodes; the tiny
      target's continuations fall into runs of spaces, zeros and
      underscores, which inflates these)."""
    res = {}
    batch = next(batches(held, windows, length, torch.Generator().manual_seed(1234)))
    feats, next_feat, next_p = eagle_inputs(target, head, batch)
    out = head.forward_dense(feats, batch[:, 1:])
    want = next_p.argmax(-1)  # the target's greedy token j + 2
    eagle1 = head.logits(out).argmax(-1)
    text = batch[:, 2:]
    res["top1_vs_target"] = float((eagle1[:, :-1] == want[:, :-1]).float().mean())
    res["top1_vs_text"] = float((eagle1[:, :-1] == text).float().mean())
    res["held_out_vloss"] = float(F.smooth_l1_loss(out.float(), next_feat.float()))
    res["held_out_ploss"] = float(-(next_p * F.log_softmax(head.logits(out).float(), -1)).sum(-1).mean())

    def medusa_chains(seqs, starts):
        hidden = target.model(input_ids=seqs).last_hidden_state[:, starts]
        return medusa(hidden.reshape(-1, hidden.shape[-1])).argmax(-1).view(seqs.shape[0], len(starts), -1)

    if medusa is not None:
        m0 = medusa_chains(batch, torch.arange(length))[..., 0]
        res["medusa_head0_top1_vs_target"] = float((m0[:, :-1] == want[:, :-1]).float().mean())
        res["medusa_head0_top1_vs_text"] = float((m0[:, :-1] == text).float().mean())
    # Chains from held-out text against the target's greedy continuation there.
    seqs = next(batches(held, 8, length - 1, torch.Generator().manual_seed(4321)))
    starts = torch.arange(30, length - 6, 4)
    cont = greedy([seqs[b, :j + 2].tolist() for b in range(seqs.shape[0]) for j in starts.tolist()], depth).tokens
    truth = torch.tensor(cont).view(seqs.shape[0], len(starts), depth)
    res.update(chain_stats("text_", eagle_chains(target, head, seqs, starts, depth), truth))
    if medusa is not None:
        res.update(chain_stats("medusa_text_", medusa_chains(seqs, starts), truth))
    res["text_chain_starts"] = int(truth.shape[0] * truth.shape[1])
    # Chains along the target's greedy continuations (every next token is the greedy one).
    prompt = next(batches(held, 16, 63, torch.Generator().manual_seed(99)))
    seqs = torch.cat([prompt, torch.tensor(greedy(prompt.tolist(), 128).tokens)], 1)
    starts = torch.arange(62, seqs.shape[1] - depth - 1)  # element j drafts j + 2 .. j + 1 + depth
    truth = torch.stack([seqs[:, starts + 1 + d] for d in range(1, depth + 1)], -1)
    res.update(chain_stats("greedy_text_", eagle_chains(target, head, seqs, starts, depth), truth))
    if medusa is not None:
        res.update(chain_stats("medusa_greedy_text_", medusa_chains(seqs, starts), truth))
    res["greedy_text_chain_starts"] = int(truth.shape[0] * truth.shape[1])
    return res


def train_eagle(args, target, data, held, log) -> dict:
    """The EAGLE head (issue 19) on the frozen target (a float32
    ``LlamaForCausalLM``): written to ``eagle_head.safetensors`` (bf16)."""
    target.requires_grad_(False).eval()
    head = EagleHead.from_target(target, args.eagle_fusion, seed=5).train()
    count = sum(p.numel() for p in head.parameters())
    log(f"eagle ({args.eagle_fusion}): {count / 1e6:.2f}M parameters, {args.eagle_steps} steps")
    stats = {}
    seconds, loss = train("eagle", list(head.parameters()), eagle_loss(target, head, stats), data, held,
                          args.eagle_steps, args.batch, args.length, args.eagle_lr, log)
    head.eval().to(torch.bfloat16).save(args.out / "eagle_head.safetensors")
    head.float().attach(target)  # evaluate the shipped (bf16-rounded) weights
    medusa_file = args.out / "medusa_heads.safetensors"
    medusa = MedusaHeads.from_file(medusa_file) if medusa_file.is_file() else None
    began = time.perf_counter()
    from specdec_kernels.runtime import LlamaModel, generate

    runtime_target = LlamaModel.from_pretrained(args.out / "target")
    def greedy(prompts, n):  # one thread: small decode ops, and a 2-core VM shared with other jobs
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return generate(runtime_target, prompts, method="ar", max_new_tokens=n)
        finally:
            torch.set_num_threads(threads)

    evaluation = eagle_eval(target, head, medusa, held, greedy, length=args.length)
    log(f"eagle: held-out loss {loss:.4f} (vloss {evaluation['held_out_vloss']:.4f}, ploss "
        f"{evaluation['held_out_ploss']:.3f}) after {seconds:.0f}s; top-1 vs the target's greedy token "
        f"{evaluation['top1_vs_target']:.3f} (Medusa head 0: {evaluation.get('medusa_head0_top1_vs_target', 0):.3f}); "
        f"greedy chains from held-out text: {evaluation['text_chain3_mean_accepted']:.2f} of 3 accepted (Medusa "
        f"{evaluation.get('medusa_text_chain3_mean_accepted', 0):.2f}), {evaluation['text_chain5_mean_accepted']:.2f} "
        f"of 5; along greedy continuations {evaluation['greedy_text_chain3_mean_accepted']:.2f} of 3 (Medusa "
        f"{evaluation.get('medusa_greedy_text_chain3_mean_accepted', 0):.2f}); eval {time.perf_counter() - began:.0f}s")
    return dict(parameters=count, fusion=args.eagle_fusion, fusion_layers=list(head.fusion_layers or []),
                feature="post-norm last hidden state" if head.capture is None else "hidden_states "
                f"{list(head.capture)} (pre-norm), fused", steps=args.eagle_steps, seconds=seconds,
                lr=args.eagle_lr, batch=args.batch, length=args.length,
                loss=f"{EAGLE_V_WEIGHT} * smooth_l1(out, next feature) + {EAGLE_P_WEIGHT} * soft CE(target p, "
                     f"lm_head(out)); input-feature noise U(-{EAGLE_NOISE / 2}, {EAGLE_NOISE / 2})",
                held_out_loss=loss, final_train_vloss=stats.get("vloss"), final_train_ploss=stats.get("ploss"),
                eval_seconds=time.perf_counter() - began, **evaluation)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_MODELS)
    p.add_argument("--target-steps", type=int, default=600)
    p.add_argument("--draft-steps", type=int, default=600)
    p.add_argument("--heads-steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--draft-bpe-steps", type=int, default=600)
    p.add_argument("--bpe-vocab", type=int, default=1024)
    p.add_argument("--eagle-steps", type=int, default=400)
    p.add_argument("--eagle-lr", type=float, default=2e-3)
    p.add_argument("--eagle-fusion", choices=["eagle1", "eagle3"], default="eagle1",
                   help="eagle3: fuse three target layers (same loss; without EAGLE-3's training-time test its "
                        "drafts past depth 1 fail, see runtime/eagle.py)")
    p.add_argument("--only", choices=["all", "draft_bpe", "eagle"], default="all",
                   help="draft_bpe: train only the BPE draft (and write the byte tokenizers); eagle: train only the "
                        "EAGLE head on --out's target/; both keep the rest of --out and merge into its "
                        "training.json")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import LlamaForCausalLM

    started = time.perf_counter()
    train_files, held_files = stdlib_files()
    data, held = load_bytes(train_files), load_bytes(held_files)
    print(f"corpus: {len(train_files)} train files ({data.numel() / 1e6:.1f} MB), {len(held_files)} held-out "
          f"({held.numel() / 1e6:.1f} MB) from {Path(sysconfig.get_paths()['stdlib'])}", flush=True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    report = {"corpus": {"stdlib": sysconfig.get_paths()["stdlib"], "python": platform.python_version(),
                         "train_files": len(train_files), "held_out_files": len(held_files),
                         "train_bytes": data.numel(), "held_out_bytes": held.numel(),
                         "split": "sorted *.py files; every 20th held out"},
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__},
              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "models": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only != "all":
        previous = args.out / "training.json"
        if previous.is_file():
            report = dict(json.loads(previous.read_text()), **{k: report[k] for k in ("corpus", "machine")})
        if args.only == "draft_bpe":
            report["models"]["draft_bpe"] = train_draft_bpe(args, train_files, held_files, log)
            for name in ("target", "draft"):
                byte_tokenizer().save_pretrained(args.out / name)
            written = args.out / "draft_bpe"
        else:
            target = LlamaForCausalLM.from_pretrained(args.out / "target", dtype=torch.float32)
            report["models"]["eagle_head"] = train_eagle(args, target, data, held, log)
            written = args.out / "eagle_head.safetensors"
        report["commands"] = dict(report.get("commands", {}), **{args.only: " ".join([Path(sys.argv[0]).name] +
                                                                                     sys.argv[1:])})
        previous.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {written} in {time.perf_counter() - started:.0f}s")
        return 0
    for name, shape, steps, lr in (("target", TARGET, args.target_steps, 3e-3),
                                   ("draft", DRAFT, args.draft_steps, 3e-3)):
        torch.manual_seed(0 if name == "target" else 1)
        model = LlamaForCausalLM(llama_config(shape)).train()
        count = sum(p.numel() for p in model.parameters())
        log(f"{name}: {count / 1e6:.2f}M parameters")
        seconds, loss = train(name, list(model.parameters()), lm_loss(model), data, held, steps, args.batch,
                              args.length, lr, log)
        log(f"{name}: held-out loss {loss:.3f} nats/byte after {seconds:.0f}s")
        model.eval().to(torch.bfloat16).save_pretrained(args.out / name, safe_serialization=True)
        byte_tokenizer().save_pretrained(args.out / name)
        report["models"][name] = dict(parameters=count, steps=steps, seconds=seconds, held_out_loss=loss,
                                      batch=args.batch, length=args.length, **shape)
        if name == "target":
            target = model.float()
    torch.manual_seed(2)
    heads = MedusaHeads(TARGET["hidden_size"], VOCAB, num_heads=MEDUSA_HEADS, num_layers=1)
    with torch.no_grad():  # Medusa's init: residual blocks start as identity, projections from the LM head
        for seq in heads.heads:
            seq[0].linear.weight.zero_()
            seq[0].linear.bias.zero_()
            seq[-1].weight.copy_(target.lm_head.weight)
    heads.train()
    seconds, loss = train("medusa", list(heads.parameters()), medusa_loss(target, heads), data, held,
                          args.heads_steps, args.batch, args.length, 1e-3, log)
    heads.eval().to(torch.bfloat16).save(args.out / "medusa_heads.safetensors")
    report["models"]["medusa_heads"] = dict(parameters=sum(p.numel() for p in heads.parameters()),
                                            num_heads=MEDUSA_HEADS, steps=args.heads_steps, seconds=seconds,
                                            held_out_loss_mean_over_heads=loss)
    report["models"]["eagle_head"] = train_eagle(args, target, data, held, log)
    report["models"]["draft_bpe"] = train_draft_bpe(args, train_files, held_files, log)
    report["total_seconds"] = time.perf_counter() - started
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out} in {report['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

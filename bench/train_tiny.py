"""Train the embedded default models: a byte-level Llama-family target, a
draft with under a tenth of its parameters, Medusa heads on the target, and
a draft of another vocabulary (a byte-level BPE trained here, ``draft_bpe/``
with its ``tokenizer.json``) for drafting across tokenizers.

Corpus: the source files (``*.py``) of the Python standard library of the
interpreter running this script, split by file (every 20th file of the
sorted list is held out). Byte-level: token = byte value (vocabulary 256).
Seeds are fixed; on another interpreter version or machine the corpus or the
float reductions differ, so weights differ slightly.

    python bench/train_tiny.py                          # about half an hour on 2 CPU cores
    python bench/train_tiny.py --target-steps 50 --draft-steps 20 --heads-steps 20 --out /tmp/tiny   # smoke run
    python bench/train_tiny.py --only draft_bpe         # just the BPE draft, a few minutes

Writes Hugging Face folders ``target/`` and ``draft/`` (``config.json`` +
``model.safetensors``, bf16, loadable by ``transformers.LlamaForCausalLM``),
``medusa_heads.safetensors`` and ``training.json`` (held-out losses, times,
machine) under ``--out`` (default: the package's shipped models folder).
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
    p.add_argument("--only", choices=["all", "draft_bpe"], default="all",
                   help="draft_bpe: train only the BPE draft (and write the byte tokenizers), keeping the rest of "
                        "--out and merging into its training.json")
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
    if args.only == "draft_bpe":
        previous = args.out / "training.json"
        if previous.is_file():
            report = dict(json.loads(previous.read_text()), **{k: report[k] for k in ("corpus", "machine")})
        report["models"]["draft_bpe"] = train_draft_bpe(args, train_files, held_files, log)
        report["commands"] = dict(report.get("commands", {}), draft_bpe=" ".join([Path(sys.argv[0]).name] +
                                                                                sys.argv[1:]))
        for name in ("target", "draft"):
            byte_tokenizer().save_pretrained(args.out / name)
        previous.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.out / 'draft_bpe'} in {time.perf_counter() - started:.0f}s")
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
    report["models"]["draft_bpe"] = train_draft_bpe(args, train_files, held_files, log)
    report["total_seconds"] = time.perf_counter() - started
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out} in {report['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

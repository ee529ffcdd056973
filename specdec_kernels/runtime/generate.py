"""One generate loop for every method: a drafter proposes a tree per sequence,
the target scores all trees in one forward (tree_attention), one verify launch
picks each accepted path and its bonus token, and both caches are cut back.

Cache invariant: a model's cache holds the KV of every token of a sequence's
history except the last one (the *root* of the next tree), or fewer when a
drafter lags; each forward first feeds whatever its cache is missing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..sampling import verify_greedy, verify_rejection
from .drafters import ChainProposal, DraftModelDrafter, NoDrafter, filtered_probs
from .model import LlamaModel, PagedKVCache

METHODS = ("ar", "draft")
SCHEDULES = ("constant", "heuristic", "dynamic")


@dataclass
class GenerationStats:
    target_passes: int = 0
    draft_passes: int = 0
    verify_steps: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    phase_seconds: dict = field(default_factory=lambda: {"draft": 0.0, "verify_forward": 0.0,
                                                         "verify_sampling": 0.0, "kv_rollback": 0.0})
    step_tokens: int = 0  # tokens emitted by verify steps, summed over sequences
    step_sequences: int = 0  # (sequence, step) pairs
    peak_cache_blocks: int = 0  # most target-cache blocks held after a step's rollback

    @property
    def tau(self) -> float:
        """Mean tokens emitted per sequence per target pass (accepted drafts + the bonus)."""
        return self.step_tokens / self.step_sequences if self.step_sequences else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # generated tokens per prompt (prompt excluded)
    stats: GenerationStats


class CachedModel:
    """A model, its paged cache and how many tokens of each sequence it holds."""

    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int):
        param = next(model.parameters())
        self.model = model
        self.cache = PagedKVCache(model.config, num_blocks, block_size, dtype=param.dtype, device=param.device)
        self.device = param.device

    def start(self, seq):
        self.cache.allocator.add(seq, 0)

    def length(self, seq) -> int:
        return self.cache.allocator.length(seq)

    def set_length(self, seq, n: int):
        alloc = self.cache.allocator
        if n >= alloc.length(seq):
            alloc.append(seq, n - alloc.length(seq))
        else:
            alloc.truncate(seq, n)

    def free(self, seq):
        self.cache.allocator.free(seq)

    def run(self, seqs, chains, *, prefill=False):
        """Feed chains[i] to sequence seqs[i] after the tokens its cache holds;
        commits them and returns (logits [N, V], hidden, qo_indptr)."""
        alloc = self.cache.allocator
        starts = [alloc.length(s) for s in seqs]
        for s, st, ch in zip(seqs, starts, chains):
            alloc.reserve(s, st + len(ch))
        dev = self.device
        tokens = torch.tensor([t for ch in chains for t in ch], dtype=torch.int64, device=dev)
        positions = torch.tensor([st + i for st, ch in zip(starts, chains) for i in range(len(ch))],
                                 dtype=torch.int64, device=dev)
        counts = torch.tensor([len(ch) for ch in chains], dtype=torch.int64)
        indptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]).to(torch.int32).to(dev)
        table = alloc.block_table(seqs, device=dev)
        prefix = torch.tensor(starts, dtype=torch.int32, device=dev)
        logits, hidden = self.model(tokens, positions, self.cache, table, prefix, indptr, prefill=prefill,
                                    validate=False)
        for s, st, ch in zip(seqs, starts, chains):
            self.set_length(s, st + len(ch))
        return logits, hidden, indptr


def _check_inputs(target, prompts, method, draft_model, num_draft_tokens, schedule, max_new_tokens):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt (a list of token ids)")
    vocab = target.config.vocab_size
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}] is empty; every prompt needs at least one token")
        bad = [t for t in p if not 0 <= int(t) < vocab]
        if bad:
            raise ValueError(f"prompts[{i}] holds token id {bad[0]} outside the vocabulary [0, {vocab})")
    if method == "draft":
        if draft_model is None:
            raise ValueError("method='draft' needs draft_model")
        if draft_model.config.vocab_size != vocab:
            raise ValueError(f"draft_model's vocabulary ({draft_model.config.vocab_size}) differs from the "
                             f"target's ({vocab}); both must share one tokenizer")
        if not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
            raise ValueError(f"num_draft_tokens must be an int >= 1, got {num_draft_tokens!r}")


@torch.no_grad()
def generate(target: LlamaModel, prompts, *, method: str = "ar", draft_model: LlamaModel | None = None,
             num_draft_tokens: int = 5, schedule: str = "constant", confidence_threshold: float = 0.4,
             max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             seed: int | None = None, eos_token_id: int | None = None, block_size: int = 16) -> GenerationOutput:
    """Generate up to ``max_new_tokens`` tokens for each prompt (lists of ids).

    ``method="ar"`` decodes one token per target pass; ``"draft"`` lets
    ``draft_model`` propose ``num_draft_tokens`` tokens per step (``schedule``:
    ``constant``; ``heuristic``, K += 2 after a fully accepted step else K -= 1,
    at least 1; ``dynamic``, the drafter stops when its top probability falls
    below ``confidence_threshold``). Greedy (temperature 0) output equals
    ``"ar"`` exactly; sampled output is distributed as ``"ar"``'s (exact
    rejection sampling). Sequences stop at ``eos_token_id`` or the length limit
    and free their cache blocks.
    """
    _check_inputs(target, prompts, method, draft_model, num_draft_tokens, schedule, max_new_tokens)
    prompts = [[int(t) for t in p] for p in prompts]
    stats = GenerationStats()
    started = time.perf_counter()
    k_cap = min(255, 4 * num_draft_tokens)
    per_seq = [-(-(len(p) + max_new_tokens + k_cap + 2) // block_size) for p in prompts]
    num_blocks = sum(per_seq) + 1
    tgt = CachedModel(target, num_blocks, block_size)
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**62, (1,))))
    verify_seed = int(torch.randint(2**62, (1,), generator=gen))
    sampling = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
    if method == "draft":
        drafter = DraftModelDrafter(CachedModel(draft_model, num_blocks, block_size), sampling, gen,
                                    dynamic_threshold=confidence_threshold if schedule == "dynamic" else None)
    else:
        drafter = NoDrafter()
    seqs = list(range(len(prompts)))
    history = {s: list(p) for s, p in zip(seqs, prompts)}
    produced = {s: [] for s in seqs}
    k = {s: num_draft_tokens for s in seqs}
    for s in seqs:
        tgt.start(s)
    # Prefill all but each prompt's last token (the first root).
    pre = [s for s in seqs if len(history[s]) > 1]
    if pre:
        tgt.run(pre, [history[s][:-1] for s in pre], prefill=True)
        stats.target_passes += 1
    drafter.start(seqs, history)
    offset = 0
    active = list(seqs)
    while active:
        t0 = time.perf_counter()
        proposal: ChainProposal = drafter.propose(active, history, [k[s] for s in active])
        stats.draft_passes += proposal.passes
        t1 = time.perf_counter()
        chains = [[history[s][-1]] + proposal.tokens[i] for i, s in enumerate(active)]
        # The target may lag only by its root: feed the root and the drafts.
        logits, _, indptr = tgt.run(active, chains)
        stats.target_passes += 1
        t2 = time.perf_counter()
        tokens = torch.tensor([t for ch in chains for t in ch], dtype=torch.int64, device=tgt.device)
        parents = torch.tensor([i - 1 for ch in chains for i in range(len(ch))], dtype=torch.int32,
                               device=tgt.device)
        max_depth = max(len(ch) for ch in chains) - 1
        if temperature == 0:
            result = verify_greedy(tokens, parents, indptr, logits, max_depth=max_depth, validate=False)
        else:
            q = proposal.draft_probs(chains, tgt.device)
            result = verify_rejection(tokens, parents, indptr, logits, q, seed=verify_seed, offset=offset,
                                      max_depth=max_depth, validate=False, **sampling)
            offset += tokens.numel()
        accepted = result.num_accepted.tolist()
        out_tokens = result.tokens.tolist()
        t3 = time.perf_counter()
        if min(accepted) < 0:
            raise RuntimeError("the target produced logits with NaN or no finite value; cannot continue")
        finished = []
        for i, s in enumerate(active):
            a = accepted[i]
            new = out_tokens[i][:a + 1]
            stats.step_tokens += a + 1
            stats.step_sequences += 1
            old_len = len(history[s])
            # Target KV now covers the old history plus the accepted drafts.
            tgt.set_length(s, old_len + a)
            drafter.accepted(s, old_len, a)
            room = max_new_tokens - len(produced[s])
            new = new[:room]
            if eos_token_id is not None and eos_token_id in new:
                new = new[:new.index(eos_token_id) + 1]
                room = 0
            produced[s] += new
            history[s] += new
            if schedule == "heuristic" and method == "draft":
                k[s] = min(k_cap, k[s] + 2) if a == len(proposal.tokens[i]) else max(1, k[s] - 1)
            if len(new) >= room:
                finished.append(s)
        for s in finished:
            tgt.free(s)
            drafter.finish(s)
        active = [s for s in active if s not in finished]
        stats.peak_cache_blocks = max(stats.peak_cache_blocks, num_blocks - tgt.cache.allocator.num_free_blocks)
        stats.verify_steps += 1
        t4 = time.perf_counter()
        ph = stats.phase_seconds
        ph["draft"] += t1 - t0
        ph["verify_forward"] += t2 - t1
        ph["verify_sampling"] += t3 - t2
        ph["kv_rollback"] += t4 - t3
    stats.seconds = time.perf_counter() - started
    stats.new_tokens = sum(len(v) for v in produced.values())
    tgt.cache.allocator.check_invariants()
    if tgt.cache.allocator.num_free_blocks != num_blocks:
        raise AssertionError("generate leaked target cache blocks")
    return GenerationOutput([produced[s] for s in seqs], stats)


__all__ = ["generate", "GenerationOutput", "GenerationStats", "filtered_probs"]

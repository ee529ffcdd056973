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

from ..trees import MC_SIM_7B_63
from .drafters import DraftModelDrafter, NoDrafter, filtered_probs
from .eagle_drafter import EagleDrafter
from .lookahead import LookaheadDrafter
from .medusa import MedusaDrafter
from .model import LlamaModel, PagedKVCache
from .prompt_lookup import PromptLookupDrafter
from .step import RULES as VERIFY_RULES, VerifyStep, bucket_size
from .tokenization import as_tokenizer
from .translation import TranslatingDrafter

METHODS = ("ar", "draft", "medusa", "eagle", "lookahead", "prompt_lookup")
ACCEPTANCE = ("rejection", "typical")
TREE_METHODS = ("medusa", "eagle", "lookahead")  # drafters whose drafts branch (block verification takes chains)
SCHEDULES = ("constant", "heuristic", "dynamic")


@dataclass
class GenerationStats:
    target_passes: int = 0
    draft_passes: int = 0
    verify_steps: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    # draft; verify_forward, verify_sampling, kv_compaction (eager steps; on
    # CUDA each is synchronised); verify_graph (replayed graphs instead);
    # host (building step inputs, bookkeeping).
    phase_seconds: dict = field(default_factory=lambda: {"draft": 0.0, "verify_forward": 0.0,
                                                         "verify_sampling": 0.0, "kv_compaction": 0.0,
                                                         "host": 0.0})
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
    """A model, its paged cache and how many tokens of each sequence it holds.
    ``max_blocks``: the block-table width (the most blocks a sequence may
    hold; default ``num_blocks``), shared with a ``VerifyStep`` on the cache."""

    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int, max_blocks: int | None = None):
        param = next(model.parameters())
        self.model = model
        self.max_blocks = max_blocks or num_blocks
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

    def run(self, seqs, chains, *, prefill=False, capture=None):
        """Feed chains[i] (a list of ids) to sequence seqs[i] after the tokens
        its cache holds; commits them and returns (logits [N, V], hidden,
        qo_indptr), and with ``capture`` (``LlamaModel.forward``'s) the
        captured states ``[N, len(capture) * H]`` after them."""
        counts = [len(ch) for ch in chains]
        tokens = torch.tensor([t for ch in chains for t in ch], dtype=torch.int64)
        return self._forward(seqs, counts, tokens.to(self.device), prefill, capture)

    def run_tokens(self, seqs, tokens: torch.Tensor):
        """Feed one token per sequence, int64 ``[len(seqs)]`` already on the
        device (e.g. just drafted): nothing is read back."""
        return self._forward(seqs, [1] * len(seqs), tokens.clamp(0, self.model.config.vocab_size - 1), False)

    def _forward(self, seqs, counts, tokens, prefill, capture=None):
        alloc, dev = self.cache.allocator, self.device
        starts = [alloc.length(s) for s in seqs]
        for s, st, n in zip(seqs, starts, counts):
            alloc.reserve(s, st + n)
        positions = torch.tensor([st + i for st, n in zip(starts, counts) for i in range(n)], dtype=torch.int64)
        indptr = torch.tensor([0] + counts, dtype=torch.int64).cumsum(0).to(torch.int32)
        table = alloc.device_rows(seqs, self.max_blocks, dev)
        prefix = torch.tensor(starts, dtype=torch.int32)
        logits, hidden, *captured = self.model(tokens, positions.to(dev), self.cache, table, prefix.to(dev),
                                               indptr.to(dev), prefill=prefill, validate=False, capture=capture)
        for s, st, n in zip(seqs, starts, counts):
            self.set_length(s, st + n)
        return (logits, hidden, indptr.to(dev), *captured)


def _check_inputs(target, prompts, method, draft_model, num_draft_tokens, schedule, max_new_tokens, medusa_heads,
                  acceptance, tokenizers=None, verify_rule="token", eagle_head=None):
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
        if tokenizers is not None:
            for name, tok, model in (("draft_tokenizer", tokenizers[0], draft_model), ("target_tokenizer",
                                                                                   tokenizers[1], target)):
                if tok.vocab_size > model.config.vocab_size:
                    raise ValueError(f"{name} has {tok.vocab_size} tokens, more than its model's vocabulary "
                                     f"({model.config.vocab_size})")
            if schedule == "heuristic":
                raise ValueError("schedule='heuristic' counts accepted tokens in the draft's vocabulary; with "
                                 "draft_tokenizer/target_tokenizer use 'constant' or 'dynamic'")
        elif draft_model.config.vocab_size != vocab:
            raise ValueError(f"draft_model's vocabulary ({draft_model.config.vocab_size}) differs from the "
                             f"target's ({vocab}); pass draft_tokenizer= and target_tokenizer= to draft across "
                             "vocabularies")
    if method in ("draft", "prompt_lookup") and (not isinstance(num_draft_tokens, int) or num_draft_tokens < 1):
        raise ValueError(f"num_draft_tokens must be an int >= 1, got {num_draft_tokens!r}")
    if acceptance not in ACCEPTANCE:
        raise ValueError(f"acceptance must be one of {ACCEPTANCE}, got {acceptance!r}")
    if acceptance == "typical" and method != "medusa":
        raise ValueError("acceptance='typical' (Medusa's lossy rule) applies to method='medusa' only")
    if verify_rule not in VERIFY_RULES:
        raise ValueError(f"verify_rule must be one of {VERIFY_RULES}, got {verify_rule!r}")
    if verify_rule != "token" and acceptance == "typical":
        raise ValueError(f"verify_rule={verify_rule!r} picks a lossless rejection rule, but acceptance='typical' "
                         "has a rule of its own; pass acceptance='rejection' or leave verify_rule='token'")
    if verify_rule == "block" and method in TREE_METHODS:
        raise ValueError(f"verify_rule='block' verifies chains, but method={method!r} drafts trees; use "
                         "verify_rule='traversal' (block verification generalised to trees; the same rule on "
                         "a chain)")
    if method == "eagle":
        if eagle_head is None:
            raise ValueError("method='eagle' needs eagle_head (a runtime.eagle.EagleHead, e.g. EagleHead.load(path, "
                             "target))")
        cfg = eagle_head.target_config
        if (cfg.hidden_size, cfg.vocab_size) != (target.config.hidden_size, vocab):
            raise ValueError(f"eagle_head is for hidden size {cfg.hidden_size} and vocabulary {cfg.vocab_size}; the "
                             f"target has {target.config.hidden_size} and {vocab}")
        if eagle_head._embed is None or eagle_head._embed.data_ptr() != target.model.embed_tokens.weight.data_ptr():
            raise ValueError("eagle_head is not attached to this target: eagle_head.attach(target) (load and "
                             "from_target attach)")
    if method == "medusa":
        if medusa_heads is None:
            raise ValueError("method='medusa' needs medusa_heads (a runtime.medusa.MedusaHeads)")
        if (medusa_heads.hidden, medusa_heads.vocab) != (target.config.hidden_size, vocab):
            raise ValueError(f"medusa_heads are for hidden size {medusa_heads.hidden} and vocabulary "
                             f"{medusa_heads.vocab}; the target has {target.config.hidden_size} and {vocab}")


@torch.no_grad()
def generate(target: LlamaModel, prompts, *, method: str = "ar", draft_model: LlamaModel | None = None,
             num_draft_tokens: int = 5, schedule: str = "constant", confidence_threshold: float = 0.4,
             medusa_heads=None, medusa_choices=None, acceptance: str = "rejection",
             posterior_threshold: float = 0.09, posterior_alpha: float = 0.3,
             lookahead_window: int = 7, lookahead_ngram: int = 5, lookahead_guesses: int = 7, max_ngram: int = 3,
             max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             seed: int | None = None, eos_token_id: int | None = None, block_size: int = 16,
             cuda_graph: bool | None = None, draft_tokenizer=None, target_tokenizer=None,
             lookbehind: int = 8, max_target_tokens: int | None = None,
             token_intersection: bool = False, verify_rule: str = "token", eagle_head=None, eagle_topk: int = 10,
             eagle_depth: int = 6, eagle_nodes: int = 60, eagle_min_mass: float | None = None,
             eagle_sample: bool = False) -> GenerationOutput:
    """Generate up to ``max_new_tokens`` tokens for each prompt (lists of ids).

    Methods (each a drafter feeding the same verify step):

    * ``"ar"``: one token per target pass.
    * ``"draft"``: ``draft_model`` proposes ``num_draft_tokens`` tokens per
      step (``schedule``: ``constant``; ``heuristic``, K += 2 after a fully
      accepted step else K -= 1, at least 1; ``dynamic``, the drafter stops
      when its top probability falls below ``confidence_threshold``).
      With ``draft_tokenizer`` and ``target_tokenizer`` (``"bytes"``, a
      ``tokenizers.Tokenizer`` or a transformers fast tokenizer, byte-level;
      see ``runtime.tokenization``) the draft may have another vocabulary:
      its proposals are translated through text, re-encoding ``lookbehind``
      tokens at each boundary, at most ``max_target_tokens`` (default 4 x
      ``num_draft_tokens``, at most 64) target tokens a step, verified as
      point-mass chains (``runtime.translation``); ``token_intersection``:
      draft only tokens both vocabularies share, verified with the draft's q
      when sampled (Timor et al.'s token-level intersection).
    * ``"medusa"``: ``medusa_heads`` (``runtime.medusa.MedusaHeads``) fill the
      tree of ``medusa_choices`` (default ``MC_SIM_7B_63``, without the paths
      deeper than the heads) from the target's hidden state at the last
      accepted node.
    * ``"eagle"``: ``eagle_head`` (``runtime.eagle.EagleHead``) grows an
      EAGLE-2 dynamic tree from the target's features
      (``runtime.eagle_drafter``): ``eagle_topk`` children per expanded node
      and frontier width, at most ``eagle_depth`` depths, the best
      ``eagle_nodes`` nodes kept (defaults: EAGLE-2's for a 7B target; on the
      shipped tiny models on a CPU, 4 / 6 / 16 with ``eagle_min_mass=0.2``
      is fastest); ``eagle_min_mass``: Dynamic Depth
      Decoding's stop (frontier probability mass), None: off;
      ``eagle_sample``: sampled drafts verified with their q (sampled
      verification only), else the top-k (point-mass proposals).
    * ``"lookahead"``: Jacobi window ``lookahead_window`` (W) x
      ``lookahead_ngram - 1`` (N - 1) levels, up to ``lookahead_guesses`` (G)
      pool n-grams verified per step.
    * ``"prompt_lookup"``: ``num_draft_tokens`` tokens copied from after the
      latest earlier match of the last n-gram (``max_ngram`` down to 1).

    Greedy (``temperature`` 0) output equals ``"ar"``'s token for token for
    every method. Sampled output (``temperature``, ``top_k``, ``top_p``,
    ``seed``) is exact rejection sampling, distributed as ``"ar"``'s, except
    with ``acceptance="typical"`` (Medusa only: its lossy typical acceptance,
    ``posterior_threshold``, ``posterior_alpha``; top-k/top-p unused).
    ``verify_rule`` picks the lossless rule of sampled steps
    (``verify_rejection``'s ``rule``): ``"token"`` (default; Leviathan/Chen on
    chains, SpecInfer's multi-step rule on trees), ``"block"`` (Sun et al.'s
    block verification, for chains: ``"draft"`` (translated drafts
    included), ``"prompt_lookup"``, ``"ar"``; with the tree drafters
    ``"medusa"``, ``"eagle"`` and ``"lookahead"`` it is a ValueError, whatever the
    temperature) or ``"traversal"`` (Weng et al.'s traversal verification,
    trees and chains, equal to ``"block"`` on a chain). All three are
    distributed as ``"ar"``'s; block and traversal accept at least as many
    tokens per step in expectation. Greedy steps ignore it; with
    ``acceptance="typical"`` only ``"token"`` is accepted. Every backend runs
    all three.
    Sequences stop at ``eos_token_id`` or the length limit and free their cache
    blocks. ``cuda_graph`` (default: when the target is on CUDA) captures the
    verify step per (batch, tree) bucket and replays it.
    """
    tokenizers = None
    if (draft_tokenizer is None) != (target_tokenizer is None):
        raise ValueError("pass both draft_tokenizer and target_tokenizer (or neither: one shared vocabulary)")
    if draft_tokenizer is not None:
        if method != "draft":
            raise ValueError(f"draft_tokenizer/target_tokenizer apply to method='draft', not {method!r}")
        tokenizers = (as_tokenizer(draft_tokenizer), as_tokenizer(target_tokenizer))
    _check_inputs(target, prompts, method, draft_model, num_draft_tokens, schedule, max_new_tokens, medusa_heads,
                  acceptance, tokenizers, verify_rule, eagle_head)
    prompts = [[int(t) for t in p] for p in prompts]
    device = next(target.parameters()).device
    if cuda_graph is None:
        cuda_graph = device.type == "cuda"
    stats = GenerationStats()
    started = time.perf_counter()
    k_cap = min(255, 4 * num_draft_tokens)
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**62, (1,))))
    verify_seed = int(torch.randint(2**62, (1,), generator=gen))
    sampling = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
    mode, verify_params = "rejection", sampling
    if temperature == 0:
        mode, verify_params = "greedy", None
    elif acceptance == "typical":
        mode = "typical"
        verify_params = dict(temperature=float(temperature), posterior_threshold=float(posterior_threshold),
                             posterior_alpha=float(posterior_alpha))
    drafter = NoDrafter()
    if method == "draft":
        drafter = DraftModelDrafter(None, sampling, gen,
                                    dynamic_threshold=confidence_threshold if schedule == "dynamic" else None)
        if tokenizers is not None:
            cap = max_target_tokens or min(64, 4 * num_draft_tokens)
            drafter = TranslatingDrafter(drafter, *tokenizers, lookbehind=lookbehind, max_target_tokens=cap,
                                         intersection=token_intersection)
    elif method == "medusa":
        if medusa_choices is None:  # the default tree, cut to the heads there are
            medusa_choices = [c for c in MC_SIM_7B_63 if len(c) <= medusa_heads.num_heads]
        drafter = MedusaDrafter(medusa_heads, medusa_choices)
    elif method == "eagle":
        drafter = EagleDrafter(eagle_head, topk=eagle_topk, depth=eagle_depth, num_nodes=eagle_nodes,
                               min_mass=eagle_min_mass, sampling=sampling, sample=eagle_sample, generator=gen)
    elif method == "lookahead":
        drafter = LookaheadDrafter(lookahead_window, lookahead_ngram, lookahead_guesses, generator=gen,
                                   device=device)
    elif method == "prompt_lookup":
        drafter = PromptLookupDrafter(num_draft_tokens, max_ngram, device=device)
    rows = bucket_size(drafter.max_rows(k_cap))
    per_seq = [-(-(len(p) + max_new_tokens + rows + 1) // block_size) for p in prompts]
    padding = (bucket_size(len(prompts)) - len(prompts)) * -(-rows // block_size)
    num_blocks = sum(per_seq) + padding + 1
    tgt = CachedModel(target, num_blocks, block_size, max(per_seq))
    if method == "draft" and tokenizers is None:
        drafter.model = CachedModel(draft_model, num_blocks, block_size, max(per_seq))
    elif method == "draft":  # a draft token is at least one byte: room for every byte the target may produce
        per_byte = min(16, tokenizers[1].max_token_bytes)
        draft_seq = [-(-(len(tokenizers[1].token_bytes(p)) + per_byte * max_new_tokens + rows + 1) // block_size)
                     for p in prompts]
        drafter.core.model = CachedModel(draft_model, sum(draft_seq) + 1, block_size, max(draft_seq))
    elif method == "eagle":  # the head's cache: the committed history plus one step's drafted elements
        head_seq = [-(-(len(p) + max_new_tokens + rows + drafter.elements_per_step() + 1) // block_size)
                    for p in prompts]
        drafter.allocate(sum(head_seq) + 1, block_size, max(head_seq))
    features = getattr(drafter, "features", None)  # what the drafter reads from the target (EAGLE)
    step = VerifyStep(target, tgt.cache, mode=mode, sampling=verify_params, rule=verify_rule,
                      generator=torch.Generator().manual_seed(verify_seed), max_blocks=max(per_seq),
                      cuda_graph=cuda_graph, features=features)
    seqs = list(range(len(prompts)))
    history = {s: list(p) for s, p in zip(seqs, prompts)}
    produced = {s: [] for s in seqs}
    k = {s: num_draft_tokens for s in seqs}
    for s in seqs:
        tgt.start(s)
    # Prefill all but each prompt's last token (the first root).
    pre = [s for s in seqs if len(history[s]) > 1]
    drafter.start(seqs, history)
    if pre:
        capture = features if isinstance(features, tuple) else None
        out = tgt.run(pre, [history[s][:-1] for s in pre], prefill=True, capture=capture)
        stats.target_passes += 1
        if features is not None:
            drafter.prefilled(pre, out[3] if capture else out[1], history)
    active = list(seqs)
    ph = stats.phase_seconds
    while active:
        t0 = time.perf_counter()
        drafts, passes = drafter.propose(active, history, [k[s] for s in active])
        stats.draft_passes += passes
        ph["draft"] += time.perf_counter() - t0
        old_lengths = [len(history[s]) for s in active]
        result = step(active, [history[s][-1] for s in active], drafts)
        stats.target_passes += 1
        t1 = time.perf_counter()
        if min(result.num_accepted) < 0:
            raise RuntimeError("the target produced logits with NaN or no finite value; cannot continue")
        drafter.accepted(active, old_lengths, result)
        finished = []
        for i, s in enumerate(active):
            a = result.num_accepted[i]
            stats.step_tokens += a + 1
            stats.step_sequences += 1
            room = max_new_tokens - len(produced[s])
            new = result.tokens[i][:room]
            if eos_token_id is not None and eos_token_id in new:
                new = new[:new.index(eos_token_id) + 1]
                room = 0
            produced[s] += new
            history[s] += new
            if schedule == "heuristic" and method == "draft":
                k[s] = min(k_cap, k[s] + 2) if a == k[s] else max(1, k[s] - 1)  # all of its budget accepted
            if len(new) >= room:
                finished.append(s)
        for s in finished:
            tgt.free(s)
            drafter.finish(s)
        active = [s for s in active if s not in finished]
        stats.peak_cache_blocks = max(stats.peak_cache_blocks,
                                      num_blocks - padding - tgt.cache.allocator.num_free_blocks)
        stats.verify_steps += 1
        ph["host"] += time.perf_counter() - t1
    step.release()
    for name, seconds in (step.phase_seconds or {}).items():
        ph[name] += seconds
    if cuda_graph:
        ph["verify_graph"] = step.graph_seconds
    stats.seconds = time.perf_counter() - started
    stats.new_tokens = sum(len(v) for v in produced.values())
    tgt.cache.allocator.check_invariants()
    if tgt.cache.allocator.num_free_blocks != num_blocks:
        raise AssertionError("generate leaked target cache blocks")
    if method == "eagle":
        head_alloc = drafter.cache.allocator
        head_alloc.check_invariants()
        if head_alloc.num_free_blocks != head_alloc.num_blocks:
            raise AssertionError("generate leaked EAGLE head cache blocks")
    return GenerationOutput([produced[s] for s in seqs], stats)


__all__ = ["generate", "GenerationOutput", "GenerationStats", "filtered_probs", "VERIFY_RULES"]

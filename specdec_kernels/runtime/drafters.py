"""Drafters: what proposes each step's tokens.

The generate loop calls, per drafter:

* ``start(seqs, history)`` once, after the target's prefill;
* ``propose(seqs, history, ks) -> (drafts, passes)``: a ``Draft`` (a tree,
  optionally with inert rows and draft probabilities) per active sequence,
  ``ks`` being the schedule's token budget per sequence, and the drafter's
  forward passes spent;
* ``accepted(seqs, old_lengths, result)`` after the verify step
  (``step.StepResult``: accepted paths, bonus tokens, the target's hidden
  state at each last accepted node, every row's argmax), to roll its state
  back or learn from the target;
* ``finish(seq)`` when a sequence stops.

``max_rows(k)`` bounds ``1 + len(draft.tokens)`` for a budget ``k`` (cache
sizing). Medusa heads, lookahead and prompt lookup plug in the same way.
"""
from __future__ import annotations

import torch

from ..reference.sampling import philox_uniforms_at
from .step import Draft


def filtered_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """float32 probabilities of each row of ``logits`` (``[..., V]``, any
    device) after temperature, top-k and top-p, by the verify ops' rules
    (``reference.sampling.target_probs``, row-wise, batched), so a drafter
    samples what it reports: top-k keeps z >= the k-th largest z (ties kept);
    top-p keeps a token iff the mass of strictly larger z is < top_p."""
    z = logits.float() / temperature
    vocab = z.shape[-1]
    keep = torch.ones_like(z, dtype=torch.bool)
    if 0 < top_k < vocab:
        keep = z >= torch.topk(z, top_k, dim=-1).values[..., -1:]
    top = torch.where(keep, z, torch.full_like(z, -torch.inf)).max(-1, keepdim=True).values
    e = torch.where(keep, torch.exp(z - top), torch.zeros_like(z))
    if top_p < 1.0:
        order = torch.argsort(z, dim=-1, descending=True, stable=True)
        zs, es = z.gather(-1, order), e.gather(-1, order)
        mass_before = torch.cumsum(es, -1) - es
        first_of_tie = torch.searchsorted(-zs.contiguous(), -zs.contiguous(), side="left")
        mass_above = torch.empty_like(z).scatter_(-1, order, mass_before.gather(-1, first_of_tie))
        e = torch.where(keep & (mass_above < top_p * e.sum(-1, keepdim=True)), e, torch.zeros_like(e))
    return e / e.sum(-1, keepdim=True)


def sample_rows(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """int64 [B]: per row of ``probs`` [B, V] the inverse-CDF draw at
    ``uniforms`` [B] in [0, 1); always a token of positive probability."""
    cum = torch.cumsum(probs, -1)
    picked = torch.searchsorted(cum, (uniforms[:, None] * cum[:, -1:]).contiguous(), right=True).squeeze(-1)
    cols = torch.arange(probs.shape[-1], device=probs.device)
    last_positive = torch.where(probs > 0, cols, torch.zeros_like(cols)).max(-1).values
    return torch.minimum(picked, last_positive)  # rounding at the top end


def chain_drafts(tokens: torch.Tensor, q: torch.Tensor | None, counts: list | None = None) -> list[Draft]:
    """One Draft per row of ``tokens`` int64 [B, K] (-1: nothing drafted
    there) with ``q`` float32 [B, K + 1, V] (row j: what token j was sampled
    from, zeros where nothing was; None: greedy), all on the device.
    ``counts``: cut row b to its first ``counts[b]`` tokens (and q rows + 1)."""
    cut = [tokens.shape[1]] * tokens.shape[0] if counts is None else counts
    if q is None:
        return [Draft(tokens=row[:n]) for row, n in zip(tokens, cut)]
    return [Draft(tokens=row[:n], q=rows[:n + 1]) for row, rows, n in zip(tokens, q, cut)]


class TokenPrefixes:
    """Bytes each sequence's draft must spell first, as a mask over the
    draft's vocabulary built on the device (no loop over the vocabulary):
    a token is allowed iff its bytes and what is left of the prefix agree
    on their common length.

    Args:
        table: ``(bytes [V, L] int32 padded with -1, lengths [V])`` on the
            device (``byte_table``), built once per tokenizer.
        prefixes: one ``bytes`` per sequence of the batch.
    """

    def __init__(self, table, prefixes: list[bytes], allowed: torch.Tensor | None = None):
        """``allowed``: bool [V], the only tokens ever offered (token-level
        intersection: the vocabulary shared with the target); a prefix is
        then spelt by whole tokens, none running past it."""
        self.bytes, self.lengths = table
        self.allowed = allowed
        dev = self.bytes.device
        self.prefix, self.left = byte_table(prefixes, dev)  # [B, P] padded with -1, lengths [B]
        self.done = torch.zeros(len(prefixes), dtype=torch.int64, device=dev)  # prefix bytes spelt so far

    def mask(self, logits: torch.Tensor, rows) -> torch.Tensor:
        """``logits`` [n, V] of the batch rows ``rows`` (None: all), with the
        tokens that disagree with the prefix at -inf."""
        done = self.done if rows is None else self.done[rows]
        left = (self.left if rows is None else self.left[rows]) - done
        if self.allowed is not None:
            logits = logits.masked_fill(~self.allowed, float("-inf"))
        if logits.device.type == "cpu" and not bool((left > 0).any()):
            return logits  # no prefix left anywhere (free to check on the CPU)
        width = min(self.prefix.shape[1], self.bytes.shape[1])  # no token spells more than the table's width
        cols = torch.arange(width, device=logits.device)
        prefix = self.prefix if rows is None else self.prefix[rows]
        last = self.prefix.shape[1] - 1
        want = prefix.gather(1, (done[:, None] + cols[None]).clamp(max=last))  # [n, width]
        have = self.bytes[:, :width]  # [V, width]
        span = torch.minimum(self.lengths[None, :], left.clamp(min=0)[:, None])  # [n, V]: bytes compared
        agree = (have[None] == want[:, None]) | (cols[None, None] >= span[..., None])
        # A token that spells nothing cannot advance a prefix; with none left, anything goes.
        allowed = agree.all(-1) & ((self.lengths[None, :] > 0) | (left <= 0)[:, None])
        if self.allowed is not None:  # whole tokens only: the proposal proper starts on a token boundary
            allowed &= (self.lengths[None, :] <= left[:, None]) | (left <= 0)[:, None]
        return logits.masked_fill(~allowed, float("-inf"))

    def consume(self, picked: torch.Tensor, rows) -> None:
        spelt = self.lengths[picked]
        if rows is None:
            self.done += spelt
        else:
            self.done.index_add_(0, rows, spelt)


def byte_table(token_bytes: list[bytes], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 [n, max length] padded with -1, int64 lengths [n]) on ``device``
    from n byte strings: ``TokenPrefixes``' table of each token's bytes, and
    its prefixes."""
    width = max(1, max(len(b) for b in token_bytes))
    table = torch.full((len(token_bytes), width), -1, dtype=torch.int32)
    for i, b in enumerate(token_bytes):
        table[i, :len(b)] = torch.tensor(list(b), dtype=torch.int32)
    return table.to(device), torch.tensor([len(b) for b in token_bytes], dtype=torch.int64).to(device)


class NoDrafter:
    """Plain autoregressive decoding: nothing is drafted."""

    def start(self, seqs, history):
        pass

    def max_rows(self, k):
        return 1

    def propose(self, seqs, history, ks):
        return [Draft() for _ in seqs], 0

    def accepted(self, seqs, old_lengths, result):
        pass

    def finish(self, seq):
        pass


class DraftModelDrafter:
    """A smaller model drafts up to k tokens per sequence autoregressively,
    greedy or sampled with the target's sampling parameters (keeping q for
    exact rejection sampling), all on the device: every draft has ``K =
    max(ks)`` nodes; a sequence's tokens past its own budget (or after it
    stopped) are -1, never accepted, with zero q rows, so the proposal is
    exactly the chain it drafted. Each pass feeds the sequences whose budget
    is not spent (host numbers). Draws are Philox uniforms keyed by a running
    counter.
    ``dynamic_threshold``: a sequence stops drafting once the drafter's top
    probability falls below it (after the first token); drafting stops when
    none is left, which reads one flag back per draft pass.

    ``fixed_shape`` (default: on a GPU) keeps every draft K nodes long, so a
    step's drafts share one chain template and nothing is read back; off
    (the CPU, where reading is free and every verified row costs compute)
    each draft is cut to what was drafted."""

    fixed_shape: bool | None = None

    def __init__(self, model, sampling: dict, generator: torch.Generator, dynamic_threshold: float | None = None):
        self.model = model  # a generate.CachedModel
        self.sampling = sampling
        self.dynamic_threshold = dynamic_threshold
        self._seed = int(torch.randint(2**62, (1,), generator=generator))
        self._drawn = 0  # uniforms used so far: the next draws' Philox counter

    def start(self, seqs, history):
        for s in seqs:
            self.model.start(s)
        pre = [s for s in seqs if len(history[s]) > 1]
        if pre:
            self.model.run(pre, [history[s][:-1] for s in pre], prefill=True)

    def max_rows(self, k):
        return k + 1

    def propose(self, seqs, history, ks, prefixes=None):
        """``prefixes`` (a ``TokenPrefixes``): per sequence bytes the draft
        must spell first (token healing); each pass only offers tokens that
        agree with what is left of them."""
        greedy = self.sampling["temperature"] == 0
        dev, batch, k = self.model.device, len(seqs), max(ks)
        vocab = self.model.model.config.vocab_size
        tokens = torch.full((batch, k), -1, dtype=torch.int64, device=dev)
        q = None if greedy else torch.zeros(batch, k + 1, vocab, dtype=torch.float32, device=dev)
        alive = torch.ones(batch, dtype=torch.bool, device=dev)  # not stopped by the dynamic schedule
        picked_all = torch.zeros(batch, dtype=torch.int64, device=dev)
        # The first pass feeds whatever each cache is missing (host lists).
        logits, _, indptr = self.model.run(seqs, [history[s][self.model.length(s):] for s in seqs])
        live, rows, passes = list(range(batch)), None, 1  # rows: `live` on the device (None: all)
        for j in range(k):
            last = logits[(indptr[1:] - 1).long()].float()
            if prefixes is not None:
                last = prefixes.mask(last, rows)
            if greedy:
                picked = last.argmax(-1)
                probs = torch.softmax(last, -1) if self.dynamic_threshold is not None else None
            else:
                probs = filtered_probs(last, **self.sampling)
                offsets = torch.arange(self._drawn, self._drawn + len(live), device=dev)
                self._drawn += len(live)
                picked = sample_rows(probs, philox_uniforms_at(self._seed, offsets))
            ok = alive if rows is None else alive[rows]
            if self.dynamic_threshold is not None and j > 0:
                ok = ok & (probs.max(-1).values >= self.dynamic_threshold)
                if not bool(ok.any()):  # the dynamic schedule's read-back: no fed sequence left
                    break
                alive = ok if rows is None else alive.index_copy(0, rows, ok)
            at = slice(None) if rows is None else rows
            tokens[at, j] = torch.where(ok, picked, -1)
            if q is not None:
                q[at, j] = torch.where(ok[:, None], probs, 0.0)
            picked_all[at] = picked
            if prefixes is not None:
                prefixes.consume(picked, rows)
            # Budgets are host numbers: a sequence whose budget is spent is not fed again.
            live = [i for i in live if ks[i] > j + 1]
            if not live:
                break
            rows = torch.tensor(live).to(dev) if len(live) < batch else None
            feed = picked_all if rows is None else picked_all[rows]
            logits, _, indptr = self.model.run_tokens([seqs[i] for i in live], feed)
            passes += 1
        fixed = self.fixed_shape if self.fixed_shape is not None else dev.type != "cpu"
        return chain_drafts(tokens, q, None if fixed else (tokens >= 0).sum(1).tolist()), passes

    def accepted(self, seqs, old_lengths, result):
        # The cache holds the old history plus the drafts it was fed; keep
        # those the target accepted.
        for s, old, a in zip(seqs, old_lengths, result.num_accepted):
            self.model.set_length(s, min(self.model.length(s), old + a))

    def finish(self, seq):
        self.model.free(seq)

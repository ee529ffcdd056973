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

from ..reference.sampling import target_probs
from .step import Draft


def filtered_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """float32 probabilities of one row after temperature, top-k and top-p,
    by the verify ops' exact rules (so a drafter samples what it reports)."""
    return target_probs(logits.float().cpu(), temperature, top_k, top_p)


def chain_draft(tokens: list[int], q_rows: list[torch.Tensor], vocab: int) -> Draft:
    """A drafted chain; ``q_rows[j]``: the distribution token j was sampled
    from (empty: greedy). The leaf's row is zeros: it has no children."""
    if not q_rows:
        return Draft(tokens=list(tokens))
    q = torch.zeros(len(tokens) + 1, vocab, dtype=torch.float32)
    q[:len(q_rows)] = torch.stack([r.float().cpu() for r in q_rows])
    return Draft(tokens=list(tokens), q=q)


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
    exact rejection sampling). ``dynamic_threshold``: stop a sequence's
    drafting once the drafter's top probability falls below it (after the
    first token)."""

    def __init__(self, model, sampling: dict, generator: torch.Generator, dynamic_threshold: float | None = None):
        self.model = model  # a generate.CachedModel
        self.sampling = sampling
        self.generator = generator
        self.dynamic_threshold = dynamic_threshold

    def start(self, seqs, history):
        for s in seqs:
            self.model.start(s)
        pre = [s for s in seqs if len(history[s]) > 1]
        if pre:
            self.model.run(pre, [history[s][:-1] for s in pre], prefill=True)

    def max_rows(self, k):
        return k + 1

    def propose(self, seqs, history, ks):
        greedy = self.sampling["temperature"] == 0
        drafts = {s: [] for s in seqs}
        qs = {s: [] for s in seqs}
        want = dict(zip(seqs, ks))
        chains = {s: history[s][self.model.length(s):] for s in seqs}
        drafting = list(seqs)
        passes = 0
        while drafting:
            logits, _, indptr = self.model.run(drafting, [chains[s] for s in drafting])
            passes += 1
            last = logits[(indptr[1:] - 1).long()].float()
            # One device-to-host copy per draft pass for the whole batch.
            if greedy:
                top = torch.softmax(last, -1).max(-1)
                picked, confidence = top.indices.tolist(), top.values.tolist()
                rows = [None] * len(drafting)
            else:
                rows = [filtered_probs(r, **self.sampling) for r in last.cpu()]
                picked = [int(torch.multinomial(r, 1, generator=self.generator)) for r in rows]
                confidence = [float(r.max()) for r in rows]
            still = []
            for i, s in enumerate(drafting):
                if self.dynamic_threshold is not None and drafts[s] and confidence[i] < self.dynamic_threshold:
                    continue
                drafts[s].append(picked[i])
                if not greedy:
                    qs[s].append(rows[i])
                if len(drafts[s]) < want[s]:
                    chains[s] = [picked[i]]
                    still.append(s)
            drafting = still
        vocab = self.model.model.config.vocab_size
        return [chain_draft(drafts[s], qs[s], vocab) for s in seqs], passes

    def accepted(self, seqs, old_lengths, result):
        # The cache holds the old history plus the drafts it was fed; keep
        # those the target accepted.
        for s, old, a in zip(seqs, old_lengths, result.num_accepted):
            self.model.set_length(s, min(self.model.length(s), old + a))

    def finish(self, seq):
        self.model.free(seq)

"""Drafters: what proposes each step's tokens. The generate loop asks a
drafter to ``propose`` a chain per active sequence and tells it, through
``accepted``, how much of it the target kept, so it can roll its own state
back; Medusa heads, lookahead and prompt lookup plug in the same way."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..reference.sampling import target_probs


def filtered_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """float32 probabilities of one row after temperature, top-k and top-p,
    by the verify ops' exact rules (so a drafter samples what it reports)."""
    return target_probs(logits.float().cpu(), temperature, top_k, top_p)


@dataclass
class ChainProposal:
    tokens: list[list[int]]  # drafted tokens per active sequence (may be empty)
    q_rows: list[torch.Tensor | None]  # per sequence: float32 [len(tokens), V], row j drew token j; None = greedy
    passes: int  # drafter forward passes spent

    def draft_probs(self, chains, device) -> torch.Tensor | None:
        """[N, V] rows aligned with the chains (root first): node j's row is the
        distribution node j+1 was drawn from; leaves get an unused uniform row."""
        known = [q for q in self.q_rows if q is not None]
        if not known:
            return None
        vocab = known[0].shape[1]
        rows = []
        for chain, q in zip(chains, self.q_rows):
            if q is not None:
                rows.append(q)
            rows.append(torch.full((len(chain) - (q.shape[0] if q is not None else 0), vocab), 1.0 / vocab))
        return torch.cat(rows).to(device)


class NoDrafter:
    """Plain autoregressive decoding: nothing is drafted."""

    def start(self, seqs, history):
        pass

    def propose(self, seqs, history, ks) -> ChainProposal:
        return ChainProposal([[] for _ in seqs], [None for _ in seqs], 0)

    def accepted(self, seq, old_len, num_accepted):
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

    def propose(self, seqs, history, ks) -> ChainProposal:
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
            still = []
            for i, s in enumerate(drafting):
                if greedy:
                    probs = torch.softmax(last[i], 0)
                    token = int(last[i].argmax())
                else:
                    probs = filtered_probs(last[i], **self.sampling)
                    token = int(torch.multinomial(probs, 1, generator=self.generator))
                if self.dynamic_threshold is not None and drafts[s] and float(probs.max()) < self.dynamic_threshold:
                    continue
                drafts[s].append(token)
                if not greedy:
                    qs[s].append(probs)
                if len(drafts[s]) < want[s]:
                    chains[s] = [token]
                    still.append(s)
            drafting = still
        q_rows = [torch.stack(qs[s]) if qs[s] else None for s in seqs]
        return ChainProposal([drafts[s] for s in seqs], q_rows, passes)

    def accepted(self, seq, old_len, num_accepted):
        # The cache holds the old history plus the drafts it was fed; keep
        # those the target accepted.
        self.model.set_length(seq, min(self.model.length(seq), old_len + num_accepted))

    def finish(self, seq):
        self.model.free(seq)

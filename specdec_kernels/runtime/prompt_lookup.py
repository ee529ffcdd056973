"""Prompt-lookup decoding (Saxena 2023; Hugging Face's
``prompt_lookup_num_tokens``): draft the tokens that followed the most recent
earlier occurrence of the sequence's last n-gram, n from ``max_ngram`` down
to 1, in the prompt plus the output so far. Verified as a chain.

The token history of every sequence lives in one padded tensor on the
model's device; matching is a batched comparison of all windows, so a step
costs a few tensor ops; on a GPU the drafts stay there (fixed K nodes, -1
where nothing matched), on the CPU they are trimmed to what matched.
"""
from __future__ import annotations

import torch

from .step import Draft


class PromptLookupDrafter:
    def __init__(self, num_tokens: int = 10, max_ngram: int = 3, device="cpu", fixed_shape: bool | None = None):
        """``fixed_shape``: always ``num_tokens`` nodes, -1 past the match, so
        the drafts stay on the device (default: on a GPU)."""
        if num_tokens < 1 or max_ngram < 1:
            raise ValueError(f"prompt lookup needs num_tokens >= 1 and max_ngram >= 1, got {num_tokens}, "
                             f"{max_ngram}")
        self.num_tokens, self.max_ngram, self.device = num_tokens, max_ngram, torch.device(device)
        self.fixed_shape = self.device.type != "cpu" if fixed_shape is None else fixed_shape
        self.rows, self.tokens, self.lengths, self.host_lengths = {}, None, None, []

    def max_rows(self, k):
        return self.num_tokens + 1

    def start(self, seqs, history):
        self.rows = {s: i for i, s in enumerate(seqs)}
        longest = max(len(history[s]) for s in seqs)
        self.tokens = torch.full((len(seqs), 2 * longest + 64), -1, dtype=torch.int64, device=self.device)
        self.lengths = torch.zeros(len(seqs), dtype=torch.int64, device=self.device)
        self.host_lengths = [0] * len(seqs)  # the same, kept on the host so appending never reads the device
        for s in seqs:
            self._append(s, history[s])

    def _append(self, seq, new):
        row = self.rows[seq]
        start = self.host_lengths[row]
        if start + len(new) > self.tokens.shape[1]:
            grown = torch.full((self.tokens.shape[0], 2 * (start + len(new))), -1, dtype=torch.int64,
                               device=self.device)
            grown[:, :self.tokens.shape[1]] = self.tokens
            self.tokens = grown
        self.tokens[row, start:start + len(new)] = torch.tensor(new, dtype=torch.int64, device=self.device)
        self.host_lengths[row] = start + len(new)
        self.lengths[row] = start + len(new)

    def propose(self, seqs, history, ks):
        rows = torch.tensor([self.rows[s] for s in seqs], device=self.device)
        found = lookup(self.tokens[rows], self.lengths[rows], self.max_ngram, self.num_tokens)
        if not self.fixed_shape:  # on the CPU reading it is free: draft only what matched
            return [Draft(tokens=[t for t in toks if t >= 0]) for toks in found.tolist()], 0
        # K nodes per sequence, -1 past the match (never accepted), no read-back.
        return [Draft(tokens=found[i]) for i in range(len(seqs))], 0

    def accepted(self, seqs, old_lengths, result):
        for s, toks in zip(seqs, result.tokens):
            self._append(s, toks)

    def finish(self, seq):
        pass


def lookup(tokens: torch.Tensor, lengths: torch.Tensor, max_ngram: int, num_tokens: int) -> torch.Tensor:
    """Batched n-gram lookup.

    Args:
        tokens: int64 ``[B, L]``, each row's history left-aligned (the rest any value).
        lengths: int64 ``[B]``, history lengths (>= 1).
    Returns:
        int64 ``[B, num_tokens]``: per row the up to ``num_tokens`` tokens that
        followed the most recent earlier occurrence (start before
        ``length - n``) of the row's last ``n``-gram, for the largest ``n <=
        max_ngram`` that occurs; -1 where there is nothing (no match, or the
        history ends first).
    """
    batch, width = tokens.shape
    device = tokens.device
    cols = torch.arange(width, device=device)
    best_start = torch.full((batch,), -1, dtype=torch.int64, device=device)
    for n in range(max_ngram, 0, -1):
        if n >= width:
            continue
        # The last n tokens of each row.
        tail_idx = (lengths[:, None] - n + torch.arange(n, device=device)[None]).clamp(min=0)
        tail = tokens.gather(1, tail_idx)
        windows = tokens.unfold(1, n, 1)  # [B, L - n + 1, n]
        match = (windows == tail[:, None, :]).all(-1)
        starts = cols[:width - n + 1][None]
        # An earlier occurrence with at least one token after it inside the history.
        match &= (starts + n < lengths[:, None]) & (lengths[:, None] > n)
        last = torch.where(match, starts, torch.full_like(starts, -1)).max(1).values
        follow = torch.where(last >= 0, last + n, last)
        best_start = torch.where((best_start < 0) & (follow >= 0), follow, best_start)
    idx = best_start[:, None] + torch.arange(num_tokens, device=device)[None]
    valid = (best_start[:, None] >= 0) & (idx < lengths[:, None])
    out = tokens.gather(1, idx.clamp(0, width - 1))
    return torch.where(valid, out, torch.full_like(out, -1))

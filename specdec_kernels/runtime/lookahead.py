"""Lookahead (Jacobi) decoding (Fu et al. 2024) as a drafter.

Per sequence a Jacobi window of ``N - 1`` levels x ``W`` columns and an
n-gram pool. Each step feeds, in one target forward under the packed
``lookahead_mask`` layout, the window (lookahead branch: inert rows, never
verified) and up to ``G`` pool n-grams that start with the current token
(verification branch: chains under the root, verified as a tree, greedy or
with the lossless point-mass rejection rule). Afterwards the target's argmax at
the window's last level becomes a new level, each column's trajectory is an
n-gram for the pool, and the window slides up a level.

Pool and window live on the model's device; insertion and lookup are batched
tensor ops over a fixed-size hash table (``NgramPool``), and the proposals
reach the verify step as a device tensor: a step reads nothing back for them.
"""
from __future__ import annotations

import torch

from ..trees import lookahead_mask
from .step import Draft
from .templates import DraftTemplate


class NgramPool:
    """Per row (sequence) a hash table of n-grams keyed by their first token:
    ``slots`` buckets of ``ways`` entries, ring-written per bucket (the oldest
    entry goes first), no duplicates. All operations are batched tensor ops."""

    def __init__(self, rows: int, ngram: int, ways: int, slots: int = 1024, device="cpu"):
        self.ngram, self.ways, self.slots = ngram, max(1, ways), slots
        self.keys = torch.full((rows, slots, self.ways), -1, dtype=torch.int64, device=device)
        self.tails = torch.full((rows, slots, self.ways, ngram - 1), -1, dtype=torch.int64, device=device)
        self.next = torch.zeros(rows, slots, dtype=torch.int64, device=device)

    def insert(self, rows: torch.Tensor, grams: torch.Tensor) -> None:
        """Add n-grams: ``rows`` int64 ``[R]``, ``grams`` int64 ``[R, C, N]``;
        grams holding a negative token are skipped."""
        count = grams.shape[1]
        if count == 0:
            return
        device = grams.device
        first, tail = grams[..., 0], grams[..., 1:]
        slot = first.clamp(min=0) % self.slots  # [R, C]
        r = rows[:, None].expand_as(slot)
        known = ((self.keys[r, slot] == first[..., None]) & (self.tails[r, slot] == tail[:, :, None]).all(-1)).any(-1)
        earlier = torch.ones(count, count, dtype=torch.bool, device=device).tril(-1)  # [c, c'] c' < c
        same = (grams[:, :, None] == grams[:, None]).all(-1) & earlier
        ok = (grams >= 0).all(-1) & ~known & ~same.any(-1)
        # Rank among this call's accepted grams of the same bucket: the ring offset.
        rank = ((slot[:, :, None] == slot[:, None]) & ok[:, None] & earlier).sum(-1)
        ok &= rank < self.ways  # more than `ways` new grams for one bucket: keep the first
        way = (self.next[r, slot] + rank) % self.ways
        rs, ss, ws = r[ok], slot[ok], way[ok]
        self.keys[rs, ss, ws] = first[ok]
        self.tails[rs, ss, ws] = tail[ok]
        self.next.index_put_((rs, ss), torch.ones_like(rs), accumulate=True)

    def lookup(self, rows: torch.Tensor, first: torch.Tensor, limit: int):
        """-> (tails int64 ``[R, limit, N-1]``, found bool ``[R, limit]``): up
        to ``limit`` entries starting with ``first[r]``, newest first."""
        slot = first % self.slots
        keys, tails = self.keys[rows, slot], self.tails[rows, slot]  # [R, ways], [R, ways, N-1]
        # Newest first: the entry just before the ring pointer, going back.
        order = (self.next[rows, slot][:, None] - 1 - torch.arange(self.ways, device=first.device)) % self.ways
        keys, tails = keys.gather(1, order), tails.gather(1, order[..., None].expand_as(tails))
        hit = keys == first[:, None]
        # Hits to the front, stable: sort by (not hit).
        idx = torch.sort((~hit).to(torch.int8), dim=1, stable=True).indices
        hit, tails = hit.gather(1, idx), tails.gather(1, idx[..., None].expand_as(tails))
        if limit > self.ways:
            pad = limit - self.ways
            hit = torch.cat([hit, hit.new_zeros(hit.shape[0], pad)], 1)
            tails = torch.cat([tails, tails.new_full((tails.shape[0], pad, tails.shape[2]), -1)], 1)
        return tails[:, :limit], hit[:, :limit]


class LookaheadDrafter:
    def __init__(self, window: int = 7, ngram: int = 5, guesses: int = 7, *, generator=None, device="cpu",
                 pool_slots: int = 1024):
        self.layout = lookahead_mask(window, ngram, guesses)  # validates W, N, G and the size
        self.w, self.n, self.g = window, ngram, guesses
        self.device = torch.device(device)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.pool_slots = pool_slots
        lay = self.layout
        levels = ngram - 1
        self.last_level = torch.tensor(lay.last_level_rows, device=self.device)
        # Window cells are inert; guess g's token k hangs under token k-1 (token 0 under the root).
        parents = [-1] * (levels * window - 1) + [0 if k == 0 else lay.guess_rows[g][k - 1]
                                                  for g in range(guesses) for k in range(levels)]
        self.template = DraftTemplate(parents, lay.positions.tolist()[1:], list(lay._rows[1:]))

    def max_rows(self, k):
        return self.layout.size

    def start(self, seqs, history):
        self.rows = {s: i for i, s in enumerate(seqs)}
        count = len(seqs)
        self.pool = NgramPool(count, self.n, self.g, self.pool_slots, self.device)
        # The window starts as random prompt tokens (as LADE seeds it).
        window = torch.empty(count, self.n - 1, self.w, dtype=torch.int64)
        for i, s in enumerate(seqs):
            prompt = torch.tensor(history[s], dtype=torch.int64)
            window[i] = prompt[torch.randint(len(prompt), (self.n - 1, self.w), generator=self.generator)]
        self.window = window.to(self.device)
        # The prompt's own n-grams seed the pool (copies from the prompt are
        # lookahead's cheapest wins), in chunks to bound the pairwise dedup.
        for i, s in enumerate(seqs):
            prompt = torch.tensor(history[s], dtype=torch.int64, device=self.device)
            if prompt.numel() >= self.n:
                grams = prompt.unfold(0, self.n, 1)
                for c in range(0, grams.shape[0], 256):
                    self.pool.insert(torch.tensor([i], device=self.device), grams[None, c:c + 256])

    def propose(self, seqs, history, ks):
        rows = torch.tensor([self.rows[s] for s in seqs], device=self.device)
        roots = torch.tensor([history[s][-1] for s in seqs], dtype=torch.int64, device=self.device)
        self.window[rows, 0, 0] = roots
        guesses, found = self.pool.lookup(rows, roots, self.g)  # [B, G, N-1], [B, G]
        # A guess the pool does not have is a chain of -1 tokens: never
        # accepted, so the layout (and a captured graph) keeps one shape.
        guesses = torch.where(found[..., None], guesses, torch.full_like(guesses, -1))
        window = self.window[rows].reshape(len(seqs), -1)[:, 1:]
        tokens = torch.cat([window, guesses.reshape(len(seqs), -1)], 1)  # stays on the device
        return [Draft(tokens=tokens[i], template=self.template) for i in range(len(seqs))], 0

    def accepted(self, seqs, old_lengths, result):
        rows = torch.tensor([self.rows[s] for s in seqs], device=self.device)
        starts = torch.tensor(result.row_start, device=result.argmax.device)
        new = result.argmax[starts[:, None] + self.last_level.to(starts.device)[None]].to(self.device)  # [B, W]
        window = self.window[rows]
        grams = torch.cat([window.transpose(1, 2), new[:, :, None]], 2)  # [B, W, N]: each column's trajectory
        self.pool.insert(rows, grams)
        self.window[rows] = torch.cat([window[:, 1:], new[:, None]], 1)

    def finish(self, seq):
        pass

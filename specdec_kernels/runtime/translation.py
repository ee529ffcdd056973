"""Drafting with a model of another vocabulary (universal assisted
generation, Hugging Face transformers 4.46+; exact sampling as in Timor et
al., ICML 2025).

Per sequence the drafter keeps a *view*: the target's text as bytes (valid
UTF-8 when the draft's tokenizer needs it: an incomplete trailing character
waits, an invalid byte becomes U+FFFD in the view only) and the draft's
tokens for all of it but its last word (its last pre-token, which a later
byte could still re-tokenize: token healing, so the draft never conditions
on a word cut in two). Each step:

1. the draft model proposes up to K of its tokens (``DraftModelDrafter``),
   offered at each position only the tokens that agree with what is left of
   the held-back bytes (``drafters.TokenPrefixes``, a mask built on the
   device);
2. their bytes continue the draft's text; they must first spell the held-back
   word and any character the target left incomplete, else nothing is
   proposed;
3. the target's tokenizer re-encodes the last few target tokens
   (``lookbehind``) plus the proposed bytes; if the look-behind re-encodes
   to the very tokens the target has, what follows is the proposal in
   target tokens (else nothing is proposed: the boundary would move);
4. the target verifies it as a point-mass chain: greedy keeps the target's
   own argmax, and rejection sampling without q is lossless for any
   proposal, so output is exactly the target's, greedy or sampled;
5. the accepted bytes extend the view; the draft's last ``lookbehind``
   tokens and the new bytes are re-encoded, and the draft's cache is cut
   back to the longest common prefix of what it held and the new tokens.

Host work per step is O(batch x (lookbehind + K)): tokenization is host work;
the draft's proposals are read back once per step (one sync) to translate.
"""
from __future__ import annotations

import codecs

import torch

from .drafters import TokenPrefixes, byte_table
from .step import Draft
from .tokenization import ByteTokenizer, TokenizerMismatchError, char_start, valid_prefix


def _common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _View:
    """One sequence's target text as the draft sees it, and its draft tokens."""

    def __init__(self, raw_bytes: bool):
        # raw_bytes: the draft encodes any bytes (ByteTokenizer): no decoding.
        self.decoder = None if raw_bytes else codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.data = bytearray()
        self.cut = 0  # the draft's tokens spell data[:cut]; the last word waits (token healing)
        self.ids: list[int] = []
        self.ends: list[int] = []  # byte offset in ``data`` after each draft token

    def pending(self) -> bytes:
        """What a proposal must start with: the held-back last word and the
        target bytes not in the view yet (an incomplete trailing character)."""
        return bytes(self.data[self.cut:]) + (b"" if self.decoder is None else self.decoder.getstate()[0])

    def absorb(self, new: bytes) -> bytes:
        """Append the target's new bytes; returns what the view gained."""
        gained = new if self.decoder is None else self.decoder.decode(new).encode("utf-8")
        self.data += gained
        return gained

    def boundary(self, i: int) -> bool:
        return self.decoder is None or i >= len(self.data) or self.data[i] & 0xC0 != 0x80


class TranslatingDrafter:
    """A ``DraftModelDrafter`` whose model has its own tokenizer.

    Args:
        core: the ``DraftModelDrafter`` (its ``model``: a ``CachedModel`` of the draft).
        draft_tokenizer, target_tokenizer: adapters (``tokenization.as_tokenizer``).
        lookbehind: tokens re-encoded on each side around a boundary.
        max_target_tokens: the most target tokens proposed per step.
    """

    def __init__(self, core, draft_tokenizer, target_tokenizer, *, lookbehind: int = 8, max_target_tokens: int = 32,
                 intersection: bool = False):
        if lookbehind < 1 or max_target_tokens < 1:
            raise ValueError(f"lookbehind and max_target_tokens must be >= 1, got {lookbehind}, {max_target_tokens}")
        self.core, self.draft, self.target = core, draft_tokenizer, target_tokenizer
        self.lookbehind, self.max_target_tokens = lookbehind, max_target_tokens
        self.intersection = intersection
        core.fixed_shape = True  # one read-back of the whole batch's proposals
        # Built on first use (the draft model is attached after construction):
        self._spelt = None  # per draft id (the model's vocabulary) its bytes, b"" past the tokenizer's
        self._table = None  # the same on the device (token healing)
        self._shared = None  # token-level intersection, see _shared_vocabulary
        self.views: dict = {}
        self._proposed: dict = {}  # seq -> the draft tokens proposed last step

    def max_rows(self, k):
        return self.max_target_tokens + 1

    # -- the view ---------------------------------------------------------------------------
    def _sync(self, seq, new_target_ids) -> tuple[int, list[int]]:
        """Absorb target tokens and re-encode the view's tail, in place:
        O(lookbehind + new bytes), never the whole history. Returns (how many
        leading draft tokens stayed, the old tokens after them)."""
        view = self.views[seq]
        gained = view.absorb(self.target.token_bytes(new_target_ids))
        old = view.ids
        # The last word lies in the last 64 bytes (word_start's window; 4 more for a character's start).
        base = max(0, len(view.data) - 68)
        cut = base + self.draft.word_start(bytes(view.data[base:]))
        if not gained or cut == view.cut:
            return len(old), []
        keep = max(0, len(old) - self.lookbehind)
        while keep > 0 and (view.ends[keep - 1] > cut or not view.boundary(view.ends[keep - 1])):
            keep -= 1  # the draft token before the window ends inside a character (or past the cut)
        start = view.ends[keep - 1] if keep else 0
        tail = bytes(view.data[start:cut])
        view.cut = cut
        try:
            fresh = self.draft.encode(tail)
        except (TokenizerMismatchError, UnicodeDecodeError) as e:
            raise TokenizerMismatchError(f"the draft tokenizer {self.draft!r} cannot encode the target's text "
                                         f"{tail[:40]!r}...: {e}") from None
        dropped = old[keep:]
        del old[keep:], view.ends[keep:]
        pos = start
        for i in fresh:
            pos += len(self.draft.token_bytes([i]))
            view.ends.append(pos)
        old.extend(fresh)
        return keep, dropped

    def start(self, seqs, history):
        raw = isinstance(self.draft, ByteTokenizer)
        for s in seqs:
            self.views[s] = _View(raw)
            self._sync(s, history[s])
            self._proposed[s] = []
        live = [s for s in seqs if self.views[s].ids]
        self.core.start(live, {s: self.views[s].ids for s in live})
        self._started = set(live)

    # -- proposing --------------------------------------------------------------------------
    def _to_target(self, seq, history, proposal: bytes) -> list[int]:
        """The proposed bytes as target tokens continuing ``history[seq]``, or []."""
        if isinstance(self.target, ByteTokenizer):
            return list(proposal[:self.max_target_tokens])
        ids = history[seq]
        j = max(0, len(ids) - self.lookbehind)
        behind = self.target.token_bytes(ids[j:])
        while j > 0 and behind and behind[0] & 0xC0 == 0x80:  # start the window on a character
            j -= 1
            behind = self.target.token_bytes(ids[j:])
        text = behind + proposal
        cut = valid_prefix(text)
        if cut <= len(behind):
            return []
        try:
            encoded = self.target.encode(text[:cut])
        except TokenizerMismatchError:
            return []
        if encoded[:len(ids) - j] != ids[j:]:
            return []  # the look-behind re-encodes differently: the boundary would move
        return encoded[len(ids) - j:][:self.max_target_tokens]

    def propose(self, seqs, history, ks):
        live = [i for i, s in enumerate(seqs) if self.views[s].ids]
        drafts = [Draft() for _ in seqs]
        if not live:
            return drafts, 0
        for i in live:
            s = seqs[i]
            if s not in self._started:  # a view that was empty at start has text now
                self.core.model.start(s)
                self._started.add(s)
        sub = [seqs[i] for i in live]
        if self._table is None:
            vocab = self.core.model.model.config.vocab_size
            self._spelt = [self.draft.token_bytes([i]) if i < self.draft.vocab_size else b"" for i in range(vocab)]
            self._table = byte_table(self._spelt, self.core.model.device)
        pending = [self.views[s].pending() for s in sub]
        budget = [ks[i] for i in live]
        if self.intersection:
            return self._propose_shared(seqs, live, sub, pending, budget, drafts)
        prefixes = TokenPrefixes(self._table, pending)
        proposed, passes = self.core.propose(sub, {s: self.views[s].ids for s in sub}, budget, prefixes)
        rows = torch.stack([d.tokens for d in proposed]).tolist()  # the step's read-back of the proposals
        for i, s, row, asked in zip(live, sub, rows, pending):
            drafted = row[:row.index(-1)] if -1 in row else row
            self._proposed[s] = drafted
            data = self.draft.token_bytes(drafted)
            if not data.startswith(asked):
                continue  # the draft does not complete the character the target started
            drafts[i] = Draft(tokens=self._to_target(s, history, data[len(asked):]))
        return drafts, passes

    def _shared_vocabulary(self):
        """Draft tokens that are target tokens too (the same bytes): (allowed
        bool [Vd] and the shared draft ids [S], on the device; their target
        ids [S] on the device; draft id -> target id or -1, a host list)."""
        if self._shared is None:
            target_ids = {self.target.token_bytes([t]): t for t in range(self.target.vocab_size)}
            to_target = [target_ids.get(b, -1) if b else -1 for b in self._spelt]
            shared = [d for d, t in enumerate(to_target) if t >= 0]
            dev = self.core.model.device
            allowed = torch.zeros(len(to_target), dtype=torch.bool)
            allowed[shared] = True
            self._shared = (allowed.to(dev), torch.tensor(shared).to(dev),
                            torch.tensor([to_target[d] for d in shared]).to(dev), to_target)
        return self._shared

    def _propose_shared(self, seqs, live, sub, pending, budget, drafts):
        """Token-level intersection (Timor et al.): the draft is offered only
        the tokens both vocabularies share, so its tokens are target tokens
        and, sampled, its q (renormalised over them) is the proposal's
        distribution in the target's vocabulary: rejection sampling with q.
        The held-back bytes are spelt first by whole shared tokens (not
        proposed: the target has them); each sequence's budget counts the
        tokens after them."""
        allowed, shared, shared_target, to_target = self._shared_vocabulary()
        prefixes = TokenPrefixes(self._table, pending, allowed)
        # Shared tokens spelling a prefix are at least one byte each: len(prefix) more positions at most.
        extra = [len(p) for p in pending]
        proposed, passes = self.core.propose(sub, {s: self.views[s].ids for s in sub},
                                             [k + e for k, e in zip(budget, extra)], prefixes)
        rows = torch.stack([d.tokens for d in proposed]).tolist()  # the step's read-back of the proposals
        vocab_t = self.target.vocab_size
        for b, (i, s, row) in enumerate(zip(live, sub, rows)):
            drafted = row[:row.index(-1)] if -1 in row else row
            self._proposed[s] = drafted
            start, spelt = 0, 0  # the first proposed position: after the tokens spelling the prefix
            while start < len(drafted) and spelt < extra[b]:
                spelt += len(self._spelt[drafted[start]])
                start += 1
            if spelt != extra[b] or len(drafted) <= start:
                continue  # the prefix was not spelt (or nothing follows it)
            n = min(len(drafted) - start, budget[b], self.max_target_tokens)
            q = None
            if proposed[b].q is not None:
                q = torch.zeros(1 + n, vocab_t, dtype=torch.float32, device=proposed[b].q.device)
                q[:n, shared_target] = proposed[b].q[start:start + n][:, shared]
            drafts[i] = Draft(tokens=[to_target[d] for d in drafted[start:start + n]], q=q)
        return drafts, passes

    def accepted(self, seqs, old_lengths, result):
        for s, new in zip(seqs, result.tokens):
            proposed = self._proposed[s]
            kept, dropped = self._sync(s, new)
            if s in self._started:
                # The cache may hold the old tokens and the drafts it was fed; the first `kept` are unchanged.
                fresh = self.views[s].ids
                same = kept + _common_prefix(dropped + proposed[:-1], fresh[kept:])
                self.core.model.set_length(s, max(min(self.core.model.length(s), same, len(fresh) - 1), 0))

    def finish(self, seq):
        if seq in self._started:
            self.core.finish(seq)
        self.views.pop(seq, None)
        self._proposed.pop(seq, None)

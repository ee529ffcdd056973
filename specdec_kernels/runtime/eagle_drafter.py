"""The EAGLE drafter: EAGLE-2's context-aware dynamic tree (Li et al., arXiv
2406.16858) grown by an ``EagleHead``, with Dynamic Depth Decoding's stop
(arXiv 2409.00142), handed to the verify step as device trees.

One step for B sequences, all on the device (O(batch) host work):

1. **Depth 1.** The root's children come from the logits of each sequence's
   last committed head element (kept from the commit, no extra call): the
   ``topk`` most likely tokens, scored by their log-probability.
2. **Depth d = 2..depth.** The ``topk`` frontier nodes of each sequence go
   through one ``EagleHead.step`` (each attends to the committed prefix and
   its own ancestors' elements: a tree mask over the elements drafted so
   far), each proposes its ``topk`` children, scored by the cumulative
   log-probability of their path, and the ``topk`` best of those ``topk²``
   children are the next frontier.
3. **Rerank.** ``build_dynamic_tree`` keeps the ``num_nodes`` best of all the
   candidates (ancestors first, since a path's score only falls) and lays the
   tree out for the verify step (``TreeDrafts``).
4. **Commit.** After the verify step the head's drafted entries are dropped
   (cut back to the old length) and one ``step`` feeds the target's features
   at the root and the accepted nodes with the accepted tokens and the bonus
   (``StepResult.path_features``); its last row's logits are the next root's
   children.

**Dynamic depth** (``min_mass``): a sequence stops growing once its
frontier's summed path probability falls below ``min_mass`` (its later
candidates are dropped); the loop ends when no sequence grows, which reads
one flag back per depth (DDD's whole point: fewer head calls on hard text).

**Proposals and losslessness.** ``sample=False`` (default): the children are
the head's top-k tokens (under the target's temperature/top-k/top-p when
sampling, so the ranking follows what the target accepts), deterministic
given the context, so the verify step's point-mass tree rejection (no q) is
exact. ``sample=True`` (sampled verification only): each expanded node draws
its ``topk`` children i.i.d. from the head's filtered distribution, and the
tree carries those distributions as q (SpecInfer's multi-draft rule). That
rule needs a node's kept children to be i.i.d. draws whose number does not
depend on their values, so here a candidate is ranked by its *parent's* path
score (known before it was drawn) and siblings tie, broken by draw order:
which children of a node survive depends on other, independent draws only.
The frontier may still pick children by their own values, since that only
decides how many children *they* get.
"""
from __future__ import annotations

import torch

from ..dynamic_tree import MAX_CANDIDATES, MAX_NODES, build_dynamic_tree
from ..reference.sampling import philox_uniforms_at
from ..trees import _pack_rows, num_words
from .drafters import filtered_probs, sample_rows
from .eagle import EagleHead
from .step import Draft, TreeDrafts

MAX_ELEMENTS = 256  # drafted head elements per tree: tree_attention's rows per tree


class EagleDrafter:
    """Drafts EAGLE-2 dynamic trees with ``head`` (module docstring).

    Args:
        head: an attached ``EagleHead`` on the target's device and dtype.
        topk: children per expanded node and frontier width (EAGLE-2: 10).
        depth: the most depths drafted (EAGLE-2: 5 to 7 for a 7B target).
        num_nodes: drafted nodes kept per tree (EAGLE-2: 60); the verify step
            takes ``num_nodes + 1`` rows per sequence.
        min_mass: Dynamic Depth Decoding's threshold on the frontier's summed
            path probability, or None (always ``depth`` depths).
        sampling: the target's ``temperature``, ``top_k``, ``top_p``;
            temperature 0: greedy verification.
        sample: draw the children (with q) instead of taking the top-k;
            needs temperature > 0.
        generator: CPU ``torch.Generator`` seeding the sampled drafts.

    ``features`` is what the target must hand over (``VerifyStep(features=)``,
    ``LlamaModel.forward(capture=)``): ``"hidden"`` or the fused layers.
    """

    def __init__(self, head: EagleHead, *, topk: int = 10, depth: int = 6, num_nodes: int = 60,
                 min_mass: float | None = None, sampling: dict | None = None, sample: bool = False,
                 generator: torch.Generator | None = None):
        for name, value, low in (("topk", topk, 1), ("depth", depth, 1), ("num_nodes", num_nodes, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"eagle {name} must be an int >= {low}, got {value!r}")
        if num_nodes + 1 > MAX_NODES:
            raise ValueError(f"eagle num_nodes + 1 must be <= {MAX_NODES} (verify rows per tree), got {num_nodes}")
        if (depth - 1) * topk > MAX_ELEMENTS:
            raise ValueError(f"(depth - 1) * topk = {(depth - 1) * topk} head elements per tree; at most "
                             f"{MAX_ELEMENTS}")
        if topk + (depth - 1) * topk * topk > MAX_CANDIDATES:
            raise ValueError(f"topk + (depth - 1) * topk^2 = {topk + (depth - 1) * topk * topk} candidates per "
                             f"tree; build_dynamic_tree takes at most {MAX_CANDIDATES}")
        if min_mass is not None and not 0.0 <= float(min_mass) <= 1.0:
            raise ValueError(f"eagle min_mass must be in [0, 1] or None, got {min_mass!r}")
        self.sampling = dict(sampling or {"temperature": 0.0, "top_k": 0, "top_p": 1.0})
        if sample and self.sampling["temperature"] == 0:
            raise ValueError("eagle sample=True draws the drafts for sampled verification; with temperature 0 "
                             "(greedy) the drafts are the head's top-k (sample=False)")
        self.head, self.topk, self.depth, self.num_nodes = head, topk, depth, num_nodes
        self.min_mass, self.sample = min_mass, sample
        self.features = head.capture or "hidden"
        self.device = head.fc.weight.device
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self._seed = int(torch.randint(2**62, (1,), generator=gen))
        self._drawn = 0  # Philox counter of the sampled drafts
        elements = max(1, (depth - 1) * topk)
        # Element e's own bit in the head's tree mask: [elements, words].
        self._own = _pack_rows([1 << e for e in range(elements)], num_words(elements)).to(self.device)
        self.cache = None
        self.max_blocks = None
        self._last = {}  # seq -> (logits [V], out [H]) of its last committed element
        self._commits = 0  # commit calls since the last propose (draft passes)

    # -- cache ----------------------------------------------------------------------------------
    def allocate(self, num_blocks: int, block_size: int, max_blocks: int):
        """The head's paged cache (one layer): ``max_blocks`` per sequence."""
        self.cache = self.head.new_cache(num_blocks, block_size)
        self.max_blocks = max_blocks

    def elements_per_step(self) -> int:
        """Head elements a step may add past the committed length (cache sizing)."""
        return max((self.depth - 1) * self.topk, self.depth + 1)

    def max_rows(self, k):
        return self.num_nodes + 1

    # -- the generate loop's hooks --------------------------------------------------------------
    def start(self, seqs, history):
        self._last = {}
        for s in seqs:
            self.cache.allocator.add(s, 0)

    def prefilled(self, seqs, features, history):
        """Commit each prompt: ``features`` ``[N, F]`` are the target prefill's
        (of ``history[s][:-1]`` for ``s`` in ``seqs``, in order); element
        ``j`` pairs ``f[j]`` with token ``j + 1``."""
        chains = [history[s][1:] for s in seqs]
        self._commit(seqs, [0] * len(seqs), features, chains, prefill=True)

    def accepted(self, seqs, old_lengths, result):
        """Drop the drafted elements and commit the accepted path's features."""
        width = result.path_features.shape[1]
        counts = [c + 1 for c in result.num_accepted]
        feats = self._ragged(result.path_features.reshape(-1, result.path_features.shape[-1]), counts, width)
        self._commit(seqs, [n - 1 for n in old_lengths], feats, result.tokens)

    def finish(self, seq):
        self.cache.allocator.free(seq)
        self._last.pop(seq, None)

    def propose(self, seqs, history, ks):
        ready = [s in self._last for s in seqs]
        passes, self._commits = self._commits, 0
        if not any(ready):  # one-token prompts: no committed element yet, verify the roots alone
            return [Draft() for _ in seqs], passes
        trees, calls = self._draft(seqs, [history[s][-1] for s in seqs], ready)
        return trees, passes + calls

    # -- internals ------------------------------------------------------------------------------
    def _ragged(self, flat, counts, width):
        """Rows ``b * width + j`` (``j < counts[b]``) of ``flat``, in order: index math on the device."""
        dev = flat.device
        n = sum(counts)
        c = torch.tensor(counts, device=dev)
        seq = torch.repeat_interleave(torch.arange(len(counts), device=dev), c, output_size=n)
        start = torch.cumsum(c, 0) - c
        return flat[seq * width + torch.arange(n, device=dev) - start[seq]]

    def _commit(self, seqs, starts, features, chains, prefill=False):
        """One head step over each sequence's new elements (``features`` rows
        in order, ``chains`` their tokens) from committed length ``starts``."""
        alloc, dev = self.cache.allocator, self.device
        counts = [len(ch) for ch in chains]
        live = [i for i, n in enumerate(counts) if n]
        if not live:
            return
        # A sequence with nothing to commit (a one-token prompt) has no rows in features.
        seqs, starts, chains = [seqs[i] for i in live], [starts[i] for i in live], [chains[i] for i in live]
        counts = [counts[i] for i in live]
        for s, st, n in zip(seqs, starts, counts):
            alloc.truncate(s, st)  # the drafted elements (never counted in the length) and their blocks go
            alloc.reserve(s, st + n)
        c = torch.tensor(counts)
        indptr = torch.cat([torch.zeros(1, dtype=torch.int64), c.cumsum(0)]).to(torch.int32)
        positions = torch.cat([torch.arange(st, st + n) for st, n in zip(starts, counts)])
        tokens = torch.tensor([t for ch in chains for t in ch], dtype=torch.int64)
        table = alloc.device_rows(seqs, self.max_blocks, dev)
        logits, out = self.head.step(features.to(self.head.fc.weight.dtype), tokens.to(dev), positions.to(dev),
                                     self.cache, table, torch.tensor(starts, dtype=torch.int32).to(dev),
                                     indptr.to(dev), prefill=prefill, validate=False)
        for s, st, n in zip(seqs, starts, counts):
            alloc.append(s, n)
        last = (indptr[1:] - 1).long().to(dev)
        for s, lg, o in zip(seqs, logits[last], out[last]):
            self._last[s] = (lg, o)
        self._commits += 1

    def _rank(self, parent_score, own_score):
        """The score ``build_dynamic_tree`` ranks a candidate by: its own path
        score for top-k drafts; for sampled drafts its parent's (module
        docstring): ranking sampled siblings by their own values keeps a
        value-dependent subset, no longer i.i.d. draws from q, and the output
        drifts from the target's distribution (the chi-square test's control
        does that and fails, p ~ 1e-9)."""
        return parent_score if self.sample else own_score

    def _logp(self, logits):
        """float32 log-probabilities the drafts are ranked (and drawn) by."""
        if self.sampling["temperature"] == 0:
            return torch.log_softmax(logits.float(), -1)
        return torch.log(filtered_probs(logits, **self.sampling))

    def _children(self, logp):
        """``topk`` children per row of ``logp`` ``[R, V]``: (tokens, their
        log-probabilities) ``[R, topk]``, and the rows' probabilities (sampled
        drafts' q) or None."""
        if not self.sample:
            lp, tok = torch.topk(logp, min(self.topk, logp.shape[-1]), dim=-1)
            if tok.shape[-1] < self.topk:  # a vocabulary smaller than topk: pad with impossible children
                pad = self.topk - tok.shape[-1]
                tok = torch.cat([tok, tok[:, :1].expand(-1, pad)], -1)
                lp = torch.cat([lp, torch.full_like(lp[:, :1], float("-inf")).expand(-1, pad)], -1)
            return tok, lp, None
        probs = logp.exp()
        rows = probs.shape[0]
        offsets = torch.arange(self._drawn, self._drawn + rows * self.topk, device=probs.device)
        self._drawn += rows * self.topk
        tok = sample_rows(probs.repeat_interleave(self.topk, 0), philox_uniforms_at(self._seed, offsets))
        tok = tok.view(rows, self.topk)
        return tok, logp.gather(1, tok), probs

    def _draft(self, seqs, roots, ready):
        k, dev, head = self.topk, self.device, self.head
        b = len(seqs)
        alloc = self.cache.allocator
        hidden = head.config.hidden_size
        zeros = (torch.zeros(head.config.vocab_size, device=dev, dtype=head.fc.weight.dtype),
                 torch.zeros(hidden, device=dev, dtype=head.fc.weight.dtype))
        last = [self._last.get(s, zeros) for s in seqs]
        logits0 = torch.stack([lg for lg, _ in last])
        out0 = torch.stack([o for _, o in last])
        ok = torch.tensor(ready).to(dev)
        committed = [alloc.length(s) for s in seqs]
        for s, n in zip(seqs, committed):
            alloc.reserve(s, n + self.elements_per_step())
        prefix = torch.tensor(committed, dtype=torch.int32).to(dev)
        table = alloc.device_rows(seqs, self.max_blocks, dev)
        indptr = torch.arange(0, (b + 1) * k, k, dtype=torch.int32, device=dev)
        neg = torch.tensor(float("-inf"), device=dev)

        tok, lp, probs = self._children(self._logp(logits0))
        score = torch.where(ok[:, None], lp, neg)  # [B, k]: the frontier's path scores
        cand_tok, cand_par = [tok], [torch.full((b, k), -1, dtype=torch.int32, device=dev)]
        cand_score = [torch.where(ok[:, None], self._rank(torch.zeros_like(lp), lp), neg)]
        q_rows = [probs] if self.sample else None  # the distributions expanded nodes' children came from
        cand_q = torch.zeros(b, k + (self.depth - 1) * k * k, dtype=torch.int64, device=dev) if self.sample else None
        front_cand = torch.arange(k, dtype=torch.int32, device=dev).expand(b, k)  # candidate index per slot
        front_feat = out0[:, None, :].expand(b, k, hidden)
        front_mask = self._own[:k].expand(b, k, -1)
        alive = ok
        depth, calls = 1, 0
        for j in range(1, self.depth):
            if self.min_mass is not None:
                alive = alive & (score.exp().sum(-1) >= self.min_mass)
                if not bool(alive.any()):  # DDD's read-back: no sequence grows deeper
                    break
            e0 = (j - 1) * k  # the frontier's head elements: e0 .. e0 + k - 1
            positions = (prefix.long() + (j - 1))[:, None].expand(b, k).reshape(-1)
            logits, out = head.step(front_feat.reshape(b * k, hidden), tok.reshape(-1), positions, self.cache, table,
                                    prefix, indptr, front_mask.reshape(b * k, -1), drafted=e0, validate=False)
            calls += 1
            depth += 1
            ctok, clp, cprobs = self._children(self._logp(logits))  # [B*k, k]
            cscore = (score.reshape(-1, 1) + clp).view(b, k * k)
            cscore = torch.where(alive[:, None], cscore, neg)
            base = k + (j - 1) * k * k
            cand_tok.append(ctok.view(b, k * k))
            cand_par.append(front_cand.repeat_interleave(k, 1))
            cand_score.append(torch.where(alive[:, None], self._rank(score.repeat_interleave(k, 1), cscore), neg))
            if self.sample:
                q_rows.append(cprobs.view(b, k, -1))
                cand_q.scatter_(1, front_cand.long(), torch.arange(1 + e0, 1 + e0 + k, device=dev).expand(b, k))
            score, pick = torch.topk(cscore, k, dim=-1)  # the next frontier
            slot = pick // k  # its parent's frontier slot
            tok = ctok.view(b, k * k).gather(1, pick)
            front_cand = (base + pick).to(torch.int32)
            front_feat = out.view(b, k, hidden).gather(1, slot[..., None].expand(b, k, hidden))
            if j + 1 < self.depth:
                own = self._own[e0 + k:e0 + 2 * k]
                front_mask = front_mask.gather(1, slot[..., None].expand(-1, -1, front_mask.shape[-1])) | own
        tree = build_dynamic_tree(torch.cat(cand_par, 1), torch.cat(cand_tok, 1), torch.cat(cand_score, 1),
                                  torch.tensor(roots, dtype=torch.int64).to(dev), self.num_nodes, validate=False)
        q = None
        if self.sample:
            table_q = torch.cat([q_rows[0][:, None]] + q_rows[1:], 1)  # [B, 1 + expanded, V]
            node_q = torch.where(tree.source >= 0, cand_q.gather(1, tree.source.clamp(min=0).long()), 0)
            q = table_q.gather(1, node_q[..., None].expand(-1, -1, table_q.shape[-1])).float()
        return TreeDrafts.from_dynamic_tree(tree, depth, q), calls

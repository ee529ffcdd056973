"""The target's verify step: one forward over every sequence's draft (its tree
plus any inert rows, e.g. a lookahead window) with ``tree_attention``, one
``verify_*`` launch, ``compact_kv`` of the accepted paths, and the gathers the
drafters need (hidden state of each last accepted node, argmax of every row).

Everything between building the inputs and reading the accepted counts stays
on the device. On CUDA the step is captured in a CUDA graph per (batch bucket,
tree bucket, draft-probs or not) and replayed: sequences are padded to the
bucket's tree size with inert rows (parent -1, never candidates) and the batch
with dummy requests that own scratch blocks; their results are dropped.
``bucketed=True`` without capture runs the same padded path eagerly, which is
how CPU tests cover it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import time

import torch

from ..kv_cache import compact_kv
from ..reference.sampling import RULES, philox_uniforms_at
from ..sampling import MAX_TREE_LEN, verify_greedy, verify_rejection, verify_typical
from ..trees import _pack_rows, num_words
from .templates import DraftTemplate

MODES = ("greedy", "rejection", "typical")


@dataclass
class Draft:
    """What a drafter proposes for one sequence; local node 0 is the root (the
    sequence's last token, added by the loop), ``tokens[i]`` is node ``i + 1``.

    Attributes:
        tokens: drafted tokens, in topological order: a list, or an int64
            tensor on the model's device (read by the step without a host
            round trip; not range-checked). A token outside the vocabulary
            is never accepted, and with point-mass proposals (no ``q``) it
            changes nothing else, so fixed-shape drafts can mark unused
            nodes with -1.
        parents: per node its parent's local index (0 = the root); -1 marks an
            inert row (fed to the target, never verified). None: a chain.
        q: float32 ``[1 + len(tokens), V]`` or None: row ``n`` is the
            distribution node ``n``'s children were sampled from (exact
            rejection sampling); None: point-mass proposals (or greedy).
        positions: RoPE offsets after the root per node; None: tree depths.
        visible: per node a bitset of the local rows it attends to (itself
            included); None: its ancestors (inert rows: only itself).
        template: a ``DraftTemplate`` holding parents, positions and visible
            (built once by the drafter, shared by its drafts); then the three
            fields above stay None. Drafts of one step that share a template
            (or are all plain chains of one length) get the device fast path:
            their inputs are broadcast on the device, O(batch) host work.
    """

    tokens: list | torch.Tensor = field(default_factory=list)
    parents: list | None = None
    q: torch.Tensor | None = None
    positions: list | None = None
    visible: list | None = None
    template: DraftTemplate | None = None

    def layout(self):
        """-> (parents, positions, visible, depths) for all ``1 + len(tokens)`` rows."""
        return self.structure().layout()

    def structure(self) -> DraftTemplate:
        if self.template is not None:
            if (self.parents, self.positions, self.visible) != (None, None, None):
                raise ValueError("a Draft takes a template or parents/positions/visible, not both")
            if self.template.size != 1 + len(self.tokens):
                raise ValueError(f"Draft.template has {self.template.size - 1} nodes for {len(self.tokens)} tokens")
            return self.template
        return DraftTemplate(self.parents, self.positions, self.visible, num_tokens=len(self.tokens))


@dataclass
class TreeDrafts:
    """The drafts of a whole step as device trees, one per sequence (in the
    step's ``seqs`` order), all ``R`` rows wide: what a drafter that builds
    its tree on the device each step hands over (``build_dynamic_tree``'s
    output, via ``from_dynamic_tree``). The step pads and broadcasts them
    with tensor ops and never reads them back: O(batch) host work.

    Attributes:
        tokens: int64 ``[B, R]``: row 0 is ignored (the step's root), rows
            ``1..`` the drafted tokens (not range-checked: a token outside the
            vocabulary is never accepted).
        parents: int32 ``[B, R]``: local parent indices, parents before
            children; -1 at row 0 and on inert rows (never verified).
        depths: int32 ``[B, R]``: RoPE offsets after the root (0 at row 0).
        mask: int32 ``[B, R, W]``, ``W >= ceil(R / 32)``: packed visibility
            rows (bit ``j`` of row ``i``: node ``j`` is ``i`` or its ancestor;
            an inert row: only its own bit).
        max_depth: a host int bounding every depth (no read-back of ``depths``).
        q: float32 ``[B, R, V]`` or None: row ``n`` is the distribution node
            ``n``'s children were sampled from (exact rejection); None:
            point-mass proposals.
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor
    mask: torch.Tensor
    max_depth: int
    q: torch.Tensor | None = None

    @classmethod
    def from_dynamic_tree(cls, tree, max_depth: int, q=None) -> "TreeDrafts":
        """From a ``build_dynamic_tree`` result (``max_depth``: the drafter's
        number of expanded depths)."""
        return cls(tree.draft_tokens, tree.parents, tree.depths, tree.tree_mask, max_depth, q)

    def __len__(self):
        return self.tokens.shape[0]

    @property
    def rows(self) -> int:
        return self.tokens.shape[1]

    def check(self, vocab: int):
        """Shapes and dtypes (no value read: no host sync)."""
        b, r = self.tokens.shape if self.tokens.dim() == 2 else (None, None)
        if r is None or self.tokens.dtype != torch.int64:
            raise ValueError(f"TreeDrafts.tokens must be int64 [B, R], got {self.tokens.dtype} "
                             f"{tuple(self.tokens.shape)}")
        if not 1 <= r <= MAX_TREE_LEN:
            raise ValueError(f"TreeDrafts have {r} rows per tree; the verify ops take 1 to {MAX_TREE_LEN}")
        for name in ("parents", "depths"):
            t = getattr(self, name)
            if t.shape != (b, r) or t.dtype != torch.int32:
                raise ValueError(f"TreeDrafts.{name} must be int32 [{b}, {r}] like tokens, got {t.dtype} "
                                 f"{tuple(t.shape)}")
        if self.mask.dim() != 3 or self.mask.shape[:2] != (b, r) or self.mask.shape[2] < num_words(r) or \
                self.mask.dtype != torch.int32:
            raise ValueError(f"TreeDrafts.mask must be int32 [{b}, {r}, W >= {num_words(r)}], got "
                             f"{self.mask.dtype} {tuple(self.mask.shape)}")
        if isinstance(self.max_depth, bool) or not isinstance(self.max_depth, int) or \
                not 0 <= self.max_depth < r:
            raise ValueError(f"TreeDrafts.max_depth must be an int in [0, {r - 1}], got {self.max_depth!r}")
        if self.q is not None and (self.q.shape != (b, r, vocab) or self.q.dtype != torch.float32):
            raise ValueError(f"TreeDrafts.q must be float32 [{b}, {r}, V={vocab}], got {self.q.dtype} "
                             f"{tuple(self.q.shape)}")


@dataclass
class StepResult:
    """Host copies of the verify outcome plus device tensors for drafters.

    num_accepted, paths (accepted local nodes, root first), tokens (accepted
    drafts then the bonus): one list per sequence. ``last_hidden`` ``[B, H]``:
    the target's final hidden state at each last accepted node (Medusa heads
    read it). ``argmax`` int64 ``[N]`` and ``row_start`` (list): every row's
    argmax and where each sequence's rows start (lookahead reads its window's).
    ``path_features`` ``[B, width, F]`` or None: with ``VerifyStep(features=)``,
    the target's features at the root and each accepted node (entry ``j`` of
    sequence ``b`` for ``j <= num_accepted[b]``; later entries are
    unspecified): what an EAGLE head commits.
    """

    num_accepted: list
    paths: list
    tokens: list
    last_hidden: torch.Tensor
    argmax: torch.Tensor
    row_start: list
    path_features: torch.Tensor | None = None


def bucket_size(n: int) -> int:
    """The power of two >= n (at least 1): a CUDA-graph bucket's batch or rows."""
    return 1 << max(0, n - 1).bit_length()


class _Buffers:
    """Inputs of one step, as tensors on the device (static under capture)."""

    def __init__(self, batch, rows, words, max_blocks, vocab, with_q, device, tree=False):
        i32, i64 = torch.int32, torch.int64
        if tree:  # the template path: per-sequence rows, expanded inside the step (``expand``)
            self.tokens = self.draft_tokens = self.positions = None
            self.tree_tokens = torch.zeros(batch, rows // batch, dtype=i64, device=device)  # root, drafts, pad
            self.verified = torch.zeros(batch, rows // batch, dtype=torch.bool, device=device)
            self.offsets = torch.zeros(batch, rows // batch, dtype=i64, device=device)  # positions after the prefix
        else:
            self.tree_tokens = None
            self.tokens = torch.zeros(rows, dtype=i64, device=device)  # what the model embeds
            self.draft_tokens = torch.zeros(rows, dtype=i64, device=device)  # -1 on inert rows
            self.positions = torch.zeros(rows, dtype=i64, device=device)
        self.parents = torch.zeros(rows, dtype=i32, device=device)
        self.mask = torch.zeros(rows, words, dtype=i32, device=device)
        self.qo_indptr = torch.zeros(batch + 1, dtype=i32, device=device)
        self.prefix_lens = torch.zeros(batch, dtype=i32, device=device)
        self.block_table = torch.zeros(batch, max_blocks, dtype=i32, device=device)
        self.q = torch.zeros(rows, vocab, dtype=torch.float32, device=device) if with_q else None
        # The verify draws, computed inside the step (the graph, on CUDA):
        # Philox at draw_key + (step << 32).
        self.draw_key = torch.zeros(rows, dtype=i64, device=device)
        self.step = torch.zeros(1, dtype=i64, device=device)

    @classmethod
    def wrap(cls, host: dict, vocab: int, device) -> "_Buffers":
        """An eager step's buffers: the inputs themselves, on the device (no
        static copies: those exist for graph replay)."""
        buf = cls.__new__(cls)
        buf.q = buf.tree_tokens = None
        for name, value in host.items():
            if name != "device_draft":
                setattr(buf, name, value.to(device, non_blocking=True))
        if "device_draft" in host:
            buf.tokens, buf.draft_tokens = buf.tokens.clone(), buf.draft_tokens.clone()
            buf.patch_drafts(*host["device_draft"], vocab)
        return buf

    def expand(self, vocab):
        """(tokens, draft_tokens, positions) [N] of the flat rows: the general
        path's as given, the template path's computed here from each
        sequence's tree tokens (so under a graph, inside the replay)."""
        if self.tree_tokens is None:
            return self.tokens, self.draft_tokens, self.positions
        tok = self.tree_tokens
        return (tok.clamp(0, vocab - 1).reshape(-1),  # inert rows may hold anything
                torch.where(self.verified, tok, -1).reshape(-1),
                (self.prefix_lens.long()[:, None] + self.offsets).reshape(-1))

    def patch_drafts(self, rows, drafted, vocab):
        """Drafted tokens handed over as device tensors, at flat ``rows``."""
        rows = rows.to(self.tokens.device, non_blocking=True)
        self.draft_tokens.index_copy_(0, rows, drafted)
        self.tokens.index_copy_(0, rows, drafted.clamp(0, vocab - 1))

    def fill(self, host: dict, vocab: int):
        for name, value in host.items():
            if name != "device_draft":
                getattr(self, name).copy_(value, non_blocking=True)
        if "device_draft" in host:
            self.patch_drafts(*host["device_draft"], vocab)


class VerifyStep:
    """Runs verify steps for one target model and its paged cache.

    Args:
        model: the target ``LlamaModel``.
        cache: its ``PagedKVCache``; the allocator must already hold every
            sequence's blocks for ``prefix + rows`` positions (``reserve``).
        mode: ``"greedy"``, ``"rejection"`` (exact; uses ``Draft.q`` when
            given) or ``"typical"`` (Medusa's lossy rule).
        sampling: keyword arguments of the verify op (temperature, top_k,
            top_p, posterior_threshold, posterior_alpha).
        rule: ``verify_rejection``'s rule in ``"rejection"`` mode:
            ``"token"``, ``"block"`` (chains; a step whose drafts branch is
            verified with ``"traversal"``, as the op does unvalidated) or
            ``"traversal"``. Greedy mode ignores it; typical mode takes
            ``"token"`` only.
        generator: CPU ``torch.Generator`` seeding the verify draws (sampled
            modes; one host draw at construction). Draws are Philox uniforms
            keyed by (step, sequence, node), computed on the device, so
            padding, bucketing and graph replay never change them: a padded
            step draws exactly what an unpadded one does.
        max_blocks: block-table width (the most blocks a sequence may hold).
        cuda_graph: capture and replay (CUDA only).
        bucketed: pad to (batch, tree) buckets even without capture.
        features: None, ``"hidden"`` (the final hidden state) or a tuple of
            hidden-state indices (``LlamaModel.forward``'s ``capture``): the
            target features ``StepResult.path_features`` gathers at each
            accepted path (on the device, inside the graph).

    ``drafts`` is a list of ``Draft`` (one per sequence) or a ``TreeDrafts``
    (the whole batch's device trees).
    """

    def __init__(self, model, cache, *, mode="greedy", sampling=None, generator=None, max_blocks,
                 cuda_graph=False, bucketed=None, rule="token", features=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if mode == "typical" and rule != "token":
            raise ValueError(f"rule={rule!r} is a rejection rule; mode='typical' takes rule='token' only")
        param = next(model.parameters())
        self.device = param.device
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the model on CUDA, it is on {self.device}")
        if features is not None and features != "hidden":
            try:
                features = tuple(int(i) for i in features)
            except TypeError:
                raise ValueError(f"features must be None, 'hidden' or a tuple of hidden-state indices, got "
                                 f"{features!r}") from None
            if not features or not all(0 <= i <= model.config.num_layers for i in features):
                raise ValueError(f"features takes hidden-state indices in [0, {model.config.num_layers}], got "
                                 f"{features}")
        self.features = features
        self.model, self.cache, self.mode, self.rule = model, cache, mode, rule
        self.sampling = dict(sampling or {})
        self.max_blocks = max_blocks
        self.cuda_graph = cuda_graph
        self.bucketed = cuda_graph if bucketed is None else bucketed
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self._graphs = {}  # (batch, rows, with q, template path) -> (graph, buffers, outputs)
        self._pool = None
        self._pad_seqs = []  # allocator ids of dummy requests
        self._seed = int(torch.randint(2**62, (1,), generator=self.generator))  # of the verify draws
        self._step = 0  # steps run: the draws' counter high word
        self._chains = {}  # k -> DraftTemplate.chain(k), for drafts given as plain chains
        self._dummy = DraftTemplate.chain(0)  # a padding request: its root alone
        self._broadcasts = {}  # (template, rows, real, batch) -> step-invariant inputs
        # Per-phase seconds of eager steps (None under capture): host input
        # building, verify_forward, verify_sampling, kv_compaction; replayed
        # graphs count as verify_graph.
        self.phase_seconds = None if cuda_graph else {}
        self.graph_seconds = 0.0
        self._last_lap = 0.0

    # -- host side ---------------------------------------------------------------------------
    def _host_inputs(self, seqs, roots, prefix_lens, drafts, rows_per_seq=None, batch=None):
        """Flatten the drafts; with ``rows_per_seq``/``batch``, pad to them."""
        if isinstance(drafts, TreeDrafts):
            return self._tree_inputs(drafts, seqs, roots, prefix_lens, rows_per_seq, batch)
        tmpl = self._shared_template(drafts)
        if tmpl is not None:
            return self._template_inputs(tmpl, seqs, roots, prefix_lens, drafts, rows_per_seq, batch)
        real = len(drafts)
        vocab = self.model.config.vocab_size
        layouts = [d.layout() for d in drafts]
        sizes = [len(lay[0]) for lay in layouts]
        rows_per = [rows_per_seq] * (batch or real) if rows_per_seq else sizes
        words = num_words(max(rows_per))
        tokens, draft_tokens, positions, parents, masks = [], [], [], [], []
        device_rows, device_tokens = [], []  # drafts given as device tensors, patched in after the copy
        for b in range(batch or real):
            if b < real:
                par, pos, vis, _ = layouts[b]
                drafted = drafts[b].tokens
                if isinstance(drafted, torch.Tensor):
                    device_rows.append(torch.arange(len(tokens) + 1, len(tokens) + len(par)))
                    device_tokens.append(drafted.reshape(-1))
                    drafted = [0] * len(drafted)
                toks = [roots[b]] + list(drafted)
                start = prefix_lens[b]
            else:
                par, pos, vis, toks, start = [-1], [0], [1], [0], 0
            pad = rows_per[b] - len(par)
            bad = [t for t, p in zip(toks[1:], par[1:]) if p != -1 and not 0 <= t < vocab]
            if bad:
                raise ValueError(f"drafts[{b}] proposes token {bad[0]} outside the vocabulary [0, {vocab})")
            tokens += [t if 0 <= t < vocab else 0 for t in toks] + [0] * pad  # inert rows may hold anything
            draft_tokens += [t if p != -1 or i == 0 else -1 for i, (t, p) in enumerate(zip(toks, par))] + [-1] * pad
            positions += [start + o for o in pos] + [start] * pad
            parents += par + [-1] * pad
            masks += vis + [1 << (len(par) + j) for j in range(pad)]
        indptr = [0]
        for r in rows_per:
            indptr.append(indptr[-1] + r)
        host = dict(
            tokens=torch.tensor(tokens, dtype=torch.int64), draft_tokens=torch.tensor(draft_tokens, dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64), parents=torch.tensor(parents, dtype=torch.int32),
            mask=_pack_rows(masks, words), qo_indptr=torch.tensor(indptr, dtype=torch.int32),
            **self._batch_inputs(seqs, prefix_lens, rows_per, real, batch or real))
        if self.mode != "greedy":
            host["draw_key"], host["step"] = self._draw_key(rows_per), torch.tensor([self._step])
        if device_rows:
            host["device_draft"] = (torch.cat(device_rows), torch.cat(device_tokens))
        if any(d.q is not None for d in drafts):
            q = torch.zeros(indptr[-1], vocab, dtype=torch.float32)
            for b, d in enumerate(drafts):
                if d.q is None and len(d.tokens):
                    raise ValueError(f"drafts[{b}] has no q but others do; exact rejection sampling needs every "
                                     "sampled draft's q (point-mass and sampled drafts cannot share a step)")
                if d.q is not None and tuple(d.q.shape) != (1 + len(d.tokens), vocab):
                    raise ValueError(f"drafts[{b}].q must be [1 + {len(d.tokens)}, V={vocab}], got "
                                     f"{tuple(d.q.shape)}")
                if d.q is not None:
                    q[indptr[b]:indptr[b] + d.q.shape[0]] = d.q.float().cpu()
            host["q"] = q
        max_depth = max((max(lay[3]) for lay in layouts), default=0)
        return host, words, max_depth

    def _batch_inputs(self, seqs, prefix_lens, rows_per, real, batch) -> dict:
        """prefix_lens and block_table of the (padded) batch: O(batch) host work
        (the allocator's table lives on the device, patched with the changed
        entries only)."""
        alloc = self.cache.allocator
        pads = [self._pad_seq(b - real, rows_per[b]) for b in range(real, batch)]
        try:
            table = alloc.device_rows(list(seqs) + pads, self.max_blocks, self.device)
        except ValueError as e:
            raise ValueError(f"a sequence needs more cache blocks than max_blocks={self.max_blocks}: {e}") from None
        return dict(prefix_lens=torch.tensor(list(prefix_lens) + [0] * (batch - real), dtype=torch.int32),
                    block_table=table)

    def _shared_template(self, drafts) -> DraftTemplate | None:
        """The template every draft of the step uses (plain chains of one
        length get a cached chain template), or None: the general path."""
        def plain(d):
            return d.template is None and (d.parents, d.positions, d.visible) == (None, None, None)

        if not drafts:
            return None
        first = drafts[0]
        if first.template is not None:
            tmpl = first.template
            if any(d.template is not tmpl for d in drafts):
                return None
        elif plain(first):
            k = len(first.tokens)
            if any(not plain(d) or len(d.tokens) != k for d in drafts):
                return None
            tmpl = self._chains.get(k) or self._chains.setdefault(k, DraftTemplate.chain(k))
        else:
            return None
        on_device = [isinstance(d.tokens, torch.Tensor) for d in drafts]
        with_q = [d.q is not None for d in drafts]
        if len(set(on_device)) > 1 or len(set(with_q)) > 1:
            return None  # mixed drafts: the general path (which raises on mixed q)
        return tmpl

    def _template_inputs(self, tmpl, seqs, roots, prefix_lens, drafts, rows_per_seq, batch):
        """The step's inputs for drafts sharing ``tmpl``, built on the device
        by broadcasting the template's tensors: O(batch) host work. Same
        result, draw for draw, as the general path."""
        real, vocab, dev = len(drafts), self.model.config.vocab_size, self.device
        batch = batch or real
        rows = rows_per_seq or tmpl.size
        for b, d in enumerate(drafts):
            if len(d.tokens) != tmpl.size - 1:
                raise ValueError(f"drafts[{b}] has {len(d.tokens)} tokens for a template of {tmpl.size - 1}")
        if isinstance(drafts[0].tokens, torch.Tensor):
            drafted = torch.stack([d.tokens.reshape(-1) for d in drafts]).to(dev, torch.int64)
        else:
            drafted = torch.tensor([list(d.tokens) for d in drafts], dtype=torch.int64).reshape(real, tmpl.size - 1)
            checked = drafted[:, tmpl.checked]
            bad = (checked < 0) | (checked >= vocab)
            if bad.any():
                b = int(bad.any(1).nonzero()[0, 0])
                raise ValueError(f"drafts[{b}] proposes token {int(checked[b][bad[b]][0])} outside the vocabulary "
                                 f"[0, {vocab})")
            drafted = drafted.to(dev)
        tok = torch.zeros(batch, rows, dtype=torch.int64, device=dev)
        tok[:real, 0] = torch.tensor(roots, dtype=torch.int64).to(dev)
        tok[:real, 1:tmpl.size] = drafted
        static = self._broadcast(tmpl, rows, real, batch)
        host = dict(
            tree_tokens=tok, verified=static["verified"], offsets=static["positions"], parents=static["parents"],
            mask=static["mask"], qo_indptr=static["qo_indptr"],
            **self._batch_inputs(seqs, prefix_lens, [rows] * batch, real, batch))
        if self.mode != "greedy":
            host["draw_key"], host["step"] = static["draw_key"], torch.tensor([self._step])
        if drafts[0].q is not None:
            for b, d in enumerate(drafts):
                if tuple(d.q.shape) != (tmpl.size, vocab):
                    raise ValueError(f"drafts[{b}].q must be [1 + {tmpl.size - 1}, V={vocab}], got "
                                     f"{tuple(d.q.shape)}")
            q = torch.zeros(batch, rows, vocab, dtype=torch.float32, device=dev)
            q[:real, :tmpl.size] = torch.stack([d.q for d in drafts]).to(dev, torch.float32)
            host["q"] = q.reshape(batch * rows, vocab)
        return host, num_words(rows), tmpl.max_depth

    def _tree_inputs(self, trees: TreeDrafts, seqs, roots, prefix_lens, rows_per_seq, batch):
        """The step's inputs for device trees, laid out as the template path's
        (per-sequence rows, expanded inside the step) with tensor ops only."""
        vocab, dev = self.model.config.vocab_size, self.device
        trees.check(vocab)
        real, size = len(trees), trees.rows
        batch = batch or real
        rows = rows_per_seq or size
        words = num_words(rows)
        static = self._padding(rows, batch)
        tok = torch.zeros(batch, rows, dtype=torch.int64, device=dev)
        tok[:real, :size] = trees.tokens
        tok[:real, 0] = torch.tensor(roots, dtype=torch.int64).to(dev)
        parents = static["parents"].clone()
        parents[:real, :size] = trees.parents
        offsets = static["offsets"].clone()
        offsets[:real, :size] = trees.depths
        mask = static["mask"].clone()
        w = min(words, trees.mask.shape[2])  # words past num_words(R) hold no bits
        mask[:real, :size, :w] = trees.mask[:, :, :w]
        verified = parents != -1
        verified[:, 0] = True
        host = dict(tree_tokens=tok, verified=verified, offsets=offsets, parents=parents.reshape(-1),
                    mask=mask.reshape(batch * rows, words), qo_indptr=static["qo_indptr"],
                    **self._batch_inputs(seqs, prefix_lens, [rows] * batch, real, batch))
        if self.mode != "greedy":
            host["draw_key"], host["step"] = static["draw_key"], torch.tensor([self._step])
        if trees.q is not None:
            q = torch.zeros(batch, rows, vocab, dtype=torch.float32, device=dev)
            q[:real, :size] = trees.q
            host["q"] = q.reshape(batch * rows, vocab)
        return host, words, trees.max_depth

    def _padding(self, rows, batch) -> dict:
        """What a ``batch`` x ``rows`` step of device trees starts from before
        the trees are copied in, built once per shape: every row inert (parent
        -1, offset 0, its own mask bit), qo_indptr, draw keys."""
        key = ("trees", rows, batch)
        hit = self._broadcasts.get(key)
        if hit is None:
            own = _pack_rows([1 << i for i in range(rows)], num_words(rows)).to(self.device)
            hit = self._broadcasts[key] = dict(
                parents=torch.full((batch, rows), -1, dtype=torch.int32, device=self.device),
                offsets=torch.zeros(batch, rows, dtype=torch.int64, device=self.device),
                mask=own.expand(batch, -1, -1), qo_indptr=torch.arange(0, (batch + 1) * rows, rows, dtype=torch.int32),
                draw_key=self._draw_key([rows] * batch))
        return hit

    def _draw_key(self, rows_per) -> torch.Tensor:
        """int64 [sum(rows_per)] on the device: row i of sequence b draws
        Philox(seed, step << 32 | b * 256 + i) (``_uniforms``), a key that
        padding (dummy sequences after the real ones, inert rows after a
        tree's) never moves."""
        counts = torch.tensor(rows_per, device=self.device)
        total = sum(rows_per)
        seq = torch.repeat_interleave(torch.arange(len(rows_per), device=self.device), counts, output_size=total)
        starts = torch.cumsum(counts, 0) - counts
        return seq * MAX_TREE_LEN + torch.arange(total, device=self.device) - starts[seq]

    def _uniforms(self, draw_key, step) -> torch.Tensor:
        """The verify draws of one step: tensor ops on the device (captured in
        the step's graph on CUDA), float32 like draw_key."""
        return philox_uniforms_at(self._seed, draw_key + step * (1 << 32))

    def _broadcast(self, tmpl, rows, real, batch) -> dict:
        """The step-invariant inputs of ``real`` sequences on ``tmpl`` padded to
        ``batch`` x ``rows``, built once per shape: verified bool and position
        offsets [batch, rows], flat parents and mask rows, qo_indptr (host:
        row_start reads it)."""
        key = (id(tmpl), rows, real, batch)
        hit = self._broadcasts.get(key)
        if hit is not None and hit[0] is tmpl:
            return hit[1]
        lay, dummy = tmpl.padded(rows, self.device), self._dummy.padded(rows, self.device)

        def both(name, *dims):
            return torch.cat([lay[name].expand(real, *dims), dummy[name].expand(batch - real, *dims)])

        static = dict(verified=both("verified", rows), positions=both("positions", rows),
                      parents=both("parents", rows).reshape(-1), mask=both("mask", -1, -1).reshape(batch * rows, -1),
                      qo_indptr=torch.arange(0, (batch + 1) * rows, rows, dtype=torch.int32),
                      draw_key=self._draw_key([rows] * batch))
        if len(self._broadcasts) >= 64:  # shapes come from a few buckets; bound it anyway
            self._broadcasts.clear()
        self._broadcasts[key] = (tmpl, static)
        return static

    def _pad_seq(self, b, rows):
        """Allocator id of dummy request ``b``, holding scratch blocks for ``rows``."""
        alloc = self.cache.allocator
        while len(self._pad_seqs) <= b:
            sid = ("verify-step-padding", len(self._pad_seqs))
            alloc.add(sid, 0)
            self._pad_seqs.append(sid)
        sid = self._pad_seqs[b]
        alloc.reserve(sid, rows)
        return sid

    def release(self):
        """Free the dummy requests' scratch blocks."""
        for sid in self._pad_seqs:
            self.cache.allocator.free(sid)
        self._pad_seqs = []

    # -- device side -------------------------------------------------------------------------
    def _lap(self, phase):
        """Charge the time since the last lap to ``phase`` (eager steps only:
        on CUDA it synchronises, which a captured graph cannot)."""
        if self.phase_seconds is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + now - self._last_lap
        self._last_lap = now

    def _body(self, buf: _Buffers, width: int):
        self._lap("host")
        tokens, draft_tokens, positions = buf.expand(self.model.config.vocab_size)
        capture = self.features if isinstance(self.features, tuple) else None
        logits, hidden, *captured = self.model(tokens, positions, self.cache, buf.block_table, buf.prefix_lens,
                                               buf.qo_indptr, buf.mask, validate=False, capture=capture)
        self._lap("verify_forward")
        common = dict(max_depth=width - 1, validate=False)
        args = (draft_tokens, buf.parents, buf.qo_indptr, logits)
        if self.mode == "greedy":
            res = verify_greedy(*args, **common)
        else:
            op = verify_rejection if self.mode == "rejection" else verify_typical
            extra = dict(draft_probs=buf.q, rule=self.rule) if self.mode == "rejection" else {}
            uniforms = self._uniforms(buf.draw_key, buf.step)
            res = op(*args, uniforms=uniforms, **extra, **self.sampling, **common)
        self._lap("verify_sampling")
        if width > 1:  # a tree of roots alone (an AR step) has nothing to move
            compact_kv(self.cache.k, self.cache.v, buf.block_table, buf.prefix_lens, res.accepted_nodes,
                       res.num_accepted, validate=False)
        last = res.accepted_nodes.gather(1, res.num_accepted.clamp(min=0).long()[:, None]).squeeze(1).long()
        last_rows = buf.qo_indptr[:-1].long() + last.clamp(min=0)
        packed = torch.cat([res.num_accepted[:, None].long(), res.accepted_nodes.long(), res.tokens], dim=1)
        path = None
        if self.features is not None:  # the features at the root and every accepted node (EAGLE commits them)
            rows = buf.qo_indptr[:-1].long()[:, None] + res.accepted_nodes.clamp(min=0).long()
            path = (captured[0] if captured else hidden)[rows]
        out = packed, hidden[last_rows], logits.argmax(-1), path
        self._lap("kv_compaction")
        return out

    def __call__(self, seqs, roots, drafts) -> StepResult:
        """One step for the sequences ``seqs`` (allocator ids), each with its
        root token (last token, not yet in the cache) and its draft. Reserves
        the rows' cache slots, and afterwards leaves each cache holding its old
        tokens, the root and the accepted nodes (blocks past them freed)."""
        alloc = self.cache.allocator
        self._last_lap = time.perf_counter()
        real = len(drafts)
        sizes = [drafts.rows] * real if isinstance(drafts, TreeDrafts) else [1 + len(d.tokens) for d in drafts]
        rows, batch = (bucket_size(max(sizes)), bucket_size(real)) if self.bucketed else (None, real)
        prefix_lens = [alloc.length(s) for s in seqs]
        for s, p, size in zip(seqs, prefix_lens, sizes):
            alloc.reserve(s, p + (rows or size))
        host, words, max_depth = self._host_inputs(seqs, roots, prefix_lens, drafts, rows, batch)
        self._step += 1
        width = rows if self.bucketed else max_depth + 1
        if self.cuda_graph:
            began = time.perf_counter()
            key = (batch, rows, "q" in host, "tree_tokens" in host)
            packed, hidden, argmax, path = self._replay(key, host, words, width)
            packed = packed[:real].cpu()
            self.graph_seconds += time.perf_counter() - began
        else:
            buf = _Buffers.wrap(host, self.model.config.vocab_size, self.device)
            packed, hidden, argmax, path = self._body(buf, width)
        packed = packed[:real].cpu().tolist()  # the step's one host sync (done above under a graph)
        counts = [p[0] for p in packed]
        for s, p, c in zip(seqs, prefix_lens, counts):
            keep = p + 1 + max(c, 0)
            alloc.append(s, keep - p)
            alloc.truncate(s, keep)  # also frees the reserved blocks past it
        indptr = host["qo_indptr"].tolist()
        return StepResult(num_accepted=counts,
                          paths=[p[1:2 + max(c, 0)] for p, c in zip(packed, counts)],
                          tokens=[p[1 + width:2 + width + max(c, 0)] for p, c in zip(packed, counts)],
                          last_hidden=hidden[:real], argmax=argmax, row_start=indptr[:real],
                          path_features=None if path is None else path[:real])

    def _replay(self, key, host, words, width):
        entry = self._graphs.get(key)
        if entry is None:
            batch, rows, with_q, tree = key
            buf = _Buffers(batch, batch * rows, words, self.max_blocks, self.model.config.vocab_size, with_q,
                           self.device, tree)
            buf.fill(host, self.model.config.vocab_size)
            # Warm up (compiles Triton kernels, sets up cuBLAS) off the capture
            # stream; the body is idempotent for fixed inputs (append_kv
            # rewrites the tree's K/V before compact_kv moves it).
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._body(buf, width)
            torch.cuda.current_stream().wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                outputs = self._body(buf, width)
            entry = self._graphs[key] = (graph, buf, outputs)
        graph, buf, outputs = entry
        buf.fill(host, self.model.config.vocab_size)
        graph.replay()
        return outputs

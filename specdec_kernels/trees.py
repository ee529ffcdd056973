"""Draft trees and their attention masks, RoPE offsets and index tensors.

A tree of ``T`` nodes is given by ``parents``: ``parents[0] = -1`` (node 0 is
the root, the last accepted token) and ``0 <= parents[i] < i`` for ``i > 0``,
so node order is a topological order. A chain of ``k`` drafted tokens is
``parents = [-1, 0, 1, ..., k - 1]``. For a sequence with ``prefix_len`` cached
tokens, node ``i`` sits at cache position ``prefix_len + i`` and at RoPE
position ``prefix_len + depth[i]``.

Masks are packed as ``tree_attention`` reads them: int32 words, bit ``j % 32`` of
word ``j // 32`` of row ``i`` set iff node ``i`` may attend to node ``j`` (for a
tree: ``j`` is an ancestor of ``i`` or ``i`` itself). Words are int32, so a set
bit 31 makes the word negative.

Contents:
    Tree              immutable tree: from parents, a chain, or Medusa choices
    MC_SIM_7B_63      Medusa's published 63-choice tree
    batch_trees       ragged batch of trees -> TreeBatch (qo_indptr, packed masks, positions)
    lookahead_mask    lookahead-decoding layout (Fu et al. 2024) -> LookaheadLayout
    pack_mask         bool [R, L] -> packed int32 [R, W]
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from .attention import MAX_TREE_LEN

__all__ = [
    "Tree",
    "TreeBatch",
    "LookaheadLayout",
    "MC_SIM_7B_63",
    "batch_trees",
    "lookahead_mask",
    "pack_mask",
    "num_words",
]

# Medusa's ``mc_sim_7b_63`` tree, in its published order (a list of paths of
# per-head top-k ranks; 63 choices -> 64 nodes with the root; 10/28/23/2 nodes
# at depths 1-4; 42 leaves). Numbers from FasterDecoding/Medusa,
# medusa/model/medusa_choices.py.
MC_SIM_7B_63 = [
    (0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0), (1, 0), (0, 2), (3,), (0, 3), (4,), (0, 4), (2, 0),
    (0, 5), (0, 0, 1), (5,), (0, 6), (6,), (0, 7), (0, 1, 0), (1, 1), (7,), (0, 8), (0, 0, 2), (3, 0),
    (0, 9), (8,), (9,), (1, 0, 0), (0, 2, 0), (1, 2), (0, 0, 3), (4, 0), (2, 1), (0, 0, 4), (0, 0, 5),
    (0, 0, 0, 0), (0, 1, 1), (0, 0, 6), (0, 3, 0), (5, 0), (1, 3), (0, 0, 7), (0, 0, 8), (0, 0, 9),
    (6, 0), (0, 4, 0), (1, 4), (7, 0), (0, 1, 2), (2, 0, 0), (3, 1), (2, 2), (8, 0), (0, 5, 0), (1, 5),
    (1, 0, 1), (0, 2, 1), (9, 0), (0, 6, 0), (0, 0, 0, 1), (1, 6), (0, 7, 0),
]

_WORD_MASK = (1 << 32) - 1


def num_words(length: int) -> int:
    """Number of 32-bit words that hold ``length`` mask bits: ``ceil(length / 32)``
    (0 for ``length == 0``)."""
    return -(-int(length) // 32)


def _to_int32(word: int) -> int:
    """An unsigned 32-bit value (0 .. 2**32 - 1) as the int32 with the same bits."""
    return word - (1 << 32) if word >= (1 << 31) else word


def _pack_rows(rows: Sequence[int], words: int) -> torch.Tensor:
    """Rows as Python-int bitsets (bit j = column j) -> int32 ``[len(rows), words]``
    on CPU. Bits at or past ``32 * words`` must be clear."""
    data = [[_to_int32((r >> (32 * w)) & _WORD_MASK) for w in range(words)] for r in rows]
    return torch.tensor(data, dtype=torch.int32).reshape(len(rows), words)


def _rows_to_bool(rows: Sequence[int], length: int) -> torch.Tensor:
    """Rows as Python-int bitsets -> bool ``[len(rows), length]`` on CPU."""
    data = [[bool((r >> j) & 1) for j in range(length)] for r in rows]
    return torch.tensor(data, dtype=torch.bool).reshape(len(rows), length)


def _check_words(words, length: int, what: str) -> int:
    need = num_words(length)
    if words is None:
        return max(need, 1)
    words = operator.index(words)
    if words < max(need, 1):
        raise ValueError(f"words={words} is too few for {what}: {length} mask bits need at least {max(need, 1)}")
    return words


def pack_mask(mask: torch.Tensor, words: int | None = None) -> torch.Tensor:
    """Pack a boolean visibility matrix into int32 words.

    Args:
        mask: bool ``[R, L]`` (any device); ``mask[i, j]`` = row ``i`` sees column ``j``.
        words: words per row, at least ``ceil(L / 32)`` (the default, and at
            least 1); extra words are zero.

    Returns:
        int32 ``[R, words]`` on ``mask``'s device: bit ``j % 32`` of word ``j // 32``
        of row ``i`` is ``mask[i, j]``. Computed in int64 and wrapped to int32, so
        bit 31 gives a negative word.
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D [R, L], got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    rows, length = mask.shape
    words = _check_words(words, length, "this mask")
    padded = torch.zeros(rows, words * 32, dtype=torch.int64, device=mask.device)
    padded[:, :length] = mask.to(torch.int64)
    weights = torch.ones(32, dtype=torch.int64, device=mask.device) << torch.arange(32, device=mask.device)
    unsigned = (padded.view(rows, words, 32) * weights).sum(dim=-1)  # [R, words] in [0, 2**32)
    signed = torch.where(unsigned >= (1 << 31), unsigned - (1 << 32), unsigned)
    return signed.to(torch.int32)


def _as_int(value, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}") from None


def _parents_list(parents) -> list[int]:
    if isinstance(parents, torch.Tensor):
        if parents.dim() != 1:
            raise ValueError(f"parents must be 1-D, got a tensor of shape {tuple(parents.shape)}")
        if parents.dtype.is_floating_point or parents.dtype.is_complex or parents.dtype == torch.bool:
            raise TypeError(f"parents must be an integer tensor, got {parents.dtype}")
        return [int(p) for p in parents.tolist()]
    if isinstance(parents, (str, bytes)):
        raise TypeError("parents must be a sequence of integers, got a string")
    return [_as_int(p, f"parents[{i}]") for i, p in enumerate(parents)]


class Tree:
    """An immutable draft tree.

    Construct with ``Tree(parents)`` / ``Tree.from_parents(parents)``,
    ``Tree.chain(k)`` or ``Tree.from_choices(choices)``.

    Attributes:
        size: number of nodes ``T`` (root included), ``1 <= T <= 256``.
        parents: tuple of ``T`` ints, ``parents[0] = -1``, ``parents[i] < i``.
        depths: tuple of ``T`` ints, root 0.
        choices: for trees from Medusa choices, a tuple of ``T - 1`` paths (tuples
            of per-head top-k ranks), ``choices[i - 1]`` being node ``i``'s path;
            ``None`` otherwise.
        rank: per node, the last element of its choice path (its top-k rank in
            its Medusa head), -1 for the root; ``None`` without choices.
        head: per node, ``depth - 1`` (which Medusa head's top-k fills it; the
            ``depth``-th drafted token), -1 for the root.

    Equality and hashing are by ``parents`` (the shape), ignoring ``choices``.
    """

    __slots__ = ("_parents", "_depths", "_children", "_ancestors", "_choices", "_rank")

    def __init__(self, parents, *, _choices=None):
        """``parents``: a sequence or 1-D integer tensor of ``T`` ints. Raises
        ``ValueError`` naming the offending index and value when it is not a
        valid tree (empty, ``parents[0] != -1``, a second root, a parent out of
        range or not before its child, more than 256 nodes)."""
        p = _parents_list(parents)
        t = len(p)
        if t == 0:
            raise ValueError("empty tree: parents must have at least one entry (parents[0] = -1 for the root)")
        if t > MAX_TREE_LEN:
            raise ValueError(f"too many nodes: {t} > MAX_TREE_LEN = {MAX_TREE_LEN}")
        if p[0] != -1:
            raise ValueError(f"parents[0] = {p[0]}: node 0 is the root and must have parent -1")
        for i in range(1, t):
            pi = p[i]
            if pi == -1:
                raise ValueError(f"a second root: parents[{i}] = -1, but only node 0 may be a root")
            if pi < -1 or pi >= t:
                raise ValueError(f"parent out of range: parents[{i}] = {pi} is not a node index in [0, {t})")
            if pi >= i:
                raise ValueError(f"parent not before its child: parents[{i}] = {pi}, but parents[i] < i is "
                                 f"required (node order must be topological; this also rules out cycles)")
        depths = [0] * t
        ancestors = [1] * t  # bitset: ancestors-or-self
        children: list[list[int]] = [[] for _ in range(t)]
        for i in range(1, t):
            depths[i] = depths[p[i]] + 1
            ancestors[i] = ancestors[p[i]] | (1 << i)
            children[p[i]].append(i)
        set_ = object.__setattr__
        set_(self, "_parents", tuple(p))
        set_(self, "_depths", tuple(depths))
        set_(self, "_children", tuple(tuple(c) for c in children))
        set_(self, "_ancestors", tuple(ancestors))
        set_(self, "_choices", _choices)
        set_(self, "_rank", None if _choices is None else (-1,) + tuple(c[-1] for c in _choices))

    def __setattr__(self, name, value):
        raise AttributeError("Tree is immutable")

    def __delattr__(self, name):
        raise AttributeError("Tree is immutable")

    # ---- constructors -------------------------------------------------------------------------

    @classmethod
    def from_parents(cls, parents) -> "Tree":
        """Same as ``Tree(parents)``: ``parents`` a sequence or 1-D integer tensor
        of ``T`` ints (see the class docstring for the rules)."""
        return cls(parents)

    @classmethod
    def chain(cls, k: int) -> "Tree":
        """A chain of ``k >= 0`` drafted tokens: ``k + 1`` nodes,
        ``parents = [-1, 0, 1, ..., k - 1]``."""
        k = _as_int(k, "k")
        if k < 0:
            raise ValueError(f"chain length k = {k} must be >= 0")
        if k + 1 > MAX_TREE_LEN:
            raise ValueError(f"too many nodes: a chain of {k} tokens has {k + 1} nodes > MAX_TREE_LEN = {MAX_TREE_LEN}")
        return cls([-1] + list(range(k)))

    @classmethod
    def from_choices(cls, choices: Iterable[Sequence[int]]) -> "Tree":
        """A tree from Medusa-style choices.

        Args:
            choices: paths, each a non-empty sequence of per-head top-k ranks
                (``>= 0``), e.g. ``[(0,), (1,), (0, 0), (0, 1)]``. Every proper
                prefix of a path must itself be a path (no skipped levels); no
                duplicates; at most 255 paths.

        Returns:
            A tree of ``len(choices) + 1`` nodes: node 0 the root, then the paths
            sorted by ``(length, path)`` as Medusa sorts them; each path's parent
            is the path without its last element (the root for length-1 paths).
            ``choices``, ``rank`` and ``head`` are set.
        """
        if isinstance(choices, (str, bytes)):
            raise TypeError("choices must be a sequence of paths, got a string")
        paths = []
        for n, path in enumerate(choices):
            if isinstance(path, torch.Tensor):
                path = path.tolist()
            if isinstance(path, (str, bytes)) or not isinstance(path, Iterable):
                raise TypeError(f"choices[{n}] must be a sequence of ranks, got {type(path).__name__} {path!r}")
            path = tuple(_as_int(r, f"choices[{n}] element") for r in path)
            if not path:
                raise ValueError(f"empty path: choices[{n}] = (); every path needs at least one rank")
            if any(r < 0 for r in path):
                raise ValueError(f"negative rank: choices[{n}] = {path}; ranks are top-k indices >= 0")
            paths.append(path)
        if len(paths) + 1 > MAX_TREE_LEN:
            raise ValueError(f"too many nodes: {len(paths)} choices make {len(paths) + 1} nodes with the root "
                             f"> MAX_TREE_LEN = {MAX_TREE_LEN}")
        first_seen: dict[tuple, int] = {}
        for n, path in enumerate(paths):
            if path in first_seen:
                raise ValueError(f"duplicate path: choices[{n}] = {path} repeats choices[{first_seen[path]}]")
            first_seen[path] = n
        ordered = sorted(paths, key=lambda x: (len(x), x))
        index = {path: i + 1 for i, path in enumerate(ordered)}
        parents = [-1]
        for path in ordered:
            if len(path) == 1:
                parents.append(0)
            elif path[:-1] in index:
                parents.append(index[path[:-1]])
            else:
                raise ValueError(f"path skips a level: choices[{first_seen[path]}] = {path} but its prefix "
                                 f"{path[:-1]} is not among the choices")
        return cls(parents, _choices=tuple(ordered))

    # ---- structure ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of nodes ``T`` (root included)."""
        return len(self._parents)

    def __len__(self) -> int:
        return len(self._parents)

    @property
    def parents(self) -> tuple[int, ...]:
        """Tuple of ``T`` ints: ``parents[0] = -1``, else ``0 <= parents[i] < i``."""
        return self._parents

    def parents_tensor(self) -> torch.Tensor:
        """``parents`` as int32 ``[T]`` (CPU)."""
        return torch.tensor(self._parents, dtype=torch.int32)

    @property
    def depths(self) -> tuple[int, ...]:
        """Tuple of ``T`` ints: depth of each node, root 0."""
        return self._depths

    @property
    def max_depth(self) -> int:
        """Largest depth (0 for a lone root); the longest acceptable draft."""
        return max(self._depths)

    @property
    def choices(self) -> tuple[tuple[int, ...], ...] | None:
        """Sorted Medusa paths, ``choices[i - 1]`` for node ``i``; ``None`` if the
        tree was not built from choices."""
        return self._choices

    @property
    def rank(self) -> tuple[int, ...] | None:
        """Per node (``T`` ints): last element of its choice path, -1 for the
        root; ``None`` if the tree was not built from choices."""
        return self._rank

    @property
    def head(self) -> tuple[int, ...]:
        """Per node (``T`` ints): ``depth - 1``, the Medusa head whose top-k fills
        it; -1 for the root."""
        return tuple(d - 1 for d in self._depths)

    def children(self, i: int) -> tuple[int, ...]:
        """Children of node ``i``, in node order."""
        return self._children[self._node(i)]

    def is_leaf(self, i: int) -> bool:
        """True iff node ``i`` has no children."""
        return not self._children[self._node(i)]

    def leaves(self) -> tuple[int, ...]:
        """Leaf node indices, ascending."""
        return tuple(i for i, c in enumerate(self._children) if not c)

    def ancestors(self, i: int) -> tuple[int, ...]:
        """Root-to-``i`` path of node indices, ``i`` included: ``(0, ..., i)``."""
        i = self._node(i)
        path = []
        while i != -1:
            path.append(i)
            i = self._parents[i]
        return tuple(reversed(path))

    def paths(self) -> list[tuple[int, ...]]:
        """One root-to-leaf path of node indices per leaf, in ``leaves()`` order."""
        return [self.ancestors(leaf) for leaf in self.leaves()]

    @property
    def is_chain(self) -> bool:
        """True iff ``parents == [-1, 0, 1, ..., T - 2]`` (a lone root included)."""
        return all(p == i - 1 for i, p in enumerate(self._parents))

    def _node(self, i) -> int:
        i = _as_int(i, "node index")
        if not 0 <= i < len(self._parents):
            raise IndexError(f"node index {i} out of range for a tree of {len(self._parents)} nodes")
        return i

    # ---- tensors ------------------------------------------------------------------------------

    def retrieve_indices(self) -> torch.Tensor:
        """Root-to-leaf node paths as a padded index table (Medusa's
        ``retrieve_indices`` layout).

        Returns:
            int64 ``[num_leaves, max_depth + 1]`` (CPU): row ``r`` is
            ``paths()[r]`` (starting with 0, the root), padded with -1. Rows are
            in ascending leaf order (Medusa builds the same rows in descending
            leaf order).
        """
        width = self.max_depth + 1
        rows = [list(p) + [-1] * (width - len(p)) for p in self.paths()]
        return torch.tensor(rows, dtype=torch.int64).reshape(len(rows), width)

    def position_offsets(self) -> torch.Tensor:
        """int32 ``[T]`` (CPU): node depths, the RoPE offsets to add to ``prefix_len``."""
        return torch.tensor(self._depths, dtype=torch.int32)

    def mask_bool(self) -> torch.Tensor:
        """bool ``[T, T]`` (CPU): ``[i, j]`` iff node ``j`` is an ancestor of node
        ``i`` or ``i`` itself (lower triangular, diagonal set)."""
        return _rows_to_bool(self._ancestors, self.size)

    def packed_mask(self, words: int | None = None) -> torch.Tensor:
        """The ancestor-or-self mask packed as ``tree_attention`` reads it.

        Args:
            words: words per row, at least ``ceil(T / 32)`` (the default).

        Returns:
            int32 ``[T, words]`` (CPU): bit ``j % 32`` of word ``j // 32`` of row
            ``i`` set iff ``mask_bool()[i, j]``; int32 wraparound for bit 31.
        """
        return _pack_rows(self._ancestors, _check_words(words, self.size, f"a tree of {self.size} nodes"))

    # ---- dunder -------------------------------------------------------------------------------

    def __eq__(self, other):
        if not isinstance(other, Tree):
            return NotImplemented
        return self._parents == other._parents

    def __hash__(self):
        return hash(self._parents)

    def __repr__(self):
        if self.is_chain:
            return f"Tree.chain({self.size - 1})"
        return f"Tree(size={self.size}, max_depth={self.max_depth}, parents={list(self._parents)})"


# ---- batching ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeBatch:
    """A ragged batch of trees, tokens of all sequences concatenated.

    Attributes:
        qo_indptr: int32 ``[B + 1]``; sequence ``b`` owns rows
            ``qo_indptr[b] : qo_indptr[b + 1]``.
        tree_mask: int32 ``[N, W]`` packed ancestor-or-self rows (local node
            indices within each tree), ``N = qo_indptr[-1]``.
        positions: int32 ``[N]``, each node's depth in its tree (RoPE offset to
            add to the sequence's ``prefix_len``).
        parents: int32 ``[N]``, local parent index, -1 for roots.
        tree_sizes: list of ``B`` ints.
    """

    qo_indptr: torch.Tensor
    tree_mask: torch.Tensor
    positions: torch.Tensor
    parents: torch.Tensor
    tree_sizes: list

    @property
    def batch_size(self) -> int:
        """Number of sequences ``B``."""
        return len(self.tree_sizes)

    @property
    def num_tokens(self) -> int:
        """Total tree tokens ``N``."""
        return sum(self.tree_sizes)

    def to(self, device) -> "TreeBatch":
        """A copy with every tensor on ``device`` (``tree_sizes`` is shared)."""
        return TreeBatch(self.qo_indptr.to(device), self.tree_mask.to(device), self.positions.to(device),
                         self.parents.to(device), list(self.tree_sizes))


def batch_trees(trees: Sequence[Tree], words: int | None = None) -> TreeBatch:
    """Concatenate trees into one ragged batch.

    Args:
        trees: ``B >= 0`` ``Tree`` objects.
        words: mask words per row; default ``max_b ceil(T_b / 32)`` (at least
            1); must not be smaller.

    Returns:
        ``TreeBatch`` (CPU tensors): ``qo_indptr`` int32 ``[B + 1]``,
        ``tree_mask`` int32 ``[N, W]``, ``positions`` int32 ``[N]``, ``parents``
        int32 ``[N]`` (local, -1 for roots), ``tree_sizes``.
    """
    trees = list(trees)
    for b, tree in enumerate(trees):
        if not isinstance(tree, Tree):
            raise TypeError(f"trees[{b}] must be a Tree, got {type(tree).__name__}")
    sizes = [t.size for t in trees]
    largest = max(sizes, default=0)
    words = _check_words(words, largest, f"the largest tree ({largest} nodes)")
    indptr = [0]
    for s in sizes:
        indptr.append(indptr[-1] + s)
    rows = [r for t in trees for r in t._ancestors]
    return TreeBatch(
        qo_indptr=torch.tensor(indptr, dtype=torch.int32),
        tree_mask=_pack_rows(rows, words),
        positions=torch.tensor([d for t in trees for d in t.depths], dtype=torch.int32),
        parents=torch.tensor([p for t in trees for p in t.parents], dtype=torch.int32),
        tree_sizes=sizes,
    )


# ---- lookahead decoding -----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LookaheadLayout:
    """One lookahead-decoding step's tokens and mask (see ``lookahead_mask``).

    Attributes:
        window, ngram, guesses: ``W``, ``N``, ``G``.
        size: ``T = (N - 1) * W + G * (N - 1)``.
        window_rows: ``N - 1`` tuples of ``W`` node indices; ``window_rows[l][c]``
            is window cell (level ``l``, column ``c``) ``= l * W + c``;
            ``window_rows[0][0] == 0`` is the current token.
        guess_rows: ``G`` tuples of ``N - 1`` node indices;
            ``guess_rows[g][k] = (N - 1) * W + g * (N - 1) + k``.
    """

    window: int
    ngram: int
    guesses: int
    window_rows: tuple
    guess_rows: tuple
    _rows: tuple  # visibility bitsets, one per node

    @property
    def size(self) -> int:
        """Number of tokens ``T`` in the step (current token included)."""
        return len(self._rows)

    @property
    def lookahead_branch(self) -> range:
        """Node indices of the lookahead branch (current token and the window):
        ``range(0, (N - 1) * W)``."""
        return range(0, (self.ngram - 1) * self.window)

    @property
    def verification_branch(self) -> range:
        """Node indices of the guesses: ``range((N - 1) * W, T)``."""
        return range((self.ngram - 1) * self.window, self.size)

    @property
    def last_level_rows(self) -> tuple:
        """``window_rows[-1]``: the ``W`` newest-level tokens, whose outputs form
        the next window level (LADE's ``inp_logits``)."""
        return self.window_rows[-1]

    def window_node(self, level: int, col: int) -> int:
        """Node index of window cell (``level`` in ``[0, N-1)``, ``col`` in ``[0, W)``)."""
        return self.window_rows[level][col]

    def guess_node(self, guess: int, k: int) -> int:
        """Node index of token ``k`` (``[0, N-1)``) of guess ``guess`` (``[0, G)``)."""
        return self.guess_rows[guess][k]

    @property
    def positions(self) -> torch.Tensor:
        """int32 ``[T]`` (CPU): RoPE offsets relative to the current token (add
        its position): window cell ``(l, c)`` -> ``l + c``; guess token ``k`` ->
        ``k + 1``; the current token 0."""
        offsets = [0] * self.size
        for level, row in enumerate(self.window_rows):
            for col, node in enumerate(row):
                offsets[node] = level + col
        for row in self.guess_rows:
            for k, node in enumerate(row):
                offsets[node] = k + 1
        return torch.tensor(offsets, dtype=torch.int32)

    def position_offsets(self) -> torch.Tensor:
        """Same as ``positions``: int32 ``[T]``."""
        return self.positions

    def mask_bool(self) -> torch.Tensor:
        """bool ``[T, T]`` (CPU): ``[i, j]`` iff token ``i`` attends to token ``j``."""
        return _rows_to_bool(self._rows, self.size)

    def packed_mask(self, words: int | None = None) -> torch.Tensor:
        """int32 ``[T, words]`` (CPU), ``words >= ceil(T / 32)`` (the default):
        ``mask_bool()`` packed as ``tree_attention`` reads it."""
        return _pack_rows(self._rows, _check_words(words, self.size, f"a lookahead layout of {self.size} tokens"))


def lookahead_mask(window: int = 7, ngram: int = 5, guesses: int = 7) -> LookaheadLayout:
    """The attention layout of one lookahead-decoding step (Fu et al. 2024,
    "Break the Sequential Dependency of LLM Inference Using Lookahead Decoding"),
    as the reference implementation builds it.

    Source: hao-ai-lab/LookaheadDecoding, ``lade/models/llama.py``
    (``j_make_causal_mask_multilevel``: block-0 lower triangle plus one
    diagonal per earlier level; guesses causal in blocks of ``N - 1`` plus
    column 0) and ``lade/decoding.py`` / ``jforward_multilevel`` (token order,
    level sizes and ``position_ids``); the same picture is ``media/mask.png`` of
    that repository (W=5, N=4, G=2: T = 21).

    Token order (node indices):

    * Lookahead branch, a 2-D window of ``N - 1`` levels by ``W`` columns; cell
      (level ``l``, column ``c``) is node ``l * W + c`` at RoPE offset ``l + c``.
      Cell (0, 0) is node 0, the current (last accepted) token: LADE's oldest
      level ``past_tokens[0]`` holds only ``W - 1`` tokens (offsets ``1..W-1``)
      and, after the current token, fills out block 0. Levels ``1..N-2`` hold
      ``W`` tokens each (offsets ``l..l+W-1``).
    * Verification branch: ``G`` guesses (n-gram candidates that follow the
      current token), each ``N - 1`` tokens; token ``k`` of guess ``g`` is node
      ``(N - 1) * W + g * (N - 1) + k`` at offset ``k + 1``.

    So ``T = (N - 1) * W + G * (N - 1)`` (56 for the defaults W=7, N=5, G=7).
    Note the current token is counted inside the window, not on top of it.

    Mask (the prefix is always visible and not part of it):

    * Window cell ``(l, c)`` sees cells ``(0, c')`` for ``c' <= c`` (the current
      token and the oldest level up to its column) and cells ``(l', c)`` for
      ``1 <= l' <= l`` (its own column in levels 1..l, itself included). These
      are exactly one token at each offset ``0 .. l + c``: the Jacobi trajectory
      it continues. Level 0 is thus causal; node 0 sees only itself.
    * Guess token ``(g, k)`` sees node 0 and tokens ``(g, k')`` for ``k' <= k``:
      causal within its guess, blind to the window and to other guesses.

    Args:
        window: ``W >= 1``.
        ngram: ``N >= 2`` (n-gram size; ``N - 1`` window levels, ``N - 1`` tokens
            per guess).
        guesses: ``G >= 0``.

    Returns:
        ``LookaheadLayout``. Raises ``ValueError`` on bad sizes or ``T > 256``.
    """
    w = _as_int(window, "window")
    n = _as_int(ngram, "ngram")
    g = _as_int(guesses, "guesses")
    if w < 1:
        raise ValueError(f"window W = {w} must be >= 1")
    if n < 2:
        raise ValueError(f"ngram N = {n} must be >= 2")
    if g < 0:
        raise ValueError(f"guesses G = {g} must be >= 0")
    levels = n - 1
    t = levels * w + g * levels
    if t > MAX_TREE_LEN:
        raise ValueError(f"too many tokens: W={w}, N={n}, G={g} give T = (N-1)*W + G*(N-1) = {t} "
                         f"> MAX_TREE_LEN = {MAX_TREE_LEN}")
    window_rows = tuple(tuple(l * w + c for c in range(w)) for l in range(levels))
    base = levels * w
    guess_rows = tuple(tuple(base + j * levels + k for k in range(levels)) for j in range(g))
    rows = [0] * t
    for l in range(levels):
        for c in range(w):
            bits = 0
            for c2 in range(c + 1):
                bits |= 1 << window_rows[0][c2]
            for l2 in range(1, l + 1):
                bits |= 1 << window_rows[l2][c]
            rows[window_rows[l][c]] = bits
    for row in guess_rows:
        for k in range(levels):
            bits = 1  # node 0, the current token
            for k2 in range(k + 1):
                bits |= 1 << row[k2]
            rows[row[k]] = bits
    return LookaheadLayout(w, n, g, window_rows, guess_rows, tuple(rows))

"""specdec_kernels.trees: tree validation, masks (bool and packed), Medusa
choices, retrieve indices, ragged batching, and the lookahead-decoding layout."""
import collections

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specdec_kernels.attention import MAX_TREE_LEN
from specdec_kernels.reference.attention import unpack_mask
from specdec_kernels.trees import (
    MC_SIM_7B_63,
    LookaheadLayout,
    Tree,
    TreeBatch,
    batch_trees,
    lookahead_mask,
    pack_mask,
)


@st.composite
def parent_arrays(draw, min_size=1, max_size=MAX_TREE_LEN):
    size = draw(st.integers(min_size, max_size))
    return [-1] + [draw(st.integers(0, i - 1)) for i in range(1, size)]


def brute_ancestor_or_self(parents, i, j):
    while i != -1:
        if i == j:
            return True
        i = parents[i]
    return False


def brute_mask(parents):
    t = len(parents)
    return torch.tensor([[brute_ancestor_or_self(parents, i, j) for j in range(t)] for i in range(t)])


def brute_depth(parents, i):
    d = 0
    while parents[i] != -1:
        i, d = parents[i], d + 1
    return d


def brute_pack(mask, words):
    """Independent packing: Python ints, then two's complement to int32."""
    rows = []
    for row in mask.tolist():
        out = []
        for w in range(words):
            v = sum(1 << b for b in range(32) if 32 * w + b < len(row) and row[32 * w + b])
            out.append(v - (1 << 32) if v >= (1 << 31) else v)
        rows.append(out)
    return torch.tensor(rows, dtype=torch.int32).reshape(len(rows), words)


# ---- random trees ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(parent_arrays())
def test_mask_semantics_random_trees(parents):
    tree = Tree(parents)
    t = len(parents)
    expected = brute_mask(parents)
    assert tree.size == t == len(tree)
    assert tree.parents == tuple(parents)
    assert torch.equal(tree.mask_bool(), expected)
    packed = tree.packed_mask()
    assert packed.dtype == torch.int32 and packed.shape == (t, -(-t // 32))
    assert torch.equal(packed, brute_pack(expected, packed.shape[1]))
    assert torch.equal(unpack_mask(packed, t), expected)
    assert torch.equal(pack_mask(expected), packed)
    assert tree.depths == tuple(brute_depth(parents, i) for i in range(t))
    offsets = tree.position_offsets()
    assert offsets.dtype == torch.int32 and offsets.tolist() == list(tree.depths)
    assert tree.max_depth == max(tree.depths)


@settings(max_examples=40, deadline=None)
@given(parent_arrays(max_size=100))
def test_structure_random_trees(parents):
    tree = Tree.from_parents(parents)
    t = len(parents)
    for i in range(t):
        assert tree.children(i) == tuple(j for j in range(t) if parents[j] == i)
        assert tree.is_leaf(i) == (i not in parents[1:])
    assert tree.leaves() == tuple(i for i in range(t) if tree.is_leaf(i))
    paths = tree.paths()
    assert len(paths) == len(tree.leaves())
    for leaf, path in zip(tree.leaves(), paths):
        assert path[0] == 0 and path[-1] == leaf
        assert all(parents[b] == a for a, b in zip(path, path[1:]))
    ri = tree.retrieve_indices()
    assert ri.dtype == torch.int64 and ri.shape == (len(paths), tree.max_depth + 1)
    for row, path in zip(ri.tolist(), paths):
        assert row == list(path) + [-1] * (ri.shape[1] - len(path))
    assert tree.is_chain == (parents == [-1] + list(range(t - 1)))
    assert tree.parents_tensor().tolist() == parents and tree.parents_tensor().dtype == torch.int32


# ---- packed bits ----------------------------------------------------------------------------


def test_bit_31_is_negative_word():
    chain = Tree.chain(31)  # 32 nodes; row 31 sees all 32 -> every bit of word 0
    packed = chain.packed_mask()
    assert packed.shape == (32, 1)
    assert packed[31, 0].item() == -1
    assert packed[30, 0].item() == 2**31 - 1
    star = Tree([-1] + [0] * 31)  # node 31 sees 0 and itself: bits 0 and 31
    assert star.packed_mask()[31, 0].item() == 1 - 2**31
    assert torch.equal(unpack_mask(star.packed_mask(), 32), star.mask_bool())


@pytest.mark.parametrize("size", [33, 64, 65, 70, 100, 128, 200, 256])
def test_multi_word_masks(size):
    chain = Tree.chain(size - 1)
    packed = chain.packed_mask()
    assert packed.shape == (size, -(-size // 32))
    assert torch.equal(unpack_mask(packed, size), torch.ones(size, size, dtype=torch.bool).tril())
    last = packed[-1].tolist()
    full, rem = divmod(size, 32)
    assert last[:full] == [-1] * full
    if rem:
        assert last[full] == (1 << rem) - 1
    # A star keeps bit 0 and the diagonal bit only, wherever it falls.
    star = Tree([-1] + [0] * (size - 1))
    assert torch.equal(unpack_mask(star.packed_mask(), size), brute_mask(star.parents))


def test_words_argument():
    tree = Tree.chain(40)
    wide = tree.packed_mask(words=8)
    assert wide.shape == (41, 8)
    assert torch.equal(wide[:, :2], tree.packed_mask()) and not wide[:, 2:].any()
    with pytest.raises(ValueError, match="words=1 is too few"):
        tree.packed_mask(words=1)
    with pytest.raises(ValueError, match="too few"):
        pack_mask(torch.ones(2, 33, dtype=torch.bool), words=1)


# ---- chains and choices ---------------------------------------------------------------------


def test_chain():
    chain = Tree.chain(4)
    assert chain.parents == (-1, 0, 1, 2, 3) and chain.size == 5
    assert chain.is_chain and chain.depths == (0, 1, 2, 3, 4) and chain.max_depth == 4
    assert chain.leaves() == (4,) and chain.paths() == [(0, 1, 2, 3, 4)]
    assert torch.equal(chain.mask_bool(), torch.ones(5, 5, dtype=torch.bool).tril())
    assert chain.retrieve_indices().tolist() == [[0, 1, 2, 3, 4]]
    lone = Tree.chain(0)
    assert lone.parents == (-1,) and lone.is_chain and lone.leaves() == (0,) and lone.max_depth == 0
    assert lone.packed_mask().tolist() == [[1]]
    assert Tree.chain(MAX_TREE_LEN - 1).size == MAX_TREE_LEN
    assert not Tree([-1, 0, 0]).is_chain
    assert Tree.chain(3) == Tree([-1, 0, 1, 2]) and hash(Tree.chain(3)) == hash(Tree([-1, 0, 1, 2]))
    assert chain.choices is None and chain.rank is None and chain.head == (-1, 0, 1, 2, 3)


def test_from_choices_small_example():
    choices = [(1,), (0,), (0, 1), (0, 0), (1, 0), (0, 0, 0)]
    tree = Tree.from_choices(choices)
    # Sorted by (length, path): (0,) (1,) (0,0) (0,1) (1,0) (0,0,0) -> nodes 1..6.
    assert tree.choices == ((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0))
    assert tree.parents == (-1, 0, 0, 1, 1, 2, 3)
    assert tree.rank == (-1, 0, 1, 0, 1, 0, 0)
    assert tree.head == (-1, 0, 0, 1, 1, 1, 2)
    assert tree.depths == (0, 1, 1, 2, 2, 2, 3)
    assert tree.leaves() == (4, 5, 6)
    assert tree.retrieve_indices().tolist() == [[0, 1, 4, -1], [0, 2, 5, -1], [0, 1, 3, 6]]
    # Lists, tensors and tuples are all fine as paths.
    assert Tree.from_choices([[0], torch.tensor([0, 0])]).parents == (-1, 0, 1)
    assert Tree.from_choices([]).parents == (-1,)


def medusa_retrieve_rows(choices):
    """Medusa's retrieve_indices construction, restated: walk the sorted choices
    from the last, skipping any already covered as a prefix, and map each
    prefix to its sorted index + 1."""
    ordered = sorted(choices, key=lambda x: (len(x), x))
    covered, rows = set(), []
    for path in reversed(ordered):
        if path in covered:
            continue
        prefixes = [path[: c + 1] for c in range(len(path))]
        covered.update(prefixes)
        rows.append([0] + [ordered.index(p) + 1 for p in prefixes])
    return rows


def test_mc_sim_7b_63():
    assert len(MC_SIM_7B_63) == 63 and len(set(MC_SIM_7B_63)) == 63
    tree = Tree.from_choices(MC_SIM_7B_63)
    assert tree.size == 64
    by_depth = collections.Counter(tree.depths)
    assert [by_depth[d] for d in range(1, 5)] == [10, 28, 23, 2] and by_depth[0] == 1
    assert tree.max_depth == 4
    assert len(tree.leaves()) == 42
    ri = tree.retrieve_indices()
    assert ri.shape == (42, 5)
    width = ri.shape[1]
    ours = sorted(tuple(r) for r in ri.tolist())
    medusa = sorted(tuple(r + [-1] * (width - len(r))) for r in medusa_retrieve_rows(MC_SIM_7B_63))
    assert ours == medusa
    # Every node's path is its parent's path plus its rank.
    for i in range(1, tree.size):
        path = tree.choices[i - 1]
        assert tree.rank[i] == path[-1] and tree.head[i] == len(path) - 1
        parent_path = () if tree.parents[i] == 0 else tree.choices[tree.parents[i] - 1]
        assert parent_path + (path[-1],) == path
    assert torch.equal(unpack_mask(tree.packed_mask(), 64), brute_mask(tree.parents))
    assert tree.packed_mask().shape == (64, 2)


# ---- batching -------------------------------------------------------------------------------


def test_batch_trees():
    rand = Tree([-1] + [(i * 37 + 11) % i for i in range(1, 70)])  # 70 nodes, varied shape
    trees = [Tree.chain(3), Tree.from_choices(MC_SIM_7B_63), rand, Tree([-1])]
    batch = batch_trees(trees)
    assert isinstance(batch, TreeBatch)
    sizes = [4, 64, 70, 1]
    assert batch.tree_sizes == sizes and batch.batch_size == 4 and batch.num_tokens == 139
    assert batch.qo_indptr.dtype == torch.int32 and batch.qo_indptr.tolist() == [0, 4, 68, 138, 139]
    assert batch.tree_mask.dtype == torch.int32 and batch.tree_mask.shape == (139, 3)
    assert batch.positions.dtype == torch.int32 and batch.parents.dtype == torch.int32
    for b, tree in enumerate(trees):
        lo, hi = batch.qo_indptr[b].item(), batch.qo_indptr[b + 1].item()
        rows = batch.tree_mask[lo:hi]
        assert torch.equal(rows, tree.packed_mask(words=3))
        assert torch.equal(unpack_mask(rows, tree.size), tree.mask_bool())
        assert batch.positions[lo:hi].tolist() == list(tree.depths)
        assert batch.parents[lo:hi].tolist() == list(tree.parents)
    wide = batch_trees(trees, words=8)
    assert wide.tree_mask.shape == (139, 8) and torch.equal(wide.tree_mask[:, :3], batch.tree_mask)
    with pytest.raises(ValueError, match="words=2 is too few"):
        batch_trees(trees, words=2)
    moved = batch.to("cpu")
    assert isinstance(moved, TreeBatch) and torch.equal(moved.tree_mask, batch.tree_mask)
    small = batch_trees([Tree.chain(2), Tree.chain(1)])
    assert small.tree_mask.shape == (5, 1) and small.tree_mask[:, 0].tolist() == [1, 3, 7, 1, 3]
    empty = batch_trees([])
    assert empty.qo_indptr.tolist() == [0] and empty.tree_mask.shape == (0, 1) and empty.tree_sizes == []
    with pytest.raises(TypeError, match=r"trees\[1\] must be a Tree"):
        batch_trees([Tree.chain(1), [-1, 0]])


# ---- invalid input --------------------------------------------------------------------------


@pytest.mark.parametrize("parents,message", [
    ([], "empty tree"),
    ([0, 0], r"parents\[0\] = 0: node 0 is the root"),
    ([-1, 0, -1], r"a second root: parents\[2\] = -1"),
    ([-1, 0, 5], r"out of range: parents\[2\] = 5"),
    ([-1, 0, -3], r"out of range: parents\[2\] = -3"),
    ([-1, 2, 0], r"parent not before its child: parents\[1\] = 2"),
    ([-1, 1], r"parent not before its child: parents\[1\] = 1"),
    ([-1, 0, 3, 2], r"parent not before its child: parents\[2\] = 3"),  # a 2-3 cycle
    ([-1] + [0] * MAX_TREE_LEN, "too many nodes: 257"),
])
def test_invalid_parents(parents, message):
    with pytest.raises(ValueError, match=message):
        Tree(parents)
    with pytest.raises(ValueError, match=message):
        Tree.from_parents(torch.tensor(parents, dtype=torch.int32))


def test_invalid_parent_types():
    with pytest.raises(TypeError, match=r"parents\[1\] must be an integer"):
        Tree([-1, 0.5])
    with pytest.raises(TypeError, match="integer tensor"):
        Tree(torch.tensor([-1.0, 0.0]))
    with pytest.raises(ValueError, match="1-D"):
        Tree(torch.tensor([[-1, 0]]))


@pytest.mark.parametrize("choices,message", [
    ([(0,), (0, 0, 1)], r"skips a level: choices\[1\] = \(0, 0, 1\) but its prefix \(0, 0\)"),
    ([(1, 0)], r"skips a level: choices\[0\] = \(1, 0\)"),
    ([(0,), (1,), (0,)], r"duplicate path: choices\[2\] = \(0,\) repeats choices\[0\]"),
    ([(0,), (0, -1)], r"negative rank: choices\[1\] = \(0, -1\)"),
    ([(0,), ()], r"empty path: choices\[1\]"),
    ([(i,) for i in range(MAX_TREE_LEN)], "too many nodes: 256 choices make 257 nodes"),
])
def test_invalid_choices(choices, message):
    with pytest.raises(ValueError, match=message):
        Tree.from_choices(choices)


def test_invalid_chain_and_indices():
    with pytest.raises(ValueError, match="k = -1 must be >= 0"):
        Tree.chain(-1)
    with pytest.raises(ValueError, match="too many nodes"):
        Tree.chain(MAX_TREE_LEN)
    assert Tree.from_choices([(i,) for i in range(MAX_TREE_LEN - 1)]).size == MAX_TREE_LEN
    with pytest.raises(IndexError):
        Tree.chain(2).children(3)


def test_tree_is_immutable():
    tree = Tree.chain(2)
    with pytest.raises(AttributeError):
        tree.size = 5
    with pytest.raises(AttributeError):
        tree._parents = (-1,)
    assert tree.parents == (-1, 0, 1)


# ---- lookahead decoding ---------------------------------------------------------------------


def lade_reference_mask(w, n, g):
    """The reference's construction restated on blocks (hao-ai-lab/LookaheadDecoding,
    lade/models/llama.py, j_make_causal_mask_multilevel): block 0 (the current
    token and the oldest level) lower-triangular for every window block; block
    l also sees its own column in blocks 1..l; guesses see column 0 and are
    causal in runs of N - 1."""
    levels = n - 1
    t = levels * w + g * levels
    m = torch.zeros(t, t, dtype=torch.bool)
    tri = torch.ones(w, w, dtype=torch.bool).tril()
    eye = torch.eye(w, dtype=torch.bool)
    for l in range(levels):
        m[l * w:(l + 1) * w, :w] |= tri
        for r in range(1, l + 1):
            m[l * w:(l + 1) * w, r * w:(r + 1) * w] |= eye
    base = levels * w
    m[base:, 0] = True
    small = torch.ones(levels, levels, dtype=torch.bool).tril()
    for j in range(g):
        s = base + j * levels
        m[s:s + levels, s:s + levels] |= small
    return m


def test_lookahead_matches_published_figure():
    # media/mask.png of the reference repository: 4-grams, window 5, 2 guesses.
    layout = lookahead_mask(5, 4, 2)
    assert isinstance(layout, LookaheadLayout) and layout.size == 21
    assert layout.positions.tolist() == [0, 1, 2, 3, 4, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 1, 2, 3, 1, 2, 3]
    m = layout.mask_bool()
    visible = lambda i: [j for j in range(21) if m[i, j]]  # noqa: E731
    assert visible(0) == [0]
    assert visible(4) == [0, 1, 2, 3, 4]       # oldest level, causal
    assert visible(5) == [0, 5]                # green "1"
    assert visible(9) == [0, 1, 2, 3, 4, 9]    # green "5"
    assert visible(10) == [0, 5, 10]           # red "2"
    assert visible(14) == [0, 1, 2, 3, 4, 9, 14]  # red "6"
    assert visible(17) == [0, 15, 16, 17]      # guess 0, token 3
    assert visible(18) == [0, 18]              # guess 1, token 1


@pytest.mark.parametrize("w,n,g", [(7, 5, 7), (5, 4, 2), (1, 2, 0), (3, 2, 4), (1, 6, 1), (15, 5, 15),
                                   (4, 3, 0), (60, 3, 8)])
def test_lookahead_properties(w, n, g):
    layout = lookahead_mask(w, n, g)
    levels = n - 1
    t = levels * w + g * levels
    assert layout.size == t
    m = layout.mask_bool()
    assert m.shape == (t, t) and m.dtype == torch.bool
    assert torch.equal(m, lade_reference_mask(w, n, g))
    packed = layout.packed_mask()
    assert packed.dtype == torch.int32 and packed.shape == (t, -(-t // 32))
    assert torch.equal(unpack_mask(packed, t), m) and torch.equal(pack_mask(m), packed)
    assert torch.equal(layout.packed_mask(words=8)[:, :packed.shape[1]], packed)
    assert m[:, 0].all(), "the current token is visible to every token"
    assert m[0].sum() == 1 and m.diagonal().all()
    pos = layout.positions
    assert pos.dtype == torch.int32 and torch.equal(layout.position_offsets(), pos)
    # Index helpers.
    assert list(layout.lookahead_branch) == [c for row in layout.window_rows for c in row]
    assert list(layout.verification_branch) == [k for row in layout.guess_rows for k in row]
    assert layout.window_rows[0][0] == 0 and layout.last_level_rows == layout.window_rows[-1]
    assert len(layout.window_rows) == levels and all(len(r) == w for r in layout.window_rows)
    assert len(layout.guess_rows) == g and all(len(r) == levels for r in layout.guess_rows)
    window = set(layout.lookahead_branch)
    for gi, row in enumerate(layout.guess_rows):
        for k, node in enumerate(row):
            assert layout.guess_node(gi, k) == node
            assert pos[node].item() == k + 1
            seen = {j for j in range(t) if m[node, j]}
            assert seen == {0} | set(row[:k + 1]), "a guess is causal in itself and sees only node 0 besides"
    for l in range(levels):
        for c in range(w):
            node = layout.window_node(l, c)
            assert node == l * w + c and pos[node].item() == l + c
            seen = sorted(j for j in range(t) if m[node, j])
            assert set(seen) <= window, "the window does not see the guesses"
            expected = {layout.window_node(0, c2) for c2 in range(c + 1)}
            expected |= {layout.window_node(l2, c) for l2 in range(1, l + 1)}
            assert set(seen) == expected
            # One token at each offset 0 .. l + c: a Jacobi trajectory.
            assert sorted(pos[seen].tolist()) == list(range(l + c + 1))


def test_lookahead_defaults_and_errors():
    layout = lookahead_mask()
    assert (layout.window, layout.ngram, layout.guesses) == (7, 5, 7) and layout.size == 56
    assert lookahead_mask(64, 5, 0).size == 256
    with pytest.raises(ValueError, match=r"too many tokens: W=60, N=5, G=10 give T = .* = 280 > MAX_TREE_LEN"):
        lookahead_mask(60, 5, 10)
    with pytest.raises(ValueError, match="window W = 0"):
        lookahead_mask(0, 5, 7)
    with pytest.raises(ValueError, match="ngram N = 1"):
        lookahead_mask(7, 1, 7)
    with pytest.raises(ValueError, match="guesses G = -1"):
        lookahead_mask(7, 5, -1)
    with pytest.raises(ValueError, match="words=1 is too few"):
        layout.packed_mask(words=1)

"""adapters.sglang.tree_speculative_sampling_target_only against sgl-kernel's
documented semantics: the linked-list tree layout, the in-place outputs
(predicts, accept_index, accept_token_num), forced outcomes, and the first
token's distribution (chi-square, ALPHA = 1e-3 per check with fixed seeds; a
control that skips verification must fail)."""
import pytest
import torch

from conftest import backend_cases
from specdec_kernels.adapters import sglang as sg
from test_verify_lossless import chi_square_pvalue

ALPHA = 1e-3
# sgl-kernel's own test trees (two requests of 6 nodes).
NEXT_TOKEN = [[1, 2, -1, 4, 5, -1], [4, 2, 3, -1, 5, -1]]
NEXT_SIBLING = [[-1, 3, -1, -1, -1, -1], [-1, -1, -1, -1, 1, -1]]


def test_parents_from_linked_lists():
    p = sg.parents_from_linked_lists(torch.tensor(NEXT_TOKEN), torch.tensor(NEXT_SIBLING))
    assert p.tolist() == [[-1, 0, 1, 0, 3, 4], [-1, 0, 1, 2, 0, 4]]
    # A root with five children (a sibling chain longer than one jump) and a grandchild.
    nt = torch.tensor([[1, -1, -1, 6, -1, -1, -1]])
    ns = torch.tensor([[-1, 2, 3, 4, 5, -1, -1]])
    assert sg.parents_from_linked_lists(nt, ns).tolist() == [[-1, 0, 0, 0, 0, 0, 3]]
    # 63 children of the root: the chain is as long as the tree.
    n = 64
    nt = torch.full((1, n), -1)
    nt[0, 0] = 1
    ns = torch.cat([torch.tensor([-1]), torch.arange(2, n), torch.tensor([-1])]).unsqueeze(0)
    assert sg.parents_from_linked_lists(nt, ns).tolist() == [[-1] + [0] * (n - 1)]


def call(device, backend, candidates, probs, uniforms=None, final=None, width=4):
    batch, n, _ = probs.shape
    predicts = torch.full((batch * n,), -7, dtype=torch.int32, device=device)
    accept_index = torch.full((batch, width), -1, dtype=torch.int32, device=device)
    accept_num = torch.full((batch,), -7, dtype=torch.int32, device=device)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(batch, n, generator=g) if uniforms is None else uniforms
    f = torch.rand(batch, generator=g) if final is None else final
    sg.tree_speculative_sampling_target_only(
        predicts, accept_index, accept_num, candidates.to(device),
        (torch.arange(batch * n).reshape(batch, n)).to(device), torch.tensor(NEXT_TOKEN).repeat(batch // 2, 1).to(device),
        torch.tensor(NEXT_SIBLING).repeat(batch // 2, 1).to(device), u.to(device), f.to(device), probs.to(device),
        torch.zeros_like(probs).to(device), backend=backend)
    return predicts.cpu(), accept_index.cpu(), accept_num.cpu()


@pytest.mark.parametrize("device,backend", backend_cases())
def test_forced_path(device, backend):
    vocab = 8
    cand = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]])
    probs = torch.full((2, 6, vocab), 1e-9)
    # Request 0: the target is sure of path 0 -> 3 -> 4 -> 5, then token 7.
    for node, nxt in ((0, 3), (3, 4), (4, 5), (5, 7)):
        probs[0, node, nxt] = 1.0
    # Request 1: the target wants token 6 after the root: no child matches.
    probs[1, 0, 6] = 1.0
    probs[1, 1:, 0] = 1.0
    probs /= probs.sum(-1, keepdim=True)
    predicts, idx, num = call(device, backend, cand, probs)
    assert num.tolist() == [3, 0]
    assert idx[0].tolist() == [0, 3, 4, 5] and idx[1].tolist() == [6, -1, -1, -1]
    assert [predicts[i].item() for i in (0, 3, 4, 5)] == [3, 4, 5, 7]
    assert predicts[6] == 6
    untouched = [i for i in range(12) if i not in (0, 3, 4, 5, 6)]
    assert (predicts[untouched] == -7).all(), "entries off the accepted path stay as the caller set them"


@pytest.mark.parametrize("device,backend", [c for c in backend_cases() if c.id != "cpu-triton"])
def test_first_token_is_distributed_as_target(device, backend):
    trials, vocab = 20000, 6
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(6, vocab, generator=g) * 1.5, -1)
    probs = p.expand(trials, 6, vocab).contiguous()
    cand = torch.randint(vocab, (trials, 6), generator=g)
    predicts, idx, _ = call(device, backend, cand, probs, uniforms=torch.rand(trials, 6, generator=g),
                            final=torch.rand(trials, generator=g))
    first = predicts[idx[:, 0].long()].long()
    assert chi_square_pvalue(torch.bincount(first, minlength=vocab), p[0]) > ALPHA
    # Control: taking the first child's token unverified is uniform over the vocabulary here.
    assert chi_square_pvalue(torch.bincount(cand[:, 1], minlength=vocab), p[0]) < ALPHA


def test_bad_arguments_raise():
    probs = torch.softmax(torch.randn(2, 6, 5), -1)
    cand = torch.zeros(2, 6, dtype=torch.int64)
    args = (torch.zeros(12, dtype=torch.int32), torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, dtype=torch.int32),
            cand, torch.arange(12).reshape(2, 6), torch.tensor(NEXT_TOKEN), torch.tensor(NEXT_SIBLING),
            torch.rand(2, 6), torch.rand(2), probs, torch.zeros_like(probs))
    with pytest.raises(ValueError, match=r"threshold_single must be a float in \[0, 1\]"):
        sg.tree_speculative_sampling_target_only(*args, threshold_single=1.5)
    bad = list(args)
    bad[0] = torch.zeros(11, dtype=torch.int32)
    with pytest.raises(ValueError, match="predicts"):
        sg.tree_speculative_sampling_target_only(*bad)
    with pytest.raises(ValueError, match="target_predict"):
        sg.verify_tree_greedy(*args[:7], torch.zeros(11, dtype=torch.int64))


# ---- verify_tree_greedy ---------------------------------------------------------------------

def test_verify_tree_greedy_sgl_kernel_example():
    """sgl-kernel's own example: argmax rows pick path 0 -> 3 -> 4 -> 5 in request 0
    and 0 -> 4 -> 5 in request 1; token 18 is the argmax everywhere else."""
    cand = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 8, 9, 10, 11, 12]])
    logits = torch.full((2, 6, 20), 1.0)
    for b, node, tok in ((0, 0, 3), (0, 3, 4), (0, 4, 5), (1, 0, 11), (1, 4, 12)):
        logits[b, node, tok] = 10.0
    logits[logits.max(-1).values < 10, 18] = 10.0
    predicts = torch.full((12,), -1, dtype=torch.int32)
    accept_index = torch.full((2, 4), -1, dtype=torch.int32)
    accept_num = torch.full((2,), -1, dtype=torch.int32)
    sg.verify_tree_greedy(predicts, accept_index, accept_num, cand, torch.arange(12).reshape(2, 6),
                          torch.tensor(NEXT_TOKEN), torch.tensor(NEXT_SIBLING), logits.argmax(-1).flatten())
    assert predicts.tolist() == [3, -1, -1, 4, 5, 18, 11, -1, -1, -1, 12, 18]
    assert accept_index.tolist() == [[0, 3, 4, 5], [6, 10, 11, -1]]
    assert accept_num.tolist() == [3, 2]


def random_linked_tree(gen, n):
    """A random tree of n nodes as SGLang lists (siblings in ascending order) and its parents."""
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
    first, sib = [-1] * n, [-1] * n
    for i in range(n - 1, 0, -1):
        sib[i], first[parents[i]] = first[parents[i]], i
    return first, sib, parents


def sgl_walk(first, sib, cand, accept, width):
    """sgl-kernel's loop, one request: returns (path, last node). accept(node, child, tried_mass) -> bool."""
    path, node = [0], 0
    for _ in range(1, width):
        c, mass = first[node], 0.0
        while c != -1:
            ok, mass = accept(node, c, mass)
            if ok:
                break
            c = sib[c]
        if c == -1:
            break
        path.append(c)
        node = c
    return path


def test_verify_tree_greedy_matches_sgl_loop():
    gen = torch.Generator().manual_seed(11)
    batch, n, vocab, width = 40, 12, 4, 5
    lists = [random_linked_tree(gen, n) for _ in range(batch)]
    cand = torch.randint(vocab, (batch, n), generator=gen)
    target_predict = torch.randint(vocab, (batch, n), generator=gen)
    retrive = torch.randperm(batch * n, generator=gen).reshape(batch, n)  # any row layout
    predicts = torch.full((batch * n,), -9, dtype=torch.int32)
    accept_index = torch.full((batch, width), -9, dtype=torch.int32)
    accept_num = torch.full((batch,), -9, dtype=torch.int32)
    flat_predict = torch.empty(batch * n, dtype=torch.int64)
    flat_predict[retrive.reshape(-1)] = target_predict.reshape(-1)
    sg.verify_tree_greedy(predicts, accept_index, accept_num, cand, retrive,
                          torch.tensor([f for f, _, _ in lists]), torch.tensor([s for _, s, _ in lists]), flat_predict)
    expected_predicts = torch.full((batch * n,), -9, dtype=torch.int32)
    for b, (first, sib, _) in enumerate(lists):
        path = sgl_walk(first, sib, cand[b].tolist(),
                        lambda node, c, m: (int(cand[b, c]) == int(target_predict[b, node]), m), width)
        assert accept_num[b] == len(path) - 1
        assert accept_index[b].tolist() == [int(retrive[b, x]) for x in path] + [-9] * (width - len(path))
        for j, x in enumerate(path):
            nxt = int(cand[b, path[j + 1]]) if j + 1 < len(path) else int(target_predict[b, x])
            expected_predicts[retrive[b, x]] = nxt
    assert torch.equal(predicts, expected_predicts)


# ---- relaxed (lossy) acceptance ---------------------------------------------------------------

@pytest.mark.parametrize("thresholds", [(0.5, 0.5), (1.0, 0.3), (0.2, 1.0), (1.0, 1.0)])
@pytest.mark.parametrize("width", [3, 5])
def test_relaxed_rule_matches_sgl_loop(thresholds, width):
    """The relaxed path against a plain transcription of sgl-kernel's loop, draw for
    draw; (1, 1) runs the relaxed code directly (the public call takes our exact kernel).
    width 3 stops many paths at the depth limit, where the last node's children are untried."""
    single, acc = thresholds
    gen = torch.Generator().manual_seed(5)
    batch, n, vocab = 60, 10, 6
    lists = [random_linked_tree(gen, n) for _ in range(batch)]
    probs = torch.softmax(torch.randn(batch, n, vocab, generator=gen) * 2, -1)
    cand = torch.randint(vocab, (batch, n), generator=gen)
    unif = torch.rand(batch, n, generator=gen)
    final_u = torch.rand(batch, generator=gen)
    retrive = torch.arange(batch * n).reshape(batch, n)
    predicts = torch.full((batch * n,), -9, dtype=torch.int32)
    accept_index = torch.full((batch, width), -9, dtype=torch.int32)
    accept_num = torch.full((batch,), -9, dtype=torch.int32)
    first_t, sib_t = torch.tensor([f for f, _, _ in lists]), torch.tensor([s for _, s, _ in lists])
    parents = sg.parents_from_linked_lists(first_t, sib_t)
    sg._relaxed(predicts, accept_index, accept_num, cand, retrive, sib_t, parents, unif, final_u, probs,
                single, acc, width)
    for b, (first, sib, par) in enumerate(lists):
        def accept(node, c, mass):
            p = float(probs[b, node, cand[b, c]])
            mass += p
            return float(unif[b, node]) <= mass / acc or p >= single, mass
        path = sgl_walk(first, sib, cand[b].tolist(), accept, width)
        last = path[-1]
        w = probs[b, last].clone()
        if len(path) < width:  # the last node's children were all tried and rejected
            for c in range(n):
                if par[c] == last:
                    w[cand[b, c]] = 0.0
        cum = w.double().cumsum(0)
        hit = (cum > float(final_u[b]) * cum[-1]).nonzero()
        final = int(hit[0, 0]) if hit.numel() else int((w > 0).nonzero()[-1, 0])
        assert accept_num[b] == len(path) - 1, b
        assert accept_index[b, :len(path)].tolist() == [b * n + x for x in path]
        assert predicts[b * n + last].item() == final, b
        for j in range(len(path) - 1):
            assert predicts[b * n + path[j]].item() == int(cand[b, path[j + 1]])


def test_relaxed_rule_accepts_more_and_is_lossy():
    """Lower thresholds accept more drafts than the exact rule on the same inputs,
    and the first token is no longer distributed as the target (chi-square)."""
    trials, vocab = 20000, 6
    g = torch.Generator().manual_seed(9)
    p = torch.softmax(torch.randn(6, vocab, generator=g) * 1.5, -1)
    probs = p.expand(trials, 6, vocab).contiguous()
    cand = torch.randint(vocab, (trials, 6), generator=g)
    u, f = torch.rand(trials, 6, generator=g), torch.rand(trials, generator=g)
    counts = {}
    for single, acc in ((1.0, 1.0), (0.1, 0.3)):
        predicts = torch.zeros(trials * 6, dtype=torch.int32)
        idx = torch.zeros(trials, 4, dtype=torch.int32)
        num = torch.zeros(trials, dtype=torch.int32)
        sg.tree_speculative_sampling_target_only(
            predicts, idx, num, cand, torch.arange(trials * 6).reshape(trials, 6),
            torch.tensor(NEXT_TOKEN).repeat(trials // 2, 1), torch.tensor(NEXT_SIBLING).repeat(trials // 2, 1),
            u, f, probs, None, threshold_single=single, threshold_acc=acc, backend="cpu")
        counts[(single, acc)] = (num.sum().item(), predicts[idx[:, 0].long()].long())
    assert counts[(0.1, 0.3)][0] > counts[(1.0, 1.0)][0]
    assert chi_square_pvalue(torch.bincount(counts[(1.0, 1.0)][1], minlength=vocab), p[0]) > ALPHA
    assert chi_square_pvalue(torch.bincount(counts[(0.1, 0.3)][1], minlength=vocab), p[0]) < ALPHA


# ---- build_tree_buffers -------------------------------------------------------------------------

def test_build_tree_buffers():
    from specdec_kernels import Tree

    tree = Tree.from_parents([-1, 0, 0, 1, 1, 2])
    seq_lens = torch.tensor([3, 0, 5])
    buf = sg.build_tree_buffers(tree, seq_lens, "full", seq_lens_sum=8)
    n = tree.size
    assert buf.retrive_next_token[0].tolist() == [1, 3, 5, -1, -1, -1]
    assert buf.retrive_next_sibling[0].tolist() == [-1, 2, -1, 4, -1, -1]
    assert torch.equal(sg.parents_from_linked_lists(buf.retrive_next_token, buf.retrive_next_sibling),
                       torch.tensor(tree.parents, dtype=torch.int32).expand(3, n))
    assert buf.retrive_index.tolist() == [list(range(b * n, b * n + n)) for b in range(3)]
    assert buf.positions.tolist() == [s + d for s in (3, 0, 5) for d in tree.depths]
    assert buf.tree_mask.numel() == 8 * n + 3 * n * n
    offset = 0
    for s in (3, 0, 5):
        block = buf.tree_mask[offset:offset + n * (s + n)].reshape(n, s + n)
        assert block[:, :s].all() and torch.equal(block[:, s:], tree.mask_bool())
        offset += n * (s + n)
    q = sg.build_tree_buffers(tree, seq_lens, "qlen_only")
    assert torch.equal(q.tree_mask.reshape(3, n, n), tree.mask_bool().expand(3, n, n))
    assert torch.equal(sg.build_tree_buffers(tree, seq_lens).tree_mask, buf.tree_mask)  # sum read from seq_lens
    with pytest.raises(ValueError, match="tree_mask_mode"):
        sg.build_tree_buffers(tree, seq_lens, "qlen_only_bitpacking")

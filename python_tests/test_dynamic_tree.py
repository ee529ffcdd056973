"""build_dynamic_tree: the reference against a restatement, every kernel against the reference.

* The restatement: EAGLE-2's rerank written the obvious way (sort every
  drafted path by cumulative log-probability, keep the best num_keep, lay
  them out by candidate index), on EAGLE-2-shaped candidate sets (top-k per
  frontier node, top-k frontier per depth).
* Kernels (cpu, triton, cuda) against the reference exactly (an index op),
  outputs poisoned first, on random candidate sets: ties in scores (the tie
  rule), -inf padding, candidates whose parent is padding, fewer eligible
  candidates than num_keep, scores rising along a path (validate=False: the
  kept set stays ancestor-closed), several mask words.
* The outputs feed the verify ops and tree attention as they are.
* Bad inputs give errors naming the argument.
"""
import pytest
import torch

import specdec_kernels as sk
from conftest import backend_cases
from specdec_kernels.dynamic_tree import build_dynamic_tree
from specdec_kernels.reference import dynamic_tree as ref

KERNEL_CASES = [c for c in backend_cases() if c.values[1] != "reference"]


def eagle_candidates(gen, batch, top_k, depth, vocab=50):
    """EAGLE-2's drafting, simulated: depth 1 = top_k children of the root; each later depth expands
    the top_k frontier nodes by top_k children each (so M = top_k + (depth - 1) * top_k^2), and the
    next frontier is the top_k of those by cumulative log-probability."""
    parents, tokens, scores = [], [], []
    for _ in range(batch):
        par, tok, sc = [], [], []
        logp = torch.log_softmax(torch.randn(vocab, generator=gen) * 2, 0)
        top = torch.topk(logp, top_k)
        frontier = []
        for t, s in zip(top.indices.tolist(), top.values.tolist()):
            frontier.append(len(par))
            par.append(-1), tok.append(t), sc.append(s)
        for _ in range(depth - 1):
            new = []
            for f in frontier:
                logp = torch.log_softmax(torch.randn(vocab, generator=gen) * 2, 0)
                top = torch.topk(logp, top_k)
                for t, s in zip(top.indices.tolist(), top.values.tolist()):
                    new.append(len(par))
                    par.append(f), tok.append(t), sc.append(sc[f] + s)
            frontier = sorted(new, key=lambda j: -sc[j])[:top_k]
        parents.append(par), tokens.append(tok), scores.append(sc)
    return (torch.tensor(parents, dtype=torch.int32), torch.tensor(tokens, dtype=torch.int64),
            torch.tensor(scores, dtype=torch.float32))


def restated(par, tok, sc, root, keep):
    """Per request: the kept (candidate, parent node, depth) list, by sorting paths."""
    out = []
    for b in range(par.shape[0]):
        p, s = par[b].tolist(), sc[b].tolist()
        depth = {}
        for j in range(len(p)):
            depth[j] = 1 if p[j] == -1 else depth[p[j]] + 1
        best = sorted(range(len(p)), key=lambda j: (-s[j], depth[j], j))[:keep]
        kept = sorted(best)
        node = {j: i + 1 for i, j in enumerate(kept)}
        out.append([(j, 0 if p[j] == -1 else node[p[j]], depth[j]) for j in kept])
    return out


@pytest.mark.parametrize("top_k,depth,keep", [(4, 3, 10), (10, 5, 59), (3, 6, 15), (8, 4, 255)])
def test_reference_is_eagle2s_rerank(top_k, depth, keep):
    gen = torch.Generator().manual_seed(top_k * 100 + depth)
    par, tok, sc = eagle_candidates(gen, 3, top_k, depth)
    root = torch.tensor([7, 8, 9])
    t = build_dynamic_tree(par, tok, sc, root, keep, backend="reference")
    for b, want in enumerate(restated(par, tok, sc, root, keep)):
        n = len(want)
        assert int(t.num_nodes[b]) == n + 1
        assert int(t.draft_tokens[b, 0]) == int(root[b]) and int(t.parents[b, 0]) == -1
        assert t.source[b, 1:n + 1].tolist() == [j for j, _, _ in want]
        assert t.parents[b, 1:n + 1].tolist() == [p for _, p, _ in want]
        assert t.depths[b, 1:n + 1].tolist() == [d for _, _, d in want]
        assert t.draft_tokens[b, 1:n + 1].tolist() == [int(tok[b, j]) for j, _, _ in want]
        # The mask is the ancestor relation of those parents.
        tree = sk.Tree(t.parents[b, :n + 1].tolist())
        width = keep + 1
        assert torch.equal(t.tree_mask[b, :n + 1], tree.packed_mask(words=t.tree_mask.shape[2])[:n + 1])
        # Inert rows past num_nodes.
        assert set(t.parents[b, n + 1:].tolist()) <= {-1} and set(t.source[b, n + 1:].tolist()) <= {-1}
        for i in range(n + 1, width):
            own = torch.zeros(t.tree_mask.shape[2], dtype=torch.int64)
            own[i // 32] = 1 << (i % 32)
            assert torch.equal(t.tree_mask[b, i], own.to(torch.int32))  # only its own bit


def random_candidates(gen, batch, m, *, ties=False, padding=0.0, rising=False):
    """Arbitrary forests of m candidates: parents earlier (or -1), scores non-increasing along paths
    unless rising; ties: scores on a coarse grid; padding: that fraction of -inf scores."""
    par = torch.empty(batch, m, dtype=torch.int32)
    sc = torch.empty(batch, m)
    for b in range(batch):
        for j in range(m):
            p = -1 if j == 0 or float(torch.rand(1, generator=gen)) < 0.2 else int(torch.randint(0, j, (1,),
                                                                                               generator=gen))
            step = float(torch.rand(1, generator=gen)) * 2
            if ties:
                step = float(torch.randint(0, 3, (1,), generator=gen)) * 0.5
            if rising and float(torch.rand(1, generator=gen)) < 0.2:
                step = -1.0
            par[b, j] = p
            sc[b, j] = (0.0 if p == -1 else float(sc[b, p])) - step
    if padding:
        sc[torch.rand(batch, m, generator=gen) < padding] = float("-inf")
    tok = torch.randint(0, 1000, (batch, m), generator=gen)
    return par, tok, sc


CASES = {  # name: (batch, m, keep, options)
    "eagle": None,
    "ties": (4, 60, 20, dict(ties=True)),
    "padding": (3, 80, 30, dict(padding=0.3)),
    "few_eligible": (2, 12, 40, dict(padding=0.5)),
    "rising": (3, 50, 25, dict(rising=True)),
    "words": (2, 300, 100, {}),
    "keep_0": (2, 10, 0, {}),
    "empty": (0, 10, 5, {}),
}


def make(name, device):
    gen = torch.Generator().manual_seed(len(name))
    if name == "eagle":
        par, tok, sc = eagle_candidates(gen, 4, 10, 5)
        keep = 59
    else:
        batch, m, keep, opts = CASES[name]
        par, tok, sc = random_candidates(gen, batch, m, **opts)
    root = torch.randint(0, 1000, (par.shape[0],), generator=gen)
    return [t.to(device) for t in (par, tok, sc, root)], keep


def poison(device, batch, keep):
    for dtype in (torch.int32, torch.int64):
        torch.full((batch * (keep + 1) * 16 + 64,), 0x5A5A5A5, dtype=dtype, device=device)


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_kernels_match_reference(device, backend, name):
    (par, tok, sc, root), keep = make(name, device)
    want = build_dynamic_tree(par, tok, sc, root, keep, backend="reference", validate=False)
    poison(device, par.shape[0], keep)
    got = build_dynamic_tree(par, tok, sc, root, keep, backend=backend, validate=False)
    for field, a, e in zip(want._fields, got, want):
        assert a.dtype == e.dtype and a.shape == e.shape, field
        assert torch.equal(a.cpu(), e.cpu()), f"{field} differs"
    if name == "rising":  # a kept node's ancestors are kept, even when scores rise
        for b in range(par.shape[0]):
            n = int(want.num_nodes[b])
            assert all(0 <= p < i for i, p in enumerate(want.parents[b, 1:n].tolist(), start=1))
    if name == "few_eligible":
        assert (want.num_nodes < keep + 1).all()


@pytest.mark.parametrize("device,backend", backend_cases())
def test_outputs_feed_verify_and_tree_attention(device, backend):
    (par, tok, sc, root), keep = make("eagle", device)
    t = build_dynamic_tree(par, tok, sc, root, keep, backend=backend)
    batch, width = t.parents.shape
    qo_indptr = (torch.arange(batch + 1, dtype=torch.int32) * width).to(device)
    logits = torch.randn(batch * width, 1000, generator=torch.Generator().manual_seed(0)).to(device)
    out = sk.verify_greedy(t.draft_tokens.view(-1) % 1000, t.parents.view(-1), qo_indptr, logits,
                           backend="reference")
    assert (out.num_accepted >= 0).all()
    # The mask is what tree attention takes for these rows.
    assert t.tree_mask.view(batch * width, -1).shape[1] == -(-width // 32)


def test_bad_inputs_are_named():
    par, tok, sc = eagle_candidates(torch.Generator().manual_seed(0), 2, 3, 2)
    root = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"cand_parents\[0, 1\] = 5: .*earlier candidate in \[0, 1\)"):
        bad = par.clone()
        bad[0, 1] = 5
        build_dynamic_tree(bad, tok, sc, root, 4)
    with pytest.raises(ValueError, match=r"cand_scores\[1, 2\] is NaN"):
        bad = sc.clone()
        bad[1, 2] = float("nan")
        build_dynamic_tree(par, tok, bad, root, 4)
    with pytest.raises(ValueError, match=r"exceeds its parent's score"):
        bad = sc.clone()
        bad[0, 5] = 10.0
        build_dynamic_tree(par, tok, bad, root, 4)
    with pytest.raises(ValueError, match=r"num_keep must be an int in \[0, 255\]"):
        build_dynamic_tree(par, tok, sc, root, 256)
    with pytest.raises(ValueError, match=r"cand_tokens must be \[B=2, M=12\]"):
        build_dynamic_tree(par, tok[:, :5], sc, root, 4)
    with pytest.raises(TypeError, match=r"cand_scores must be float32"):
        build_dynamic_tree(par, tok, sc.double(), root, 4)
    with pytest.raises(ValueError, match=r"root_tokens must be \[B=2\]"):
        build_dynamic_tree(par, tok, sc, root[:1], 4)


def test_reference_module_agrees_with_op_entry():
    (par, tok, sc, root), keep = make("ties", "cpu")
    a = ref.build(par, tok.long(), sc, root.long(), keep)
    b = build_dynamic_tree(par, tok, sc, root, keep, backend="reference")
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_opcheck_and_meta():
    if not sk.info()["extension"] == "loaded":
        pytest.skip("the compiled op is not built")
    (par, tok, sc, root), keep = make("ties", "cpu")
    args = (par, tok.long(), sc, root.long(), keep)
    torch.library.opcheck(torch.ops.specdec.build_dynamic_tree, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    meta = torch.ops.specdec.build_dynamic_tree(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
    assert [tuple(t.shape) for t in meta] == [(4, 21), (4, 21), (4, 21), (4, 21, 1), (4, 21), (4,)]
    with pytest.raises(RuntimeError, match="cand_parents must be int32"):
        torch.ops.specdec.build_dynamic_tree(par.long().to("meta"), *[a.to("meta") for a in args[1:4]], keep)

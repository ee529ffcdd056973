"""VerifyStep: the padded (CUDA-graph) layout gives exactly the unpadded
step's results and cache; on CUDA the captured graph gives the eager step's."""
import sys

import pytest
import torch

from conftest import HAS_CUDA
from specdec_kernels.runtime.generate import generate
from specdec_kernels.runtime.model import PagedKVCache
from specdec_kernels.runtime.step import Draft, TreeDrafts, VerifyStep
from specdec_kernels.trees import _pack_rows, num_words
from test_runtime_generate import PROMPTS, tiny


def random_draft(gen, vocab, size, inert):
    """A random tree of ``size`` drafted nodes; with ``inert``, some rows are
    inert (parent -1) with their own visibility, like a lookahead window."""
    parents, visible = [], []
    for i in range(1, size + 1):
        if inert and float(torch.rand(1, generator=gen)) < 0.3:
            parents.append(-1)
            visible.append(1 | (1 << i))
        else:
            cands = [0] + [j for j in range(1, i) if parents[j - 1] != -1]
            parents.append(cands[int(torch.randint(len(cands), (1,), generator=gen))])
            visible.append(None)
    anc = [1]
    for i, p in enumerate(parents, start=1):
        anc.append((1 << i) | (anc[p] if p >= 0 else 1))
    vis = [v if v is not None else anc[i] for i, v in enumerate(visible, start=1)]
    tokens = torch.randint(vocab, (size,), generator=gen).tolist()
    return Draft(tokens=tokens, parents=parents, visible=vis)


def run_step(model, prompts, drafts, mode, bucketed, device="cpu", features=None):
    """Prefill each prompt but its last token, then one step with ``drafts``
    (the last tokens as roots); -> (result, cache lengths, cached K per sequence)."""
    cfg = model.config
    cache = PagedKVCache(cfg, 64, 4, device=device)
    step = VerifyStep(model, cache, mode=mode, max_blocks=16, bucketed=bucketed,
                      generator=torch.Generator().manual_seed(3),
                      sampling=dict(temperature=0.8) if mode != "greedy" else None,
                      cuda_graph=device == "cuda" and bucketed, features=features)
    seqs = list(range(len(prompts)))
    for s, p in zip(seqs, prompts):
        cache.allocator.add(s, len(p) - 1)
    table = cache.allocator.block_table(seqs, device=device)
    tokens = torch.tensor([t for p in prompts for t in p[:-1]], device=device)
    positions = torch.tensor([i for p in prompts for i in range(len(p) - 1)], device=device)
    indptr = torch.tensor([0] + torch.tensor([len(p) - 1 for p in prompts]).cumsum(0).tolist(), dtype=torch.int32,
                          device=device)
    model(tokens, positions, cache, table, torch.zeros(len(seqs), dtype=torch.int32, device=device), indptr,
          prefill=True)
    result = step(seqs, [p[-1] for p in prompts], drafts)
    step.release()
    lengths = [cache.allocator.length(s) for s in seqs]
    kv = [torch.cat([cache.k[:, b].reshape(cfg.num_layers, -1, cfg.num_kv_heads, cfg.head_dim)
                     for b in cache.allocator.blocks(s)], 1)[:, :n] for s, n in zip(seqs, lengths)]
    return result, lengths, kv


@pytest.mark.parametrize("mode", ["greedy", "rejection", "typical"])
def test_padded_step_equals_unpadded(mode):
    """Padding each tree to a power of two with inert rows and the batch with
    dummy requests changes no result, no hidden state and no cached K/V."""
    model = tiny(vocab=16, seed=4, std=0.3)
    gen = torch.Generator().manual_seed(0)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10], [2, 2]]
    for trial in range(3):
        drafts = [random_draft(gen, 16, size, inert=trial > 0) for size in (5, 0, 9, 2)]
        r_exact, len_exact, kv_exact = run_step(model, prompts, drafts, mode, bucketed=False)
        r_pad, len_pad, kv_pad = run_step(model, prompts, drafts, mode, bucketed=True)
        assert r_pad.num_accepted == r_exact.num_accepted and r_pad.paths == r_exact.paths
        assert r_pad.tokens == r_exact.tokens
        torch.testing.assert_close(r_pad.last_hidden, r_exact.last_hidden, rtol=1e-5, atol=1e-5)
        assert len_pad == len_exact
        for a, b in zip(kv_pad, kv_exact):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        for b, start in enumerate(r_exact.row_start):
            got = r_pad.argmax[r_pad.row_start[b]:r_pad.row_start[b] + 1 + len(drafts[b].tokens)]
            want = r_exact.argmax[start:start + 1 + len(drafts[b].tokens)]
            assert torch.equal(got, want)


def tree_drafts(drafts, rows, vocab, with_q, gen):
    """``drafts`` (trees whose inert rows come last) as one TreeDrafts of
    ``rows`` rows per tree (padded with inert rows), and the equivalent list
    of Drafts (the general path) with the same padding and q."""
    b = len(drafts)
    tokens = torch.zeros(b, rows, dtype=torch.int64)
    parents = torch.full((b, rows), -1, dtype=torch.int32)
    depths = torch.zeros(b, rows, dtype=torch.int32)
    masks, plain = [], []
    q = torch.rand(b, rows, vocab, generator=gen) if with_q else None
    if q is not None:
        q /= q.sum(-1, keepdim=True)
    for i, d in enumerate(drafts):
        par, pos, vis, dep = d.layout()
        n = len(par)
        tokens[i, 1:n] = torch.tensor(d.tokens, dtype=torch.int64)
        parents[i, :n] = torch.tensor(par, dtype=torch.int32)
        depths[i, :n] = torch.tensor(pos, dtype=torch.int32)
        masks += vis + [1 << j for j in range(n, rows)]
        pad = rows - n
        plain.append(Draft(tokens=tokens[i, 1:].tolist(), parents=par[1:] + [-1] * pad,
                           visible=vis[1:] + [1 << j for j in range(n, rows)],
                           positions=pos[1:] + [0] * pad, q=None if q is None else q[i]))
    mask = _pack_rows(masks, num_words(rows)).reshape(b, rows, -1)
    max_depth = max(max(d.layout()[3]) for d in drafts)
    return TreeDrafts(tokens, parents, depths, mask, max_depth, q), plain


@pytest.mark.parametrize("mode,with_q", [("greedy", False), ("rejection", False), ("rejection", True)])
def test_tree_drafts_equal_drafts(mode, with_q):
    """A batch of device trees (TreeDrafts, what the EAGLE drafter hands over)
    gives exactly what the same trees as a list of Drafts give: results, draws,
    cache, padded or not; path_features are the target's hidden states at the
    root and the accepted nodes (checked against a causal forward over the
    accepted chain, and under capture against the captured layers)."""
    model = tiny(vocab=16, seed=4, std=0.3)
    gen = torch.Generator().manual_seed(5)
    prompts = [[1, 2, 3], [4, 5], [5, 6, 7, 8, 9, 10]]
    for trial in range(3):
        drafts = [random_draft(gen, 16, size, inert=False) for size in (4, 1, 7)]
        trees, plain = tree_drafts(drafts, 11, 16, with_q, gen)
        for bucketed in (False, True):
            r_tree, len_tree, kv_tree = run_step(model, prompts, trees, mode, bucketed, features="hidden")
            r_plain, len_plain, kv_plain = run_step(model, prompts, plain, mode, bucketed)
            assert r_tree.num_accepted == r_plain.num_accepted and r_tree.paths == r_plain.paths
            assert r_tree.tokens == r_plain.tokens and len_tree == len_plain
            assert r_plain.path_features is None
            for a, b in zip(kv_tree, kv_plain):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            for b, (prompt, toks, c) in enumerate(zip(prompts, r_tree.tokens, r_tree.num_accepted)):
                chain = prompt + toks[:c]  # the root's context plus the accepted drafts
                n = len(chain)
                _, hidden, captured = model(torch.tensor(chain), torch.arange(n), PagedKVCache(model.config, 8, 4),
                                            torch.arange(8, dtype=torch.int32)[None], torch.zeros(1, dtype=torch.int32),
                                            torch.tensor([0, n], dtype=torch.int32), prefill=True, capture=(1, 2))
                torch.testing.assert_close(r_tree.path_features[b, :c + 1], hidden[len(prompt) - 1:],
                                           rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(r_tree.path_features[b, c], r_tree.last_hidden[b])
                if trial == 0 and not bucketed:
                    r_cap, _, _ = run_step(model, prompts, trees, mode, bucketed, features=(1, 2))
                    torch.testing.assert_close(r_cap.path_features[b, :c + 1], captured[len(prompt) - 1:],
                                               rtol=1e-4, atol=1e-4)


def test_bad_tree_drafts_raise():
    model = tiny(vocab=16)
    cache = PagedKVCache(model.config, 8, 4)
    step = VerifyStep(model, cache, max_blocks=4)
    cache.allocator.add(0, 0)
    z32 = torch.zeros(1, 3, dtype=torch.int32)
    good = dict(tokens=torch.zeros(1, 3, dtype=torch.int64), parents=z32, depths=z32,
                mask=torch.zeros(1, 3, 1, dtype=torch.int32), max_depth=1)
    for field, value, match in (("tokens", z32, "tokens must be int64"), ("parents", z32[:, :2], "parents must be"),
                                ("mask", torch.zeros(1, 3, dtype=torch.int32), "mask must be"),
                                ("max_depth", 3, "max_depth must be"),
                                ("q", torch.zeros(1, 3, 5), r"q must be float32 \[1, 3, V=16\]")):
        with pytest.raises(ValueError, match=match):
            step([0], [1], TreeDrafts(**{**good, field: value}))
    with pytest.raises(ValueError, match="features takes hidden-state indices"):
        VerifyStep(model, cache, max_blocks=4, features=(9,))


def test_accepting_draft_moves_its_kv():
    """A tree whose second branch is the target's greedy continuation: the step
    accepts it and compact_kv leaves the cache equal to a plain prefill of the
    accepted tokens."""
    model = tiny(vocab=16, seed=4, std=0.3)
    prompt = [3, 1, 4, 1, 5]
    ar = generate(model, [prompt], max_new_tokens=4).tokens[0]
    # Node 1: a wrong token; nodes 2.. : the greedy chain under the root.
    wrong = (ar[0] + 1) % 16
    draft = Draft(tokens=[wrong, ar[0], ar[1], ar[2]], parents=[0, 0, 2, 3])
    for bucketed in (False, True):
        res, lengths, kv = run_step(model, [prompt], [draft], "greedy", bucketed)
        assert res.paths == [[0, 2, 3, 4]] and res.tokens == [ar[:4]]
        _, lengths_ref, kv_ref = run_step(model, [prompt + ar[:3]], [Draft()], "greedy", False)
        assert lengths == lengths_ref
        torch.testing.assert_close(kv[0], kv_ref[0], rtol=1e-5, atol=1e-5)


def test_generate_padded_equals_eager(monkeypatch):
    """generate with the bucketed step (what CUDA graphs replay) gives the
    same greedy tokens, and frees the padding's scratch blocks."""
    target, draft = tiny(), tiny(hidden=64, layers=1, seed=2)
    plain = generate(target, PROMPTS, method="draft", draft_model=draft, num_draft_tokens=3,
                     schedule="heuristic", max_new_tokens=12)
    generate_module = sys.modules["specdec_kernels.runtime.generate"]
    original = generate_module.VerifyStep

    def bucketed(*args, **kwargs):
        return original(*args, **{**kwargs, "bucketed": True})

    monkeypatch.setattr(generate_module, "VerifyStep", bucketed)
    padded = generate(target, PROMPTS[:3], method="draft", draft_model=draft, num_draft_tokens=3,
                      schedule="heuristic", max_new_tokens=12)
    assert padded.tokens == plain.tokens[:3]


def test_bad_drafts_raise():
    model = tiny(vocab=16)
    cache = PagedKVCache(model.config, 8, 4)
    step = VerifyStep(model, cache, max_blocks=4)
    cache.allocator.add(0, 0)
    with pytest.raises(ValueError, match="parents"):
        step([0], [1], [Draft(tokens=[1, 2], parents=[0])])
    with pytest.raises(ValueError, match=r"node 2 needs a parent in \[0, 2\)"):
        step([0], [1], [Draft(tokens=[1, 2], parents=[0, 5])])
    with pytest.raises(ValueError, match="mode must be"):
        VerifyStep(model, cache, mode="beam", max_blocks=4)
    with pytest.raises(ValueError, match="cuda_graph=True needs"):
        VerifyStep(model, cache, max_blocks=4, cuda_graph=True)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["greedy", "rejection"])
def test_cuda_graph_replay_equals_eager(mode):
    """Capture + replay (bucketed) against the eager unpadded step on CUDA:
    the same paths and tokens (sampled draws are made per node on the host, so
    padding does not shift them; a uniform within rounding of a boundary could
    still flip a sampled request, which these few cases do not hit)."""
    model = tiny(vocab=16, seed=4, std=0.3).cuda()
    gen = torch.Generator().manual_seed(1)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]]
    for _ in range(3):
        drafts = [random_draft(gen, 16, size, inert=True) for size in (5, 0, 9)]
        r_graph, len_g, kv_g = run_step(model, prompts, drafts, mode, bucketed=True, device="cuda")
        r_eager, len_e, kv_e = run_step(model, prompts, drafts, mode, bucketed=False, device="cuda")
        assert r_graph.num_accepted == r_eager.num_accepted and r_graph.paths == r_eager.paths
        assert r_graph.tokens == r_eager.tokens and len_g == len_e
        for a, b in zip(kv_g, kv_e):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_generate_with_cuda_graph_equals_eager():
    target, draft = tiny().cuda(), tiny(hidden=64, layers=1, seed=2).cuda()
    kwargs = dict(method="draft", draft_model=draft, num_draft_tokens=3, schedule="heuristic", max_new_tokens=12)
    eager = generate(target, PROMPTS, cuda_graph=False, **kwargs)
    graph = generate(target, PROMPTS, cuda_graph=True, **kwargs)
    assert graph.tokens == eager.tokens

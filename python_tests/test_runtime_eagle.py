"""The EAGLE draft head (specdec_kernels/runtime/eagle.py): shapes, the
safetensors round trip, its paged forward (append_kv + tree_attention) against
a dense causal SDPA run of the same layer, tree masks (each node sees its
committed prefix and its ancestors, nothing else; depth by depth as a drafter
grows the tree), the commit after a rollback, the target's captured layers,
and argument errors. Tiny random models (fp32, CPU)."""
import pytest
import torch

from specdec_kernels.runtime import LlamaModel, ModelConfig, PagedKVCache
from specdec_kernels.runtime.eagle import EagleHead, eagle3_layers
from specdec_kernels.trees import pack_mask

CFG = ModelConfig(vocab_size=61, hidden_size=128, intermediate_size=96, num_layers=4, num_heads=2, num_kv_heads=1,
                  head_dim=64)
TOL = dict(rtol=1e-4, atol=1e-4)
FUSIONS = ("eagle1", "eagle3")


@pytest.fixture(scope="module")
def target():
    return LlamaModel.random(CFG, seed=0)


def head_for(target, fusion, seed=1):
    # std 0.1 (not the 0.02 init) so attention is far from uniform and a wrong mask shows.
    return EagleHead.from_target(target, fusion, seed=seed, std=0.1)


def ragged(counts):
    return torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32)


def features(head, n, gen, target_rows=True):
    width = head.feature_size if target_rows else head.config.hidden_size
    return torch.randn(n, width, generator=gen)


def cache_for(head, lengths, reserve, block_size=4):
    cache = head.new_cache(96, block_size)
    for b, (n, r) in enumerate(zip(lengths, reserve)):
        cache.allocator.add(b, n)
        cache.allocator.reserve(b, r)
    return cache, cache.allocator.block_table(list(range(len(lengths))))


def dense(head, feats, tokens, positions):
    """One sequence through forward_dense (causal): out [T, H]."""
    return head.forward_dense(feats[None], tokens[None], positions[None])[0]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_shapes_dtypes_and_keys(target, fusion):
    head = head_for(target, fusion)
    keys = set(head.state_dict())
    assert "fc.weight" in keys and "fc.bias" in keys and "layers.0.mlp.down_proj.weight" in keys
    assert not any("embed" in k or "lm_head" in k or "input_layernorm" in k for k in keys)
    assert ("fusion.weight" in keys) == (fusion == "eagle3")
    assert head.capture == ((1, 2, 3) if fusion == "eagle3" else None)
    assert head.feature_size == CFG.hidden_size * (3 if fusion == "eagle3" else 1)
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        h = head.to(dtype).attach(target.to(dtype))
        cache, table = cache_for(h, [0, 0], [5, 3])
        n = 8
        logits, out = h.step(features(h, n, gen).to(dtype), torch.randint(0, 61, (n,), generator=gen),
                             torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]), cache, table,
                             torch.zeros(2, dtype=torch.int32), ragged([5, 3]))
        assert logits.shape == (n, CFG.vocab_size) and out.shape == (n, CFG.hidden_size)
        assert logits.dtype == out.dtype == dtype and torch.isfinite(logits.float()).all()
        torch.testing.assert_close(h.logits(out), logits, rtol=0, atol=0)
    head.float(), target.float()


def test_eagle3_layers():
    assert eagle3_layers(4) == (1, 2, 3)
    assert eagle3_layers(5) == (1, 2, 4)
    assert eagle3_layers(32) == (2, 16, 29)  # EAGLE-3's own choice
    assert eagle3_layers(7) == (2, 3, 4)
    with pytest.raises(ValueError, match="at least 4 layers"):
        eagle3_layers(3)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip_is_bitwise(target, tmp_path, fusion, dtype):
    head = head_for(target, fusion).to(dtype)
    path = tmp_path / "eagle.safetensors"
    head.save(path)
    loaded = EagleHead.load(path, target, dtype=dtype)
    assert loaded.fusion_kind == fusion and loaded.fusion_layers == head.fusion_layers
    a, b = head.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype == dtype
        assert torch.equal(a[k].view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                           b[k].view(torch.int16 if dtype == torch.bfloat16 else torch.int32)), k
    # The target's weights are referenced, not stored; an EAGLE-1 style embed_tokens.weight is ignored.
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    assert not any("embed" in k or "lm_head" in k for k in state)
    save_file(dict(state, **{"embed_tokens.weight": torch.zeros(61, 128, dtype=dtype)}), str(tmp_path / "e1.st"),
              metadata=head.metadata())
    again = EagleHead.load(tmp_path / "e1.st", target, dtype=dtype)
    assert all(torch.equal(again.state_dict()[k], b[k]) for k in b)
    assert again._embed.data_ptr() == target.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_paged_forward_matches_dense_causal(target, fusion):
    """A prompt by SDPA prefill, then chunks over the paged cache (chains), then
    draft rows that are rolled back (truncate) and overwritten by the commit:
    every output equals the dense causal run of the whole sequence."""
    head = head_for(target, fusion)
    gen = torch.Generator().manual_seed(2)
    lengths = [11, 5, 17]
    total = [n + 9 for n in lengths]
    feats = [features(head, n, gen) for n in total]
    toks = [torch.randint(0, 61, (n,), generator=gen) for n in total]
    want = [dense(head, f, t, torch.arange(len(t))) for f, t in zip(feats, toks)]
    cache, table = cache_for(head, [0, 0, 0], [n + 16 for n in total])

    def run(done, counts, **kw):
        f = torch.cat([x[d:d + c] for x, d, c in zip(feats, done, counts)])
        t = torch.cat([x[d:d + c] for x, d, c in zip(toks, done, counts)])
        p = torch.cat([torch.arange(d, d + c) for d, c in zip(done, counts)])
        return head.step(f, t, p, cache, table, torch.tensor(done, dtype=torch.int32), ragged(counts), **kw)[1]

    def expect(done, counts):
        return torch.cat([w[d:d + c] for w, d, c in zip(want, done, counts)])

    torch.testing.assert_close(run([0, 0, 0], lengths, prefill=True), expect([0, 0, 0], lengths), **TOL)
    done = list(lengths)
    for counts in ([3, 1, 4], [1, 1, 1]):
        torch.testing.assert_close(run(done, counts), expect(done, counts), **TOL)
        done = [d + c for d, c in zip(done, counts)]
    # Draft rows with other features (a chain continuing after 2 drafted rows), then rolled back.
    drafted = torch.tensor([2, 0, 1], dtype=torch.int32)
    junk = features(head, 6, gen, target_rows=False)
    head.step(junk[:3], torch.randint(0, 61, (3,), generator=gen), torch.arange(3), cache, table,
              torch.tensor(done, dtype=torch.int32), ragged([1, 1, 1]), drafted=drafted)
    # The commit overwrites those slots with the target's features.
    counts = [4, 2, 3]
    torch.testing.assert_close(run(done, counts), expect(done, counts), **TOL)


def random_tree(gen, depths):
    """parents (-1 = the root) of nodes added depth by depth, ``depths[d]`` at depth d + 1."""
    parents, level = [], [-1]
    for width in depths:
        new = []
        for _ in range(width):
            parents.append(level[int(torch.randint(0, len(level), (1,), generator=gen))])
            new.append(len(parents) - 1)
        level = new or level
    return parents


def ancestors(parents, i):
    path = [i]
    while parents[path[-1]] >= 0:
        path.append(parents[path[-1]])
    return path[::-1]


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("by_depth", [True, False], ids=["depth-by-depth", "one-call"])
def test_tree_mask_each_node_sees_its_ancestors(target, fusion, by_depth):
    """Trees of different shapes per sequence (one sequence with no node at some
    depth); each node's output equals the dense causal run of its committed
    prefix plus its path. by_depth: one step per depth with drafted= (the
    drafter's loop); else the whole tree in one call."""
    head = head_for(target, fusion)
    gen = torch.Generator().manual_seed(3)
    prefix = [7, 13, 4]
    shapes = [[3, 4, 2], [2, 0, 0], [1, 3, 5]]  # nodes per depth
    trees = [random_tree(gen, s) for s in shapes]
    cfeats = [features(head, p, gen) for p in prefix]
    ctoks = [torch.randint(0, 61, (p,), generator=gen) for p in prefix]
    nfeats = [features(head, len(t), gen, target_rows=False) for t in trees]
    ntoks = [torch.randint(0, 61, (len(t),), generator=gen) for t in trees]
    depth = [[len(ancestors(t, i)) for i in range(len(t))] for t in trees]
    cache, table = cache_for(head, [0, 0, 0], [p + len(t) + 4 for p, t in zip(prefix, trees)])
    prefix_lens = torch.tensor(prefix, dtype=torch.int32)
    head.step(torch.cat(cfeats), torch.cat(ctoks), torch.cat([torch.arange(p) for p in prefix]), cache, table,
              torch.zeros(3, dtype=torch.int32), ragged(prefix), prefill=True)

    def mask_rows(b, nodes, width):
        rows = torch.zeros(len(nodes), width, dtype=torch.bool)
        for r, i in enumerate(nodes):
            rows[r, ancestors(trees[b], i)] = True
        return rows

    got = [torch.empty(len(t), CFG.hidden_size) for t in trees]
    groups = ([[[i for i in range(len(t)) if depth[b][i] == d] for b, t in enumerate(trees)] for d in (1, 2, 3)]
              if by_depth else [[list(range(len(t))) for t in trees]])
    drafted = [0, 0, 0]
    for nodes in groups:
        width = max(d + len(n) for d, n in zip(drafted, nodes))
        words = max(1, (width + 31) // 32)
        mask = torch.cat([pack_mask(mask_rows(b, n, max(width, 1)), words) for b, n in enumerate(nodes)])
        f = torch.cat([nfeats[b][n] for b, n in enumerate(nodes)])
        t = torch.cat([ntoks[b][n] for b, n in enumerate(nodes)])
        pos = torch.cat([torch.tensor([prefix[b] + depth[b][i] - 1 for i in n], dtype=torch.int64)
                         for b, n in enumerate(nodes)])
        _, out = head.step(f, t, pos, cache, table, prefix_lens, ragged([len(n) for n in nodes]), mask,
                           drafted=torch.tensor(drafted, dtype=torch.int32) if by_depth else None)
        rows = iter(out)
        for b, n in enumerate(nodes):
            for i in n:
                got[b][i] = next(rows)
        drafted = [d + len(n) for d, n in zip(drafted, nodes)]
    checked = 0
    for b, tree in enumerate(trees):
        for i in range(len(tree)):
            path = ancestors(tree, i)
            f = torch.cat([head.fuse(cfeats[b]), nfeats[b][path]])
            t = torch.cat([ctoks[b], ntoks[b][path]])
            pos = torch.cat([torch.arange(prefix[b]), prefix[b] + torch.arange(len(path))])
            torch.testing.assert_close(got[b][i], dense(head, f, t, pos)[-1], **TOL)
            checked += 1
    assert checked == sum(map(len, trees))


def test_a_wrong_mask_is_caught(target):
    """Control: attending to a sibling changes the output beyond the tolerance."""
    head = head_for(target, "eagle1")
    gen = torch.Generator().manual_seed(4)
    cache, table = cache_for(head, [0], [12])
    head.step(features(head, 6, gen), torch.randint(0, 61, (6,), generator=gen), torch.arange(6), cache, table,
              torch.zeros(1, dtype=torch.int32), ragged([6]), prefill=True)
    f, t = features(head, 2, gen), torch.randint(0, 61, (2,), generator=gen)
    pos, plen = torch.tensor([6, 6]), torch.tensor([6], dtype=torch.int32)
    siblings = pack_mask(torch.tensor([[True, False], [False, True]]))
    chain = pack_mask(torch.tensor([[True, False], [True, True]]))
    a = head.step(f, t, pos, cache, table, plen, ragged([2]), siblings)[1]
    b = head.step(f, t, pos, cache, table, plen, ragged([2]), chain)[1]
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert (a[1] - b[1]).abs().max() > 1e-2


def test_target_capture_feeds_eagle3(target):
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 61, (9,), generator=gen)
    cache = PagedKVCache(CFG, 8, 4)
    cache.allocator.add(0, 9)
    args = (tokens, torch.arange(9), cache, cache.allocator.block_table([0]), torch.zeros(1, dtype=torch.int32),
            ragged([9]))
    logits, hidden = target(*args, prefill=True)
    outs = target(*args, prefill=True, capture=(0, 4, 1, 2, 3))
    torch.testing.assert_close(outs[0], logits, rtol=0, atol=0)
    cap = outs[2].view(9, 5, CFG.hidden_size)
    torch.testing.assert_close(cap[:, 0], target.model.embed_tokens.weight[tokens], rtol=0, atol=0)
    torch.testing.assert_close(cap[:, 1], hidden, rtol=0, atol=0)
    head = head_for(target, "eagle3")
    torch.testing.assert_close(head.target_features(target(*args, prefill=True, capture=head.capture)),
                               cap[:, 2:].reshape(9, -1), rtol=0, atol=0)
    assert head_for(target, "eagle1").target_features(outs) is outs[1]
    with pytest.raises(ValueError, match="capture"):
        target(*args, prefill=True, capture=(5,))
    with pytest.raises(ValueError, match="capture=head.capture"):
        head.target_features((logits, hidden))


def test_errors(target, tmp_path):
    gen = torch.Generator().manual_seed(6)
    head = head_for(target, "eagle1")
    cache, table = cache_for(head, [0], [8])
    zero, indptr = torch.zeros(1, dtype=torch.int32), ragged([3])
    f, t, p = features(head, 3, gen), torch.randint(0, 61, (3,), generator=gen), torch.arange(3)

    def step(*args, **kw):
        a = dict(features=f, tokens=t, positions=p, cache=cache, block_table=table, prefix_lens=zero,
                 qo_indptr=indptr)
        a.update(kw)
        return head.step(**a)

    with pytest.raises(ValueError, match="fusion must be one of"):
        EagleHead(CFG, "eagle2")
    with pytest.raises(ValueError, match="only for fusion='eagle3'"):
        EagleHead(CFG, "eagle1", (1, 2, 3))
    with pytest.raises(ValueError, match="three hidden-state indices"):
        EagleHead(CFG, "eagle3", (1, 2, 9))
    with pytest.raises(RuntimeError, match="not attached"):
        EagleHead(CFG).step(f, t, p, cache, table, zero, indptr)
    with pytest.raises(ValueError, match=r"features must be \[3, 128\]"):
        step(features=torch.randn(3, 384))
    with pytest.raises(ValueError, match="features are torch.float64"):
        step(features=f.double())
    with pytest.raises(ValueError, match="tokens must be int64"):
        step(tokens=t.int())
    with pytest.raises(ValueError, match="tokens must lie in"):
        step(tokens=torch.tensor([0, 61, 2]))
    with pytest.raises(ValueError, match="positions must be int64"):
        step(positions=p[:2])
    with pytest.raises(ValueError, match="one-layer PagedKVCache"):
        step(cache=PagedKVCache(CFG, 8, 4))
    with pytest.raises(ValueError, match=r"qo_indptr\[-1\] = 3 but there are 2 rows"):
        step(features=f[:2], tokens=t[:2], positions=p[:2])
    with pytest.raises(ValueError, match="drafted must be int32"):
        step(drafted=torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="prefill=True takes no drafted"):
        step(drafted=zero, prefill=True)
    with pytest.raises(ValueError, match="empty prefix"):
        step(prefix_lens=torch.ones(1, dtype=torch.int32), prefill=True)
    with pytest.raises(ValueError, match="32 \\* W >= drafted"):
        step(tree_mask=torch.zeros(3, 1, dtype=torch.int32), drafted=torch.tensor([30], dtype=torch.int32))
    with pytest.raises(ValueError, match="re-attach"):
        EagleHead.from_target(target).double().step(f.double(), t, p, cache, table, zero, indptr)
    with pytest.raises(ValueError, match="do not match the head's vocab"):
        head.attach(LlamaModel.random(ModelConfig(**{**CFG.__dict__, "vocab_size": 7})))
    # Files.
    path = tmp_path / "h.safetensors"
    head.save(path)
    other = LlamaModel.random(ModelConfig(**{**CFG.__dict__, "hidden_size": 64, "intermediate_size": 64}))
    with pytest.raises(ValueError, match="fc.weight is \\(128, 256\\), expected \\(64, 128\\)"):
        EagleHead.load(path, other)
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    save_file({k: v for k, v in state.items() if "o_proj" not in k}, str(tmp_path / "m.st"))
    with pytest.raises(ValueError, match="missing \\['layers.0.self_attn.o_proj.weight'\\]"):
        EagleHead.load(tmp_path / "m.st", target)
    save_file(state, str(tmp_path / "u.st"), metadata={"fusion": "medusa"})
    with pytest.raises(ValueError, match="unknown fusion 'medusa'"):
        EagleHead.load(tmp_path / "u.st", target)
    save_file(dict(state, **{"fc.bias": torch.zeros(3)}), str(tmp_path / "s.st"))
    with pytest.raises(ValueError, match="shapes do not match"):
        EagleHead.load(tmp_path / "s.st", target)
    with pytest.raises(ValueError, match="at least 4 layers"):
        EagleHead(ModelConfig(**{**CFG.__dict__, "num_layers": 3}), "eagle3")


def test_shipped_head_drafts_greedy_chains_through_step():
    """The shipped head on the shipped target, driven as the module docstring
    says: commit (prefill), draft a greedy chain depth by depth with
    ``drafted=``, roll back (truncate), commit the accepted tokens plus the
    bonus with the target's features, for two ragged sequences of a greedy
    continuation. The drafts are mostly accepted (a trained head on its own
    target), and after the rounds the head's last output equals a dense run
    over all committed elements (the rollbacks left nothing behind)."""
    from specdec_kernels import demo
    from specdec_kernels.runtime import generate

    path = demo.DEFAULT_MODELS / "eagle_head.safetensors"
    if not path.is_file():
        pytest.skip("no shipped eagle_head.safetensors (python bench/train_tiny.py --only eagle)")
    target = LlamaModel.from_pretrained(demo.DEFAULT_MODELS / "target")
    head = EagleHead.load(path, target)
    prompts = [p for _, p in demo.held_out_prompts(2, 48)]
    seqs = [torch.tensor(p + t) for p, t in zip(prompts, generate(target, prompts, max_new_tokens=40).tokens)]
    # The target's features of every token (causal, so a prefix's are the same as in a running decode).
    feats = []
    for s in seqs:
        cache = PagedKVCache(target.config, 8, 16)
        cache.allocator.add(0, len(s))
        feats.append(target(
            s, torch.arange(len(s)), cache, cache.allocator.block_table([0]), torch.zeros(1, dtype=torch.int32),
            ragged([len(s)]), prefill=True)[1])
    depth, i32 = 4, torch.int32
    hcache = head.new_cache(32, 8)
    lengths = [len(prompts[0]) - 1, len(prompts[1]) + 5]  # committed elements P (root x[P] not in the target's cache)
    for b, n in enumerate(lengths):
        hcache.allocator.add(b, 0)
        hcache.allocator.append(b, n)
    table = lambda: hcache.allocator.block_table([0, 1])  # noqa: E731
    _, out = head.step(torch.cat([f[:n] for f, n in zip(feats, lengths)]),
                       torch.cat([s[1:n + 1] for s, n in zip(seqs, lengths)]),
                       torch.cat([torch.arange(n) for n in lengths]), hcache, table(), torch.zeros(2, dtype=i32),
                       ragged(lengths), prefill=True)
    last = out[ragged(lengths)[1:].long() - 1]
    accepted = []
    while all(n + depth + 1 < len(s) for n, s in zip(lengths, seqs)):
        plen = torch.tensor(lengths, dtype=i32)
        for b, n in enumerate(lengths):
            hcache.allocator.reserve(b, n + depth)
        drafts, prev = [head.logits(last).argmax(-1)], last
        for d in range(1, depth):  # the depth-d node's element: (its parent's out, its token) at P + d - 1
            _, prev = head.step(prev, drafts[-1], plen.long() + d - 1, hcache, table(), plen, ragged([1, 1]),
                                drafted=torch.full((2,), d - 1, dtype=i32))
            drafts.append(head.logits(prev).argmax(-1))
        drafts = torch.stack(drafts, 1)
        truth = torch.stack([s[n + 1:n + 1 + depth] for s, n in zip(seqs, lengths)])
        ks = (drafts == truth).long().cumprod(1).sum(1).tolist()
        accepted += ks
        # Roll back the drafted entries; commit (f[j], x[j + 1]) for j = P .. P + k with the target's features.
        counts = [k + 1 for k in ks]
        for b, (n, c) in enumerate(zip(lengths, counts)):
            hcache.allocator.truncate(b, n)
            hcache.allocator.append(b, c)
        _, out = head.step(torch.cat([f[n:n + c] for f, n, c in zip(feats, lengths, counts)]),
                           torch.cat([s[n + 1:n + 1 + c] for s, n, c in zip(seqs, lengths, counts)]),
                           torch.cat([torch.arange(n, n + c) for n, c in zip(lengths, counts)]), hcache, table(),
                           plen, ragged(counts))
        last = out[ragged(counts)[1:].long() - 1]
        lengths = [n + c for n, c in zip(lengths, counts)]
    assert len(accepted) >= 8 and sum(accepted) / len(accepted) >= 2.0, accepted
    for b, (f, s, n) in enumerate(zip(feats, seqs, lengths)):
        want = dense(head, f[:n], s[1:n + 1], torch.arange(n))[-1]
        torch.testing.assert_close(last[b], want, **TOL)

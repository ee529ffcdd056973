"""EagleDrafter against a plain-Python EAGLE-2: every depth recomputed densely
with ``EagleHead.forward_dense`` over the committed elements plus the drafted
ones (each seeing the prefix and its ancestors), candidates scored by
cumulative log-probability, the frontier the top-k, the tree the best
``num_nodes`` by (score desc, depth asc, index asc) in candidate order. Two
steps: the prompt's commit, then a real verify step's commit of the target's
path features. Also: the shipped head drafts well, and bad arguments raise."""
import pytest
import torch

from specdec_kernels.runtime.eagle import EagleHead
from specdec_kernels.runtime.eagle_drafter import EagleDrafter
from specdec_kernels.runtime.model import PagedKVCache
from specdec_kernels.runtime.step import VerifyStep
from test_runtime_generate import tiny

VOCAB = 32


def target_features(target, tokens):
    """Final hidden states of a causal forward over ``tokens`` (a list)."""
    n = len(tokens)
    cache = PagedKVCache(target.config, -(-n // 4) + 1, 4)
    table = torch.arange(cache.k.shape[1], dtype=torch.int32)[None]
    _, hidden = target(torch.tensor(tokens), torch.arange(n), cache, table, torch.zeros(1, dtype=torch.int32),
                       torch.tensor([0, n], dtype=torch.int32), prefill=True)
    return hidden


@torch.no_grad()
def reference_tree(head, history, feats, k, depth, num_nodes, min_mass=None):
    """EAGLE-2 for one sequence whose committed elements are (feats[j],
    history[j + 1]); -> [(token, local parent, depth)] of the kept nodes."""
    p = len(history) - 1
    elems = [dict(f=feats[j], t=history[j + 1], pos=j, vis=set(range(j + 1))) for j in range(p)]

    def outputs():
        n = len(elems)
        mask = torch.zeros(1, n, n, dtype=torch.bool)
        for i, e in enumerate(elems):
            mask[0, i, sorted(e["vis"])] = True
        out = head.forward_dense(torch.stack([e["f"] for e in elems])[None], torch.tensor([[e["t"] for e in elems]]),
                                 torch.tensor([[e["pos"] for e in elems]]), mask)
        return out[0]

    out = outputs()
    lp, tok = torch.topk(torch.log_softmax(head.logits(out[p - 1]).float(), -1), k)
    cands = [dict(par=-1, t=int(t), s=float(s), d=1, elem=None) for t, s in zip(tok, lp)]
    frontier = list(range(k))
    for j in range(1, depth):
        if min_mass is not None and sum(torch.tensor([cands[c]["s"] for c in frontier]).exp()) < min_mass:
            break
        for c in frontier:
            node = cands[c]
            parent_elem = p - 1 if node["par"] == -1 else cands[node["par"]]["elem"]
            node["elem"] = len(elems)
            vis = set(range(p)) | {node["elem"]}
            a = node["par"]
            while a != -1:
                vis.add(cands[a]["elem"])
                a = cands[a]["par"]
            # A drafted element's feature is its parent element's output (an earlier depth's).
            elems.append(dict(f=out[parent_elem], t=node["t"], pos=p + j - 1, vis=vis))
        out = outputs()
        base = len(cands)
        scores = []
        for c in frontier:
            lp, tok = torch.topk(torch.log_softmax(head.logits(out[cands[c]["elem"]]).float(), -1), k)
            for t, s in zip(tok, lp):
                cands.append(dict(par=c, t=int(t), s=cands[c]["s"] + float(s), d=cands[c]["d"] + 1, elem=None))
                scores.append(cands[-1]["s"])
        frontier = [base + int(i) for i in torch.topk(torch.tensor(scores), k).indices]
    ranked = sorted(range(len(cands)), key=lambda i: (-cands[i]["s"], cands[i]["d"], i))[:num_nodes]
    chosen = set(ranked)
    kept = sorted(i for i in chosen if all(a in chosen for a in ancestors(cands, i)))
    local = {c: n + 1 for n, c in enumerate(kept)}
    return [(cands[c]["t"], 0 if cands[c]["par"] == -1 else local[cands[c]["par"]], cands[c]["d"]) for c in kept]


def ancestors(cands, i):
    a = cands[i]["par"]
    while a != -1:
        yield a
        a = cands[a]["par"]


def drafted_nodes(trees, b):
    n = trees.rows
    return [(int(trees.tokens[b, i]), int(trees.parents[b, i]), int(trees.depths[b, i])) for i in range(1, n)
            if int(trees.parents[b, i]) != -1]


@torch.no_grad()
@pytest.mark.parametrize("k,depth,num_nodes,min_mass", [(3, 3, 6, None), (2, 4, 7, None), (4, 3, 12, 0.5)])
def test_drafter_equals_plain_eagle2(k, depth, num_nodes, min_mass):
    torch.manual_seed(0)
    target = tiny(vocab=VOCAB, seed=3, std=0.3)
    head = EagleHead.from_target(target, seed=2, std=0.3)
    prompts = [[1, 5, 9, 2, 7], [3, 3], [4, 8, 15, 16, 23, 4, 2]]
    drafter = EagleDrafter(head, topk=k, depth=depth, num_nodes=num_nodes, min_mass=min_mass)
    drafter.allocate(64, 4, 16)
    seqs = [0, 1, 2]
    history = {s: list(p) for s, p in zip(seqs, prompts)}
    drafter.start(seqs, history)
    cache = PagedKVCache(target.config, 64, 4)
    step = VerifyStep(target, cache, max_blocks=16, features="hidden")
    feats = []
    for s in seqs:  # the target's prefill, as generate runs it
        cache.allocator.add(s, 0)
        feats.append(target_features(target, history[s][:-1]))
        cache.allocator.reserve(s, len(history[s]) - 1)
    prefill_cache(target, cache, seqs, history)
    drafter.prefilled(seqs, torch.cat(feats), history)
    for round_ in range(2):
        trees, passes = drafter.propose(seqs, history, [0] * 3)
        assert trees.rows == num_nodes + 1 and passes >= 1
        for b, s in enumerate(seqs):
            hist_feats = target_features(target, history[s][:-1])
            want = reference_tree(head, history[s], hist_feats, k, depth, num_nodes, min_mass)
            assert drafted_nodes(trees, b) == want, (round_, b)
            assert trees.max_depth >= max(d for _, _, d in want)
        old = [len(history[s]) for s in seqs]
        result = step(seqs, [history[s][-1] for s in seqs], trees)
        drafter.accepted(seqs, old, result)
        for s, toks in zip(seqs, result.tokens):
            history[s] += toks
        assert [drafter.cache.allocator.length(s) for s in seqs] == [len(history[s]) - 1 for s in seqs]


def prefill_cache(target, cache, seqs, history):
    tokens = [t for s in seqs for t in history[s][:-1]]
    counts = [len(history[s]) - 1 for s in seqs]
    indptr = torch.tensor([0] + counts).cumsum(0).to(torch.int32)
    positions = torch.cat([torch.arange(n) for n in counts])
    target(torch.tensor(tokens), positions, cache, cache.allocator.block_table(seqs), torch.zeros(3, dtype=torch.int32),
           indptr, prefill=True)
    for s, n in zip(seqs, counts):
        cache.allocator.append(s, n)


def test_shipped_head_drafts_deep_trees():
    """The shipped EAGLE head on the shipped target: greedy equals ar and most
    steps accept several tokens (a commit of the wrong features, a wrong
    mask or position would leave the trees unaccepted)."""
    from specdec_kernels.demo import held_out_prompts, load_eagle_head, load_models
    from specdec_kernels.runtime import generate

    target, _, _ = load_models()
    head = load_eagle_head(target)
    prompts = [p for _, p in held_out_prompts(2, 128)]
    ar = generate(target, prompts, max_new_tokens=32)
    out = generate(target, prompts, method="eagle", eagle_head=head, max_new_tokens=32, eagle_topk=4,
                   eagle_depth=5, eagle_nodes=16)
    assert out.tokens == ar.tokens
    assert out.stats.tau > 3.0, out.stats.tau


def test_bad_arguments():
    target = tiny(vocab=VOCAB)
    head = EagleHead.from_target(target)
    for kwargs, match in ((dict(topk=0), "topk must be an int >= 1"), (dict(num_nodes=256), "num_nodes"),
                          (dict(topk=40, depth=8), "head elements per tree"),
                          (dict(min_mass=2.0), "min_mass must be in"),
                          (dict(sample=True), "sample=True")):
        with pytest.raises(ValueError, match=match):
            EagleDrafter(head, **kwargs)
    from specdec_kernels.runtime import generate

    with pytest.raises(ValueError, match="needs eagle_head"):
        generate(target, [[1, 2]], method="eagle", max_new_tokens=2)
    other = tiny(vocab=VOCAB, seed=9)
    with pytest.raises(ValueError, match="not attached to this target"):
        generate(other, [[1, 2]], method="eagle", eagle_head=head, max_new_tokens=2)
    with pytest.raises(ValueError, match="verify_rule='block' verifies chains"):
        generate(target, [[1, 2]], method="eagle", eagle_head=head, max_new_tokens=2, verify_rule="block")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_eagle_cuda_graph_equals_eager():
    """Device trees through the captured verify step (TreeDrafts fill the
    template-path buffers) give the eager step's tokens, greedy and sampled."""
    target = tiny(vocab=VOCAB, seed=3, std=0.3).cuda()
    head = EagleHead.from_target(target, seed=2, std=0.3)
    from specdec_kernels.runtime import generate

    prompts = [[1, 5, 9, 2, 7], [3, 3], [4, 8, 15, 16, 23, 4, 2]]
    for kwargs in (dict(), dict(temperature=1.0, seed=3), dict(temperature=1.0, seed=3, eagle_sample=True)):
        eager = generate(target, prompts, method="eagle", eagle_head=head, max_new_tokens=16, cuda_graph=False,
                         eagle_topk=3, eagle_depth=3, eagle_nodes=8, **kwargs)
        graph = generate(target, prompts, method="eagle", eagle_head=head, max_new_tokens=16, cuda_graph=True,
                         eagle_topk=3, eagle_depth=3, eagle_nodes=8, **kwargs)
        assert graph.tokens == eager.tokens, kwargs

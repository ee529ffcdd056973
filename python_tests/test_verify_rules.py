"""verify_rejection's rules beyond "token": block verification (chains) and
traversal verification (trees): the reference, and the kernels that have them.

Three kinds of evidence:
- exact: on small vocabularies, every draft and every accept/reject outcome
  is enumerated (float64) for a restatement of each rule, giving the exact
  distribution of the first token and pair (must equal the target's) and the
  exact expected accepted length (block and traversal must never be below
  token); a deliberately broken traversal (no renormalisation after a
  rejected subtree) fails the same exact check;
- the implementation against that restatement, draw for draw on shared
  uniforms (draws within 1e-5 of a threshold are skipped: float32 against
  float64);
- statistical: test_verify_lossless's chi-square checks (ALPHA = 1e-3, fixed
  seeds) on the implementation, for chains and trees with and without q,
  and broken controls the same checks catch;
- each kernel against the reference, draw for draw on shared uniforms.
"""
import itertools

import numpy as np
import pytest
import torch

import specdec_kernels as sk
from specdec_kernels.reference import sampling as ref
from conftest import backend_cases
from verify_scenarios import make_case
from test_verify_lossless import ALPHA, FILTERED, TRIALS, backend_params, pvalues, run_trials


class Models:
    """Context-dependent toy target p(. | prefix) and drafter q(. | prefix) over V tokens."""

    def __init__(self, seed, vocab=3, sharp=3.0):
        self.rng, self.vocab, self.sharp, self.P, self.Q = np.random.default_rng(seed), vocab, sharp, {}, {}

    def _dist(self):
        x = self.rng.random(self.vocab) ** self.sharp + 1e-3
        return x / x.sum()

    def p(self, prefix):
        return self.P.setdefault(prefix, self._dist())

    def q(self, prefix):
        return self.Q.setdefault(prefix, self._dist())


def _point(vocab, x):
    return np.eye(vocab)[x]


def traversal_outcomes(m, tree, point, renormalise=True, decide=None):
    """The traversal rule (reference/sampling.py _walk_traversal) in float64.
    tree: [(token, subtree), ...] under the root. decide(node_id, w) -> bool
    fixes one outcome (a draw); None enumerates: -> {emitted tuple: probability}."""
    out = {}

    def visit(prefix, kids, w, prob, node):
        W = w * m.p(prefix)
        rej = prob
        for i, (x, sub) in enumerate(kids):
            qn = _point(m.vocab, x) if point else m.q(prefix)
            wc = min(1.0, W[x] / qn[x]) if qn[x] > 0 else float(W[x] > 0)
            rej = visit(prefix + (x,), sub, wc, rej, node + (i,))
            if rej == 0.0:
                return 0.0
            R = np.maximum(W - qn, 0.0)
            mass = R.sum()
            if 1 - w + mass > 0:
                W, w = (R / (1 - w + mass), mass / (1 - w + mass)) if renormalise else (R, mass)
        h = 1.0 if not prefix else w
        if decide is not None:
            h = 1.0 if (not prefix or decide(node, w)) else 0.0
        r = W / W.sum() if W.sum() > 0 else W  # h = 0 then
        for y in range(m.vocab):
            out[prefix + (y,)] = out.get(prefix + (y,), 0.0) + rej * h * r[y]
        return rej * (1 - h)

    visit((), tree, 1.0, 1.0, ())
    return out


def token_outcomes(m, tree, point):
    """The token rule (SpecInfer's multi-step: children top-down against a normalised residual), float64."""
    out = {}

    def visit(prefix, kids, prob):
        r, stay = m.p(prefix).copy(), prob
        for x, sub in kids:
            qn = _point(m.vocab, x) if point else m.q(prefix)
            a = min(1.0, r[x] / qn[x]) if qn[x] > 0 else 0.0
            visit(prefix + (x,), sub, stay * a)
            stay *= 1 - a
            R = np.maximum(r - qn, 0.0)
            if R.sum() > 0:
                r = R / R.sum()
        for y in range(m.vocab):
            out[prefix + (y,)] = out.get(prefix + (y,), 0.0) + stay * r[y]

    visit((), tree, 1.0)
    return out


def drafts(m, shape, point):
    """(tree, probability) for every draft of `shape`: 'chain3' (3 tokens), 'tree22' (2 children, each with 2),
    'tree31' (3 children, each with 1). Point mass: the drafter's top tokens, one draft."""
    width = {"chain3": (1, 1, 1), "tree22": (2, 2), "tree31": (3, 1)}[shape]

    def grow(prefix, level):
        if level == len(width):
            yield [], 1.0
            return
        k = width[level]
        if point:
            options = [(tuple(int(x) for x in np.argsort(-m.q(prefix), kind="stable")[:k]), 1.0)]
        else:
            options = [(xs, float(np.prod([m.q(prefix)[x] for x in xs])))
                       for xs in itertools.product(range(m.vocab), repeat=k)]
        for xs, px in options:
            subs = [list(grow(prefix + (x,), level + 1)) for x in xs]
            for combo in itertools.product(*subs):
                yield [(x, c[0]) for x, c in zip(xs, combo)], px * float(np.prod([c[1] for c in combo]))

    return list(grow((), 0))


def exact(m, shape, point, rule, **kw):
    """-> (first-token error, pair error, expected accepted length), exactly."""
    first, pair, length = np.zeros(m.vocab), np.zeros((m.vocab, m.vocab)), 0.0
    for tree, weight in drafts(m, shape, point):
        outcomes = (traversal_outcomes(m, tree, point, **kw) if rule == "traversal"
                    else token_outcomes(m, tree, point))
        for seq, pr in outcomes.items():
            first[seq[0]] += weight * pr
            length += weight * pr * (len(seq) - 1)
            if len(seq) >= 2:
                pair[seq[0], seq[1]] += weight * pr
            else:
                pair[seq[0]] += weight * pr * m.p((seq[0],))
    p0 = m.p(())
    p01 = np.stack([p0[a] * m.p((a,)) for a in range(m.vocab)])
    return float(np.abs(first - p0).max()), float(np.abs(pair - p01).max()), length


SHAPES = ["chain3", "tree22", "tree31"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("point", [False, True], ids=["q", "point_mass"])
def test_traversal_is_exactly_lossless(shape, point):
    for seed in range(3):
        err_first, err_pair, _ = exact(Models(seed), shape, point, "traversal")
        assert err_first < 1e-12 and err_pair < 1e-12, (seed, err_first, err_pair)


@pytest.mark.parametrize("shape", ["tree22", "tree31"])
@pytest.mark.parametrize("point", [False, True], ids=["q", "point_mass"])
def test_the_exact_check_catches_a_traversal_without_renormalisation(shape, point):
    # On a chain the renormalisation is a no-op (one child), so only trees can show it.
    worst = max(max(exact(Models(seed), shape, point, "traversal", renormalise=False)[:2]) for seed in range(3))
    assert worst > 1e-3, worst


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("point", [False, True], ids=["q", "point_mass"])
def test_never_shorter_than_token(shape, point):
    """Expected accepted length, exactly: traversal (block on chains) >= token, over 12 random model pairs;
    strictly longer on average where the drafter is sampled (q)."""
    gains = []
    for seed in range(12):
        m = Models(seed)
        e_trav, e_token = exact(m, shape, point, "traversal")[2], exact(m, shape, point, "token")[2]
        assert e_trav >= e_token - 1e-12, (seed, e_trav, e_token)
        gains.append(e_trav - e_token)
    if not point:
        assert np.mean(gains) > 1e-3, gains


def _case(m, tree, point):
    """The flattened request of `tree` for verify_rejection (logits = log p, draft_probs = q)."""
    tokens, parents, prefixes = [0], [-1], [()]

    def add(parent, kids):
        for x, sub in kids:
            tokens.append(x)
            parents.append(parent)
            prefixes.append(prefixes[parent] + (x,))
            add(len(tokens) - 1, sub)

    add(0, tree)
    logits = torch.tensor(np.log(np.stack([m.p(pre) for pre in prefixes])), dtype=torch.float32)
    q = None if point else torch.tensor(np.stack([m.q(pre) for pre in prefixes]), dtype=torch.float32)
    return torch.tensor(tokens), torch.tensor(parents, dtype=torch.int32), logits, q, prefixes


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("point", [False, True], ids=["q", "point_mass"])
def test_reference_matches_the_restatement_draw_for_draw(shape, point):
    m = Models(5)
    gen = torch.Generator().manual_seed(11)
    all_drafts = drafts(m, shape, point)
    checked = 0
    for i in range(60):
        tree = all_drafts[int(torch.randint(len(all_drafts), (1,), generator=gen))][0]
        tokens, parents, logits, q, prefixes = _case(m, tree, point)
        u = torch.rand(tokens.numel(), generator=gen)
        order = {}  # DFS position (tuple of child indices) -> node index, as _case numbered them
        stack = [((), 0, tree)]
        while stack:
            key, node, kids = stack.pop()
            order[key] = node
            idx = node + 1
            for j, (x, sub) in enumerate(kids):
                stack.append((key + (j,), idx, sub))
                idx += 1 + _count(sub)
        near = []

        def decide(key, w):
            near.append(abs(float(u[order[key]]) - w) < 1e-5)
            return float(u[order[key]]) < w

        want = traversal_outcomes(m, tree, point, decide=decide)
        if any(near):
            continue
        got = sk.verify_rejection(tokens, parents, torch.tensor([0, tokens.numel()], dtype=torch.int32), logits, q,
                                  uniforms=u, backend="reference", rule="traversal")
        n = int(got.num_accepted[0])
        path = tuple(int(t) for t in got.tokens[0, :n])
        # The accepted path is the one the restatement gives positive probability, and its next-token
        # distribution holds the emitted token.
        accepted = {seq[:-1] for seq, pr in want.items() if pr > 0}
        assert accepted == {path}, (tree, u, accepted, path)
        assert want.get(path + (int(got.tokens[0, n]),), 0.0) > 0
        checked += 1
    assert checked >= 50


def _count(kids):
    return sum(1 + _count(sub) for _, sub in kids)


def run_rule_trials(shape, rule, trials, filters=None, seed=1, backend="reference"):
    return run_trials(shape, backend, trials, seed=seed, filters=filters, rule=rule)


RULE_CASES = [("block", "chain"), ("traversal", "chain"), ("traversal", "tree_q"), ("traversal", "tree_topk")]


@pytest.mark.parametrize("rule,shape", RULE_CASES)
@pytest.mark.parametrize("filtered", [False, True], ids=["plain", "filtered"])
def test_rule_is_lossless(rule, shape, filtered):
    filters = FILTERED if filtered else None
    first, second = run_rule_trials(shape, rule, TRIALS["reference"], filters)
    p_first, p_pair = pvalues(first, second, filters)
    assert p_first > ALPHA and p_pair > ALPHA, f"p-values: first token {p_first:.2e}, pair {p_pair:.2e}"


def _no_renormalisation(alpha, beta, w, m):
    return alpha, beta, m


def _draw_from_p(W, logits, filters, u):
    return ref.sample_index(ref.target_probs(logits, *filters), u)


BROKEN = {"no_renormalisation": ("_condition_on_rejection", _no_renormalisation),
          "next_token_from_p": ("_traversal_draw", _draw_from_p)}


@pytest.mark.parametrize("broken,shape", [("no_renormalisation", "tree_q"), ("no_renormalisation", "tree_topk"),
                                          ("next_token_from_p", "chain"), ("next_token_from_p", "tree_q")])
def test_broken_traversal_fails_the_same_test(monkeypatch, broken, shape):
    name, fn = BROKEN[broken]
    monkeypatch.setattr(ref, name, fn)
    first, second = run_rule_trials(shape, "traversal", TRIALS["reference"])
    p_first, p_pair = pvalues(first, second)
    assert min(p_first, p_pair) < ALPHA, f"broken rule passed: p-values {p_first:.2e}, {p_pair:.2e}"


def test_block_needs_chains_and_other_rules_are_refused():
    tokens = torch.tensor([0, 1, 2])
    parents = torch.tensor([-1, 0, 0], dtype=torch.int32)
    indptr = torch.tensor([0, 3], dtype=torch.int32)
    logits = torch.randn(3, 4)
    with pytest.raises(ValueError, match="rule='block' verifies chains.*2 children"):
        sk.verify_rejection(tokens, parents, indptr, logits, seed=0, backend="reference", rule="block")
    # validate=False: the tree is verified with the traversal rule.
    a = sk.verify_rejection(tokens, parents, indptr, logits, seed=0, backend="reference", rule="block",
                            validate=False)
    b = sk.verify_rejection(tokens, parents, indptr, logits, seed=0, backend="reference", rule="traversal")
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="rule must be one of"):
        sk.verify_rejection(tokens, parents, indptr, logits, seed=0, backend="reference", rule="tree")


# ---------------------------------------------------------------- kernels against the reference
KERNEL_CASES = [c for c in backend_cases() if c.values[1] != "reference"]


def traversal_cases(device, dtype, with_q):
    """Bushy trees over tiny vocabularies, drafts rarely the target's argmax: siblings repeat tokens and
    most nodes are rejected, so the walk returns to parents and conditions them (test_verify's cases
    mostly accept, and a kernel without the renormalisation passed them)."""
    for seed, (sizes, kind, vocab) in enumerate([([6, 6, 6, 6, 6, 6], "tree", 4), ([12, 3, 9], "tree", 9),
                                                 ([7, 7, 5], "chain", 5)]):
        yield make_case(300 + seed, sizes, vocab=vocab, kind=kind, dtype=dtype, device=device, with_q=with_q,
                        follow=0.3, scale=1.0)


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_q", [False, True], ids=["point_mass", "with_q"])
@pytest.mark.parametrize("filters", ["plain", "all"])
def test_traversal_kernels_match_reference(device, backend, dtype, with_q, filters):
    """Draw for draw on shared uniforms (rare float32 boundary flips allowed, as for the token rule),
    over test_verify's random trees and chains."""
    from test_verify import FILTERS, MAX_BOUNDARY_MISMATCHES, check_path_consistency, mismatched_requests, run, \
        sampled_cases
    temperature, top_k, top_p = FILTERS[filters]
    compared = mismatched = 0
    for case in itertools.chain(sampled_cases(device, dtype, with_q, backend),
                                traversal_cases(device, dtype, with_q)):
        kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, uniforms=case.uniforms, rule="traversal")
        expected = sk.verify_rejection(*case.args(), case.draft_probs, backend="reference", **kwargs)
        result = run(sk.verify_rejection, case, backend, draft_probs=case.draft_probs, **kwargs)
        check_path_consistency(result, case)
        compared += case.batch
        mismatched += mismatched_requests(result, expected)
    assert compared > 0 and mismatched <= MAX_BOUNDARY_MISMATCHES * compared, f"{mismatched} of {compared} differ"


@pytest.mark.parametrize("backend,device", [c for c in backend_params() if c.values[0] != "reference"])
@pytest.mark.parametrize("rule,shape", RULE_CASES)
def test_kernel_rule_is_lossless(backend, device, rule, shape):
    """The compiled kernels (the interpreted Triton one is too slow for 40,000 trials; a GPU run takes it
    through the draw-for-draw test above)."""
    first, second = run_trials(shape, backend, TRIALS[backend], seed=1, rule=rule, device=device)
    p_first, p_pair = pvalues(first, second)
    assert p_first > ALPHA and p_pair > ALPHA, f"p-values: first token {p_first:.2e}, pair {p_pair:.2e}"


def test_cpu_traversal_past_its_level_cache():
    """The CPU kernel keeps each depth's rows while it walks below it, unless that would take more than
    64 MiB; then it reloads them. A deep chain over a 1.5M vocabulary with q (6 x 1.5M x 2 floats)
    takes the second path; it must agree with the reference as the first does."""
    if not sk.info()["extension"] == "loaded":
        pytest.skip("the cpu backend is not built")
    gen = torch.Generator().manual_seed(11)
    n, vocab = 6, 1_500_000
    logits = torch.randn(n, vocab, generator=gen)
    tokens = torch.randint(vocab, (n,), generator=gen)
    # Each draft is likely under its parent's row, more so under q: rejections then leave mass to
    # condition on, and deep nodes are often accepted.
    logits[torch.arange(n - 1), tokens[1:]] += 16.0
    q = torch.softmax(logits * 1.05, dim=1)
    parents = torch.arange(-1, n - 1, dtype=torch.int32)
    indptr = torch.tensor([0, n], dtype=torch.int32)
    depths = []
    for seed in range(8):
        kwargs = dict(seed=seed, rule="traversal")
        want = sk.verify_rejection(tokens, parents, indptr, logits, q, backend="reference", **kwargs)
        got = sk.verify_rejection(tokens, parents, indptr, logits, q, backend="cpu", **kwargs)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), (seed, got, want)
        depths.append(int(got.num_accepted[0]))
    assert max(depths) >= 3, depths  # the walk went deep

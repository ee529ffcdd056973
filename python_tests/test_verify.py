"""verify_greedy / verify_rejection / verify_typical on every backend against
the reference: ragged batches of chains and trees, ties, filters, mixed
greedy and sampled requests, in-kernel Philox, edge cases, bad input.

Greedy results must match exactly. Sampled results use the same uniforms as
the reference; a request may differ only when a uniform falls within rounding
of a boundary (exp and sums round differently per backend), which must be
rare: at most MAX_BOUNDARY_MISMATCHES of the requests compared.
"""
import pytest
import torch

import specdec_kernels as sk
from conftest import HAS_CUDA, backend_cases
from specdec_kernels.reference import sampling as ref
from verify_scenarios import make_case

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MAX_BOUNDARY_MISMATCHES = 0.01


def poison_allocator(batch, width, device):
    """Leave sentinels where the outputs will likely be allocated, so an
    unwritten element shows up (freed blocks of the same size come back)."""
    for shape, dtype in (((batch,), torch.int32), ((batch, width), torch.int32), ((batch, width), torch.int64)):
        torch.full(shape, 123456, dtype=dtype, device=device)


def run(op, case, backend, **kwargs):
    width = kwargs.get("max_depth", ref_depth(case)) + 1
    poison_allocator(case.batch, width, case.target_logits.device)
    return op(*case.args(), backend=backend, **kwargs)


def ref_depth(case) -> int:
    return sk.sampling._deepest(case.parents, case.qo_indptr)


def assert_same(result, expected, what=""):
    for name, a, e in zip(result._fields, result, expected):
        assert a.dtype == e.dtype and a.shape == e.shape, f"{what}{name}: {a.dtype}{tuple(a.shape)}"
        assert torch.equal(a.cpu(), e.cpu()), f"{what}{name} differs:\n{a}\nexpected\n{e}"


def mismatched_requests(result, expected) -> int:
    rows = torch.zeros(result.num_accepted.shape[0], dtype=torch.bool)
    for a, e in zip(result, expected):
        diff = a.cpu() != e.cpu()
        rows |= diff if diff.dim() == 1 else diff.any(dim=1)
    return int(rows.sum())


def check_path_consistency(result, case):
    """accepted_nodes is a root-first chain of ancestors and tokens repeat the
    accepted nodes' tokens; padding is -1."""
    indptr = case.qo_indptr.cpu().tolist()
    parents, tokens = case.parents.cpu().tolist(), case.draft_tokens.cpu().tolist()
    for b in range(case.batch):
        n = int(result.num_accepted[b])
        nodes = result.accepted_nodes[b].cpu().tolist()
        toks = result.tokens[b].cpu().tolist()
        if indptr[b] == indptr[b + 1]:
            assert n == 0 and set(nodes) == {-1} and set(toks) == {-1}
            continue
        assert nodes[0] == 0 and all(v == -1 for v in nodes[n + 1:]) and all(v == -1 for v in toks[n + 1:])
        for j in range(1, n + 1):
            assert parents[indptr[b] + nodes[j]] == nodes[j - 1]
            assert toks[j - 1] == tokens[indptr[b] + nodes[j]]
        assert 0 <= toks[n] < case.target_logits.shape[1]


SHAPES = [  # (sizes, kind, vocab)
    ([5, 1, 9, 0, 4], "chain", 37),
    ([12, 7, 1, 20], "tree", 50),
    ([64], "tree", 33),
    ([3, 3, 3, 3, 3, 3], "chain", 2),
    ([4, 2], "tree", 1),
]


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_greedy_matches_reference(device, backend, dtype, ties):
    for seed, (sizes, kind, vocab) in enumerate(SHAPES):
        case = make_case(seed, sizes, vocab=vocab, kind=kind, dtype=dtype, device=device, ties=ties,
                         row_stride_pad=3 * (seed % 2))
        expected = sk.verify_greedy(*case.args(), backend="reference")
        result = run(sk.verify_greedy, case, backend)
        assert_same(result, expected, f"case {seed}: ")
        check_path_consistency(result, case)
    # A drafted chain that is the target's own greedy continuation is accepted whole.
    case = make_case(99, [6, 6], vocab=40, kind="chain", dtype=dtype, device=device, follow=1.0)
    assert run(sk.verify_greedy, case, backend).num_accepted.tolist() == [5, 5]


def sampled_cases(device, dtype, with_q, backend):
    # The Triton interpreter runs the sampled walk slowly: it skips the 64-node
    # tree here (greedy and typical still cover it; a GPU run takes all).
    light = backend == "triton" and device == "cpu"
    for seed, (sizes, kind, vocab) in enumerate(SHAPES):
        if light and sum(sizes) > 40:
            continue
        yield make_case(100 + seed, sizes, vocab=vocab, kind=kind, dtype=dtype, device=device, with_q=with_q,
                        follow=0.8, row_stride_pad=2 * (seed % 2))


FILTERS = {  # name: (temperature, top_k, top_p)
    "plain": (1.0, 0, 1.0),
    "temperature": (0.6, 0, 1.0),
    "top_k": (1.3, 3, 1.0),
    "top_p": (1.0, 0, 0.7),
    "all": (0.8, 5, 0.9),
}


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_q", [False, True], ids=["point_mass", "with_q"])
@pytest.mark.parametrize("filters", list(FILTERS))
def test_rejection_matches_reference(device, backend, dtype, with_q, filters):
    temperature, top_k, top_p = FILTERS[filters]
    compared = mismatched = 0
    for case in sampled_cases(device, dtype, with_q, backend):
        kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, uniforms=case.uniforms)
        expected = sk.verify_rejection(*case.args(), case.draft_probs, backend="reference", **kwargs)
        result = run(sk.verify_rejection, case, backend, draft_probs=case.draft_probs, **kwargs)
        check_path_consistency(result, case)
        compared += case.batch
        mismatched += mismatched_requests(result, expected)
    assert mismatched <= MAX_BOUNDARY_MISMATCHES * compared, f"{mismatched} of {compared} requests differ"


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_typical_matches_reference(device, backend, dtype):
    compared = mismatched = 0
    for case in sampled_cases(device, dtype, False, backend):
        for temperature, eps, alpha in ((0.7, 0.09, 0.3), (1.0, 0.3, 0.05)):
            kwargs = dict(temperature=temperature, posterior_threshold=eps, posterior_alpha=alpha,
                          uniforms=case.uniforms)
            expected = sk.verify_typical(*case.args(), backend="reference", **kwargs)
            result = run(sk.verify_typical, case, backend, **kwargs)
            check_path_consistency(result, case)
            compared += case.batch
            mismatched += mismatched_requests(result, expected)
    assert mismatched <= MAX_BOUNDARY_MISMATCHES * compared, f"{mismatched} of {compared} requests differ"


def with_inert_rows(case, seed, dead_children=False):
    """The case with inert rows (parent -1, token -1, NaN logits, zero q)
    inserted after random nodes of each request; with ``dead_children`` also
    children with token -1 (outside the vocabulary) under random nodes.
    Returns (case, old->new row map per request)."""
    gen = torch.Generator().manual_seed(seed)
    indptr = case.qo_indptr.cpu().tolist()
    kinds, parents, tokens, maps, sizes = [], [], [], [], []
    for b in range(case.batch):
        s, e = indptr[b], indptr[b + 1]
        local, new_index = [], {}
        for i in range(e - s):
            new_index[i] = len(local)
            local.append(("node", s + i))
            for _ in range(int(torch.randint(0, 3, (1,), generator=gen))):
                local.append(("inert", None))
            if dead_children and float(torch.rand(1, generator=gen)) < 0.5:
                local.append(("dead", i))
        for kind, row in local:
            kinds.append((kind, row))
            if kind == "node":
                p = int(case.parents[row])
                parents.append(-1 if p < 0 else new_index[p])
                tokens.append(int(case.draft_tokens[row]))
            else:
                parents.append(-1 if kind == "inert" else new_index[row])
                tokens.append(-1)
        maps.append({**new_index, -1: -1})  # -1: an empty request's padding
        sizes.append(len(local))
    device = case.target_logits.device
    vocab = case.target_logits.shape[1]
    logits = torch.full((len(kinds), vocab), float("nan"), dtype=case.target_logits.dtype, device=device)
    q = None if case.draft_probs is None else torch.zeros(len(kinds), vocab, dtype=case.draft_probs.dtype,
                                                          device=device)
    uniforms = torch.rand(len(kinds), generator=gen).to(device)
    for r, (kind, src) in enumerate(kinds):
        if kind == "node":
            logits[r] = case.target_logits[src]
            uniforms[r] = case.uniforms[src]
            if q is not None:
                q[r] = case.draft_probs[src]
    indptr = torch.tensor([0] + torch.tensor(sizes).cumsum(0).tolist(), dtype=torch.int32, device=device)
    padded = type(case)(torch.tensor(tokens, device=device), torch.tensor(parents, dtype=torch.int32, device=device),
                        indptr, logits, q, uniforms, sizes)
    return padded, maps


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("mode", ["greedy", "rejection_q", "rejection", "typical"])
def test_inert_rows_change_nothing(device, backend, mode):
    """Non-root rows with parent -1 (lookahead window cells, CUDA-graph
    padding) are never candidates and their token and logits are never read.
    Without q, children with token -1 (fixed-shape drafts' unused nodes) are
    never accepted and change nothing either (their rows are leaves with NaN
    logits: never read)."""
    light = backend == "triton" and device == "cpu"
    for seed, (sizes, kind, vocab) in enumerate(SHAPES[:2] if light else SHAPES):
        case = make_case(300 + seed, sizes, vocab=vocab, kind=kind, device=device, follow=0.8,
                         with_q=mode == "rejection_q")
        padded, maps = with_inert_rows(case, seed, dead_children=mode != "rejection_q")
        kwargs = {"rejection_q": dict(temperature=0.9, top_k=4),
                  "rejection": dict(temperature=0.9, top_p=0.8),
                  "typical": dict(temperature=0.8, posterior_threshold=0.09, posterior_alpha=0.3)}.get(mode, {})
        op = {"greedy": sk.verify_greedy, "typical": sk.verify_typical}.get(mode, sk.verify_rejection)
        depth = ref_depth(case)
        plain_kwargs, padded_kwargs = dict(kwargs), dict(kwargs)
        if mode != "greedy":
            plain_kwargs["uniforms"], padded_kwargs["uniforms"] = case.uniforms, padded.uniforms
        if mode == "rejection_q":
            plain_kwargs["draft_probs"], padded_kwargs["draft_probs"] = case.draft_probs, padded.draft_probs
        expected = op(*case.args(), max_depth=depth, backend=backend, **plain_kwargs)
        result = run(op, padded, backend, max_depth=depth, validate=False, **padded_kwargs)
        for b in range(case.batch):
            n = int(expected.num_accepted[b])
            assert int(result.num_accepted[b]) == n, f"case {seed} request {b}"
            want_nodes = [maps[b][v] for v in expected.accepted_nodes[b, :n + 1].tolist()]
            assert result.accepted_nodes[b, :n + 1].tolist() == want_nodes
            assert torch.equal(result.tokens[b].cpu(), expected.tokens[b].cpu())
        # validate=True accepts inert rows too (and rejects the -1 tokens of live nodes).
        inert_only, _ = with_inert_rows(case, seed)
        if mode != "greedy":
            padded_kwargs["uniforms"] = inert_only.uniforms
        if mode == "rejection_q":
            padded_kwargs["draft_probs"] = inert_only.draft_probs
        op(*inert_only.args(), max_depth=depth, backend="reference", **padded_kwargs)


@pytest.mark.parametrize("device,backend", backend_cases())
def test_zero_temperature_requests_are_greedy(device, backend):
    """Mixed batches: requests with temperature 0 get exactly the greedy result."""
    case = make_case(7, [6, 5, 8, 3], vocab=30, kind="tree", device=device, with_q=True, ties=True)
    greedy = sk.verify_greedy(*case.args(), backend="reference")
    temps = torch.tensor([0.0, 1.0, 0.0, 0.5], device=device)
    for op, extra in ((sk.verify_rejection, dict(draft_probs=case.draft_probs, top_k=2, top_p=0.5)),
                      (sk.verify_typical, {})):
        result = run(op, case, backend, temperature=temps, uniforms=case.uniforms, **extra)
        for b in (0, 2):
            for a, e in zip(result, greedy):
                assert torch.equal(a[b].cpu(), e[b].cpu()), f"{op.__name__}: request {b}"


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("op", ["rejection", "typical"])
def test_seed_draws_the_philox_stream(device, backend, op):
    """seed/offset (ints or device tensors) = explicit uniforms from
    philox_uniforms(seed, offset, N), on the same backend."""
    case = make_case(11, [5, 9, 1, 4], vocab=23, kind="tree", device=device, follow=0.8)
    fn = sk.verify_rejection if op == "rejection" else sk.verify_typical
    n = case.draft_tokens.numel()
    for seed, offset in ((0, 0), (2**40 + 17, 2**33 + 5), (123, 77)):
        uniforms = sk.philox_uniforms(seed, offset, n).to(device)
        expected = run(fn, case, backend, uniforms=uniforms)
        assert_same(run(fn, case, backend, seed=seed, offset=offset), expected, f"seed {seed}: ")
        as_tensors = dict(seed=torch.tensor(seed, dtype=torch.int64, device=device),
                          offset=torch.tensor([offset], dtype=torch.int64, device=device))
        assert_same(run(fn, case, backend, **as_tensors), expected, f"seed tensor {seed}: ")


def test_philox_uniforms_are_uniform():
    u = sk.philox_uniforms(5, 0, 100_000)
    assert u.dtype == torch.float32 and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    counts = torch.histc(u, bins=20, min=0.0, max=1.0)
    expected = u.numel() / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 19 degrees of freedom: P(chi2 > 43.8) = 1e-3.
    assert chi2 < 43.8
    assert not torch.equal(sk.philox_uniforms(5, 1, 10), sk.philox_uniforms(5, 0, 10))
    assert torch.equal(sk.philox_uniforms(5, 3, 7), sk.philox_uniforms(5, 0, 10)[3:])


def plain_sampler_probs(logits, temperature, top_k, top_p):
    """A plain sampler (temperature, then top-k, then top-p over the sorted
    cumulative mass), independent of the reference's code; tie-free logits."""
    z = logits.double() / temperature
    if 0 < top_k < z.numel():
        z = torch.where(z < torch.topk(z, top_k).values[-1], float("-inf"), z)
    p = torch.softmax(z, 0)
    if top_p < 1:
        sorted_p, order = torch.sort(p, descending=True)
        before = torch.cumsum(sorted_p, 0) - sorted_p
        drop = torch.zeros_like(p, dtype=torch.bool)
        drop[order] = before >= top_p
        p = torch.where(drop, 0.0, p)
        p = p / p.sum()
    return p


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("filters", list(FILTERS))
def test_filters_sample_like_a_plain_sampler(device, backend, filters):
    """Root-only requests draw their token by inverse CDF of p: on a grid of
    uniforms the tokens must be the plain sampler's quantiles."""
    temperature, top_k, top_p = FILTERS[filters]
    vocab, batch = 12, 64
    row = torch.randn(vocab, generator=torch.Generator().manual_seed(3)) * 2
    p = plain_sampler_probs(row, temperature, top_k, top_p)
    assert torch.allclose(ref.target_probs(row, temperature, top_k, top_p).double(), p, atol=1e-6)
    grid = (torch.arange(batch, dtype=torch.float64) + 0.5) / batch
    cdf = torch.cumsum(p, 0)
    expected = torch.searchsorted(cdf, grid, right=True).clamp(max=vocab - 1)
    logits = row.repeat(batch, 1).to(device)
    result = sk.verify_rejection(torch.zeros(batch, dtype=torch.int64, device=device),
                                 torch.full((batch,), -1, dtype=torch.int32, device=device),
                                 torch.arange(batch + 1, dtype=torch.int32, device=device), logits,
                                 temperature=temperature, top_k=top_k, top_p=top_p,
                                 uniforms=grid.float().to(device), backend=backend)
    assert result.num_accepted.tolist() == [0] * batch
    assert result.tokens[:, 0].cpu().tolist() == expected.tolist()
    assert set(result.tokens[:, 0].tolist()) <= set(p.nonzero().flatten().tolist())


def single_chain(draft, logits, device):
    k = len(draft)
    return (torch.tensor(draft, dtype=torch.int64, device=device),
            torch.tensor([-1] + list(range(k - 1)), dtype=torch.int32, device=device),
            torch.tensor([0, k], dtype=torch.int32, device=device), logits.to(device))


@pytest.mark.parametrize("device,backend", backend_cases())
def test_edge_cases(device, backend):
    # V = 1: every drafted token is token 0 and is accepted; the bonus is 0.
    args = single_chain([0, 0, 0], torch.zeros(3, 1), device)
    for result in (sk.verify_greedy(*args, backend=backend),
                   sk.verify_rejection(*args, seed=1, backend=backend),
                   sk.verify_typical(*args, seed=1, backend=backend)):
        assert result.num_accepted.tolist() == [2] and result.tokens.tolist() == [[0, 0, 0]]

    # Root only (a chain of length 0): no drafts, the bonus alone.
    args = single_chain([4], torch.tensor([[0.0, 1.0, 5.0, 2.0, 0.0]]), device)
    result = sk.verify_greedy(*args, backend=backend)
    assert result.num_accepted.tolist() == [0] and result.tokens.tolist() == [[2]]
    assert result.accepted_nodes.tolist() == [[0]]

    # q(x) = 0 with p(x) > 0: always accepted; p(x) = 0 (filtered by top-k): never.
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]] * 2)
    q = torch.tensor([[0.0, 0.0, 0.5, 0.5]] * 2)
    args = single_chain([0, 1], logits, device)
    for u in (0.0, 0.5, 0.999):
        uniforms = torch.full((2,), u, device=device)
        r = sk.verify_rejection(*args, q.to(device), uniforms=uniforms, backend=backend)
        assert r.num_accepted.tolist() == [1]
        r = sk.verify_rejection(*args, q.to(device), top_k=1, uniforms=uniforms, backend=backend)
        assert r.num_accepted.tolist() == [0] and r.tokens[0, 0].item() == 0

    # All-equal logits: greedy takes token 0; sampling is uniform over V.
    args = single_chain([3, 0], torch.zeros(2, 6), device)
    assert sk.verify_greedy(*args, backend=backend).tokens.tolist() == [[0, 0]]
    r = sk.verify_rejection(*args, uniforms=torch.tensor([0.99, 0.1], device=device), backend=backend)
    assert r.num_accepted.tolist() == [1] and r.tokens.tolist() == [[0, 5]]

    # -inf logits are never drafted-accepted nor sampled.
    row = torch.tensor([float("-inf"), 0.0, float("-inf"), 0.5])
    args = single_chain([1, 2], row.repeat(2, 1), device)
    for u in (0.0, 0.3, 0.7, 0.999999):
        r = sk.verify_rejection(*args, uniforms=torch.tensor([u, 0.0], device=device), backend=backend)
        assert r.num_accepted.tolist() == [0] and r.tokens[0, 0].item() in (1, 3)


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("bad", ["nan", "posinf", "all_neginf"])
def test_invalid_logits_are_flagged_never_sampled(device, backend, bad):
    """A row the rule reads that cannot define a distribution: -1 outputs with
    validate=False, a ValueError naming the request and row with validate=True.
    Rows the rule does not read do not matter."""
    value = {"nan": float("nan"), "posinf": float("inf"), "all_neginf": float("-inf")}[bad]
    case = make_case(5, [3, 4], vocab=9, kind="chain", device=device, follow=1.0)
    logits = case.target_logits.clone()
    if bad == "all_neginf":
        logits[3 + 1] = value
    else:
        logits[3 + 1, 2] = value
    args = (case.draft_tokens, case.parents, case.qo_indptr, logits)
    for op, kwargs in ((sk.verify_greedy, {}), (sk.verify_rejection, dict(uniforms=torch.zeros(7, device=device))),
                       (sk.verify_typical, dict(uniforms=torch.zeros(7, device=device)))):
        result = op(*args, validate=False, backend=backend, **kwargs)
        assert result.num_accepted[1].item() == -1, op.__name__
        assert set(result.accepted_nodes[1].tolist()) == {-1} and set(result.tokens[1].tolist()) == {-1}
        assert result.num_accepted[0].item() >= 0
        with pytest.raises(ValueError, match=r"request 1 .*row 4"):
            op(*args, backend=backend, **kwargs)
    # The same bad value in a row no rule reads (a rejected branch) is harmless.
    case = make_case(5, [3], vocab=9, kind="chain", device=device, follow=0.0)
    logits = case.target_logits.clone()
    first = int(logits[0].argmax())
    tokens = torch.tensor([0, (first + 1) % 9, 0], device=device)
    logits[1, 0] = value if bad != "all_neginf" else logits[1, 0]
    result = sk.verify_greedy(tokens, case.parents, case.qo_indptr, logits, backend=backend)
    assert result.num_accepted.tolist() == [0] and result.tokens[0, 0].item() == first


@pytest.mark.parametrize("device,backend", backend_cases())
def test_max_depth_truncates(device, backend):
    """Nodes deeper than max_depth are ignored (validate=False); with
    validate=True a tree deeper than max_depth is an error."""
    case = make_case(3, [6, 4], vocab=20, kind="chain", device=device, follow=1.0)
    result = sk.verify_greedy(*case.args(), max_depth=2, validate=False, backend=backend)
    assert result.num_accepted.tolist() == [2, 2] and result.tokens.shape == (2, 3)
    expected = sk.verify_greedy(*case.args(), backend="reference")
    assert torch.equal(result.tokens[:, :2].cpu(), expected.tokens[:, :2].cpu())
    with pytest.raises(ValueError, match="max_depth"):
        sk.verify_greedy(*case.args(), max_depth=2, backend=backend)


@pytest.mark.parametrize("device,backend", backend_cases())
def test_compiled_op_survives_malformed_values(device, backend):
    """validate=False with out-of-range tokens and parents: no crash, no
    out-of-bounds access; such nodes are simply never accepted."""
    case = make_case(4, [5, 6], vocab=11, kind="tree", device=device)
    tokens = case.draft_tokens.clone()
    tokens[1], tokens[7] = 11, -5
    parents = case.parents.clone()
    parents[2], parents[8] = 7, -3
    result = sk.verify_rejection(tokens, parents, case.qo_indptr, case.target_logits, seed=0,
                                 max_depth=5, validate=False, backend=backend)
    nodes = result.accepted_nodes.cpu()
    assert 1 not in nodes[0].tolist() and 2 not in nodes[1].tolist()


def test_bad_input_names_the_argument():
    case = make_case(1, [3, 2], vocab=8, kind="chain")
    tokens, parents, indptr, logits = case.args()
    cases = [
        (dict(target_logits=logits.double()), TypeError, "target_logits must be float32"),
        (dict(target_logits=logits[:, :0]), ValueError, "V >= 1"),
        (dict(draft_tokens=tokens[:4]), ValueError, r"draft_tokens must be \[N=5\]"),
        (dict(draft_tokens=tokens.float()), TypeError, "draft_tokens must be int64 or int32"),
        (dict(parents=parents.long()), TypeError, "parents must be int32"),
        (dict(qo_indptr=torch.tensor([0, 3, 6], dtype=torch.int32)), ValueError, r"qo_indptr\[B\]"),
        (dict(qo_indptr=torch.tensor([0, 4, 3, 5], dtype=torch.int32)), ValueError, "non-decreasing"),
        (dict(draft_tokens=torch.tensor([0, 1, 8, 0, 1])), ValueError, r"draft_tokens\[2\] = 8 is outside"),
        (dict(parents=torch.tensor([-1, 0, 2, -1, 0], dtype=torch.int32)), ValueError, r"parents\[2\] = 2"),
        (dict(parents=torch.tensor([0, 0, 1, -1, 0], dtype=torch.int32)), ValueError, r"parents\[0\] = 0.*root"),
        (dict(temperature=-1.0), ValueError, r"temperature\[0\] = -1.0"),
        (dict(top_p=0.0), ValueError, r"top_p\[0\] = 0.0"),
        (dict(top_k=-2), ValueError, r"top_k\[0\] = -2"),
        (dict(top_k=2.5), TypeError, "top_k must be an int"),
        (dict(temperature=torch.ones(3)), ValueError, r"temperature must be \[B=2\]"),
        (dict(draft_probs=torch.rand(5, 7)), ValueError, r"draft_probs must be \[N=5, V=8\]"),
        (dict(draft_probs=-torch.rand(5, 8)), ValueError, "draft_probs row 0"),
        (dict(uniforms=torch.rand(4)), ValueError, r"uniforms must be float32 \[N=5\]"),
        (dict(uniforms=torch.rand(5), seed=3), ValueError, "at most one of uniforms, seed"),
        (dict(seed=1.5), TypeError, "seed must be an int"),
        (dict(max_depth=-1), ValueError, "max_depth must be an int >= 0"),
        (dict(backend="nope"), Exception, "unknown backend"),
    ]
    for overrides, error, message in cases:
        kwargs = dict(draft_tokens=tokens, parents=parents, qo_indptr=indptr, target_logits=logits)
        kwargs.update(overrides)
        positional = [kwargs.pop(k) for k in ("draft_tokens", "parents", "qo_indptr", "target_logits")]
        with pytest.raises(error, match=message):
            sk.verify_rejection(*positional, **kwargs)
    with pytest.raises(ValueError, match="posterior_alpha"):
        sk.verify_typical(tokens, parents, indptr, logits, posterior_alpha=0.0)


def test_int32_draft_tokens_and_generator():
    case = make_case(2, [4, 3], vocab=10, kind="tree", follow=0.9)
    a = sk.verify_greedy(case.draft_tokens.int(), case.parents, case.qo_indptr, case.target_logits)
    assert_same(a, sk.verify_greedy(*case.args()))
    draws = [sk.verify_rejection(*case.args(), generator=torch.Generator().manual_seed(9)) for _ in range(2)]
    assert_same(draws[0], draws[1], "same generator seed: ")


def _op_inputs(mode):
    case = make_case(8, [4, 3], vocab=9, kind="tree", with_q=(mode == 1))
    b = case.batch
    temperature = torch.full((b,), 0.9) if mode else None
    per_mode = {0: (None, None, None, None, None, None),
                1: (case.draft_probs, temperature, torch.full((b,), 3, dtype=torch.int32), torch.full((b,), 0.9),
                    None, None),
                2: (None, temperature, None, None, torch.full((b,), 0.09), torch.full((b,), 0.3))}[mode]
    randomness = (None, None) if mode == 0 else (None, torch.tensor([7, 0], dtype=torch.int64))
    return (*case.args(), *per_mode, *randomness, mode, 3)


@pytest.mark.parametrize("mode", [0, 1, 2], ids=["greedy", "rejection", "typical"])
def test_opcheck(mode):
    torch.library.opcheck(torch.ops.specdec.verify_tree, _op_inputs(mode),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_meta_kernel_checks_shapes():
    args = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in _op_inputs(1)]
    n, nodes, t = torch.ops.specdec.verify_tree(*args)
    assert (n.shape, nodes.shape, t.shape) == ((2,), (2, 3), (2, 3)) and t.dtype == torch.int64
    args[4] = args[4][:, :2]
    with pytest.raises(RuntimeError, match="draft_probs must be"):
        torch.ops.specdec.verify_tree(*args)


@pytest.mark.parametrize("backend", ["cpu"])
def test_random_batches_hypothesis(backend):
    """Odd geometries: many tiny requests, V from 1, quantised logits (ties
    everywhere), every rule; greedy exact, sampled within the boundary budget."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
    @hypothesis.given(seed=st.integers(0, 2**31 - 1), sizes=st.lists(st.integers(0, 12), min_size=1, max_size=6),
                      vocab=st.integers(1, 40), kind=st.sampled_from(["chain", "tree"]), ties=st.booleans(),
                      with_q=st.booleans(), top_k=st.integers(0, 6), top_p=st.sampled_from([1.0, 0.8, 0.3]))
    def check(seed, sizes, vocab, kind, ties, with_q, top_k, top_p):
        case = make_case(seed, sizes, vocab=vocab, kind=kind, ties=ties, with_q=with_q, follow=0.7)
        assert_same(run(sk.verify_greedy, case, backend), sk.verify_greedy(*case.args(), backend="reference"))
        kwargs = dict(temperature=0.9, top_k=top_k, top_p=top_p, uniforms=case.uniforms)
        expected = sk.verify_rejection(*case.args(), case.draft_probs, backend="reference", **kwargs)
        result = run(sk.verify_rejection, case, backend, draft_probs=case.draft_probs, **kwargs)
        assert mismatched_requests(result, expected) <= max(0, case.batch // 50)
        check_path_consistency(result, case)

    check()


LARGE_VOCAB_CASES = [pytest.param("cpu", "cpu", id="cpu-cpu")] + [
    pytest.param("cuda", b, id=f"cuda-{b}",
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")])
    for b in ("cuda", "triton")]


@pytest.mark.parametrize("device,backend", LARGE_VOCAB_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_large_vocab_draws_match_reference(device, backend, dtype):
    """A real vocabulary: a float running sum over 50K tokens drifts enough to
    move an inverse-CDF draw, so the kernels must sum as exactly as the
    reference (the interpreter is too slow for this size)."""
    compared = mismatched = 0
    for seed, with_q in ((0, False), (1, True)):
        case = make_case(200 + seed, [3, 1, 4, 2] * 5, vocab=50_000, kind="tree", dtype=dtype, device=device,
                         with_q=with_q, follow=0.3, scale=1.0)
        kwargs = dict(temperature=1.0, uniforms=case.uniforms)
        expected = sk.verify_rejection(*case.args(), case.draft_probs, backend="reference", **kwargs)
        result = run(sk.verify_rejection, case, backend, draft_probs=case.draft_probs, **kwargs)
        compared += case.batch
        mismatched += mismatched_requests(result, expected)
    assert mismatched <= MAX_BOUNDARY_MISMATCHES * compared, f"{mismatched} of {compared} requests differ"

"""min_p and allowed_tokens (grammar bitmasks) in the verify ops.

* The reference's definitions against restatements: min_p as vLLM writes it
  (p >= min_p * max p over the softmax), the bitmask as xgrammar packs it.
* Every kernel against the reference draw for draw (fixed uniforms; rare
  float32 boundary flips allowed, as everywhere in test_verify), outputs
  poisoned first: min_p with and without top-k / top-p, both rules; the
  bitmask in all three ops, rows with nothing allowed among them.
* Lossless under the filters: the chi-square test of test_verify_lossless
  (ALPHA = 1e-3 per check, fixed seeds) with min_p and with a bitmask; the
  bitmask test also fails if a masked token is ever emitted, and a control
  that ignores the mask fails it.
* Masked rows: greedy picks the best allowed token, a masked draft is never
  accepted, a row with nothing allowed gives a clear error (validate=True)
  or num_accepted = -1 (validate=False), never a token; an all-masked row
  that no path can reach is harmless.
"""
import itertools

import pytest
import torch

import specdec_kernels as sk
from conftest import backend_cases
from specdec_kernels.reference import sampling as ref
from test_verify import FILTERS, MAX_BOUNDARY_MISMATCHES, check_path_consistency, mismatched_requests, run, \
    sampled_cases
from test_verify_lossless import ALPHA, TRIALS, backend_params, pack_bitmask, pvalues, run_trials
from verify_scenarios import make_case

KERNEL_CASES = [c for c in backend_cases() if c.values[1] != "reference"]


# ---------------------------------------------------------------- definitions
def test_min_p_is_vllms_rule():
    g = torch.Generator().manual_seed(0)
    checked = 0
    for _ in range(200):
        logits = torch.randn(40, generator=g) * 3
        t, min_p = float(torch.rand(1, generator=g)) + 0.3, float(torch.rand(1, generator=g)) * 0.5
        probs = torch.softmax(logits.double() / t, 0)
        ratio = probs / probs.max()
        if ((ratio - min_p).abs() < 1e-5).any():
            continue  # too close to the threshold for float32 to agree with float64
        want = probs * (ratio >= min_p)
        got = ref.target_probs(logits, t, 0, 1.0, min_p)
        torch.testing.assert_close(got.double(), want / want.sum(), rtol=1e-5, atol=1e-7)
        checked += 1
    assert checked > 150


def test_min_p_commutes_with_top_k_and_precedes_top_p():
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        logits = torch.randn(30, generator=g) * 2
        k, min_p, top_p = int(torch.randint(1, 30, (1,), generator=g)), 0.1, 0.8
        both = ref.target_probs(logits, 1.0, k, 1.0, min_p)
        kept_k = ref.target_probs(logits, 1.0, k, 1.0) > 0
        kept_min_p = ref.target_probs(logits, 1.0, 0, 1.0, min_p) > 0
        assert torch.equal(both > 0, kept_k & kept_min_p)
        # vLLM's order: top-p sees the mass min-p left (the same as top-p on the min-p-masked logits).
        masked = logits.masked_fill(~kept_min_p, float("-inf"))
        torch.testing.assert_close(ref.target_probs(logits, 1.0, 0, top_p, min_p),
                                   ref.target_probs(masked, 1.0, 0, top_p))


def test_bitmask_layout():
    allowed = torch.rand(5, 70, generator=torch.Generator().manual_seed(2)) > 0.5
    words = pack_bitmask(allowed)
    assert words.shape == (5, 3) and words.dtype == torch.int32
    assert torch.equal(ref.unpack_bitmask(words, 70), allowed)
    # Bit j % 32 of word j // 32, bit 31 the sign bit.
    one = torch.zeros(1, 70, dtype=torch.bool)
    one[0, 31] = True
    assert int(pack_bitmask(one)[0, 0]) == -2**31


# ---------------------------------------------------------------- kernels against the reference
def random_bitmask(case, seed, empty_every=0):
    """int32 [rows, ceil(V / 32)]: each token allowed with probability 0.6 (the draft's own token
    too, so paths still go deep), the words' bits past V random, every empty_every-th row empty."""
    g = torch.Generator().manual_seed(seed)
    rows, vocab = case.target_logits.shape
    words = (vocab + 31) // 32
    allowed = torch.rand(rows, words * 32, generator=g) < 0.6
    allowed[:, vocab:] = torch.rand(rows, words * 32 - vocab, generator=g) < 0.5
    if empty_every:
        allowed[empty_every - 1::empty_every, :vocab] = False
    return pack_bitmask(allowed[:, :words * 32]).to(case.target_logits.device)


def compare_with_reference(op, device, backend, dtype, cases, **kwargs):
    compared = mismatched = invalid = 0
    for seed, case in enumerate(cases):
        args = dict(kwargs)
        if args.pop("masked", False):
            args["allowed_tokens"] = random_bitmask(case, seed, empty_every=args.pop("empty_every", 0))
        if op is not sk.verify_greedy:
            args["uniforms"] = case.uniforms
        if op is sk.verify_rejection:
            args["draft_probs"] = case.draft_probs
        expected = op(*case.args(), backend="reference", validate=False, **args)
        result = run(op, case, backend, validate=False, **args)
        valid = expected.num_accepted >= 0
        invalid += int((~valid).sum())
        compared += case.batch
        mismatched += mismatched_requests(result, expected)
        if valid.all():
            check_path_consistency(result, case)
    return compared, mismatched, invalid


def filter_cases(device, dtype, with_q, backend):
    return itertools.chain(sampled_cases(device, dtype, with_q, backend),
                           [make_case(400, [5] * 10, vocab=70, kind="tree", dtype=dtype, device=device,
                                      with_q=with_q, follow=0.5, scale=3.0)])


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rule", ["token", "traversal"])
@pytest.mark.parametrize("filters", ["min_p", "min_p_all"])
def test_min_p_kernels_match_reference(device, backend, dtype, rule, filters):
    temperature, top_k, top_p = FILTERS["plain" if filters == "min_p" else "all"]
    min_p = 0.15 if filters == "min_p" else 0.05
    for with_q in (False, True):
        compared, mismatched, _ = compare_with_reference(
            sk.verify_rejection, device, backend, dtype, filter_cases(device, dtype, with_q, backend),
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, rule=rule)
        assert compared > 0 and mismatched <= MAX_BOUNDARY_MISMATCHES * compared, \
            f"with_q={with_q}: {mismatched} of {compared} differ"


OPS = {"greedy": (sk.verify_greedy, {}),
       "token": (sk.verify_rejection, dict(temperature=0.9, top_k=5, top_p=0.9, min_p=0.02)),
       "traversal": (sk.verify_rejection, dict(temperature=1.0, rule="traversal")),
       "typical": (sk.verify_typical, dict(temperature=0.8))}


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op_name", list(OPS))
def test_bitmask_kernels_match_reference(device, backend, dtype, op_name):
    op, kwargs = OPS[op_name]
    compared, mismatched, invalid = compare_with_reference(
        op, device, backend, dtype, filter_cases(device, dtype, op is sk.verify_rejection, backend), masked=True,
        empty_every=9, **kwargs)
    greedy = op is sk.verify_greedy
    assert compared > 0 and mismatched <= (0 if greedy else MAX_BOUNDARY_MISMATCHES) * compared, \
        f"{mismatched} of {compared} differ"
    assert invalid > 0, "no request read a row with nothing allowed: the flag went untested"


# ---------------------------------------------------------------- lossless under the filters
@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("rule,shape", [("token", "tree_q"), ("traversal", "tree_q"), ("token", "tree_topk"),
                                        ("block", "chain")])
def test_lossless_with_min_p(backend, device, rule, shape):
    filters = dict(temperature=1.0, min_p=0.15)
    first, second = run_trials(shape, backend, TRIALS[backend], filters=filters, device=device, rule=rule)
    p_first, p_pair = pvalues(first, second, filters)
    assert p_first > ALPHA and p_pair > ALPHA, f"p-values: first token {p_first:.2e}, pair {p_pair:.2e}"


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("rule,shape", [("token", "tree_q"), ("traversal", "tree_q"), ("token", "tree_topk"),
                                        ("traversal", "chain")])
def test_lossless_with_bitmask(backend, device, rule, shape):
    """Distributed as the masked target; chi_square_pvalue also asserts no masked token is emitted."""
    first, second = run_trials(shape, backend, TRIALS[backend], device=device, rule=rule, masked=True)
    p_first, p_pair = pvalues(first, second, masked=True)
    assert p_first > ALPHA and p_pair > ALPHA, f"p-values: first token {p_first:.2e}, pair {p_pair:.2e}"


def test_a_rule_that_ignores_the_mask_fails_the_same_test():
    first, second = run_trials("tree_q", "reference", TRIALS["reference"])  # drafted and verified unmasked
    with pytest.raises(AssertionError, match="probability 0 was emitted"):
        pvalues(first, second, masked=True)


# ---------------------------------------------------------------- masked rows
def _tree():
    """Root with children 3, 1, 2 (nodes 1-3); node 1 has child 0 (node 4)."""
    tokens = torch.tensor([5, 3, 1, 2, 0])
    parents = torch.tensor([-1, 0, 0, 0, 1], dtype=torch.int32)
    indptr = torch.tensor([0, 5], dtype=torch.int32)
    return tokens, parents, indptr


@pytest.mark.parametrize("device,backend", backend_cases())
def test_greedy_takes_the_best_allowed_token(device, backend):
    tokens, parents, indptr = _tree()
    logits = torch.tensor([[0.0, 1.0, 2.0, 9.0, 0.5, 0.0]] * 5)  # token 3 is every row's argmax
    allowed = torch.ones(5, 6, dtype=torch.bool)
    allowed[0, 3] = False  # ... but not allowed at the root: the best allowed is token 2 (node 3)
    dev = torch.device(device)
    out = sk.verify_greedy(tokens.to(dev), parents.to(dev), indptr.to(dev), logits.to(dev),
                           allowed_tokens=pack_bitmask(allowed).to(dev), backend=backend)
    assert out.num_accepted.tolist() == [1] and out.accepted_nodes[0, :2].tolist() == [0, 3]
    assert out.tokens[0, :2].tolist() == [2, 3]


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("rule", ["token", "traversal"])
def test_a_masked_draft_is_never_accepted(device, backend, rule):
    tokens, parents, indptr = _tree()
    logits = torch.zeros(5, 6)
    logits[0, 3] = 8.0  # the root's target almost surely wants token 3 (node 1) ...
    allowed = torch.ones(5, 6, dtype=torch.bool)
    allowed[0, 3] = False  # ... which the grammar forbids
    dev = torch.device(device)
    for seed in range(20):
        out = sk.verify_rejection(tokens.to(dev), parents.to(dev), indptr.to(dev), logits.to(dev), seed=seed,
                                  allowed_tokens=pack_bitmask(allowed).to(dev), backend=backend, rule=rule)
        assert int(out.accepted_nodes[0, 1]) != 1 and int(out.tokens[0, 0]) != 3


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("op_name", list(OPS))
def test_nothing_allowed_is_an_error_or_a_flag(device, backend, op_name):
    op, kwargs = OPS[op_name]
    tokens, parents, indptr = _tree()
    dev = torch.device(device)
    logits = torch.randn(5, 6, generator=torch.Generator().manual_seed(3)).to(dev)
    allowed = torch.ones(5, 6, dtype=torch.bool)
    allowed[0] = False  # the root's row: every rule reads it
    extra = {} if op is sk.verify_greedy else dict(seed=0)
    args = (tokens.to(dev), parents.to(dev), indptr.to(dev), logits)
    words = pack_bitmask(allowed).to(dev)
    with pytest.raises(ValueError, match=r"allowed_tokens allows no token after node 0 of request 0"):
        op(*args, allowed_tokens=words, backend=backend, **extra, **kwargs)
    out = op(*args, allowed_tokens=words, backend=backend, validate=False, **extra, **kwargs)
    assert out.num_accepted.tolist() == [-1]
    assert set(out.tokens.flatten().tolist()) == {-1} and set(out.accepted_nodes.flatten().tolist()) == {-1}


@pytest.mark.parametrize("device,backend", backend_cases())
def test_an_unreachable_empty_row_is_harmless(device, backend):
    """Node 4 follows token 3, which the root's mask forbids: its row (nothing allowed, as a grammar
    that rejected the prefix would leave it) is never read."""
    tokens, parents, indptr = _tree()
    dev = torch.device(device)
    logits = torch.randn(5, 6, generator=torch.Generator().manual_seed(4))
    allowed = torch.ones(5, 6, dtype=torch.bool)
    allowed[0, 3] = False
    allowed[4] = False
    words = pack_bitmask(allowed).to(dev)
    for op, kwargs in OPS.values():
        extra = {} if op is sk.verify_greedy else dict(seed=1)
        out = op(tokens.to(dev), parents.to(dev), indptr.to(dev), logits.to(dev), allowed_tokens=words,
                 backend=backend, **extra, **kwargs)
        assert int(out.num_accepted[0]) >= 0


def test_bad_filter_arguments_are_named():
    tokens, parents, indptr = _tree()
    logits = torch.randn(5, 6)
    with pytest.raises(ValueError, match=r"min_p\[0\] = 1.5 must be finite and in \[0.0, 1.0\]"):
        sk.verify_rejection(tokens, parents, indptr, logits, seed=0, min_p=1.5)
    with pytest.raises(ValueError, match=r"allowed_tokens .*int32 \[N=5, ceil\(V / 32\)=1\]"):
        sk.verify_greedy(tokens, parents, indptr, logits, allowed_tokens=torch.zeros(5, 2, dtype=torch.int32))
    with pytest.raises((TypeError, ValueError), match="allowed_tokens.*int32"):
        sk.verify_greedy(tokens, parents, indptr, logits, allowed_tokens=torch.zeros(5, 1, dtype=torch.int64))

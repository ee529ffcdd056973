"""Probabilities in: ``target_probs=`` on every verify op and backend.

The contract (specdec_kernels/sampling.py): a row p is read as the logits
log(p) inside the kernel, greedy takes the argmax of p itself, and a row is
invalid when it holds a NaN or a negative value or has no finite positive
maximum. Backends are compared with the reference on the same uniforms, with
test_verify's rules: greedy exactly, sampled requests may differ only at
rounding boundaries (at most MAX_BOUNDARY_MISMATCHES of them).
"""
import numpy as np
import pytest
import torch

import specdec_kernels as sk
from conftest import backend_cases
from test_verify import (DTYPES, MAX_BOUNDARY_MISMATCHES, assert_same, check_path_consistency, mismatched_requests,
                         poison_allocator, ref_depth)
from verify_scenarios import make_case

SHAPES = [([5, 1, 9, 0, 4], "chain", 37), ([12, 7, 1, 20], "tree", 50), ([3, 3, 3], "chain", 2)]


def prob_cases(device, dtype, with_q=False):
    """Unnormalised probabilities (softmax times a per-row scale, a few exact
    zeros) and the case they came from."""
    for seed, (sizes, kind, vocab) in enumerate(SHAPES):
        case = make_case(300 + seed, sizes, vocab=vocab, kind=kind, device=device, with_q=with_q, follow=0.8)
        gen = torch.Generator().manual_seed(seed)
        p = torch.softmax(case.target_logits.float().cpu(), dim=1)
        p = p * (0.5 + torch.rand(p.shape[0], 1, generator=gen))
        p[torch.rand(p.shape, generator=gen) < 0.1] = 0.0
        p[torch.arange(p.shape[0]), p.argmax(1)] += 0.01  # every row keeps a positive max
        if case.draft_probs is not None:
            case.draft_probs = case.draft_probs.to(dtype)
        yield case, p.to(dtype=dtype, device=device)


def run(op, case, probs, backend, **kwargs):
    poison_allocator(case.batch, ref_depth(case) + 1, probs.device)
    return op(case.draft_tokens, case.parents, case.qo_indptr, target_probs=probs, backend=backend, **kwargs)


OPS = {  # name: (op, kwargs given a case)
    "greedy": (sk.verify_greedy, lambda c: {}),
    "rejection": (sk.verify_rejection, lambda c: dict(temperature=1.0, uniforms=c.uniforms)),
    "rejection_filtered": (sk.verify_rejection,
                           lambda c: dict(temperature=0.7, top_k=5, top_p=0.8, uniforms=c.uniforms)),
    "rejection_q": (sk.verify_rejection, lambda c: dict(draft_probs=c.draft_probs, uniforms=c.uniforms)),
    "typical": (sk.verify_typical, lambda c: dict(temperature=0.8, uniforms=c.uniforms)),
}


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rule", list(OPS))
def test_probs_match_reference(device, backend, dtype, rule):
    op, kwargs_of = OPS[rule]
    compared = mismatched = 0
    for case, probs in prob_cases(device, dtype, with_q=rule == "rejection_q"):
        kwargs = kwargs_of(case)
        expected = op(case.draft_tokens, case.parents, case.qo_indptr, target_probs=probs, backend="reference",
                      **kwargs)
        result = run(op, case, probs, backend, **kwargs)
        check_path_consistency(result, case)
        if rule == "greedy":
            assert_same(result, expected)
        compared += case.batch
        mismatched += mismatched_requests(result, expected)
    assert mismatched <= MAX_BOUNDARY_MISMATCHES * compared, f"{mismatched} of {compared} requests differ"


@pytest.mark.parametrize("rule", [r for r in OPS if r != "greedy"])
def test_reference_reads_probs_as_log_logits(rule):
    """The definition: target_probs=p is target_logits=log(p), draw for draw."""
    op, kwargs_of = OPS[rule]
    for case, probs in prob_cases("cpu", torch.float32, with_q=rule == "rejection_q"):
        kwargs = kwargs_of(case)
        a = op(case.draft_tokens, case.parents, case.qo_indptr, target_probs=probs, backend="reference", **kwargs)
        b = op(case.draft_tokens, case.parents, case.qo_indptr, torch.log(probs), backend="reference", **kwargs)
        assert_same(a, b)


@pytest.mark.parametrize("device,backend", backend_cases())
def test_greedy_takes_the_argmax_of_p(device, backend):
    """3e-5 and the next float32 above it have the same float32 log, so an
    argmax over log(p) would pick index 0; greedy must pick index 1 (and, in
    a sampled op, a temperature-0 request too)."""
    lo = np.float32(3e-5)
    hi = np.nextafter(lo, np.float32(1))
    assert np.log(lo) == np.log(hi)  # the premise
    row = torch.tensor([float(lo), float(hi), 1e-6, 0.0], dtype=torch.float32)
    probs = row.repeat(2, 1).to(device)
    tokens = torch.tensor([0, 1], device=device)
    parents = torch.tensor([-1, 0], dtype=torch.int32, device=device)
    indptr = torch.tensor([0, 2], dtype=torch.int32, device=device)
    r = sk.verify_greedy(tokens, parents, indptr, target_probs=probs, backend=backend)
    assert r.num_accepted.tolist() == [1] and r.tokens.tolist() == [[1, 1]]
    r = sk.verify_rejection(tokens, parents, indptr, target_probs=probs, temperature=0.0, seed=1, backend=backend)
    assert r.num_accepted.tolist() == [1] and r.tokens.tolist() == [[1, 1]]


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("bad", ["negative", "nan", "posinf", "all_zero"])
def test_invalid_probs_are_flagged(device, backend, bad):
    case = make_case(7, [3, 4], vocab=9, kind="chain", device=device, follow=1.0)
    probs = torch.softmax(case.target_logits.float(), dim=1)
    if bad == "all_zero":
        probs[4] = 0.0
    else:
        probs[4, 2] = {"negative": -1e-3, "nan": float("nan"), "posinf": float("inf")}[bad]
    args = (case.draft_tokens, case.parents, case.qo_indptr)
    for op, kwargs in ((sk.verify_greedy, {}), (sk.verify_rejection, dict(uniforms=torch.zeros(7, device=device))),
                       (sk.verify_typical, dict(uniforms=torch.zeros(7, device=device)))):
        result = op(*args, target_probs=probs, validate=False, backend=backend, **kwargs)
        assert result.num_accepted.tolist()[1] == -1, op.__name__
        assert set(result.tokens[1].tolist()) == {-1} and result.num_accepted[0].item() >= 0
        with pytest.raises(ValueError, match=r"target_probs of request 1 .*row 4"):
            op(*args, target_probs=probs, backend=backend, **kwargs)


def test_exactly_one_of_logits_and_probs():
    case = make_case(8, [3], vocab=5, kind="chain")
    args = (case.draft_tokens, case.parents, case.qo_indptr)
    with pytest.raises(TypeError, match="exactly one of target_logits and target_probs, got both"):
        sk.verify_greedy(*args, case.target_logits, target_probs=case.target_logits)
    with pytest.raises(TypeError, match="got neither"):
        sk.verify_rejection(*args, seed=0)
    with pytest.raises(TypeError, match="target_probs must be float32"):
        sk.verify_typical(*args, target_probs=case.target_logits.double())

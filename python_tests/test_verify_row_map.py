"""The row map: ``target_indptr`` + ``bonus_tokens`` on every verify op and backend.

Contract (specdec_kernels/sampling.py, "Row map"): request b reads rows
``target_indptr[b]:target_indptr[b+1]`` of the target (and of draft_probs)
for its nodes 0, 1, ...; a node past them has no row, accepts no child, and a
path that ends there emits ``bonus_tokens[b]``.

The definition test pins the reference to the dense layout (a missing leaf row
is a point mass on the bonus token); backends are then compared with the
reference on the same uniforms, as in test_verify (greedy exactly, sampled
requests may differ only at rounding boundaries).
"""
import pytest
import torch

import specdec_kernels as sk
from conftest import backend_cases
from test_verify import (DTYPES, MAX_BOUNDARY_MISMATCHES, assert_same, check_path_consistency, mismatched_requests,
                         poison_allocator, ref_depth)
from test_verify_probs import OPS
from verify_scenarios import make_case

SHAPES = [([5, 1, 9, 0, 4], "chain", 37), ([12, 7, 1, 20], "tree", 50), ([3, 3, 3, 6], "chain", 2)]



def mapped(case, seed, keep="random"):
    """The case with rows for only a prefix of each request's nodes: ``keep``
    "random" (0 .. all of them), "all_but_last" (vLLM's layout) or "all".
    Returns (target [R, V], draft_probs [R, V] or None, target_indptr, bonus_tokens)."""
    gen = torch.Generator().manual_seed(seed)
    device = case.target_logits.device
    vocab = case.target_logits.shape[1]
    starts = case.qo_indptr.cpu().tolist()
    rows, counts = [], []
    for b, size in enumerate(case.sizes):
        if keep == "all":
            k = size
        elif keep == "all_but_last":
            k = max(size - 1, 0)
        else:
            k = int(torch.randint(0, size + 1, (1,), generator=gen))
        rows += range(starts[b], starts[b] + k)
        counts.append(k)
    rows = torch.tensor(rows, dtype=torch.long, device=device)
    indptr = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32, device=device)
    bonus = torch.randint(0, vocab, (case.batch,), generator=gen).to(device)
    q = case.draft_probs[rows] if case.draft_probs is not None else None
    return case.target_logits[rows], q, indptr, bonus


def call(op, case, target, q, indptr, bonus, backend, kwargs):
    kwargs = dict(kwargs)
    if "draft_probs" in kwargs:
        kwargs["draft_probs"] = q
    poison_allocator(case.batch, ref_depth(case) + 1, target.device)
    return op(case.draft_tokens, case.parents, case.qo_indptr, target, target_indptr=indptr, bonus_tokens=bonus,
              backend=backend, **kwargs)


@pytest.mark.parametrize("rule", list(OPS))
def test_reference_missing_leaf_row_is_the_bonus_point_mass(rule):
    """Definition: on chains, a missing last row with bonus t is the dense
    layout whose last row is a point mass on t (what vLLM's adapter built)."""
    op, kwargs_of = OPS[rule]
    for seed, sizes in enumerate(([5, 1, 9, 4], [2, 2, 2], [1])):
        case = make_case(40 + seed, sizes, vocab=23, kind="chain", with_q=rule == "rejection_q", follow=0.9)
        target, q, indptr, bonus = mapped(case, seed, "all_but_last")
        dense = case.target_logits.clone()
        last = case.qo_indptr[1:].long() - 1
        dense[last] = float("-inf")
        dense[last, bonus] = 0.0
        kwargs = kwargs_of(case)
        got = call(op, case, target, q, indptr, bonus, "reference", kwargs)
        expected = op(*case.args()[:3], dense, backend="reference", **kwargs)
        assert_same(got, expected, f"sizes {sizes}: ")
        assert (got.num_accepted == torch.tensor(sizes) - 1).any(), "no request accepted its whole chain"


@pytest.mark.parametrize("rule", list(OPS))
def test_reference_full_map_is_the_plain_layout(rule):
    op, kwargs_of = OPS[rule]
    for seed, (sizes, kind, vocab) in enumerate(SHAPES):
        case = make_case(60 + seed, sizes, vocab=vocab, kind=kind, with_q=rule == "rejection_q")
        target, q, indptr, bonus = mapped(case, seed, "all")
        kwargs = kwargs_of(case)
        assert_same(call(op, case, target, q, indptr, bonus, "reference", kwargs),
                    op(*case.args(), backend="reference", **kwargs))


@pytest.mark.parametrize("device,backend", backend_cases())
def test_rowless_node_accepts_no_child(device, backend):
    """Node 1 has no row: its child (the target's argmax everywhere) is not
    accepted, and the path ends at node 1 with the bonus."""
    vocab = 8
    logits = torch.full((2, vocab), -5.0, device=device)
    logits[:, 3] = 5.0  # rows of nodes 0 and ... only node 0 is mapped below
    tokens = torch.tensor([0, 3, 3], device=device)
    parents = torch.tensor([-1, 0, 1], dtype=torch.int32, device=device)
    qo = torch.tensor([0, 3], dtype=torch.int32, device=device)
    rows = torch.tensor([0, 1], dtype=torch.int32, device=device)
    bonus = torch.tensor([6], device=device)
    for op, kwargs in ((sk.verify_greedy, {}),
                       (sk.verify_rejection, dict(temperature=1.0, uniforms=torch.zeros(3, device=device))),
                       (sk.verify_typical, dict(temperature=1.0, uniforms=torch.zeros(3, device=device)))):
        r = op(tokens, parents, qo, logits[:1], target_indptr=rows, bonus_tokens=bonus, backend=backend, **kwargs)
        assert r.num_accepted.tolist() == [1], op.__name__
        assert r.accepted_nodes.tolist() == [[0, 1, -1]], op.__name__
        assert r.tokens.tolist() == [[3, 6, -1]], op.__name__


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rule", list(OPS))
def test_row_map_matches_reference(device, backend, dtype, rule):
    op, kwargs_of = OPS[rule]
    compared = mismatched = 0
    for seed, (sizes, kind, vocab) in enumerate(SHAPES):
        case = make_case(80 + seed, sizes, vocab=vocab, kind=kind, dtype=dtype, device=device,
                         with_q=rule == "rejection_q", follow=0.8)
        for keep in ("random", "all_but_last"):
            target, q, indptr, bonus = mapped(case, seed, keep)
            kwargs = kwargs_of(case)
            expected = call(op, case, target, q, indptr, bonus, "reference", kwargs)
            result = call(op, case, target, q, indptr, bonus, backend, kwargs)
            check_path_consistency(result, case)
            if rule == "greedy":
                assert_same(result, expected, f"{keep}: ")
            compared += case.batch
            mismatched += mismatched_requests(result, expected)
    assert mismatched <= MAX_BOUNDARY_MISMATCHES * compared, f"{mismatched} of {compared} requests differ"


@pytest.mark.parametrize("device,backend", backend_cases())
def test_row_map_with_probabilities(device, backend):
    """target_probs= reads mapped rows the same way."""
    case = make_case(7, [4, 6, 1, 3], vocab=30, kind="tree", device=device, follow=0.9)
    target, _, indptr, bonus = mapped(case, 7, "random")
    probs = torch.softmax(target.float(), dim=1)
    for op, kwargs in ((sk.verify_greedy, {}), (sk.verify_rejection, dict(uniforms=case.uniforms))):
        expected = op(*case.args()[:3], target_probs=probs, target_indptr=indptr, bonus_tokens=bonus,
                      backend="reference", **kwargs)
        got = op(*case.args()[:3], target_probs=probs, target_indptr=indptr, bonus_tokens=bonus, backend=backend,
                 **kwargs)
        assert mismatched_requests(got, expected) == 0


@pytest.mark.parametrize("device,backend", backend_cases())
def test_unvalidated_malformed_row_map_stays_in_bounds(device, backend):
    """validate=False with target_indptr past the rows or decreasing: the
    kernels clamp, never read outside the target (the compiled op on CPU
    tensors checks index values itself and raises)."""
    if backend == "reference":
        pytest.skip("the reference is only defined on validated input")
    case = make_case(3, [4, 4, 4], vocab=11, kind="chain", device=device)
    target = case.target_logits[:5]
    indptr = torch.tensor([0, 9, 2, 400], dtype=torch.int32, device=device)
    bonus = torch.tensor([1, 2, 3], device=device)
    if backend == "cpu":
        with pytest.raises(RuntimeError, match=r"target_indptr\[B\] must equal"):
            sk.verify_greedy(*case.args()[:3], target, target_indptr=indptr, bonus_tokens=bonus, max_depth=3,
                             validate=False, backend=backend)
        return
    r = sk.verify_greedy(*case.args()[:3], target, target_indptr=indptr, bonus_tokens=bonus, max_depth=3,
                         validate=False, backend=backend)
    assert r.num_accepted.shape == (3,)
    assert ((r.num_accepted >= -1) & (r.num_accepted <= 3)).all()


def test_row_map_bad_input_names_the_argument():
    case = make_case(1, [3, 2], vocab=9, kind="chain")
    target, _, indptr, bonus = mapped(case, 1, "all_but_last")
    args = case.args()[:3]
    with pytest.raises(TypeError, match="together"):
        sk.verify_greedy(*args, target, target_indptr=indptr)
    with pytest.raises(TypeError, match="together"):
        sk.verify_greedy(*args, target, bonus_tokens=bonus)
    with pytest.raises(ValueError, match=r"target_indptr\[0\] must be 0, got 1"):
        sk.verify_greedy(*args, target, target_indptr=indptr + 1, bonus_tokens=bonus)
    with pytest.raises(ValueError, match="non-decreasing"):
        sk.verify_greedy(*args, target, target_indptr=torch.tensor([0, 4, 3], dtype=torch.int32),
                         bonus_tokens=bonus)
    with pytest.raises(ValueError, match=r"bonus_tokens\[1\] = 9"):
        sk.verify_greedy(*args, target, target_indptr=indptr, bonus_tokens=torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="bonus_tokens"):
        sk.verify_greedy(*args, target, target_indptr=indptr, bonus_tokens=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="target_indptr"):
        sk.verify_greedy(*args, target, target_indptr=indptr[:2], bonus_tokens=bonus)
    with pytest.raises(ValueError, match="draft_probs"):
        sk.verify_rejection(*args, target, torch.full((5, 9), 1 / 9), target_indptr=indptr, bonus_tokens=bonus)
    # The compiled op checks too (its own messages).
    with pytest.raises(RuntimeError, match="together"):
        torch.ops.specdec.verify_tree(case.draft_tokens, case.parents, case.qo_indptr, target, None, None, None,
                                      None, None, None, None, None, 0, 3, False, indptr, None)
    with pytest.raises(RuntimeError, match=r"target_indptr\[B\]"):
        torch.ops.specdec.verify_tree(case.draft_tokens, case.parents, case.qo_indptr, target, None, None, None,
                                      None, None, None, None, None, 0, 3, False, indptr * 2, bonus)


def test_row_map_meta_shapes():
    case = make_case(2, [3, 2], vocab=9, kind="chain")
    target, _, indptr, bonus = mapped(case, 2, "all_but_last")
    out = torch.ops.specdec.verify_tree(case.draft_tokens.to("meta"), case.parents.to("meta"),
                                        case.qo_indptr.to("meta"), target.to("meta"), None, None, None, None, None,
                                        None, None, None, 0, 4, False, indptr.to("meta"), bonus.to("meta"))
    assert [tuple(t.shape) for t in out] == [(2,), (2, 4), (2, 4)]

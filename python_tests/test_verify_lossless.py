"""Losslessness of verify_rejection, statistically.

A toy target over a vocabulary of V tokens whose second-token distribution
depends on the first (logits L0 [V], L1 [V, V]) and a drafter that disagrees
with it (Q0, Q1). Each trial drafts a chain or a tree, verifies it, and keeps
the first two emitted tokens (continuing with a plain sample from the target
when only one was emitted). Under a lossless rule the first token is
distributed as p0 and the pair as p0(a) p1(b | a); a chi-square test checks
both. The trials of one configuration are one batched call.

False alarms: each test compares a p-value with ALPHA = 1e-3, so with a fresh
seed a correct rule fails a given check with probability 1e-3; the seeds are
fixed, so the outcome is deterministic. The same checks must reject
deliberately broken rules (acceptance without the q ratio, resampling from p
instead of the residual), which shows they have the power to catch a bias.
"""
import pytest
import torch

import specdec_kernels as sk
from conftest import HAS_CUDA
from specdec_kernels.reference import sampling as ref

ALPHA = 1e-3
VOCAB = 6
TRIALS = {"reference": 4000, "cpu": 40000, "cuda": 40000}
FILTERED = dict(temperature=0.8, top_k=5, top_p=0.9)


def toy_models(seed=0):
    g = torch.Generator().manual_seed(seed)
    l0, l1 = torch.randn(VOCAB, generator=g) * 1.5, torch.randn(VOCAB, VOCAB, generator=g) * 1.5
    q0 = torch.softmax(torch.randn(VOCAB, generator=g) * 1.5, 0)
    q1 = torch.softmax(torch.randn(VOCAB, VOCAB, generator=g) * 1.5, 1)
    return l0, l1, q0, q1


def chi_square_pvalue(counts: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Pearson's test; cells expected below 5 are pooled into one."""
    counts, probs = counts.double().flatten(), expected_probs.double().flatten()
    expected = probs * counts.sum()
    small = expected < 5
    if small.any():
        counts = torch.cat([counts[~small], counts[small].sum().reshape(1)])
        expected = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token the target gives probability 0 was emitted"
    counts, expected = counts[keep], expected[keep]
    stat = ((counts - expected) ** 2 / expected).sum()
    dof = torch.tensor(float(counts.numel() - 1), dtype=torch.float64)
    return float(torch.special.gammaincc(dof / 2, stat / 2))


def draft_batch(shape, trials, q0, q1, gen):
    """-> (draft_tokens [N], parents [N], qo_indptr [B+1], row_context [N]):
    row_context is -1 for a root row (the target's row is L0) or the node's
    first-level token (its row is L1[token]); deeper rows get -2 (any row)."""
    if shape == "chain":
        x1 = torch.multinomial(q0, trials, replacement=True, generator=gen)
        x2 = torch.multinomial(q1[x1], 1, generator=gen)[:, 0]
        tokens = torch.stack([torch.zeros_like(x1), x1, x2], 1)
        parents, context = [-1, 0, 1], torch.stack([-torch.ones_like(x1), x1, -2 * torch.ones_like(x1)], 1)
    else:
        if shape == "tree_q":  # two children drawn i.i.d. from q0, each with one child from q1
            x1 = torch.multinomial(q0, 2 * trials, replacement=True, generator=gen).view(trials, 2)
            x2 = torch.multinomial(q1[x1.flatten()], 1, generator=gen).view(trials, 2)
        else:  # deterministic: q0's top 3 tokens, each followed by q1's argmax
            x1 = torch.topk(q0, 3).indices.repeat(trials, 1)
            x2 = q1[x1.flatten()].argmax(1).view(trials, 3)
        width = x1.shape[1]
        tokens = torch.cat([torch.zeros(trials, 1, dtype=torch.long), x1, x2], 1)
        parents = [-1] + [0] * width + list(range(1, width + 1))
        context = torch.cat([-torch.ones(trials, 1, dtype=torch.long), x1, -2 * torch.ones_like(x2)], 1)
    per = tokens.shape[1]
    indptr = torch.arange(trials + 1, dtype=torch.int32) * per
    return (tokens.flatten(), torch.tensor(parents, dtype=torch.int32).repeat(trials), indptr, context.flatten())


def pack_bitmask(allowed: torch.Tensor) -> torch.Tensor:
    """int32 [R, ceil(V / 32)] from bool [R, V] (bit j % 32 of word j // 32)."""
    rows, vocab = allowed.shape
    words = (vocab + 31) // 32
    padded = torch.zeros(rows, words * 32, dtype=torch.int64)
    padded[:, :vocab] = allowed.long()
    packed = (padded.view(rows, words, 32) << torch.arange(32)).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def toy_masks(seed=5):
    """Allowed tokens for L0's row and each L1[a] row: about a third masked, never all."""
    g = torch.Generator().manual_seed(seed)
    m0, m1 = torch.rand(VOCAB, generator=g) > 0.35, torch.rand(VOCAB, VOCAB, generator=g) > 0.35
    m0[0] = True
    m1[:, 0] = True
    return m0, m1


def run_trials(shape, backend, trials, seed=1, filters=None, device="cpu", rule="token", masked=False):
    """masked: toy_masks() as allowed_tokens (a deeper row allows everything)."""
    filters = filters or {}
    l0, l1, q0, q1 = toy_models()
    gen = torch.Generator().manual_seed(seed)
    tokens, parents, indptr, context = draft_batch(shape, trials, q0, q1, gen)
    logits = torch.where((context == -1)[:, None], l0, l1[context.clamp(min=0)])
    probs = torch.where((context == -1)[:, None], q0, q1[context.clamp(min=0)])
    draft_probs = probs if shape != "tree_topk" else None
    dev = torch.device(device)
    extra = {}
    if masked:
        m0, m1 = toy_masks()
        allowed = torch.where((context == -1)[:, None], m0, m1[context.clamp(min=0)]) | (context == -2)[:, None]
        extra["allowed_tokens"] = pack_bitmask(allowed).to(dev)
    result = sk.verify_rejection(tokens.to(dev), parents.to(dev), indptr.to(dev), logits.to(dev),
                                 draft_probs.to(dev) if draft_probs is not None else None,
                                 uniforms=torch.rand(tokens.numel(), generator=gen).to(dev),
                                 backend=backend, rule=rule, **filters, **extra)
    out = result.tokens.cpu()
    first = out[:, 0]
    # Only one token emitted: continue with plain sampling from the target.
    p1 = torch.stack([ref.target_probs(row, **_filter_args(filters)) for row in toy_targets(masked)[1]])
    fallback = torch.multinomial(p1[first], 1, generator=gen)[:, 0]
    second = torch.where(result.num_accepted.cpu() >= 1, out[:, 1], fallback)
    return first, second


def _filter_args(filters):
    return dict(temperature=filters.get("temperature", 1.0), top_k=filters.get("top_k", 0),
                top_p=filters.get("top_p", 1.0), min_p=filters.get("min_p", 0.0))


def toy_targets(masked=False):
    """The target's logits (l0 [V], l1 [V, V]), with toy_masks' tokens at -inf when masked."""
    l0, l1, _, _ = toy_models()
    if masked:
        m0, m1 = toy_masks()
        l0, l1 = l0.masked_fill(~m0, float("-inf")), l1.masked_fill(~m1, float("-inf"))
    return l0, l1


def pvalues(first, second, filters=None, masked=False):
    l0, l1 = toy_targets(masked)
    args = _filter_args(filters or {})
    p0 = ref.target_probs(l0, **args)
    p1 = torch.stack([ref.target_probs(l1[a], **args) for a in range(VOCAB)])
    first_counts = torch.bincount(first, minlength=VOCAB)
    pair_counts = torch.bincount(first * VOCAB + second, minlength=VOCAB * VOCAB)
    return chi_square_pvalue(first_counts, p0), chi_square_pvalue(pair_counts, p0[:, None] * p1)


def backend_params():
    params = [pytest.param("reference", "cpu", id="reference"), pytest.param("cpu", "cpu", id="cpu")]
    params.append(pytest.param("cuda", "cuda", id="cuda", marks=[pytest.mark.gpu,
                               pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]))
    return params


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("shape", ["chain", "tree_q", "tree_topk"])
@pytest.mark.parametrize("filtered", [False, True], ids=["plain", "filtered"])
def test_rejection_is_lossless(backend, device, shape, filtered):
    filters = FILTERED if filtered else None
    first, second = run_trials(shape, backend, TRIALS[backend], filters=filters, device=device)
    p_first, p_pair = pvalues(first, second, filters)
    assert p_first > ALPHA and p_pair > ALPHA, f"p-values: first token {p_first:.2e}, pair {p_pair:.2e}"


def _accept_without_q(u, qx, rx):
    return bool(u < rx)


def _resample_from_p(r, q_row, x):
    return r


BROKEN = {
    "accept_with_p_not_p_over_q": [("_accepts", _accept_without_q)],
    "resample_from_p_not_residual": [("_residual_after_rejection", _resample_from_p)],
}


# Point-mass proposals have q(x) = 1, where the two acceptance rules coincide.
BROKEN_CASES = [(b, s) for b in BROKEN for s in ("chain", "tree_q", "tree_topk")
                if not (b == "accept_with_p_not_p_over_q" and s == "tree_topk")]


@pytest.mark.parametrize("broken,shape", BROKEN_CASES)
def test_broken_rules_fail_the_same_test(monkeypatch, broken, shape):
    for name, fn in BROKEN[broken]:
        monkeypatch.setattr(ref, name, fn)
    first, second = run_trials(shape, "reference", TRIALS["reference"])
    p_first, p_pair = pvalues(first, second)
    assert min(p_first, p_pair) < ALPHA, f"broken rule passed: p-values {p_first:.2e}, {p_pair:.2e}"

"""adapters.vllm.rejection_sample against vLLM V1's documented semantics.

The oracle below is written from vLLM's rejection_sampler.py docstrings and
kernels (greedy: accept while draft == argmax, emit the argmax at the first
mismatch, the bonus when all are accepted; -1 padding). Random requests are
checked by their distribution (chi-square, ALPHA = 1e-3 per check with fixed
seeds, so the outcome is deterministic; a broken-rule control must fail) and by
forced outcomes (p = q accepts, p(x) = 0 rejects).
"""
from types import SimpleNamespace

import pytest
import torch

from conftest import backend_cases
from specdec_kernels.adapters import vllm
from test_verify_lossless import chi_square_pvalue

ALPHA = 1e-3


def meta(temperature=None, generators=None):
    return SimpleNamespace(all_greedy=temperature is None, temperature=temperature, generators=generators or {})


def greedy_oracle(draft, num, target, bonus, max_spec_len):
    out = torch.full((len(num), max_spec_len + 1), -1, dtype=torch.int32)
    start = 0
    for b, n in enumerate(num):
        am = target[start:start + n].argmax(-1)
        k = 0
        while k < n:
            out[b, k] = am[k]
            if draft[start + k] != am[k]:
                break
            k += 1
        if k == n:
            out[b, n] = bonus[b]
        start += n
    return out


def layout(num, vocab, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(num)
    target = torch.softmax(torch.randn(total, vocab, generator=g) * 2, -1)
    draft = torch.randint(vocab, (total,), generator=g)
    # Make some drafts the argmax so that acceptance runs happen.
    take = torch.rand(total, generator=g) < 0.7
    draft = torch.where(take, target.argmax(-1), draft)
    bonus = torch.randint(vocab, (len(num), 1), generator=g)
    cu = torch.tensor(num, dtype=torch.int64).cumsum(0).to(torch.int32)
    return draft.to(device), cu.to(device), target.to(device), bonus.to(device)


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("num", [[3, 0, 1, 5], [0], [1], [4, 4]])
def test_greedy_matches_vllm(device, backend, num):
    vocab, msl = 11, 5
    draft, cu, target, bonus = layout(num, vocab, device)
    out = vllm.rejection_sample(draft, num, msl, cu, None, target, bonus, meta(), backend=backend)
    assert out.dtype == torch.int32 and out.shape == (len(num), msl + 1)
    assert torch.equal(out.cpu(), greedy_oracle(draft.cpu(), num, target.cpu(), bonus.cpu().reshape(-1), msl))


@pytest.mark.parametrize("device,backend", backend_cases())
def test_mixed_batch_greedy_rows_exact_and_forced_random_outcomes(device, backend):
    vocab, num, msl = 8, [3, 3, 2], 4
    draft, cu, target, bonus = layout(num, vocab, device, seed=3)
    # Request 1 (random): q = p everywhere, so every draft is accepted and the bonus follows.
    # Request 2 (random): its first draft has p = 0, so it is rejected and a token other than it emitted.
    target = target.clone()
    q = torch.softmax(torch.randn(sum(num), vocab), -1).to(device)
    q[3:6] = target[3:6]
    target[6, draft[6]] = 0.0
    target[6] /= target[6].sum()
    temp = torch.tensor([0.0, 1.0, 1.0], device=device)
    out = vllm.rejection_sample(draft, num, msl, cu, q, target, bonus, meta(temp), backend=backend).cpu()
    ref = greedy_oracle(draft.cpu(), num, target.cpu(), bonus.cpu().reshape(-1), msl)
    assert torch.equal(out[0], ref[0])
    assert out[1, :3].tolist() == draft[3:6].cpu().tolist() and out[1, 3] == bonus[1, 0].cpu()
    assert out[1, 4] == -1
    assert out[2, 0] != draft[6].cpu() and target[6, out[2, 0]] > 0 and (out[2, 1:] == -1).all()


@pytest.mark.parametrize("device,backend", [c for c in backend_cases() if c.id != "cpu-triton"])
@pytest.mark.parametrize("with_q", [True, False])
def test_first_token_is_distributed_as_target(device, backend, with_q):
    """Each request: 2 drafts sampled from q (or a fixed n-gram guess); the first emitted
    token must follow target_probs[0] whatever the drafts."""
    vocab, trials = 6, 20000
    g = torch.Generator().manual_seed(11)
    p0 = torch.softmax(torch.randn(vocab, generator=g) * 1.5, 0)
    p1 = torch.softmax(torch.randn(vocab, generator=g) * 1.5, 0)
    q0 = torch.softmax(torch.randn(vocab, generator=g) * 1.5, 0)
    x0 = torch.multinomial(q0, trials, replacement=True, generator=g) if with_q else torch.full((trials,), 2)
    draft = torch.stack([x0, torch.zeros(trials, dtype=torch.int64)], 1).reshape(-1)
    target = torch.stack([p0, p1]).repeat(trials, 1)
    q = torch.stack([q0, q0]).repeat(trials, 1) if with_q else None
    num = [2] * trials
    cu = torch.arange(1, trials + 1, dtype=torch.int32) * 2
    bonus = torch.zeros(trials, 1, dtype=torch.int64)
    torch.manual_seed(5)
    out = vllm.rejection_sample(draft.to(device), num, 2, cu.to(device), None if q is None else q.to(device),
                                target.to(device), bonus.to(device), meta(torch.ones(trials, device=device)),
                                backend=backend).cpu()
    first = out[:, 0].long()
    assert chi_square_pvalue(torch.bincount(first, minlength=vocab), p0) > ALPHA
    # Control: taking the draft itself (no verification) is q0 (or a point mass), which the test rejects.
    assert chi_square_pvalue(torch.bincount(x0, minlength=vocab).double() + 0.0, p0) < ALPHA


@pytest.mark.parametrize("device,backend", backend_cases())
def test_seeded_requests_reproduce(device, backend):
    vocab, num, msl = 9, [2, 3], 3
    draft, cu, target, bonus = layout(num, vocab, device, seed=7)

    def run(seed):
        gens = {1: torch.Generator(device=device).manual_seed(seed)}
        return vllm.rejection_sample(draft, num, msl, cu, None, target, bonus,
                                     meta(torch.ones(2, device=device), gens), backend=backend)[1]

    a = torch.stack([run(s) for s in range(8)])
    b = torch.stack([run(s) for s in range(8)])
    assert torch.equal(a, b)


def test_bad_arguments_name_what_is_wrong():
    draft, cu, target, bonus = layout([2, 1], 5, "cpu")
    with pytest.raises(ValueError, match="num_draft_tokens sums to 4"):
        vllm.rejection_sample(draft, [2, 2], 3, cu, None, target, bonus, meta())
    with pytest.raises(ValueError, match="more than max_spec_len"):
        vllm.rejection_sample(draft, [2, 1], 1, cu, None, target, bonus, meta())
    with pytest.raises(ValueError, match="temperature"):
        vllm.rejection_sample(draft, [2, 1], 3, cu, None, target, bonus, meta(torch.ones(3)))
    with pytest.raises(ValueError, match="bonus_token_ids"):
        vllm.rejection_sample(draft, [2, 1], 3, cu, None, target, bonus[:1], meta())


@pytest.mark.parametrize("all_greedy", [True, False])
def test_probabilities_are_read_in_place(monkeypatch, all_greedy):
    """Item 5 of the adapters' contract: no [num_tokens, V] copy. The verify op
    gets vLLM's own target_probs and draft_probs storage, and every other
    tensor the adapter builds is O(num_tokens + B)."""
    from specdec_kernels import sampling

    num, vocab = [3, 0, 2], 64
    draft, cu, target, bonus = layout(num, vocab, "cpu")
    q = torch.softmax(torch.randn(sum(num), vocab), -1)
    seen = {}

    def spy(name, real):
        def wrapped(*args, **kwargs):
            seen[name] = (args, kwargs)
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(sampling, "verify_greedy", spy("greedy", sampling.verify_greedy))
    monkeypatch.setattr(sampling, "verify_rejection", spy("rejection", sampling.verify_rejection))
    allocated = []
    for name in ("zeros", "full", "empty", "rand", "ones"):
        real = getattr(torch, name)

        def tracked(*args, _real=real, **kwargs):
            t = _real(*args, **kwargs)
            allocated.append(t.numel())
            return t
        monkeypatch.setattr(torch, name, tracked)
    metadata = meta() if all_greedy else meta(torch.full((3,), 0.8))
    out = vllm.rejection_sample(draft, num, 3, cu, None if all_greedy else q, target, bonus, metadata)
    assert out.shape == (3, 4)
    args, kwargs = seen["greedy" if all_greedy else "rejection"]
    given = args[3] if all_greedy else kwargs["target_probs"]
    assert given.data_ptr() == target.data_ptr()
    if not all_greedy:
        assert args[4].data_ptr() == q.data_ptr()
    assert max(allocated) <= sum(num) + len(num), f"an allocation of {max(allocated)} elements"

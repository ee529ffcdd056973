"""adapters.flashinfer.chain_speculative_sampling against FlashInfer's documented
semantics: forced outcomes (q = p accepts everything, p(x) = 0 rejects x), the
accumulating counters and their metric, seeded determinism, and the first
token's distribution (chi-square, ALPHA = 1e-3 per check with fixed seeds; a
control that skips verification must fail)."""
import pytest
import torch

from conftest import backend_cases
from specdec_kernels.adapters import flashinfer as fi
from test_verify_lossless import chi_square_pvalue

ALPHA = 1e-3


def inputs(batch, n, vocab, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    dp = torch.softmax(torch.randn(batch, n, vocab, generator=g) * 1.5, -1)
    tp = torch.softmax(torch.randn(batch, n + 1, vocab, generator=g) * 1.5, -1)
    dt = torch.multinomial(dp.reshape(-1, vocab), 1, generator=g).reshape(batch, n)
    return dp.to(device), dt.to(device), tp.to(device)


@pytest.mark.parametrize("device,backend", backend_cases())
def test_forced_outcomes_and_counters(device, backend):
    batch, n, vocab = 3, 4, 7
    dp, dt, tp = inputs(batch, n, vocab, device)
    tp = tp.clone()
    tp[0, :n] = dp[0]                      # request 0: q = p, every draft accepted
    tp[1, 0, dt[1, 0]] = 0.0               # request 1: the first draft has p = 0
    tp[1, 0] /= tp[1, 0].sum()
    acc = torch.full((batch,), 5, dtype=torch.int32, device=device)
    emi = torch.full((batch,), 2, dtype=torch.int32, device=device)
    out, acc2, emi2 = fi.chain_speculative_sampling(dp, dt, tp, acc, emi, seed=1, backend=backend)
    assert acc2 is acc and emi2 is emi, "passed counters are accumulated in place and returned"
    out = out.cpu()
    assert out.dtype == torch.int32 and out.shape == (batch, n + 1)
    assert out[0, :n].tolist() == dt[0].cpu().tolist() and tp[0, n, out[0, n]] > 0
    assert emi[0] == 2 + n and acc[0] == 5 + n
    assert out[1, 0] != dt[1, 0].cpu() and tp[1, 0, out[1, 0]] > 0 and (out[1, 1:] == -1).all()
    assert emi[1] == 2 and acc[1] >= 5
    k = int(emi[2]) - 2
    assert (out[2, k + 1:] == -1).all() and (out[2, :k + 1] >= 0).all() and acc[2] - 5 >= k


@pytest.mark.parametrize("device,backend", backend_cases())
def test_seed_reproduces_and_no_drafts(device, backend):
    dp, dt, tp = inputs(4, 3, 9, device, seed=2)
    a = fi.chain_speculative_sampling(dp, dt, tp, seed=7, offset=11, backend=backend)
    b = fi.chain_speculative_sampling(dp, dt, tp, seed=7, offset=11, backend=backend)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    dp0, dt0, tp0 = inputs(2, 0, 5, device)
    out, acc, emi = fi.chain_speculative_sampling(dp0, dt0, tp0, seed=0, backend=backend)
    assert out.shape == (2, 1) and (out >= 0).all() and (acc == 0).all() and (emi == 0).all()


@pytest.mark.parametrize("device,backend", [c for c in backend_cases() if c.id != "cpu-triton"])
def test_first_token_is_distributed_as_target(device, backend):
    trials, n, vocab = 20000, 2, 6
    dp, dt, tp = inputs(1, n, vocab, "cpu", seed=4)
    dp, tp = dp.expand(trials, n, vocab).contiguous(), tp.expand(trials, n + 1, vocab).contiguous()
    g = torch.Generator().manual_seed(9)
    dt = torch.multinomial(dp.reshape(-1, vocab), 1, generator=g).reshape(trials, n)
    out, _, _ = fi.chain_speculative_sampling(dp.to(device), dt.to(device), tp.to(device), seed=3,
                                              backend=backend)
    first = out[:, 0].long().cpu()
    assert chi_square_pvalue(torch.bincount(first, minlength=vocab), tp[0, 0]) > ALPHA
    # Control: the unverified draft is distributed as q, which the test rejects.
    assert chi_square_pvalue(torch.bincount(dt[:, 0], minlength=vocab), tp[0, 0]) < ALPHA


def test_bad_arguments_name_what_is_wrong():
    dp, dt, tp = inputs(2, 3, 5, "cpu")
    with pytest.raises(ValueError, match="draft_probs"):
        fi.chain_speculative_sampling(dp[:, :2], dt, tp)
    with pytest.raises(ValueError, match="draft_token_ids"):
        fi.chain_speculative_sampling(dp, dt[:1], tp)
    with pytest.raises(ValueError, match="maybe_output_accepted_token_num"):
        fi.chain_speculative_sampling(dp, dt, tp, torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="offset needs seed"):
        fi.chain_speculative_sampling(dp, dt, tp, offset=3)

"""adapters.sglang.tree_speculative_sampling_target_only against sgl-kernel's
documented semantics: the linked-list tree layout, the in-place outputs
(predicts, accept_index, accept_token_num), forced outcomes, and the first
token's distribution (chi-square, ALPHA = 1e-3 per check with fixed seeds; a
control that skips verification must fail)."""
import pytest
import torch

from conftest import backend_cases
from specdec_kernels.adapters import sglang as sg
from test_verify_lossless import chi_square_pvalue

ALPHA = 1e-3
# sgl-kernel's own test trees (two requests of 6 nodes).
NEXT_TOKEN = [[1, 2, -1, 4, 5, -1], [4, 2, 3, -1, 5, -1]]
NEXT_SIBLING = [[-1, 3, -1, -1, -1, -1], [-1, -1, -1, -1, 1, -1]]


def test_parents_from_linked_lists():
    p = sg.parents_from_linked_lists(torch.tensor(NEXT_TOKEN), torch.tensor(NEXT_SIBLING))
    assert p.tolist() == [[-1, 0, 1, 0, 3, 4], [-1, 0, 1, 2, 0, 4]]
    # A root with five children (a sibling chain longer than one jump) and a grandchild.
    nt = torch.tensor([[1, -1, -1, 6, -1, -1, -1]])
    ns = torch.tensor([[-1, 2, 3, 4, 5, -1, -1]])
    assert sg.parents_from_linked_lists(nt, ns).tolist() == [[-1, 0, 0, 0, 0, 0, 3]]
    # 63 children of the root: the chain is as long as the tree.
    n = 64
    nt = torch.full((1, n), -1)
    nt[0, 0] = 1
    ns = torch.cat([torch.tensor([-1]), torch.arange(2, n), torch.tensor([-1])]).unsqueeze(0)
    assert sg.parents_from_linked_lists(nt, ns).tolist() == [[-1] + [0] * (n - 1)]


def call(device, backend, candidates, probs, uniforms=None, final=None, width=4):
    batch, n, _ = probs.shape
    predicts = torch.full((batch * n,), -7, dtype=torch.int32, device=device)
    accept_index = torch.full((batch, width), -1, dtype=torch.int32, device=device)
    accept_num = torch.full((batch,), -7, dtype=torch.int32, device=device)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(batch, n, generator=g) if uniforms is None else uniforms
    f = torch.rand(batch, generator=g) if final is None else final
    sg.tree_speculative_sampling_target_only(
        predicts, accept_index, accept_num, candidates.to(device),
        (torch.arange(batch * n).reshape(batch, n)).to(device), torch.tensor(NEXT_TOKEN).repeat(batch // 2, 1).to(device),
        torch.tensor(NEXT_SIBLING).repeat(batch // 2, 1).to(device), u.to(device), f.to(device), probs.to(device),
        torch.zeros_like(probs).to(device), backend=backend)
    return predicts.cpu(), accept_index.cpu(), accept_num.cpu()


@pytest.mark.parametrize("device,backend", backend_cases())
def test_forced_path(device, backend):
    vocab = 8
    cand = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]])
    probs = torch.full((2, 6, vocab), 1e-9)
    # Request 0: the target is sure of path 0 -> 3 -> 4 -> 5, then token 7.
    for node, nxt in ((0, 3), (3, 4), (4, 5), (5, 7)):
        probs[0, node, nxt] = 1.0
    # Request 1: the target wants token 6 after the root: no child matches.
    probs[1, 0, 6] = 1.0
    probs[1, 1:, 0] = 1.0
    probs /= probs.sum(-1, keepdim=True)
    predicts, idx, num = call(device, backend, cand, probs)
    assert num.tolist() == [3, 0]
    assert idx[0].tolist() == [0, 3, 4, 5] and idx[1].tolist() == [6, -1, -1, -1]
    assert [predicts[i].item() for i in (0, 3, 4, 5)] == [3, 4, 5, 7]
    assert predicts[6] == 6
    untouched = [i for i in range(12) if i not in (0, 3, 4, 5, 6)]
    assert (predicts[untouched] == -7).all(), "entries off the accepted path stay as the caller set them"


@pytest.mark.parametrize("device,backend", [c for c in backend_cases() if c.id != "cpu-triton"])
def test_first_token_is_distributed_as_target(device, backend):
    trials, vocab = 20000, 6
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(6, vocab, generator=g) * 1.5, -1)
    probs = p.expand(trials, 6, vocab).contiguous()
    cand = torch.randint(vocab, (trials, 6), generator=g)
    predicts, idx, _ = call(device, backend, cand, probs, uniforms=torch.rand(trials, 6, generator=g),
                            final=torch.rand(trials, generator=g))
    first = predicts[idx[:, 0].long()].long()
    assert chi_square_pvalue(torch.bincount(first, minlength=vocab), p[0]) > ALPHA
    # Control: taking the first child's token unverified is uniform over the vocabulary here.
    assert chi_square_pvalue(torch.bincount(cand[:, 1], minlength=vocab), p[0]) < ALPHA


def test_relaxed_thresholds_and_bad_shapes_raise():
    probs = torch.softmax(torch.randn(2, 6, 5), -1)
    cand = torch.zeros(2, 6, dtype=torch.int64)
    args = (torch.zeros(12, dtype=torch.int32), torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, dtype=torch.int32),
            cand, torch.arange(12).reshape(2, 6), torch.tensor(NEXT_TOKEN), torch.tensor(NEXT_SIBLING),
            torch.rand(2, 6), torch.rand(2), probs, torch.zeros_like(probs))
    with pytest.raises(NotImplementedError, match="lossy"):
        sg.tree_speculative_sampling_target_only(*args, threshold_single=0.9)
    bad = list(args)
    bad[0] = torch.zeros(11, dtype=torch.int32)
    with pytest.raises(ValueError, match="predicts"):
        sg.tree_speculative_sampling_target_only(*bad)

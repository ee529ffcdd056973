"""tree_attention on every backend against the reference: random ragged
batches of trees, chains and lookahead masks; batch invariance; mask
isolation; bad input."""
import pytest
import torch

import specdec_kernels as sk
from attention_scenarios import make_case
from conftest import backend_cases

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# ||out - ref|| / ||ref|| bounds (METHOD.md): float32 arithmetic far under 1e-3,
# half-precision outputs are rounded once to their dtype.
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def poison_allocator(case):
    """Leave NaNs where the op's outputs will likely be allocated (the CUDA
    caching allocator hands back a just-freed block of the same size), so an
    unwritten element shows up as NaN."""
    n, hq, d = case.q.shape
    for shape, dtype in (((n, hq, d), case.q.dtype), ((n, hq), torch.float32)):
        torch.full(shape, float("nan"), dtype=dtype, device=case.q.device)


def check_against_reference(case, backend, **kwargs):
    expected_out, expected_lse = sk.reference.tree_attention(*case.args(), sm_scale=case.q.shape[-1] ** -0.5)
    poison_allocator(case)
    out, lse = sk.tree_attention(*case.args(), return_lse=True, backend=backend, **kwargs)
    assert out.dtype == case.q.dtype and out.shape == case.q.shape
    assert lse.dtype == torch.float32 and lse.shape == case.q.shape[:2]
    assert not out.isnan().any() and not lse.isnan().any(), "unwritten or NaN output"
    ref = expected_out.float()
    err = ((out.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    assert err < REL_TOL[case.q.dtype], f"relative error {err:.2e}"
    assert torch.equal(torch.isinf(lse), torch.isinf(expected_lse)), "rows that see nothing differ"
    finite = torch.isfinite(expected_lse)
    assert torch.allclose(lse[finite], expected_lse[finite], rtol=1e-4, atol=1e-4)
    return out, lse


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["causal", "tree", "lookahead"])
@pytest.mark.parametrize("head_dim,hq,hkv,block_size", [(64, 4, 2, 5), (128, 2, 2, 16), (256, 8, 1, 3)])
def test_matches_reference(device, backend, dtype, kind, head_dim, hq, hkv, block_size):
    case = make_case(head_dim + block_size, kind=kind, batch=3, hq=hq, hkv=hkv, head_dim=head_dim,
                     dtype=dtype, block_size=block_size, device=device)
    check_against_reference(case, backend)


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("kind", ["causal", "tree"])
def test_edge_shapes(device, backend, kind):
    """T = 1 (a decode step), empty prefixes, trees over 32 and 64 nodes
    (several mask words), a sequence with no tree tokens in the batch."""
    for seed, sizes, max_prefix in ((1, [1, 1, 1], 20), (2, [5, 3], 0), (3, [70, 33], 9), (4, [4, 0, 6], 12)):
        case = make_case(seed, kind=kind, batch=len(sizes), hq=4, hkv=2, head_dim=64, dtype=torch.float32,
                         block_size=4, device=device, max_prefix=max_prefix, tree_sizes=sizes)
        check_against_reference(case, backend)


@pytest.mark.parametrize("device,backend", backend_cases())
def test_rows_that_see_nothing(device, backend):
    """Empty prefix and an empty mask row: out 0, lse -inf, on every backend."""
    case = make_case(5, kind="tree", batch=2, hq=2, hkv=1, head_dim=64, dtype=torch.float16, block_size=4,
                     device=device, max_prefix=0, tree_sizes=[3, 2])
    case.prefix_lens.zero_()
    case.tree_mask[1] = 0
    out, lse = check_against_reference(case, backend)
    assert torch.equal(out[1].float().cpu(), torch.zeros_like(out[1].float().cpu()))
    assert torch.isneginf(lse[1]).all()


def _triton_split(device):
    from specdec_kernels.triton import attention as triton_attention
    return triton_attention


@pytest.mark.parametrize("device,backend", [c for c in backend_cases() if c.values[1] == "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_split_kv_merge(device, backend, dtype):
    """Flash-decoding path: the KV range split across programs, merged by LSE."""
    from specdec_kernels.triton import attention as triton_attention

    case = make_case(9, kind="tree", batch=3, hq=4, hkv=2, head_dim=64, dtype=dtype, block_size=4, device=device,
                     max_prefix=60)
    ref_out, ref_lse = sk.reference.tree_attention(*case.args(), sm_scale=0.125)
    out, lse = triton_attention.tree_attention(*case.args(), sm_scale=0.125, split_len=16)
    err = ((out.float() - ref_out.float()).norm() / ref_out.float().norm()).item()
    assert err < REL_TOL[dtype]
    assert torch.allclose(lse, ref_lse, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device,backend", backend_cases())
def test_batch_invariance(device, backend):
    """Each sequence's rows are bitwise the same alone as inside the batch."""
    case = make_case(11, kind="tree", batch=4, hq=4, hkv=2, head_dim=128, dtype=torch.bfloat16, block_size=8,
                     device=device, max_prefix=50)
    out, lse = sk.tree_attention(*case.args(), return_lse=True, backend=backend)
    indptr = case.qo_indptr.tolist()
    for b in range(4):
        rows = slice(indptr[b], indptr[b + 1])
        alone_out, alone_lse = sk.tree_attention(
            case.q[rows], case.k_cache, case.v_cache, case.block_table[b:b + 1], case.prefix_lens[b:b + 1],
            torch.tensor([0, indptr[b + 1] - indptr[b]], dtype=torch.int32, device=device),
            case.tree_mask[rows], return_lse=True, backend=backend)
        assert torch.equal(alone_out, out[rows]), f"sequence {b}"
        assert torch.equal(alone_lse, lse[rows]), f"sequence {b}"


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("kind", ["tree", "lookahead", "causal"])
def test_invisible_nodes_do_not_leak(device, backend, kind):
    """Perturb the K/V of every tree node a row must not see (siblings,
    cousins, descendants, other guesses): that row's output must not change
    at all; perturbing a node it does see must change it."""
    case = make_case(13, kind=kind, batch=2, hq=2, hkv=1, head_dim=64, dtype=torch.float32, block_size=4,
                     device=device, max_prefix=6, tree_sizes=[9, 7])
    from specdec_kernels.reference.attention import unpack_mask

    out = sk.tree_attention(*case.args(), backend=backend)
    prefix = case.prefix_lens.tolist()
    indptr = case.qo_indptr.tolist()
    bs = case.k_cache.shape[1]
    checked_hidden = checked_visible = 0
    for b in range(2):
        t = indptr[b + 1] - indptr[b]
        rows = indptr[b] + torch.arange(t)
        visible = (unpack_mask(case.tree_mask[rows].cpu(), t) if case.tree_mask is not None
                   else torch.ones(t, t, dtype=torch.bool).tril())
        for j in range(t):
            pos = prefix[b] + j
            slot = (int(case.block_table[b, pos // bs]), pos % bs)
            saved_k, saved_v = case.k_cache[slot].clone(), case.v_cache[slot].clone()
            case.k_cache[slot] = saved_k * 3 + 1
            case.v_cache[slot] = saved_v * -2 + 5
            perturbed = sk.tree_attention(*case.args(), backend=backend)
            case.k_cache[slot], case.v_cache[slot] = saved_k, saved_v
            for i in range(t):
                row = indptr[b] + i
                if visible[i, j]:
                    assert not torch.equal(perturbed[row], out[row]), f"node {j} visible to {i} had no effect"
                    checked_visible += 1
                else:
                    assert torch.equal(perturbed[row], out[row]), f"node {j} leaked into row {i}"
                    checked_hidden += 1
    assert checked_hidden > 5 and checked_visible > 5


def _bad_case(device="cpu"):
    return make_case(17, kind="tree", batch=2, hq=4, hkv=2, head_dim=64, dtype=torch.float16, block_size=4,
                     device=device, max_prefix=8, tree_sizes=[40, 3])


def _i32(values, device="cpu"):
    return torch.tensor(values, dtype=torch.int32, device=device)


BAD = {
    "mask too narrow": (lambda c: setattr(c, "tree_mask", c.tree_mask[:, :1]), "tree_mask"),
    "mask wrong rows": (lambda c: setattr(c, "tree_mask", c.tree_mask[:5]), "tree_mask"),
    "mask int64": (lambda c: setattr(c, "tree_mask", c.tree_mask.long()), "tree_mask"),
    "qo_indptr not monotone": (lambda c: setattr(c, "qo_indptr", _i32([0, 44, 43])), "qo_indptr"),
    "qo_indptr end != N": (lambda c: setattr(c, "qo_indptr", _i32([0, 40, 42])), "qo_indptr"),
    "prefix beyond block table": (lambda c: setattr(c, "prefix_lens", c.prefix_lens + 1000), "block_table"),
    "negative prefix": (lambda c: setattr(c, "prefix_lens", _i32([-1, 0])), "prefix_lens"),
    "block id past pool": (lambda c: c.block_table.fill_(10_000), "block_table"),
    "heads not divisible": (lambda c: setattr(c, "q", c.q[:, :3]), "Hq=3"),
    "q dtype": (lambda c: setattr(c, "q", c.q.float()), "q"),
    "cache dtype": (lambda c: (setattr(c, "k_cache", c.k_cache.float()), setattr(c, "v_cache", c.v_cache.float())),
                    "q must have the cache dtype"),
    "head dim 32": (lambda c: (setattr(c, "q", c.q[..., :32]), setattr(c, "k_cache", c.k_cache[..., :32]),
                               setattr(c, "v_cache", c.v_cache[..., :32])), "head dim"),
    "q wrong head dim": (lambda c: setattr(c, "q", torch.zeros(43, 4, 128, dtype=torch.float16)), "q must be"),
    "v_cache shape": (lambda c: setattr(c, "v_cache", c.v_cache[:-1]), "v_cache"),
    "device mismatch": (lambda c: setattr(c, "qo_indptr", c.qo_indptr.to("meta")), "qo_indptr is on meta"),
    "tree too long": (lambda c: (setattr(c, "q", torch.zeros(300, 4, 64, dtype=torch.float16)),
                                setattr(c, "tree_mask", torch.zeros(300, 10, dtype=torch.int32)),
                                setattr(c, "qo_indptr", _i32([0, 297, 300]))), "at most 256"),
}


@pytest.mark.parametrize("device,backend", [c for c in backend_cases() if c.values[0] == "cpu"])
@pytest.mark.parametrize("case_name", list(BAD))
def test_bad_input(device, backend, case_name):
    case = _bad_case(device)
    breaker, message = BAD[case_name]
    breaker(case)
    with pytest.raises((ValueError, TypeError), match=message):
        sk.tree_attention(*case.args(), backend=backend)

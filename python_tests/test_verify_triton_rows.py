"""The Triton verify kernel's multi-program row pre-pass (specdec_kernels/
triton/verify_rows.py) and its radix-select top-k / top-p thresholds.

Rows are cut into many chunks (BLOCK_V lowered to 4 or 8 elements) so that
the interpreter runs the 2-D grid, the chunk folds and every radix pass on
small vocabularies. Checked here:
  - each chunk partial of the pre-pass against torch (every element of the
    buffers, so an unwritten one shows);
  - the radix selects give the threshold, total and count of the 32-step
    bisection they replaced (a copy of it is kept below) bit for bit, on rows
    with ties at the top-k boundary and top-p boundaries, and the kept set
    is the reference's;
  - both paths (SPECDEC_TRITON_VERIFY_ROWS=multi / single) against the
    reference with test_verify's rules, and against each other exactly;
  - test_verify's edge cases, invalid rows (NaN, +inf, all -inf) and
    malformed inputs on the forced multi-program path, and a malformed row
    map whose requests overlap (the walk must not use sums taken with
    another request's temperature).
"""
import pytest
import torch
import triton
import triton.language as tl

import specdec_kernels as sk
import test_verify
from conftest import backends
from specdec_kernels.reference import sampling as ref
from specdec_kernels.triton import sampling as tsampling
from specdec_kernels.triton import verify_rows
from test_verify import DTYPES, MAX_BOUNDARY_MISMATCHES, assert_same, check_path_consistency, mismatched_requests
from verify_scenarios import make_case

pytestmark = pytest.mark.skipif(not backends.triton_interpreted(),
                                reason="interpreted Triton on CPU tensors (the GPU runs test_verify)")


@pytest.fixture
def small_blocks(monkeypatch):
    """4-element loads: a 37-token row is 10 blocks (and up to 10 chunks)."""
    monkeypatch.setattr(tsampling, "BLOCK_V_MAX", 4)


def force(monkeypatch, path):
    monkeypatch.setenv("SPECDEC_TRITON_VERIFY_ROWS", path)


# ----------------------------------------------------------------------------- the pre-pass buffers

def poisoned_empty(shape, dtype, device):
    return torch.full(shape, float("nan") if dtype.is_floating_point else -12345, dtype=dtype, device=device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("probs", [False, True], ids=["logits", "probs"])
def test_row_stats_partials(monkeypatch, dtype, probs):
    monkeypatch.setattr(verify_rows, "_empty", poisoned_empty)
    gen = torch.Generator().manual_seed(1)
    rows, vocab, block_v = 7, 45, 4
    x = torch.randint(-3, 3, (rows, vocab), generator=gen).float()  # ties within and across chunks
    if probs:
        x = torch.softmax(x, 1)
        x[2, 5] = -0.5  # a negative probability: bad
    x[3, 17] = float("nan")
    x[4] = float("-inf")
    x[5, :30] = float("-inf")
    x = x.to(dtype)
    indptr = torch.tensor([0, 2, 2, 5, 7], dtype=torch.int32)  # request 1 empty
    temperature = torch.tensor([0.7, 1.0, 1.3, 0.0])  # request 3 greedy: no sums
    stats = verify_rows.RowStats(x, indptr, temperature, None, None, 2, probs, False, block_v)
    chunks, chunk = stats.chunks, stats.chunk
    assert chunks > 1 and chunk % block_v == 0 and (chunks - 1) * chunk < vocab <= chunks * chunk
    xf = x.float()
    for r in range(rows):
        owner = 0 if r < 2 else 2 if r < 5 else 3
        t = float(temperature[owner])
        row_clean = torch.where(torch.isnan(xf[r]), float("-inf"), xf[r])
        valid = ref.row_is_valid(torch.log(xf[r]) if probs else xf[r])
        m = torch.tensor(float(row_clean.max()))
        if probs:
            m = torch.log(m)
        m = m / torch.tensor(t, dtype=torch.float32) if t > 0 else m
        for c in range(chunks):
            part = row_clean[c * chunk:(c + 1) * chunk]
            raw = xf[r, c * chunk:(c + 1) * chunk]
            assert float(stats.part_max[r, c]) == float(part.max()), (r, c)
            assert int(stats.part_idx[r, c]) == c * chunk + int((part == part.max()).nonzero()[0, 0]), (r, c)
            bad = torch.isnan(raw) | ((raw < 0) if probs else torch.zeros_like(raw, dtype=torch.bool))
            assert int(stats.part_bad[r, c]) == int(bad.sum()), (r, c)
            if valid and t > 0:
                z = (torch.log(raw) if probs else raw) / torch.tensor(t, dtype=torch.float32)
                e = torch.exp(z - m)
                assert float(stats.part_sum[r, c]) == pytest.approx(float(e.double().sum()), rel=1e-6), (r, c)
                assert int(stats.part_cnt[r, c]) == int((e > 0).sum()), (r, c)
            else:  # nothing to sample from this row: zeros, and owner -1 keeps the walk off them
                assert float(stats.part_sum[r, c]) == 0.0 and int(stats.part_cnt[r, c]) == 0, (r, c)
                assert float(stats.part_ent[r, c]) == 0.0, (r, c)
        assert int(stats.owner[r]) == (owner if valid and t > 0 else -1), r
        if valid and t > 0:  # phase 2: p log(p + 1e-5) per chunk, p over the row's total
            total = float(stats.part_sum[r].sum())
            z = (torch.log(xf[r]) if probs else xf[r]) / torch.tensor(t, dtype=torch.float32)
            p = torch.exp(z - m) / torch.tensor(total, dtype=torch.float32)
            h = (p * torch.log(p + 1e-5)).double()
            for c in range(chunks):
                assert float(stats.part_ent[r, c]) == pytest.approx(float(h[c * chunk:(c + 1) * chunk].sum()),
                                                                    rel=1e-5, abs=1e-9)


def test_filtered_requests_get_no_sums(monkeypatch):
    """Rejection: a request with top-k or top-p on sums only its survivors in
    the walk, so the pre-pass leaves its rows alone (owner -1, zeros)."""
    monkeypatch.setattr(verify_rows, "_empty", poisoned_empty)
    x = torch.randn(8, 21, generator=torch.Generator().manual_seed(2))
    indptr = torch.tensor([0, 2, 4, 6, 8], dtype=torch.int32)
    temperature = torch.ones(4)
    top_k = torch.tensor([0, 3, 0, 21], dtype=torch.int32)  # 21 = V: off
    top_p = torch.tensor([1.0, 1.0, 0.9, 1.0])
    stats = verify_rows.RowStats(x, indptr, temperature, top_k, top_p, 1, False, False, 4)
    assert stats.owner.tolist() == [0, 0, -1, -1, -1, -1, 3, 3]
    assert (stats.part_sum[2:6] == 0).all() and (stats.part_cnt[2:6] == 0).all()
    assert (stats.part_cnt[:2].sum(1) == 21).all() and (stats.part_cnt[6:].sum(1) == 21).all()


def test_chunking_fills_the_gpu():
    cpu = torch.device("cpu")
    # One row of a 128K vocabulary: 2-4 programs per SM of a 132-SM GPU, 256-element loads.
    chunks, chunk, block = verify_rows.chunking(1, 128_000, 1024, cpu)
    assert 2 * 132 <= chunks <= 4 * 132 and block == 256 and chunk % block == 0
    # Eight rows: 1024-element loads, two per chunk.
    chunks, chunk, block = verify_rows.chunking(8, 128_000, 1024, cpu)
    assert 2 * 132 <= 8 * chunks <= 4 * 132 and (chunk, block) == (2048, 1024)
    # Many rows: one chunk each (at least one per row).
    assert verify_rows.chunking(5000, 128_000, 1024, cpu) == (1, 125 * 1024, 1024)
    # Never more chunks than blocks.
    assert verify_rows.chunking(1, 3000, 1024, cpu) == (12, 256, 256)


def test_row_pass_rule(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("SPECDEC_TRITON_VERIFY_ROWS", raising=False)
    # 132 SMs (no GPU here): the pre-pass may read 264 rows in all.
    assert verify_rows.use_row_pass(8, 8 * 9, 1, cpu)  # rejection, 8 chains of 8 drafts: 144 row reads
    assert verify_rows.use_row_pass(14, 14 * 9, 1, cpu)
    assert not verify_rows.use_row_pass(15, 15 * 9, 1, cpu)
    assert verify_rows.use_row_pass(2, 2 * 64, 1, cpu)  # the 64-node tree at B = 2 ...
    assert not verify_rows.use_row_pass(8, 8 * 64, 1, cpu)  # ... not at B = 8 (the walk reads ~5 of 64)
    assert not verify_rows.use_row_pass(1, 100, 2, cpu)  # typical reads each row 3 times
    assert verify_rows.use_row_pass(256, 1280, 0, cpu)  # greedy chains: argmax of every row anyway
    assert not verify_rows.use_row_pass(256, 256 * 64, 0, cpu)  # greedy over big trees: most rows unvisited
    assert not verify_rows.use_row_pass(1, 0, 0, cpu)  # no rows (a row map with none)
    force(monkeypatch, "single")
    assert not verify_rows.use_row_pass(1, 4, 1, cpu)
    force(monkeypatch, "multi")
    assert verify_rows.use_row_pass(1000, 10**5, 1, cpu)
    force(monkeypatch, "sometimes")
    with pytest.raises(ValueError, match="SPECDEC_TRITON_VERIFY_ROWS"):
        verify_rows.use_row_pass(1, 4, 1, cpu)


# ----------------------------------------------------------------------------- radix select vs bisection

@triton.jit
def _bisect_count_at_least(row_ptr, V, temperature, key, BLOCK_V: tl.constexpr):
    n = tl.full([], 0, tl.int32)
    for s in range(0, V, BLOCK_V):
        offs = s + tl.arange(0, BLOCK_V)
        z = tsampling._z(row_ptr, offs, V, temperature, False, False)
        n += tl.sum(((tsampling._key(z) >= key) & (offs < V)).to(tl.int32), 0)
    return n


@triton.jit
def _bisect_mass_above(row_ptr, V, temperature, m, key, BLOCK_V: tl.constexpr):
    mass = tl.full([], 0.0, tl.float64)
    for s in range(0, V, BLOCK_V):
        mass += tl.sum(tsampling._e(row_ptr, s + tl.arange(0, BLOCK_V), V, temperature, m, key + 1, False, False)
                       .to(tl.float64), 0)
    return mass


@triton.jit
def _bisect_stats(row_ptr, V, temperature, m, top_k, top_p, BLOCK_V: tl.constexpr):
    """The kernel's top-k / top-p thresholds before the radix selects (32-step bisections), verbatim."""
    thr = tl.full([], 0, tl.int64)
    top = tsampling._key(m)
    if (top_k > 0) & (top_k < V):
        lo = tl.full([], 0, tl.int64)
        hi = top
        while lo < hi:
            mid = lo + (hi - lo + 1) // 2
            if _bisect_count_at_least(row_ptr, V, temperature, mid, BLOCK_V) >= top_k:
                lo = mid
            else:
                hi = mid - 1
        thr = lo
    total, count = tsampling._total(row_ptr, V, temperature, m, thr, False, False, BLOCK_V)
    if top_p < 1.0:
        limit = top_p * total.to(tl.float32)
        lo = thr
        hi = top
        while lo < hi:
            mid = lo + (hi - lo) // 2
            if _bisect_mass_above(row_ptr, V, temperature, m, mid, BLOCK_V).to(tl.float32) < limit:
                hi = mid
            else:
                lo = mid + 1
        if lo > thr:
            thr = lo
            total, count = tsampling._total(row_ptr, V, temperature, m, thr, False, False, BLOCK_V)
    return thr, total, count


@triton.jit
def _thresholds_kernel(x_ptr, stride, temp_ptr, k_ptr, p_ptr, out_thr, out_total, out_count, V,
                       BISECT: tl.constexpr, BLOCK_V: tl.constexpr):
    i = tl.program_id(0)
    row_ptr = x_ptr + i.to(tl.int64) * stride
    temperature = tl.load(temp_ptr + i)
    _, row_max, _ = tsampling._scan(row_ptr, V, False, False, BLOCK_V)
    m = tl.math.div_rn(row_max, temperature)
    if BISECT:
        thr, total, count = _bisect_stats(row_ptr, V, temperature, m, tl.load(k_ptr + i), tl.load(p_ptr + i), BLOCK_V)
    else:
        thr, total, count = tsampling._target_stats(row_ptr, V, temperature, m, tl.load(k_ptr + i),
                                                    tl.load(p_ptr + i), 0.0, tl.full([], 0.0, tl.float64),
                                                    tl.full([], 0, tl.int32), 0, False, False, BLOCK_V, BLOCK_V)
    tl.store(out_thr + i, thr)
    tl.store(out_total + i, total)
    tl.store(out_count + i, count)


def thresholds(x, temperature, top_k, top_p, bisect):
    n, vocab = x.shape
    thr = torch.full((n,), -7, dtype=torch.int64)  # poisoned: every element is written
    total = torch.full((n,), float("nan"), dtype=torch.float64)
    count = torch.full((n,), -7, dtype=torch.int32)
    _thresholds_kernel[(n,)](x, x.stride(0), temperature, top_k, top_p, thr, total, count, vocab, BISECT=bisect,
                             BLOCK_V=8)
    return thr, total, count


def float_key(z: torch.Tensor) -> torch.Tensor:
    """sampling._key on the host."""
    bits = (z + 0.0).view(torch.int32).long()
    return torch.where(bits >= 0, bits + 2**31, -1 - bits)


def threshold_rows():
    """Rows with ties at the top-k boundary (a few levels, some repeated),
    -inf tails, negative and positive values, and top-p boundaries that fall
    inside and at the edges of runs of equal logits."""
    gen = torch.Generator().manual_seed(7)
    vocab = 29
    rows, temps, ks, ps = [], [], [], []
    for i in range(24):
        kind = i % 4
        if kind == 0:
            row = torch.randint(0, 4, (vocab,), generator=gen).float()  # heavy ties
        elif kind == 1:
            row = torch.randn(vocab, generator=gen) * 3
        elif kind == 2:
            row = torch.randint(-2, 2, (vocab,), generator=gen).float() * 0.5
            row[torch.rand(vocab, generator=gen) < 0.3] = float("-inf")
            row[0] = 1.0
        else:
            row = torch.zeros(vocab)  # all equal: top-k keeps everything, top-p keeps the whole tie
            row[:3] = 2.0
        rows.append(row)
        temps.append([1.0, 0.6, 1.7][i % 3])
        ks.append([0, 1, 3, 5, 9, 28, 29, 40][i % 8])
        ps.append([1.0, 0.9, 0.5, 0.2, 0.999, 0.05][i % 6])
    return (torch.stack(rows), torch.tensor(temps), torch.tensor(ks, dtype=torch.int32), torch.tensor(ps))


def test_radix_select_is_the_bisection():
    x, temps, ks, ps = threshold_rows()
    got = thresholds(x, temps, ks, ps, bisect=False)
    want = thresholds(x, temps, ks, ps, bisect=True)
    for name, a, e in zip(("thr", "total", "count"), got, want):
        assert torch.equal(a, e), f"{name}: {a}\nbisection: {e}"
    # And the kept set (key >= thr, exp(z - m) > 0) is the reference's.
    for i in range(x.shape[0]):
        z = x[i] / temps[i]
        keep = (float_key(z) >= int(got[0][i])) & (torch.exp(z - z.max()) > 0)
        p = ref.target_probs(x[i], float(temps[i]), int(ks[i]), float(ps[i]))
        assert torch.equal(keep, p > 0), i


# ----------------------------------------------------------------------------- whole ops, both paths

SHAPES = [([5, 1, 9, 0, 4], "chain", 37), ([12, 7, 1, 3], "tree", 21)]
RULES = {  # name: (op, kwargs given a case)
    "greedy": (sk.verify_greedy, lambda c: {}),
    "rejection_filtered": (sk.verify_rejection,
                           lambda c: dict(temperature=0.8, top_k=5, top_p=0.9, uniforms=c.uniforms)),
    "rejection_top_p": (sk.verify_rejection, lambda c: dict(temperature=1.2, top_p=0.6, uniforms=c.uniforms)),
    "rejection_q": (sk.verify_rejection,
                    lambda c: dict(draft_probs=c.draft_probs, temperature=0.9, top_k=4, uniforms=c.uniforms)),
    "typical": (sk.verify_typical, lambda c: dict(temperature=0.7, uniforms=c.uniforms)),
}


def both_paths(monkeypatch, fn):
    out = {}
    for path in ("multi", "single"):
        force(monkeypatch, path)
        out[path] = fn()
    return out["multi"], out["single"]


@pytest.mark.parametrize("rule,dtype", [(r, d) for r in RULES for d in DTYPES
                                        if d != torch.float16 or r in ("greedy", "rejection_filtered")],
                         ids=str)
def test_paths_match_reference_and_each_other(monkeypatch, small_blocks, dtype, rule):
    op, kwargs_of = RULES[rule]
    compared = mismatched = 0
    for seed, (sizes, kind, vocab) in enumerate(SHAPES):
        case = make_case(500 + seed, sizes, vocab=vocab, kind=kind, dtype=dtype, with_q=rule == "rejection_q",
                         ties=seed == 1, follow=0.8, row_stride_pad=3 * seed)
        kwargs = kwargs_of(case)
        expected = op(*case.args(), backend="reference", **kwargs)
        multi, single = both_paths(monkeypatch, lambda: test_verify.run(op, case, "triton", **kwargs))
        assert_same(multi, single, f"{rule} case {seed}, multi vs single: ")
        check_path_consistency(multi, case)
        if rule == "greedy":
            assert_same(multi, expected, f"case {seed}: ")
        compared += case.batch
        mismatched += mismatched_requests(multi, expected)
    assert mismatched <= MAX_BOUNDARY_MISMATCHES * compared, f"{mismatched} of {compared} requests differ"


@pytest.mark.parametrize("rule", ["greedy", "rejection_filtered", "typical"])
def test_paths_with_row_map_and_probabilities(monkeypatch, small_blocks, rule):
    op, kwargs_of = RULES[rule]
    case = make_case(41, [6, 3, 1, 7], vocab=26, kind="tree", follow=0.8)
    probs = torch.softmax(case.target_logits, 1) * 3.0
    probs[probs < 0.01] = 0.0
    probs[torch.arange(probs.shape[0]), probs.argmax(1)] += 0.01
    keep = [0, 1, 2, 6, 7, 9, 10, 11, 12]  # request 0: 3 of 6 rows, 1: all 3, 2: none, 3: 3 of 7
    indptr = torch.tensor([0, 3, 6, 6, 9], dtype=torch.int32)
    bonus = torch.tensor([4, 5, 6, 7])
    kwargs = kwargs_of(case)
    for target in (dict(target_logits=case.target_logits[keep]), dict(target_probs=probs[keep])):
        call = lambda backend: op(*case.args()[:3], target_indptr=indptr, bonus_tokens=bonus,  # noqa: E731
                                  backend=backend, **target, **kwargs)
        expected = call("reference")
        multi, single = both_paths(monkeypatch, lambda: call("triton"))
        assert_same(multi, single, f"{rule} {list(target)}, multi vs single: ")
        assert mismatched_requests(multi, expected) == 0, f"{multi}\n{expected}"


def test_overlapping_row_map_uses_its_own_temperature(monkeypatch, small_blocks):
    """validate=False with a decreasing target_indptr: requests 0 and 2 both
    read rows 1 and 2, with different temperatures. The pre-pass sums a row
    for one request only (owner); the other must take its own pass, so both
    paths agree."""
    case = make_case(9, [3, 3, 3], vocab=19, kind="chain", follow=0.9)
    target = case.target_logits[:5]
    indptr = torch.tensor([0, 3, 1, 4], dtype=torch.int32)
    bonus = torch.tensor([1, 2, 3])
    for op, kwargs in ((sk.verify_rejection, dict(temperature=torch.tensor([0.3, 1.0, 3.0]), top_p=0.8)),
                       (sk.verify_typical, dict(temperature=torch.tensor([0.3, 1.0, 3.0])))):
        call = lambda: op(*case.args()[:3], target, target_indptr=indptr, bonus_tokens=bonus,  # noqa: E731
                          uniforms=case.uniforms, max_depth=2, validate=False, backend="triton", **kwargs)
        multi, single = both_paths(monkeypatch, call)
        assert_same(multi, single, f"{op.__name__}: ")


# ----------------------------------------------------------------------------- test_verify's cases, forced multi

def test_edge_cases_multi(monkeypatch, small_blocks):
    force(monkeypatch, "multi")
    test_verify.test_edge_cases("cpu", "triton")


@pytest.mark.parametrize("bad", ["nan", "posinf", "all_neginf"])
def test_invalid_rows_multi(monkeypatch, small_blocks, bad):
    force(monkeypatch, "multi")
    test_verify.test_invalid_logits_are_flagged_never_sampled("cpu", "triton", bad)


def test_filters_sample_like_a_plain_sampler_multi(monkeypatch, small_blocks):
    force(monkeypatch, "multi")
    test_verify.test_filters_sample_like_a_plain_sampler("cpu", "triton", "all")


def test_malformed_values_and_mixed_greedy_multi(monkeypatch, small_blocks):
    force(monkeypatch, "multi")
    test_verify.test_compiled_op_survives_malformed_values("cpu", "triton")
    test_verify.test_zero_temperature_requests_are_greedy("cpu", "triton")

"""append_kv and compact_kv on every backend against the reference: exact,
on random ragged batches, with everything outside the written rows checked
unchanged."""
import pytest
import torch

import specdec_kernels as sk
from conftest import assert_bitwise_equal, backend_cases, bits
from kv_scenarios import make_scenario, random_paths, random_values

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim,num_heads,block_size", [(64, 1, 16), (128, 2, 4), (256, 8, 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_append_kv_matches_reference(device, backend, dtype, head_dim, num_heads, block_size, seed):
    s = make_scenario(seed, batch=3, num_heads=num_heads, head_dim=head_dim, dtype=dtype,
                      block_size=block_size, device=device)
    k_cache, v_cache = s.k_cache[0], s.v_cache[0]
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    sk.reference.append_kv(s.k, s.v, k_expected, v_expected, s.block_table, s.prefix_lens, s.qo_indptr)
    assert not torch.equal(k_expected, k_cache) or s.k.numel() == 0  # the reference did write
    sk.append_kv(s.k, s.v, k_cache, v_cache, s.block_table, s.prefix_lens, s.qo_indptr, backend=backend)
    assert_bitwise_equal(k_cache, k_expected, "k_cache")
    assert_bitwise_equal(v_cache, v_expected, "v_cache")


def test_reference_append_kv_places_tokens_by_hand():
    """The reference itself, on a case small enough to write out."""
    k_cache = torch.zeros(3, 2, 1, 1)
    v_cache = torch.zeros(3, 2, 1, 1)
    block_table = torch.tensor([[2, 0], [1, -1]], dtype=torch.int32)
    prefix = torch.tensor([1, 0], dtype=torch.int32)
    indptr = torch.tensor([0, 2, 3], dtype=torch.int32)
    k = torch.tensor([10.0, 11.0, 20.0]).view(3, 1, 1)
    sk.reference.append_kv(k, -k, k_cache, v_cache, block_table, prefix, indptr)
    # seq 0: positions 1, 2 -> block 2 slot 1, block 0 slot 0; seq 1: position 0 -> block 1 slot 0
    assert k_cache.flatten().tolist() == [11.0, 0.0, 20.0, 0.0, 0.0, 10.0]
    assert v_cache.flatten().tolist() == [-11.0, 0.0, -20.0, 0.0, 0.0, -10.0]


@pytest.mark.parametrize("device,backend", backend_cases())
def test_append_kv_strided_inputs_and_caches(device, backend):
    """k/v as slices of a fused QKV output, K/V caches as views of one
    [num_blocks, 2, block_size, H, D] buffer (FlashInfer's layout)."""
    s = make_scenario(3, batch=2, num_heads=2, head_dim=64, dtype=torch.float16, block_size=4,
                      device=device, min_new=1)
    gen = torch.Generator().manual_seed(3)
    n = s.k.shape[0]
    qkv = random_values((n, 3, 2, 64), torch.float16, device, gen)
    k, v = qkv[:, 1], qkv[:, 2]
    kv = random_values((s.k_cache.shape[1], 2, 4, 2, 64), torch.float16, device, gen)
    k_cache, v_cache = kv[:, 0], kv[:, 1]
    expected = kv.clone()
    sk.reference.append_kv(k, v, expected[:, 0], expected[:, 1], s.block_table, s.prefix_lens, s.qo_indptr)
    sk.append_kv(k, v, k_cache, v_cache, s.block_table, s.prefix_lens, s.qo_indptr, backend=backend)
    assert_bitwise_equal(kv, expected, "interleaved kv cache")


def _compact_expected(s, nodes, counts, layers):
    k_exp, v_exp = s.k_cache.clone(), s.v_cache.clone()
    sk.reference.compact_kv(list(k_exp[:layers]), list(v_exp[:layers]), s.block_table, s.prefix_lens,
                            nodes, counts)
    return k_exp, v_exp


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim,num_heads,block_size", [(64, 4, 16), (128, 1, 3), (256, 2, 2)])
@pytest.mark.parametrize("layout", ["stacked", "list"])
def test_compact_kv_matches_reference(device, backend, dtype, head_dim, num_heads, block_size, layout):
    seed = head_dim + block_size
    s = make_scenario(seed, batch=3, num_heads=num_heads, head_dim=head_dim, dtype=dtype,
                      block_size=block_size, device=device, layers=3, min_new=1, max_new=12)
    nodes, counts = random_paths(seed, s.new_lens)
    nodes, counts = nodes.to(device), counts.to(device)
    k_exp, v_exp = _compact_expected(s, nodes, counts, layers=3)
    k_arg = s.k_cache if layout == "stacked" else list(s.k_cache.unbind(0))
    v_arg = s.v_cache if layout == "stacked" else list(s.v_cache.unbind(0))
    sk.compact_kv(k_arg, v_arg, s.block_table, s.prefix_lens, nodes, counts, backend=backend)
    assert_bitwise_equal(s.k_cache, k_exp, "k caches")
    assert_bitwise_equal(s.v_cache, v_exp, "v caches")


def _rows(cache, block_table, b, positions):
    bs = cache.shape[-3]
    return torch.stack([cache[..., int(block_table[b, p // bs]), p % bs, :, :] for p in positions], dim=-3)


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("path", [[0, 2, 3], [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [0, 1, 3, 4, 7]],
                         ids=["0-2-3", "shift-by-one-13", "mixed"])
def test_compact_kv_overlapping_moves_are_race_free(device, backend, path):
    """Each destination is another row's source. The result must equal
    reading every source first, whatever the kernel's thread order: nodes
    [0, 2, 3] must give rows (old 0, old 2, old 3), not (old 0, old 2, old 2)."""
    tree = max(path) + 2
    s = make_scenario(7, batch=2, num_heads=8, head_dim=128, dtype=torch.float16, block_size=4,
                      device=device, layers=2, min_new=tree, max_new=tree)
    nodes = torch.full((2, len(path)), -1, dtype=torch.int32)
    nodes[0] = torch.tensor(path)
    nodes[1, :2] = torch.tensor([0, 1])  # second sequence: chain accepted, nothing moves
    counts = torch.tensor([len(path) - 1, 1], dtype=torch.int32)
    before_k = s.k_cache.clone()
    before_v = s.v_cache.clone()
    prefix = [int(p) for p in s.prefix_lens]
    sk.compact_kv(s.k_cache, s.v_cache, s.block_table, s.prefix_lens, nodes.to(device), counts.to(device),
                  backend=backend)
    for cache, before in ((s.k_cache, before_k), (s.v_cache, before_v)):
        moved = _rows(cache, s.block_table, 0, [prefix[0] + j for j in range(len(path))])
        wanted = _rows(before, s.block_table, 0, [prefix[0] + n for n in path])
        assert_bitwise_equal(moved, wanted, "accepted rows")
        # Everything else, including the tree rows past the path, is untouched.
        touched = torch.zeros(cache.shape[1:3], dtype=torch.bool, device=cache.device)
        for j in range(len(path)):
            p = prefix[0] + j
            touched[int(s.block_table[0, p // 4]), p % 4] = True
        assert_bitwise_equal(cache[:, ~touched], before[:, ~touched], "untouched rows")


@pytest.mark.parametrize("device,backend", backend_cases())
def test_compact_kv_leaves_layers_not_passed_untouched(device, backend):
    s = make_scenario(11, batch=2, num_heads=2, head_dim=64, dtype=torch.bfloat16, block_size=8,
                      device=device, layers=4, min_new=6, max_new=10)
    nodes = torch.tensor([[0, 2], [0, 3]], dtype=torch.int32)
    counts = torch.tensor([1, 1], dtype=torch.int32)
    before = s.k_cache.clone()
    k_exp, v_exp = _compact_expected(s, nodes.to(device), counts.to(device), layers=2)
    sk.compact_kv(list(s.k_cache[:2]), list(s.v_cache[:2]), s.block_table, s.prefix_lens,
                  nodes.to(device), counts.to(device), backend=backend)
    assert not torch.equal(bits(s.k_cache[:2]), bits(before[:2]))  # layers 0-1 did change
    assert_bitwise_equal(s.k_cache, k_exp, "k caches")
    assert_bitwise_equal(s.v_cache, v_exp, "v caches")
    assert_bitwise_equal(s.k_cache[2:], before[2:], "layers not passed")


@pytest.mark.parametrize("device,backend", backend_cases())
def test_empty_batches_are_no_ops(device, backend):
    cache = torch.randn(2, 4, 1, 64, device=device)
    before = cache.clone()
    empty_bt = torch.zeros(0, 1, dtype=torch.int32, device=device)
    empty = torch.zeros(0, dtype=torch.int32, device=device)
    sk.append_kv(torch.zeros(0, 1, 64, device=device), torch.zeros(0, 1, 64, device=device), cache, cache.clone(),
                 empty_bt, empty, torch.zeros(1, dtype=torch.int32, device=device), backend=backend)
    sk.compact_kv(cache, cache.clone(), empty_bt, empty, torch.zeros(0, 1, dtype=torch.int32, device=device),
                  empty, backend=backend)
    assert torch.equal(cache, before)


@pytest.mark.parametrize("device,backend", backend_cases())
def test_kv_ops_on_random_geometries(device, backend):
    """Odd head dims (vector-width fallbacks), any block size, many layers:
    append then compact, both exact against the reference."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=15, deadline=None, derandomize=True)
    @given(seed=st.integers(0, 2**16), batch=st.integers(1, 4), heads=st.integers(1, 3),
           head_dim=st.sampled_from([1, 3, 8, 20, 64, 96]), block_size=st.integers(1, 9),
           layers=st.integers(1, 5), dtype=st.sampled_from(DTYPES))
    def check(seed, batch, heads, head_dim, block_size, layers, dtype):
        s = make_scenario(seed, batch=batch, num_heads=heads, head_dim=head_dim, dtype=dtype,
                          block_size=block_size, device=device, layers=layers, min_new=1, max_new=10)
        k_exp, v_exp = s.k_cache.clone(), s.v_cache.clone()
        sk.reference.append_kv(s.k, s.v, k_exp[0], v_exp[0], s.block_table, s.prefix_lens, s.qo_indptr)
        sk.append_kv(s.k, s.v, s.k_cache[0], s.v_cache[0], s.block_table, s.prefix_lens, s.qo_indptr,
                     backend=backend)
        nodes, counts = random_paths(seed, s.new_lens)
        nodes, counts = nodes.to(device), counts.to(device)
        sk.reference.compact_kv(list(k_exp), list(v_exp), s.block_table, s.prefix_lens, nodes, counts)
        sk.compact_kv(s.k_cache, s.v_cache, s.block_table, s.prefix_lens, nodes, counts, backend=backend)
        assert_bitwise_equal(s.k_cache, k_exp, "k caches")
        assert_bitwise_equal(s.v_cache, v_exp, "v caches")

    check()

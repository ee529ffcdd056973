"""Bad input to the KV-cache ops: a clear exception naming the argument, on
every backend and through torch.ops directly, and never a write out of bounds."""
import pytest
import torch

import specdec_kernels as sk
from conftest import assert_bitwise_equal, backend_cases

ERRORS = (ValueError, TypeError, RuntimeError)


def _append_args(device="cpu", dtype=torch.float16):
    """2 sequences, prefixes 3 and 0, 2 and 3 new tokens; 4 blocks of 4."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn(5, 2, 64, generator=g).to(dtype=dtype, device=device)
    return dict(
        k=k, v=k.clone() + 1,
        k_cache=torch.randn(4, 4, 2, 64, generator=g).to(dtype=dtype, device=device),
        v_cache=torch.randn(4, 4, 2, 64, generator=g).to(dtype=dtype, device=device),
        block_table=torch.tensor([[0, 1], [2, -1]], dtype=torch.int32, device=device),
        prefix_lens=torch.tensor([3, 0], dtype=torch.int32, device=device),
        qo_indptr=torch.tensor([0, 2, 5], dtype=torch.int32, device=device),
    )


def _compact_args(device="cpu", dtype=torch.float16):
    """2 layers stacked, 2 sequences with trees at positions 2.. and 0.."""
    g = torch.Generator().manual_seed(1)
    return dict(
        k_caches=torch.randn(2, 4, 4, 2, 64, generator=g).to(dtype=dtype, device=device),
        v_caches=torch.randn(2, 4, 4, 2, 64, generator=g).to(dtype=dtype, device=device),
        block_table=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=device),
        prefix_lens=torch.tensor([2, 0], dtype=torch.int32, device=device),
        accepted_nodes=torch.tensor([[0, 2, 3], [0, 1, -1]], dtype=torch.int32, device=device),
        num_accepted=torch.tensor([2, 1], dtype=torch.int32, device=device),
    )


def _bad(args, **changes):
    out = dict(args)
    for key, fn in changes.items():
        out[key] = fn(out[key])
    return out


def _i32(values):
    return lambda t: torch.tensor(values, dtype=torch.int32, device=t.device)


APPEND_CASES = {
    "k wrong rank": (dict(k=lambda t: t[0]), "k"),
    "k wrong head_dim": (dict(k=lambda t: t[..., :32]), "k"),
    "v shape differs": (dict(v=lambda t: t[:4]), "v"),
    "k dtype differs from cache": (dict(k=lambda t: t.float()), "k"),
    "cache int dtype": (dict(k_cache=lambda t: t.to(torch.int16), v_cache=lambda t: t.to(torch.int16)), "k_cache"),
    "cache 5 dims": (dict(k_cache=lambda t: t[None]), "k_cache"),
    "v_cache shape differs": (dict(v_cache=lambda t: t[:3]), "v_cache"),
    "head_dim not contiguous": (dict(k_cache=lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),
                                     v_cache=lambda t: t.transpose(2, 3).contiguous().transpose(2, 3)), "k_cache"),
    "block_table int64": (dict(block_table=lambda t: t.long()), "block_table"),
    "block_table 1 dim": (dict(block_table=lambda t: t[0]), "block_table"),
    "prefix_lens wrong length": (dict(prefix_lens=_i32([3, 0, 0])), "prefix_lens"),
    "qo_indptr wrong length": (dict(qo_indptr=_i32([0, 5])), "qo_indptr"),
    "qo_indptr float": (dict(qo_indptr=lambda t: t.float()), "qo_indptr"),
    "qo_indptr not starting at 0": (dict(qo_indptr=_i32([1, 2, 5])), "qo_indptr"),
    "qo_indptr end != N": (dict(qo_indptr=_i32([0, 2, 4])), "qo_indptr"),
    "qo_indptr decreasing": (dict(qo_indptr=_i32([0, 6, 5])), "qo_indptr"),
    "negative prefix": (dict(prefix_lens=_i32([-1, 0])), "prefix_lens"),
    "position past block table": (dict(prefix_lens=_i32([7, 0])), "block_table"),
    "block id past pool": (dict(block_table=_i32([[0, 4], [2, -1]])), "block_table"),
    "negative block id in use": (dict(block_table=_i32([[0, -1], [2, -1]])), "block_table"),
}

COMPACT_CASES = {
    "caches 3 dims": (dict(k_caches=lambda t: t[0, 0], v_caches=lambda t: t[0, 0]), "k_caches"),
    "v_caches shape differs": (dict(v_caches=lambda t: t[:1]), "v_caches"),
    "caches int dtype": (dict(k_caches=lambda t: t.int(), v_caches=lambda t: t.int()), "k_caches"),
    "accepted_nodes int64": (dict(accepted_nodes=lambda t: t.long()), "accepted_nodes"),
    "accepted_nodes wrong batch": (dict(accepted_nodes=lambda t: t[:1]), "accepted_nodes"),
    "num_accepted wrong length": (dict(num_accepted=_i32([2])), "num_accepted"),
    "num_accepted past width": (dict(num_accepted=_i32([3, 1])), "num_accepted"),
    "num_accepted negative": (dict(num_accepted=_i32([-1, 1])), "num_accepted"),
    "root not first": (dict(accepted_nodes=_i32([[1, 2, 3], [0, 1, -1]])), "accepted_nodes"),
    "not increasing": (dict(accepted_nodes=_i32([[0, 3, 2], [0, 1, -1]])), "accepted_nodes"),
    "repeated node": (dict(accepted_nodes=_i32([[0, 2, 2], [0, 1, -1]])), "accepted_nodes"),
    "node past block table": (dict(accepted_nodes=_i32([[0, 2, 6], [0, 1, -1]])), "block_table"),
    "negative prefix": (dict(prefix_lens=_i32([2, -3])), "prefix_lens"),
    "block id past pool": (dict(block_table=_i32([[0, 9], [2, 3]])), "block_table"),
    "prefix_lens int64": (dict(prefix_lens=lambda t: t.long()), "prefix_lens"),
}


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("case", list(APPEND_CASES))
def test_append_kv_rejects(device, backend, case):
    changes, name = APPEND_CASES[case]
    args = _bad(_append_args(device), **changes)
    before = args["k_cache"].clone()
    with pytest.raises(ERRORS, match=name):
        sk.append_kv(**args, backend=backend)
    assert_bitwise_equal(args["k_cache"], before, "k_cache after a rejected call")


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("case", list(COMPACT_CASES))
def test_compact_kv_rejects(device, backend, case):
    changes, name = COMPACT_CASES[case]
    args = _bad(_compact_args(device), **changes)
    before = args["k_caches"].clone()
    with pytest.raises(ERRORS, match=name):
        sk.compact_kv(**args, backend=backend)
    assert_bitwise_equal(args["k_caches"], before, "k_caches after a rejected call")


def test_mixed_devices_are_rejected():
    args = _append_args()
    args["prefix_lens"] = args["prefix_lens"].to("meta")
    with pytest.raises(ValueError, match="prefix_lens is on meta"):
        sk.append_kv(**args)
    cargs = _compact_args()
    cargs["num_accepted"] = cargs["num_accepted"].to("meta")
    with pytest.raises(ValueError, match="num_accepted is on meta"):
        sk.compact_kv(**cargs)


def test_layer_list_must_agree():
    args = _compact_args()
    k, v = args.pop("k_caches"), args.pop("v_caches")
    with pytest.raises(ValueError, match="every layer"):
        sk.compact_kv([k[0], k[1, :3]], [v[0], v[1, :3]], **args)
    with pytest.raises(ValueError, match="v_caches has 1"):
        sk.compact_kv([k[0], k[1]], [v[0]], **args)
    with pytest.raises(TypeError, match="k_caches must be a tensor or a non-empty list"):
        sk.compact_kv([], [], **args)


# torch.ops.specdec.* called directly (other runtimes do): the C++ layer checks
# shapes and, on CPU, index values, with the same argument names.
@pytest.mark.parametrize("case", list(APPEND_CASES))
def test_torch_op_append_kv_rejects_on_cpu(case):
    changes, name = APPEND_CASES[case]
    args = _bad(_append_args(), **changes)
    with pytest.raises(RuntimeError, match=name):
        torch.ops.specdec.append_kv(*args.values())


@pytest.mark.parametrize("case", list(COMPACT_CASES))
def test_torch_op_compact_kv_rejects_on_cpu(case):
    changes, name = COMPACT_CASES[case]
    args = _bad(_compact_args(), **changes)
    args["k_caches"], args["v_caches"] = [args["k_caches"]], [args["v_caches"]]
    with pytest.raises(RuntimeError, match=name):
        torch.ops.specdec.compact_kv(*args.values())


@pytest.mark.parametrize("device,backend", [c for c in backend_cases() if c.values[1] != "reference"])
def test_unvalidated_out_of_range_entries_are_skipped(device, backend):
    """validate=False (the hot path) with indices out of range: the kernels
    skip those entries; nothing outside the valid rows changes. The cache is a
    view into a larger buffer whose margins must stay intact. The cpu backend
    checks index values in C++ whatever `validate` says (it costs no sync
    there), so it raises instead; its kernels' skipping is covered by the
    C++ tests (csrc/tests)."""
    args = _append_args(device)
    buffer = torch.randn(6, 4, 2, 64).to(device=device, dtype=torch.float16)
    margin_before = buffer.clone()
    args["k_cache"] = buffer[1:5]
    args["block_table"] = torch.tensor([[0, 4], [-1, 7]], dtype=torch.int32, device=device)
    args["prefix_lens"] = torch.tensor([3, 5], dtype=torch.int32, device=device)
    if backend == "cpu":
        with pytest.raises(RuntimeError, match="block_table"):
            sk.append_kv(**args, validate=False, backend=backend)
        assert_bitwise_equal(buffer, margin_before, "cache after a rejected call")
        return
    sk.append_kv(**args, validate=False, backend=backend)
    assert_bitwise_equal(buffer[0], margin_before[0], "margin before the cache")
    assert_bitwise_equal(buffer[5], margin_before[5], "margin after the cache")
    # Sequence 0's first token (position 3, block 0) is the only valid entry.
    changed = (buffer[1:5] != margin_before[1:5]).any(dim=(-1, -2))
    assert changed.nonzero().tolist() == [[0, 3]]

    cargs = _compact_args(device)
    kbuf = torch.randn(2, 6, 4, 2, 64).to(device=device, dtype=torch.float16)
    kbefore = kbuf.clone()
    cargs["k_caches"] = kbuf[:, 1:5]
    cargs["v_caches"] = kbuf.clone()[:, 1:5]
    cargs["accepted_nodes"] = torch.tensor([[0, 40, 3], [0, 1, -1]], dtype=torch.int32, device=device)
    cargs["num_accepted"] = torch.tensor([5, 1], dtype=torch.int32, device=device)
    cargs["block_table"] = torch.tensor([[0, 99], [2, 3]], dtype=torch.int32, device=device)
    sk.compact_kv(**cargs, validate=False, backend=backend)
    assert_bitwise_equal(kbuf[:, [0, 5]], kbefore[:, [0, 5]], "margins around the caches")

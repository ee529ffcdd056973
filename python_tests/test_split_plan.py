"""The split rule shared by the Triton tree attention and the model (specdec_kernels.split_plan),
pinned to the answers csrc/tests/test_tree_attention_cuda.cu pins for the CUDA launcher's rule."""
import pytest

from specdec_kernels.split_plan import MAX_SPLITS, plan_splits

# Hq 32, Hkv 8, D 128, fp16, a 4096-token reach (256 blocks of 16), H100/H200: 132 SMs.
SHAPE = dict(q_heads=32, kv_heads=8, head_dim=128, reach=4096, elem_bytes=2, sms=132)


def test_decode_at_batch_1_fills_the_sms():
    # 8 programs (one per KV head): as many splits as the reach allows (16 of 256 keys).
    assert plan_splits(batch=1, tokens=1, programs=8, slots=264, **SHAPE)[0] == 16


def test_a_big_batch_needs_no_split():
    assert plan_splits(batch=128, tokens=512, programs=1024, slots=264, **SHAPE)[0] == 1


def test_a_compute_bound_tree_splits_within_the_reach():
    # T = 64, G = 4: 256 rows, one 256-row program per KV head, or two of 128.
    for programs in (8, 16):
        s, _ = plan_splits(batch=1, tokens=64, programs=programs, slots=132, **SHAPE)
        assert 2 <= s <= 16


def test_never_more_than_one_wave_or_the_cap():
    s, _ = plan_splits(batch=1, tokens=1, programs=100, slots=132, **dict(SHAPE, reach=1 << 20))
    assert s == 1  # a second split would need 200 slots
    s, _ = plan_splits(batch=1, tokens=1, programs=1, slots=10_000, **dict(SHAPE, reach=1 << 20))
    assert s == MAX_SPLITS


def test_fixed_splits_are_costed_not_chosen():
    best, best_cost = plan_splits(batch=1, tokens=1, programs=8, slots=264, **SHAPE)
    s, cost = plan_splits(batch=1, tokens=1, programs=8, slots=264, fixed=3, **SHAPE)
    assert s == 3 and cost > best_cost
    assert plan_splits(batch=1, tokens=1, programs=8, slots=264, fixed=best, **SHAPE) == (best, best_cost)


@pytest.mark.parametrize("programs", [1, 7, 64, 500])
def test_the_plan_is_the_cheapest(programs):
    s, cost = plan_splits(batch=4, tokens=40, programs=programs, slots=264, **SHAPE)
    for other in range(1, MAX_SPLITS + 1):
        if programs * other <= 264 and other <= SHAPE["reach"] // 256:
            assert cost <= plan_splits(batch=4, tokens=40, programs=programs, slots=264, fixed=other, **SHAPE)[1]

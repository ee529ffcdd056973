"""How many KV splits (flash-decoding partitions) a tree-attention launch uses.

The rule of ``plan_splits`` in csrc/cuda/tree_attention.cu, for the Triton
kernel and bench/attention_model.py: the cost of s splits, in bytes, is

    max(KV bytes + s x partial bytes, FLOPs / ridge) / min(1, programs x s / SMs)

(the KV is read once whatever s is; each split adds its fp32 partials, a write
and the merge's read; more splits keep more SMs busy, up to all of them). The
cheapest s wins, with programs x s within one wave, at most one split per
MIN_KEYS keys of the block table's reach and at most MAX_SPLITS; ties go to
fewer splits. The C++ test (check_planner) and python_tests/test_split_plan.py
pin the same answers.
"""
from __future__ import annotations

RIDGE = 150.0      # FLOPs per byte where tensor-core time equals HBM time (kRidgeFlopsPerByte)
MIN_KEYS = 256     # kMinKeysPerSplit
MAX_SPLITS = 32    # kTreeAttentionMaxSplits


def plan_splits(*, batch: int, tokens: int, q_heads: int, kv_heads: int, head_dim: int, reach: int,
                elem_bytes: int, programs: int, slots: int, sms: int, fixed: int = 0) -> tuple[int, float]:
    """(splits, cost in bytes) for ``programs`` programs (CTAs) per split, ``slots``
    resident programs in one wave and ``sms`` SMs; ``fixed`` > 0 only costs that
    many splits. ``reach`` = max_blocks x block_size, ``tokens`` = N."""
    keys = reach + tokens / max(batch, 1)
    kv_bytes = batch * kv_heads * keys * head_dim * 2 * elem_bytes
    flops = 4.0 * tokens * q_heads * keys * head_dim
    partial = tokens * q_heads * (head_dim + 1) * 4.0 * 2.0
    max_s = min(MAX_SPLITS, max(1, reach // MIN_KEYS), max(1, slots // max(programs, 1)))
    lo, hi = (fixed, fixed) if fixed > 0 else (1, max_s)
    best, best_cost = lo, None
    for s in range(lo, hi + 1):
        cost = max(kv_bytes + (s * partial if s > 1 else 0.0), flops / RIDGE) / min(1.0, programs * s / sms)
        if best_cost is None or cost < best_cost * (1 - 1e-9):
            best, best_cost = s, cost
    return best, best_cost

"""BlockAllocator: grow, roll back, free, and the block table it hands the kernels."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specdec_kernels import BlockAllocator, OutOfBlocksError


def test_grow_across_block_boundaries():
    a = BlockAllocator(num_blocks=8, block_size=4)
    a.add("s", 3)
    assert (a.length("s"), a.capacity("s"), a.num_free_blocks) == (3, 4, 7)
    assert a.append("s", 1) == 3 and a.capacity("s") == 4  # fills the block exactly
    assert a.append("s", 1) == 4 and a.capacity("s") == 8
    a.reserve("s", 13)  # room for a tree, not yet committed
    assert (a.length("s"), a.capacity("s"), a.num_free_blocks) == (5, 16, 4)
    a.check_invariants()


def test_truncate_frees_whole_blocks_only():
    a = BlockAllocator(num_blocks=8, block_size=4)
    a.add("s", 5)
    a.append("s", 11)  # a verify step's 11 tree tokens
    blocks = a.blocks("s")
    assert len(blocks) == 4
    a.truncate("s", 6)  # 1 of them accepted  # positions 0..5 live in blocks 0 and 1
    assert a.blocks("s") == blocks[:2] and a.length("s") == 6
    a.truncate("s", 4)
    assert a.blocks("s") == blocks[:1]
    a.truncate("s", 0)
    assert a.blocks("s") == [] and a.num_free_blocks == 8
    with pytest.raises(ValueError, match="new_length"):
        a.truncate("s", 1)
    a.check_invariants()


def test_out_of_blocks_allocates_nothing():
    a = BlockAllocator(num_blocks=3, block_size=2)
    a.add("a", 4)
    with pytest.raises(OutOfBlocksError, match="needs 2 more blocks"):
        a.add("b", 3)
    assert "b" not in a.sequences and a.num_free_blocks == 1
    with pytest.raises(OutOfBlocksError, match="needs 2 more blocks"):
        a.append("a", 3)
    assert a.length("a") == 4 and a.num_free_blocks == 1
    a.check_invariants()


def test_max_blocks_per_seq():
    a = BlockAllocator(num_blocks=10, block_size=2, max_blocks_per_seq=2)
    a.add("s", 4)
    with pytest.raises(OutOfBlocksError, match="max_blocks_per_seq=2"):
        a.append("s", 1)


def test_free_returns_blocks_and_they_are_reused():
    a = BlockAllocator(num_blocks=4, block_size=1)
    a.add(0, 2)
    a.add(1, 2)
    freed = a.blocks(0)
    a.free(0)
    a.add(2, 2)
    assert sorted(a.blocks(2)) == sorted(freed)
    with pytest.raises(KeyError, match="unknown sequence 0"):
        a.length(0)
    with pytest.raises(KeyError, match="already exists"):
        a.add(1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_blocks"):
        BlockAllocator(0, 4)
    with pytest.raises(ValueError, match="block_size"):
        BlockAllocator(4, 0)
    a = BlockAllocator(4, 4)
    a.add("s")
    with pytest.raises(ValueError, match="num_tokens"):
        a.append("s", -1)


def test_block_table_and_lengths_tensors():
    a = BlockAllocator(num_blocks=6, block_size=2)
    a.add("x", 5)
    a.add("y", 1)
    table = a.block_table(["y", "x"], width=4)
    assert table.dtype == torch.int32 and table.shape == (2, 4)
    assert table[0].tolist() == a.blocks("y") + [-1, -1, -1]
    assert table[1].tolist() == a.blocks("x") + [-1]
    assert a.lengths(["x", "y"]).tolist() == [5, 1]
    with pytest.raises(ValueError, match="width=2"):
        a.block_table(["x"], width=2)
    with pytest.raises(ValueError, match="width=2"):
        a.device_rows(["x"], 2)
    assert torch.equal(a.device_rows(["y", "x"], 4), a.block_table(["y", "x"], width=4))


def test_device_rows_follow_growth_truncation_and_reuse():
    a = BlockAllocator(num_blocks=10, block_size=2)
    a.add("x", 3)
    a.add("y", 1)
    for _ in range(4):
        n = a.length("x")
        a.reserve("x", n + 5)  # a verify step's room, two tokens accepted, the rest rolled back
        a.append("x", 2)
        assert torch.equal(a.device_rows(["x", "y"], 8), a.block_table(["x", "y"], width=8))
        a.truncate("x", n + 1)
        assert torch.equal(a.device_rows(["x", "y"], 8), a.block_table(["x", "y"], width=8))
    a.free("x")
    a.add("x", 6)  # the id again, other blocks
    assert torch.equal(a.device_rows(["y", "x"], 8), a.block_table(["y", "x"], width=8))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "append", "reserve", "truncate", "free"]),
                          st.integers(0, 3), st.integers(0, 12)), max_size=40))
def test_random_operation_sequences_keep_accounting(ops):
    """Against a model: lengths follow the operations, capacity is the fewest
    whole blocks that cover max(length, reservation), no block is lost or shared."""
    a = BlockAllocator(num_blocks=12, block_size=3)
    model = {}
    for op, seq, n in ops:
        try:
            if op == "add":
                a.add(seq, n)
                model[seq] = n
            elif op == "append" and seq in model:
                a.append(seq, n)
                model[seq] += n
            elif op == "reserve" and seq in model:
                a.reserve(seq, n)
            elif op == "truncate" and seq in model:
                new = min(n, model[seq])
                a.truncate(seq, new)
                model[seq] = new
                assert a.capacity(seq) == -(-new // 3) * 3
            elif op == "free" and seq in model:
                a.free(seq)
                del model[seq]
        except (OutOfBlocksError, KeyError):
            pass
        a.check_invariants()
        assert {s: a.length(s) for s in a.sequences} == model
        if model:  # the device table, patched in place, equals the host lists
            seqs = sorted(model)
            assert torch.equal(a.device_rows(seqs, 12), a.block_table(seqs, width=12))


def test_device_table_is_patched_with_the_changed_entries_only():
    a = BlockAllocator(num_blocks=200, block_size=4)
    seqs = [f"s{i}" for i in range(20)]  # more sequences than the table's first 8 slots
    for s in seqs:
        a.add(s, 30)
    assert torch.equal(a.device_rows(seqs, 16), a.block_table(seqs, width=16))
    table = a._table
    a.reserve("s3", 30 + 9)  # 8 blocks -> 10: two new entries
    a.truncate("s5", 13)  # 8 blocks -> 4: four entries cleared
    assert len(table._pending) == 6
    assert torch.equal(a.device_rows(seqs[::-1], 16), a.block_table(seqs[::-1], width=16))
    assert not table._pending
    for s in seqs[:10]:  # churn: slots freed and reused by new ids
        a.free(s)
    for i in range(12):
        a.add(("new", i), 4 * i)
    live = a.sequences
    assert torch.equal(a.device_rows(live, 16), a.block_table(live, width=16))
    with pytest.raises(ValueError, match="16 wide"):
        a.device_rows(live, 12)

"""The compiled CPU kernels run on torch's own OpenMP threads: built with
OpenMP when torch has it, one OpenMP runtime in the process, and the same
bits at one thread as at two (each work item is computed by one thread)."""
import re
import sys

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import _extension

from conftest import assert_bitwise_equal

pytestmark = pytest.mark.skipif(not _extension.loaded(), reason="the compiled extension is not built")

TORCH_HAS_OPENMP = "OpenMP" in torch.__config__.parallel_info()


@pytest.mark.skipif(not (TORCH_HAS_OPENMP and sys.platform.startswith("linux")),
                    reason="torch without OpenMP, or not Linux: the kernels are built single-threaded")
def test_extension_is_built_with_openmp_and_info_says_so():
    facts = sk.info()["cpu_kernels"]
    assert facts["openmp"] is True, facts
    assert facts["threading"].startswith("multi-threaded"), facts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_one_openmp_runtime_in_the_process():
    sk.verify_greedy(torch.zeros(2, dtype=torch.int64), torch.tensor([-1, 0], dtype=torch.int32),
                     torch.tensor([0, 2], dtype=torch.int32), torch.randn(2, 8), backend="cpu")
    runtimes = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if re.search(r"lib(g|i|)omp[^/]*\.so", path):
                runtimes.add(path)
    assert len(runtimes) <= 1, f"more than one OpenMP runtime loaded: {sorted(runtimes)}"


def _ops(gen):
    tree = sk.Tree.from_choices(sk.MC_SIM_7B_63[:20])
    t, batch, hq, hkv, d, bs = tree.size, 6, 4, 2, 64, 8
    prefix = torch.randint(0, 40, (batch,), generator=gen, dtype=torch.int32)
    need = (prefix + t + bs - 1) // bs
    table = torch.full((batch, int(need.max())), -1, dtype=torch.int32)
    perm = torch.randperm(int(need.sum()), generator=gen).to(torch.int32)
    start = 0
    for b in range(batch):
        table[b, :need[b]] = perm[start:start + need[b]]
        start += int(need[b])
    k_cache = torch.randn(2, int(need.sum()), bs, hkv, d, generator=gen)
    v_cache = torch.randn(k_cache.shape, generator=gen)
    indptr = torch.arange(0, (batch + 1) * t, t, dtype=torch.int32)
    q = torch.randn(batch * t, hq, d, generator=gen)
    mask = tree.packed_mask().repeat(batch, 1)
    vocab = 300
    logits = torch.randn(batch * t, vocab, generator=gen)
    draft = torch.randint(0, vocab, (batch * t,), generator=gen)
    parents = tree.parents_tensor().repeat(batch)
    uniforms = torch.rand(batch * t, generator=gen)
    kn, vn = torch.randn(batch * t, hkv, d, generator=gen), torch.randn(batch * t, hkv, d, generator=gen)
    path = tree.ancestors(tree.size - 1)  # root first: a real accepted path
    nodes = torch.tensor([list(path[:3])] * batch, dtype=torch.int32)
    counts = torch.full((batch,), min(2, len(path) - 1), dtype=torch.int32)

    def attention():
        return sk.tree_attention(q, k_cache[0], v_cache[0], table, prefix, indptr, mask, backend="cpu")

    def rejection():
        r = sk.verify_rejection(draft, parents, indptr, logits, uniforms=uniforms, temperature=0.7, top_p=0.9,
                                backend="cpu")
        return torch.cat([r.num_accepted[:, None].long(), r.accepted_nodes.long(), r.tokens], 1)

    def greedy():
        r = sk.verify_greedy(draft, parents, indptr, logits, backend="cpu")
        return torch.cat([r.num_accepted[:, None].long(), r.accepted_nodes.long(), r.tokens], 1)

    def kv():
        kc, vc = k_cache.clone(), v_cache.clone()
        sk.append_kv(kn, vn, kc[1], vc[1], table, prefix, indptr, backend="cpu")
        sk.compact_kv(kc, vc, table, prefix, nodes, counts, backend="cpu")
        return torch.cat([kc.flatten(), vc.flatten()])

    return dict(tree_attention=attention, verify_rejection=rejection, verify_greedy=greedy, kv_ops=kv)


@pytest.mark.parametrize("op", ["tree_attention", "verify_rejection", "verify_greedy", "kv_ops"])
def test_one_thread_and_two_give_the_same_bits(op):
    saved = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(_ops(torch.Generator().manual_seed(7))[op]())
    finally:
        torch.set_num_threads(saved)
    assert_bitwise_equal(outs[1], outs[0], f"{op}: 2 threads vs 1")

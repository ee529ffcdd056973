"""The adapters' hot calls read no tensor value on the host: on CUDA that
would be a device sync (and break graph capture). Checked on CPU by making
every value read (item, tolist, cpu, numpy, bool/int/float/index
conversion) raise for the duration of the call, with the compiled CPU
backend (its checks read shapes only). Host-side set-up stays outside the
window: FlashInfer's plan() and the inputs."""
import contextlib

import pytest
import torch

from specdec_kernels import Tree, _extension
from specdec_kernels.adapters import flashinfer as fi
from specdec_kernels.adapters import sglang as sg
from specdec_kernels.adapters import vllm

pytestmark = pytest.mark.skipif(not _extension.loaded(), reason="needs the compiled CPU backend")

READS = ["item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"]


@contextlib.contextmanager
def no_value_reads():
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def forbid(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} read a value on the host")
        return read

    for name in READS:
        setattr(torch.Tensor, name, forbid(name))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def test_the_guard_catches_a_read():
    with pytest.raises(AssertionError, match="Tensor.item"):
        with no_value_reads():
            torch.ones(2).sum().item()
    with pytest.raises(AssertionError, match="__bool__"):
        with no_value_reads():
            if torch.ones(1) > 0:
                pass


class Meta:
    def __init__(self, temperature, all_greedy=False, generators=None):
        self.temperature, self.all_greedy, self.generators = temperature, all_greedy, generators or {}


def test_vllm_rejection_sample_reads_no_values():
    g = torch.Generator().manual_seed(0)
    n, vocab = [2, 0, 3], 11
    tokens = torch.randint(vocab, (5,), generator=g)
    target = torch.softmax(torch.randn(5, vocab, generator=g), -1)
    draft = torch.softmax(torch.randn(5, vocab, generator=g), -1)
    cu = torch.tensor([2, 2, 5])
    bonus = torch.randint(vocab, (3, 1), generator=g)
    meta = Meta(torch.tensor([1.0, 0.0, 0.7]), generators={2: torch.Generator().manual_seed(1)})
    with no_value_reads():
        out = vllm.rejection_sample(tokens, n, 3, cu, draft, target, bonus, meta, backend="cpu")
    assert out.shape == (3, 4)


def test_flashinfer_chain_reads_no_values():
    g = torch.Generator().manual_seed(0)
    draft = torch.softmax(torch.randn(3, 4, 9, generator=g), -1)
    target = torch.softmax(torch.randn(3, 5, 9, generator=g), -1)
    tokens = torch.randint(9, (3, 4), generator=g)
    with no_value_reads():
        out, acc, emitted = fi.chain_speculative_sampling(draft, tokens, target, generator=g, backend="cpu")
    assert out.shape == (3, 5)


def test_sglang_calls_read_no_values():
    tree = Tree.from_parents([-1, 0, 0, 1, 2, 2])
    batch, n, vocab = 4, tree.size, 7
    g = torch.Generator().manual_seed(0)
    seq_lens = torch.tensor([3, 1, 4, 0])
    with no_value_reads():
        buf = sg.build_tree_buffers(tree, seq_lens, "full", seq_lens_sum=8)
    cand = torch.randint(vocab, (batch, n), generator=g)
    probs = torch.softmax(torch.randn(batch, n, vocab, generator=g), -1)
    outs = (torch.zeros(batch * n, dtype=torch.int32), torch.zeros(batch, 3, dtype=torch.int32),
            torch.zeros(batch, dtype=torch.int32))
    lists = (cand, buf.retrive_index, buf.retrive_next_token, buf.retrive_next_sibling)
    u, f = torch.rand(batch, n, generator=g), torch.rand(batch, generator=g)
    with no_value_reads():
        sg.verify_tree_greedy(*outs, *lists, probs.argmax(-1))
        sg.tree_speculative_sampling_target_only(*outs, *lists, u, f, probs, None, backend="cpu")
        sg.tree_speculative_sampling_target_only(*outs, *lists, u, f, probs, None, threshold_single=0.5,
                                                 threshold_acc=0.5)


def test_flashinfer_prefill_run_reads_no_values():
    tree = Tree.from_parents([-1, 0, 0])
    prefix, page = 5, 4
    kv_len = prefix + tree.size
    pages = (kv_len + page - 1) // page
    k = torch.randn(pages, page, 2, 64)
    v = torch.randn(pages, page, 2, 64)
    mask = torch.ones(tree.size, kv_len, dtype=torch.bool)
    mask[:, prefix:] = tree.mask_bool()
    wrapper = fi.BatchPrefillWithPagedKVCacheWrapper()
    wrapper.plan(torch.tensor([0, tree.size]), torch.tensor([0, pages]), torch.arange(pages),
                 torch.tensor([kv_len - (pages - 1) * page]), 4, 2, 64, page, custom_mask=mask.reshape(-1))
    q = torch.randn(tree.size, 4, 64)
    with no_value_reads():
        out = wrapper.run(q, (k, v), backend="cpu")
    assert out.shape == q.shape

"""adapters.flashinfer.BatchPrefillWithPagedKVCacheWrapper against FlashInfer's
documented semantics, computed densely here: query i of request b attends to
KV position j of its pages iff ``custom_mask`` (its ``[qo_len, kv_len]`` block)
says so. Page tables are shuffled, last pages partly filled, layouts NHD and
HND, the mask plain or bit-packed little-endian per request."""
import math

import pytest
import torch

from conftest import backend_cases
from specdec_kernels import Tree
from specdec_kernels.adapters import flashinfer as fi

HQ, HKV, D, PAGE = 4, 2, 64, 4
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def make_problem(seed, prefixes, tree_parents, dtype, layout):
    gen = torch.Generator().manual_seed(seed)
    trees = [Tree.from_parents(p) for p in tree_parents]
    qo_len = [t.size for t in trees]
    kv_len = [p + t for p, t in zip(prefixes, qo_len)]
    pages = [max(1, math.ceil(k / PAGE)) if k else 0 for k in kv_len]
    order = torch.randperm(sum(pages) + 3, generator=gen)  # a shuffled pool with spare pages
    indices, start = [], 0
    for n in pages:
        indices.append(order[start:start + n])
        start += n
    kv_shape = (sum(pages) + 3, PAGE, HKV, D) if layout == "NHD" else (sum(pages) + 3, HKV, PAGE, D)
    k = torch.randn(kv_shape, generator=gen).to(dtype)
    v = torch.randn(kv_shape, generator=gen).to(dtype)
    q = torch.randn(sum(qo_len), HQ, D, generator=gen).to(dtype)
    masks = []
    for p, t in zip(prefixes, trees):
        m = torch.ones(t.size, p + t.size, dtype=torch.bool)
        m[:, p:] = t.mask_bool()
        masks.append(m)
    last = [k_ - (n - 1) * PAGE if n else 1 for k_, n in zip(kv_len, pages)]
    return dict(q=q, k=k, v=v, masks=masks, indices=indices, qo_len=qo_len, kv_len=kv_len, last=last,
                indptr=torch.tensor([0] + torch.tensor(qo_len).cumsum(0).tolist(), dtype=torch.int32),
                kv_indptr=torch.tensor([0] + torch.tensor(pages).cumsum(0).tolist(), dtype=torch.int32),
                kv_indices=torch.cat(indices).to(torch.int32) if indices else torch.zeros(0, dtype=torch.int32))


def dense_reference(prob, layout):
    """FlashInfer's semantics, request by request, in float64."""
    outs = []
    for b, m in enumerate(prob["masks"]):
        kv = prob["kv_len"][b]
        pos = torch.arange(kv)
        pages = prob["indices"][b][pos // PAGE]
        if layout == "NHD":
            kb, vb = prob["k"][pages, pos % PAGE], prob["v"][pages, pos % PAGE]   # [kv, Hkv, D]
        else:
            kb, vb = prob["k"][pages, :, pos % PAGE], prob["v"][pages, :, pos % PAGE]
        s0 = int(prob["indptr"][b])
        qb = prob["q"][s0:s0 + prob["qo_len"][b]].double()
        kb = kb.double().repeat_interleave(HQ // HKV, 1)
        vb = vb.double().repeat_interleave(HQ // HKV, 1)
        scores = torch.einsum("qhd,khd->hqk", qb, kb) / math.sqrt(D)
        scores = scores.masked_fill(~m.unsqueeze(0), float("-inf"))
        outs.append(torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), vb))
    return torch.cat(outs)


def packbits_little(masks):
    """flashinfer.packbits(..., bitorder='little') of each request's block, concatenated."""
    out = []
    for m in masks:
        bits = m.reshape(-1).long()
        bits = torch.cat([bits, bits.new_zeros((-bits.numel()) % 8)]).reshape(-1, 8)
        out.append((bits << torch.arange(8)).sum(1).to(torch.uint8))
    return torch.cat(out)


TREES = [[-1, 0, 0, 1, 2, 2], [-1], [-1, 0, 1, 2], [-1, 0, 0, 0, 1, 1, 4]]


@pytest.mark.parametrize("device,backend", backend_cases())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout,packed,tuple_cache", [("NHD", False, True), ("HND", True, True),
                                                       ("NHD", True, False)])
def test_prefill_with_custom_mask_matches_dense(device, backend, dtype, layout, packed, tuple_cache):
    prob = make_problem(1, [9, 0, 4, 13], TREES, dtype, layout)
    wrapper = fi.BatchPrefillWithPagedKVCacheWrapper(torch.empty(16, dtype=torch.uint8), kv_layout=layout)
    mask_kwargs = (dict(packed_custom_mask=packbits_little(prob["masks"])) if packed
                   else dict(custom_mask=torch.cat([m.reshape(-1) for m in prob["masks"]])))
    wrapper.plan(prob["indptr"].to(device), prob["kv_indptr"].to(device), prob["kv_indices"].to(device),
                 torch.tensor(prob["last"], dtype=torch.int32).to(device), HQ, HKV, D, PAGE,
                 q_data_type=dtype, **{k: v.to(device) for k, v in mask_kwargs.items()})
    k, v = prob["k"].to(device), prob["v"].to(device)
    cache = (k, v) if tuple_cache else torch.stack([k, v], 1)
    out, lse = wrapper.run(prob["q"].to(device), cache, return_lse=True, backend=backend)
    expected = dense_reference(prob, layout)
    assert out.shape == expected.shape and lse.shape == expected.shape[:2]
    err = (out.double().cpu() - expected).abs().max().item()
    assert err < TOL[dtype], err


@pytest.mark.parametrize("device,backend", backend_cases())
def test_causal_is_the_chain(device, backend):
    chains = [[-1, 0, 1], [-1, 0, 1, 2, 3]]
    prob = make_problem(2, [5, 2], chains, torch.float32, "NHD")
    wrapper = fi.BatchPrefillWithPagedKVCacheWrapper()
    wrapper.plan(prob["indptr"], prob["kv_indptr"], prob["kv_indices"], torch.tensor(prob["last"]), HQ, HKV, D,
                 PAGE, causal=True)
    out = wrapper.run(prob["q"].to(device), (prob["k"].to(device), prob["v"].to(device)), backend=backend)
    assert (out.double().cpu() - dense_reference(prob, "NHD")).abs().max().item() < TOL[torch.float32]


def test_plan_rejects_what_tree_attention_cannot_do():
    prob = make_problem(3, [6, 3], [[-1, 0, 0], [-1, 0]], torch.float32, "NHD")
    args = (prob["indptr"], prob["kv_indptr"], prob["kv_indices"], torch.tensor(prob["last"]), HQ, HKV, D, PAGE)
    hidden = [m.clone() for m in prob["masks"]]
    hidden[1][1, 2] = False  # request 1's query 1 may not see prefix position 2
    wrapper = fi.BatchPrefillWithPagedKVCacheWrapper()
    with pytest.raises(ValueError, match="hides part of request 1's prefix from its query 1"):
        wrapper.plan(*args, custom_mask=torch.cat([m.reshape(-1) for m in hidden]))
    with pytest.raises(ValueError, match="custom_mask must hold"):
        wrapper.plan(*args, custom_mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs a custom mask"):
        wrapper.plan(*args)
    with pytest.raises(ValueError, match="pos_encoding_mode"):
        wrapper.plan(*args, causal=True, pos_encoding_mode="ROPE_LLAMA")
    with pytest.raises(ValueError, match="call plan"):
        fi.BatchPrefillWithPagedKVCacheWrapper().run(prob["q"], (prob["k"], prob["v"]))
    no_pages = prob["kv_indptr"].clone()
    no_pages[2] = no_pages[1]  # request 1 keeps no page: fewer KV positions than queries
    with pytest.raises(ValueError, match="request 1 has 2 queries but only 0 KV positions"):
        wrapper.plan(prob["indptr"], no_pages, prob["kv_indices"], torch.tensor(prob["last"]), HQ, HKV, D, PAGE,
                     causal=True)

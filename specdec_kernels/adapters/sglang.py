"""SGLang's (sgl-kernel's) tree speculative sampling on our kernels.

``tree_speculative_sampling_target_only`` has sgl-kernel's signature and its
in-place outputs:

    tree_speculative_sampling_target_only(predicts, accept_index, accept_token_num, candidates,
        retrive_index, retrive_next_token, retrive_next_sibling, uniform_samples,
        uniform_samples_for_final_sampling, target_probs, draft_probs,
        threshold_single=1.0, threshold_acc=1.0, deterministic=True)

Conventions (SGLang's):
* Request b's tree has n nodes (node 0: the last verified token). Its
  structure is a linked list: ``retrive_next_token[b, c]`` is c's first child,
  ``retrive_next_sibling[b, c]`` the next child of c's parent (-1: none);
  ``candidates[b, c]`` is node c's token and ``retrive_index[b, c]`` its row in
  the flattened ``[B * n]`` outputs; parents come before children (as SGLang's
  tree builder emits them). ``target_probs[b, c]`` (``[B, n, V]``) is
  the target's distribution after node c (temperature, top-k and top-p applied).
* Outputs, written in place: ``accept_index[b, 0..k]`` (int32 ``[B, S]``) the
  retrive indices of the accepted path, root first; ``accept_token_num[b] = k``
  the accepted drafts; ``predicts[accept_index[b, j]]`` (int32 ``[B * n]``) the
  token that follows accepted node j (the next accepted draft, and for the last
  one the correction or bonus token). At most ``S - 1`` drafts are accepted.
  Entries outside the accepted path are left as the caller set them.
* The rule here is exact rejection sampling for point-mass proposals (our
  ``verify_rejection`` without draft probabilities), which is what SGLang's
  target-only rule is with ``threshold_single = threshold_acc = 1``. SGLang's
  relaxed acceptance (thresholds below 1) is lossy and is not provided: other
  thresholds raise. ``draft_probs`` is SGLang's scratch for the rejected
  tokens; it is not read or written here.
* Randomness: ``uniform_samples[b, c]`` (c >= 1) decides child c and
  ``uniform_samples_for_final_sampling[b]`` draws the correction or bonus token
  (SGLang uses one coin per level instead), so the tokens differ from SGLang's
  for the same uniforms; the distribution is the same.

Cost, beyond sgl-kernel's op: one fp32 ``[B n, V]`` copy of
``log(target_probs)``; the tree's parents are recovered from the linked lists
with O(log n) vectorised pointer-jumping rounds (no host sync).
"""
from __future__ import annotations

import math

import torch

from .. import sampling
from .._checks import check_shape, check_tensor, fail

__all__ = ["tree_speculative_sampling_target_only", "parents_from_linked_lists"]

_OP = "adapters.sglang.tree_speculative_sampling_target_only"
_INDEX = (torch.int32, torch.int64)


def parents_from_linked_lists(next_token: torch.Tensor, next_sibling: torch.Tensor) -> torch.Tensor:
    """int64 ``[B, n]`` first-child / next-sibling lists -> int32 ``[B, n]`` local parents (-1 at
    node 0 and at nodes no list reaches)."""
    batch, n = next_token.shape
    device = next_token.device
    rows = torch.arange(batch, device=device).unsqueeze(1).expand(batch, n)
    nodes = torch.arange(n, device=device).unsqueeze(0).expand(batch, n)
    nt, ns = next_token.long(), next_sibling.long()
    # The parent of each chain head (a first child).
    head_parent = torch.full((batch, n + 1), -1, dtype=torch.int64, device=device)
    head_parent[rows, torch.where(nt >= 0, nt, n)] = nodes
    # prev[i]: the sibling before i; pointer-jump to each chain's head.
    prev = torch.full((batch, n + 1), -1, dtype=torch.int64, device=device)
    prev[rows, torch.where(ns >= 0, ns, n)] = nodes
    prev = prev[:, :n]
    # Pointer doubling: a chain head points at itself, and each round doubles
    # how far back every pointer reaches.
    head = torch.where(prev < 0, nodes, prev)
    for _ in range(max(1, math.ceil(math.log2(max(n, 2))))):
        head = head.gather(1, head)
    parents = head_parent[:, :n].gather(1, head)
    parents[:, 0] = -1
    return parents.to(torch.int32)


def tree_speculative_sampling_target_only(predicts, accept_index, accept_token_num, candidates, retrive_index,
                                          retrive_next_token, retrive_next_sibling, uniform_samples,
                                          uniform_samples_for_final_sampling, target_probs, draft_probs=None,
                                          threshold_single: float = 1.0, threshold_acc: float = 1.0,
                                          deterministic: bool = True, *, backend: str = "auto") -> None:
    """sgl-kernel's ``tree_speculative_sampling_target_only`` (module docstring for the conventions).

    Args:
        predicts: int32 ``[B * n]``, written in place. accept_index: int32 ``[B, S]``, written in place.
        accept_token_num: int32 ``[B]``, written in place.
        candidates, retrive_index, retrive_next_token, retrive_next_sibling: int32/int64 ``[B, n]``.
        uniform_samples: float32 ``[B, n]``. uniform_samples_for_final_sampling: float32 ``[B]``.
        target_probs: float ``[B, n, V]``. draft_probs: ignored (SGLang's scratch).
        threshold_single, threshold_acc: must be 1.0 (the exact rule).
        deterministic: ignored (always deterministic).
        backend: ours (``"auto"``, ``"reference"``, ``"triton"``, ``"cuda"``, ``"cpu"``).
    """
    if threshold_single != 1.0 or threshold_acc != 1.0:
        fail(_OP, f"only the exact rule (threshold_single = threshold_acc = 1.0) is provided, got "
                  f"{threshold_single} and {threshold_acc}: SGLang's relaxed acceptance is lossy", NotImplementedError)
    check_tensor(_OP, "target_probs", target_probs, dim=3, dtype=sampling.LOGITS_DTYPES)
    device = target_probs.device
    batch, n, vocab = target_probs.shape
    for name, t in (("candidates", candidates), ("retrive_index", retrive_index),
                    ("retrive_next_token", retrive_next_token), ("retrive_next_sibling", retrive_next_sibling)):
        check_tensor(_OP, name, t, dim=2, dtype=_INDEX, device=device)
        check_shape(_OP, name, t, (batch, n), f"[B={batch}, n={n}]")
    check_tensor(_OP, "uniform_samples", uniform_samples, dim=2, dtype=torch.float32, device=device)
    check_shape(_OP, "uniform_samples", uniform_samples, (batch, n), f"float32 [B={batch}, n={n}]")
    check_tensor(_OP, "uniform_samples_for_final_sampling", uniform_samples_for_final_sampling, dim=1,
                 dtype=torch.float32, device=device)
    check_shape(_OP, "uniform_samples_for_final_sampling", uniform_samples_for_final_sampling, (batch,),
                f"float32 [B={batch}]")
    check_tensor(_OP, "predicts", predicts, dim=1, dtype=torch.int32, device=device)
    check_shape(_OP, "predicts", predicts, (batch * n,), f"int32 [B * n = {batch * n}]")
    check_tensor(_OP, "accept_index", accept_index, dim=2, dtype=torch.int32, device=device)
    if accept_index.shape[0] != batch or accept_index.shape[1] < 1:
        fail(_OP, f"accept_index must be int32 [B={batch}, S >= 1], got shape {tuple(accept_index.shape)}")
    check_tensor(_OP, "accept_token_num", accept_token_num, dim=1, dtype=torch.int32, device=device)
    check_shape(_OP, "accept_token_num", accept_token_num, (batch,), f"int32 [B={batch}]")
    width = accept_index.shape[1]
    if width > sampling.MAX_TREE_LEN:
        fail(_OP, f"accept_index has {width} columns, more than the supported {sampling.MAX_TREE_LEN}")

    parents = parents_from_linked_lists(retrive_next_token, retrive_next_sibling).reshape(-1)
    logits = target_probs.reshape(batch * n, vocab).float().log()
    uniforms = uniform_samples.clone()
    uniforms[:, 0] = uniform_samples_for_final_sampling
    indptr = torch.arange(batch + 1, dtype=torch.int32, device=device) * n
    res = sampling.verify_rejection(candidates.reshape(-1).long(), parents, indptr, logits, None, temperature=1.0,
                                    uniforms=uniforms.reshape(-1), max_depth=width - 1, validate=False,
                                    backend=backend)
    nodes = res.accepted_nodes.long()                     # [B, width], local, -1 padded
    on_path = nodes >= 0
    flat = retrive_index.long().gather(1, nodes.clamp(min=0))  # retrive index of each path node
    accept_index.copy_(torch.where(on_path, flat, accept_index.long()).to(torch.int32))
    accept_token_num.copy_(res.num_accepted.clamp(min=0))
    # predicts[path node j] = the token emitted after it: tokens[j] of our result.
    keep = on_path & (res.tokens >= 0)
    dest = torch.where(keep, flat, predicts.numel())
    scratch = torch.cat([predicts, predicts.new_zeros(1)])
    scratch.scatter_(0, dest.reshape(-1), torch.where(keep, res.tokens, 0).to(torch.int32).reshape(-1))
    predicts.copy_(scratch[:-1])

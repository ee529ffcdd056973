"""build_dynamic_tree: EAGLE-2's draft tree from a drafter's per-depth candidates, in one launch.

A drafter expanding a tree depth by depth (EAGLE-2: the top-k children of
each frontier node, the top-k of those as the next frontier) leaves, per
request, M candidates: a parent (another candidate, or the root), a token
and a score (the cumulative log-probability of its path). This op reranks
them and emits, on the device, everything the verify step consumes:

* **Selection.** Candidate j is *eligible* iff its score is neither NaN nor
  -inf and its parent is -1 (the root) or an eligible candidate with a
  smaller index. Eligible candidates are ranked by (score descending, depth
  ascending, index ascending) — the tie rule — and the first ``num_keep``
  are selected; a selected candidate is kept iff all its ancestors are
  selected. With scores that never increase from parent to child
  (cumulative log-probabilities; ``validate=True`` checks it) every selected
  candidate's ancestors rank before it, so exactly ``min(num_keep,
  eligible)`` are kept.
* **Order.** Node 0 is the root (``root_tokens``); the kept candidates
  follow in increasing candidate index, so parents precede children.

Returns a :class:`DynamicTree` of ``[B, K + 1]`` tensors (K = num_keep):
``draft_tokens`` (int64), ``parents`` (int32, local, -1 at the root),
``depths`` (int32, root 0: RoPE positions are prefix length + depth),
``tree_mask`` (int32 ``[B, K + 1, ceil((K + 1) / 32)]``, bit j of row i set
iff node j is i or an ancestor of i: ``tree_attention``'s mask), ``source``
(int32, the candidate each node came from, -1 at the root: the draft rows
to gather features or draft probabilities from) and ``num_nodes`` (int32
``[B]``). Rows past ``num_nodes`` are inert (token 0, parent -1, depth 0,
source -1, a mask row with only its own bit): the verify ops never accept
them, so ``draft_tokens.view(-1)``, ``parents.view(-1)`` and
``qo_indptr = arange(B + 1) * (K + 1)`` go to ``verify_*`` as they are.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import _checks, backends
from ._checks import fail
from .reference import dynamic_tree as ref_dynamic_tree

MAX_CANDIDATES = 4096  # per request
MAX_NODES = 256  # num_keep + 1: the verify ops' and tree attention's bound


class DynamicTree(NamedTuple):
    draft_tokens: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor
    tree_mask: torch.Tensor
    source: torch.Tensor
    num_nodes: torch.Tensor


def build_dynamic_tree(cand_parents, cand_tokens, cand_scores, root_tokens, num_keep: int, *,
                       validate: bool = True, backend: str = "auto") -> DynamicTree:
    """Select the best ``num_keep`` drafted candidates of each request and lay them out as a tree.

    Args:
        cand_parents: int32 ``[B, M]``: each candidate's parent, a candidate
            index in ``[0, j)`` or -1 for a child of the root.
        cand_tokens: int64 or int32 ``[B, M]``: each candidate's token.
        cand_scores: float32 ``[B, M]``: cumulative log-probabilities (any
            score that does not increase along a path); -inf marks padding.
        root_tokens: int64 or int32 ``[B]``: node 0's token (the last
            accepted token).
        num_keep: K, the drafted nodes kept per request; ``K + 1 <= 256``.
        validate: check values (a sync on CUDA): parents in range, no NaN
            score, scores not increasing from parent to child.
        backend: ``"auto"``, ``"reference"``, ``"triton"``, ``"cuda"`` or ``"cpu"``.

    Module docstring: the selection and tie rule, the outputs.
    """
    op = "build_dynamic_tree"
    _checks.check_tensor(op, "cand_scores", cand_scores, dim=2, dtype=torch.float32)
    device = cand_scores.device
    batch, m = cand_scores.shape
    _checks.check_tensor(op, "cand_parents", cand_parents, dim=2, dtype=torch.int32, device=device)
    _checks.check_shape(op, "cand_parents", cand_parents, (batch, m), f"int32 [B={batch}, M={m}] (as cand_scores)")
    _checks.check_tensor(op, "cand_tokens", cand_tokens, dim=2, dtype=(torch.int64, torch.int32), device=device)
    _checks.check_shape(op, "cand_tokens", cand_tokens, (batch, m), f"[B={batch}, M={m}] (as cand_scores)")
    _checks.check_tensor(op, "root_tokens", root_tokens, dim=1, dtype=(torch.int64, torch.int32), device=device)
    _checks.check_shape(op, "root_tokens", root_tokens, (batch,), f"[B={batch}]")
    if isinstance(num_keep, bool) or not isinstance(num_keep, int) or not 0 <= num_keep < MAX_NODES:
        fail(op, f"num_keep must be an int in [0, {MAX_NODES - 1}] (num_keep + 1 nodes per tree), got {num_keep!r}")
    if m > MAX_CANDIDATES:
        fail(op, f"cand_scores has {m} candidates per request; at most {MAX_CANDIDATES} are supported")
    if validate:
        _validate(op, cand_parents, cand_scores)
    cand_parents = cand_parents.contiguous()
    cand_tokens = cand_tokens.long().contiguous()
    cand_scores = cand_scores.contiguous()
    root_tokens = root_tokens.long().contiguous()
    chosen = backends.choose(op, backend, device)
    args = (cand_parents, cand_tokens, cand_scores, root_tokens, num_keep)
    if chosen == "reference":
        out = ref_dynamic_tree.build(*args)
    elif chosen == "triton":
        from .triton import dynamic_tree as triton_dynamic_tree

        out = triton_dynamic_tree.build(*args)
    else:
        out = torch.ops.specdec.build_dynamic_tree(*args)
    return DynamicTree(*out)


def _validate(op, cand_parents, cand_scores) -> None:
    par = cand_parents.cpu().long()
    scores = cand_scores.cpu()
    idx = torch.arange(par.shape[1])
    bad = (par < -1) | (par >= idx)
    if bad.any():
        b, j = (int(v) for v in bad.nonzero()[0])
        fail(op, f"cand_parents[{b}, {j}] = {int(par[b, j])}: a candidate's parent must be -1 (the root) or an "
                 f"earlier candidate in [0, {j})")
    if torch.isnan(scores).any():
        b, j = (int(v) for v in torch.isnan(scores).nonzero()[0])
        fail(op, f"cand_scores[{b}, {j}] is NaN (mark padding with -inf)")
    parent_score = torch.where(par >= 0, scores.gather(1, par.clamp(min=0)), torch.full_like(scores, float("inf")))
    rising = (scores > parent_score) & (scores > float("-inf"))
    if rising.any():
        b, j = (int(v) for v in rising.nonzero()[0])
        fail(op, f"cand_scores[{b}, {j}] = {float(scores[b, j])} exceeds its parent's score "
                 f"{float(parent_score[b, j])}: scores must not increase along a path (cumulative log-probabilities)")


__all__ = ["build_dynamic_tree", "DynamicTree"]

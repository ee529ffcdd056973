"""SGLang's (sgl-kernel's) speculative verification on our kernels.

Three sgl-kernel functions under their own names, arguments and in-place
outputs, plus the tree layout SGLang's EAGLE builder emits:

    verify_tree_greedy(predicts, accept_index, accept_token_num, candidates, retrive_index,
        retrive_next_token, retrive_next_sibling, target_predict)
    tree_speculative_sampling_target_only(predicts, accept_index, accept_token_num, candidates,
        retrive_index, retrive_next_token, retrive_next_sibling, uniform_samples,
        uniform_samples_for_final_sampling, target_probs, draft_probs,
        threshold_single=1.0, threshold_acc=1.0, deterministic=True)
    build_tree_buffers(tree, seq_lens, tree_mask_mode)   # build_tree_kernel_efficient's outputs

Conventions (SGLang's):
* Request b's tree has n nodes (node 0: the last verified token). Its
  structure is a linked list: ``retrive_next_token[b, c]`` is c's first child,
  ``retrive_next_sibling[b, c]`` the next child of c's parent (-1: none);
  ``candidates[b, c]`` is node c's token and ``retrive_index[b, c]`` its row in
  the flattened ``[B * n]`` outputs; parents come before children (as SGLang's
  tree builder emits them). Children are tried in list order.
* Outputs, written in place: ``accept_index[b, 0..k]`` (int32 ``[B, S]``) the
  retrive indices of the accepted path, root first; ``accept_token_num[b] = k``
  the accepted drafts; ``predicts[accept_index[b, j]]`` (int32 ``[B * n]``) the
  token that follows accepted node j (the next accepted draft, and for the last
  one the correction or bonus token). At most ``S - 1`` drafts are accepted.
  Entries outside the accepted path are left as the caller set them.
* ``verify_tree_greedy``: ``target_predict`` (``[B, n]`` or ``[B * n]``, by
  retrive index) is the target's argmax after each node; a child is accepted
  when its token equals it, and the last accepted node's entry is the bonus.
* ``tree_speculative_sampling_target_only``, ``threshold_single =
  threshold_acc = 1`` (the default): exact rejection sampling for point-mass
  proposals, on our ``verify_rejection`` kernel with ``target_probs`` read as
  probabilities in place. ``uniform_samples[b, c]`` (c >= 1) decides child c
  and ``uniform_samples_for_final_sampling[b]`` draws the correction or bonus
  token (SGLang uses one coin per level instead), so tokens differ from
  SGLang's for the same uniforms; the distribution is the same.
* Thresholds below 1: SGLang's relaxed rule, **lossy** (the output is not
  distributed as the target): at an accepted node with coin
  ``u = uniform_samples[b, node]``, child c (in list order) is accepted iff
  ``u <= (sum of p over c and the siblings tried before it) / threshold_acc``
  or ``p(c) >= threshold_single``; the final token is drawn with
  ``uniform_samples_for_final_sampling`` from p at the last accepted node less
  its rejected children's tokens. This follows sgl-kernel draw for draw
  (inverse CDF: the first token whose running sum exceeds u times the total).
  It runs as torch ops in the adapter, not in our kernels: O(log n) vectorised
  rounds over ``[B, n]`` and one ``[B, V]`` gather for the final draw.
* ``draft_probs`` is SGLang's scratch for the rejected tokens; it is not read
  or written here.

Cost, beyond sgl-kernel's ops: ``target_probs`` is read in place (no copy);
the tree's parents come from the linked lists by O(log n) vectorised
pointer-jumping rounds over ``[B, n]``. No host sync, so a CUDA graph can
capture the call.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import sampling
from .._checks import check_shape, check_tensor, fail

__all__ = ["verify_tree_greedy", "tree_speculative_sampling_target_only", "build_tree_buffers", "TreeBuffers",
           "parents_from_linked_lists", "TREE_MASK_MODES"]

_OP = "adapters.sglang.tree_speculative_sampling_target_only"
_OP_GREEDY = "adapters.sglang.verify_tree_greedy"
_OP_BUILD = "adapters.sglang.build_tree_buffers"
_INDEX = (torch.int32, torch.int64)


def _rounds(n: int) -> int:
    """Pointer-doubling rounds that cover a chain of n links."""
    return max(1, math.ceil(math.log2(max(n, 2))))


def _prev_siblings(next_sibling: torch.Tensor) -> torch.Tensor:
    """int64 [B, n]: the sibling before each node in list order, -1 for a first child."""
    batch, n = next_sibling.shape
    ns = next_sibling.long()
    rows = torch.arange(batch, device=ns.device).unsqueeze(1).expand(batch, n)
    nodes = torch.arange(n, device=ns.device).unsqueeze(0).expand(batch, n)
    prev = torch.full((batch, n + 1), -1, dtype=torch.int64, device=ns.device)
    prev[rows, torch.where((ns >= 0) & (ns < n), ns, n)] = nodes
    return prev[:, :n]


def _chain_scan(values: torch.Tensor, links: torch.Tensor, combine) -> torch.Tensor:
    """Inclusive scan of values along the chains ``links`` (-1 ends one):
    out[i] = combine over i, links[i], links[links[i]], ... in O(log n)
    vectorised rounds (no host sync)."""
    val, ptr = values.clone(), links.clone()
    for _ in range(_rounds(values.shape[1])):
        has = ptr >= 0
        safe = ptr.clamp(min=0)
        val = torch.where(has, combine(val, val.gather(1, safe)), val)
        ptr = torch.where(has, ptr.gather(1, safe), ptr)
    return val


def parents_from_linked_lists(next_token: torch.Tensor, next_sibling: torch.Tensor) -> torch.Tensor:
    """int64 ``[B, n]`` first-child / next-sibling lists -> int32 ``[B, n]`` local parents (-1 at
    node 0 and at nodes no list reaches)."""
    batch, n = next_token.shape
    device = next_token.device
    rows = torch.arange(batch, device=device).unsqueeze(1).expand(batch, n)
    nodes = torch.arange(n, device=device).unsqueeze(0).expand(batch, n)
    nt = next_token.long()
    # The parent of each chain head (a first child).
    head_parent = torch.full((batch, n + 1), -1, dtype=torch.int64, device=device)
    head_parent[rows, torch.where((nt >= 0) & (nt < n), nt, n)] = nodes
    # Each node's chain head: follow prev-sibling links to the first child.
    head = _chain_scan(torch.where(_prev_siblings(next_sibling) < 0, nodes, n), _prev_siblings(next_sibling),
                       torch.minimum)
    head = torch.where(head < n, head, nodes)
    parents = head_parent[:, :n].gather(1, head)
    parents[:, 0] = -1
    return parents.to(torch.int32)


def _check_tree_inputs(op, device, batch, n, candidates, retrive_index, retrive_next_token, retrive_next_sibling,
                       predicts, accept_index, accept_token_num) -> int:
    for name, t in (("candidates", candidates), ("retrive_index", retrive_index),
                    ("retrive_next_token", retrive_next_token), ("retrive_next_sibling", retrive_next_sibling)):
        check_tensor(op, name, t, dim=2, dtype=_INDEX, device=device)
        check_shape(op, name, t, (batch, n), f"[B={batch}, n={n}]")
    check_tensor(op, "predicts", predicts, dim=1, dtype=torch.int32, device=device)
    check_shape(op, "predicts", predicts, (batch * n,), f"int32 [B * n = {batch * n}]")
    check_tensor(op, "accept_index", accept_index, dim=2, dtype=torch.int32, device=device)
    if accept_index.shape[0] != batch or accept_index.shape[1] < 1:
        fail(op, f"accept_index must be int32 [B={batch}, S >= 1], got shape {tuple(accept_index.shape)}")
    check_tensor(op, "accept_token_num", accept_token_num, dim=1, dtype=torch.int32, device=device)
    check_shape(op, "accept_token_num", accept_token_num, (batch,), f"int32 [B={batch}]")
    width = accept_index.shape[1]
    if width > sampling.MAX_TREE_LEN:
        fail(op, f"accept_index has {width} columns, more than the supported {sampling.MAX_TREE_LEN}")
    return width


def _write_outputs(predicts, accept_index, accept_token_num, retrive_index, nodes, num_accepted, tokens) -> None:
    """SGLang's in-place outputs from a path: nodes int64 [B, S] (local, root
    first, -1 padded), num_accepted [B], tokens [B, S] (tokens[j] follows
    path node j; -1 padded). Only path entries of predicts are written."""
    on_path = nodes >= 0
    flat = retrive_index.long().gather(1, nodes.clamp(min=0))  # retrive index of each path node
    accept_index.copy_(torch.where(on_path, flat, accept_index.long()).to(torch.int32))
    accept_token_num.copy_(num_accepted.clamp(min=0))
    keep = on_path & (tokens >= 0)
    dest = torch.where(keep, flat, predicts.numel())
    scratch = torch.cat([predicts, predicts.new_zeros(1)])
    scratch.scatter_(0, dest.reshape(-1), torch.where(keep, tokens, 0).to(torch.int32).reshape(-1))
    predicts.copy_(scratch[:-1])


def _first_passing_path(passes, parents, prev, candidates, width):
    """The path SGLang's walk takes when child c (of an accepted node) is
    accepted iff ``passes[b, c]`` and no earlier sibling in list order passes.

    Returns (nodes int64 [B, width] local path, root first, -1 padded;
    num_accepted int64 [B]; last int64 [B], the path's last node; tokens int64
    [B, width] with the path's drafted tokens, -1 elsewhere, for the caller to
    put the final token at column num_accepted)."""
    batch, n = passes.shape
    device = passes.device
    par = parents.long()
    passes = passes & (par >= 0)
    earlier = torch.where(prev >= 0, _chain_scan(passes, prev, torch.logical_or).gather(1, prev.clamp(min=0)),
                          False)
    chosen = passes & ~earlier
    chosen[:, 0] = True
    accepted = _chain_scan(chosen, par, torch.logical_and)
    depth = _chain_scan(torch.ones(batch, n, dtype=torch.int64, device=device), par, torch.add) - 1
    accepted &= depth < width
    num_accepted = torch.where(accepted, depth, -1).max(1).values
    last = torch.where(accepted & (depth == num_accepted.unsqueeze(1)), torch.arange(n, device=device), n).min(1).values
    slot = torch.where(accepted, depth, width)
    nodes = torch.full((batch, width + 1), -1, dtype=torch.int64, device=device)
    nodes.scatter_(1, slot, torch.arange(n, device=device).expand(batch, n).contiguous())
    nodes = nodes[:, :width]
    tokens = torch.full((batch, width + 1), -1, dtype=torch.int64, device=device)
    tokens.scatter_(1, torch.where(accepted & (depth > 0), depth - 1, width), candidates.long())
    return nodes, num_accepted, last, tokens[:, :width]


def _put_final(tokens, num_accepted, final):
    return tokens.scatter(1, num_accepted.unsqueeze(1), final.long().unsqueeze(1))


def verify_tree_greedy(predicts, accept_index, accept_token_num, candidates, retrive_index, retrive_next_token,
                       retrive_next_sibling, target_predict) -> None:
    """sgl-kernel's ``verify_tree_greedy`` (module docstring for the conventions).

    Args:
        predicts: int32 ``[B * n]``, written in place. accept_index: int32 ``[B, S]``, written in place.
        accept_token_num: int32 ``[B]``, written in place.
        candidates, retrive_index, retrive_next_token, retrive_next_sibling: int32/int64 ``[B, n]``.
        target_predict: int32/int64 ``[B, n]`` or ``[B * n]``, the target's argmax after each node,
            by retrive index.

    Token comparisons only (no vocabulary-sized work): O(log n) vectorised
    rounds over ``[B, n]``, no host sync.
    """
    check_tensor(_OP_GREEDY, "candidates", candidates, dim=2, dtype=_INDEX)
    device = candidates.device
    batch, n = candidates.shape
    width = _check_tree_inputs(_OP_GREEDY, device, batch, n, candidates, retrive_index, retrive_next_token,
                               retrive_next_sibling, predicts, accept_index, accept_token_num)
    check_tensor(_OP_GREEDY, "target_predict", target_predict, dtype=_INDEX, device=device)
    if target_predict.numel() != batch * n:
        fail(_OP_GREEDY, f"target_predict must be [B={batch}, n={n}] or [B * n], got shape "
                         f"{tuple(target_predict.shape)}")
    predict = target_predict.reshape(-1).long()
    flat = retrive_index.long().clamp(0, batch * n - 1)
    parents = parents_from_linked_lists(retrive_next_token, retrive_next_sibling)
    prev = _prev_siblings(retrive_next_sibling)
    parent_predict = predict[flat].gather(1, parents.long().clamp(min=0))
    passes = candidates.long() == parent_predict
    nodes, num_accepted, last, tokens = _first_passing_path(passes, parents, prev, candidates, width)
    tokens = _put_final(tokens, num_accepted, predict[flat.gather(1, last.unsqueeze(1)).squeeze(1)])
    _write_outputs(predicts, accept_index, accept_token_num, retrive_index, nodes, num_accepted, tokens)


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
        target_probs: float ``[B, n, V]``, read in place. draft_probs: ignored (SGLang's scratch).
        threshold_single, threshold_acc: floats in [0, 1]; 1 and 1 (the default) is the exact rule,
            anything else SGLang's relaxed, lossy rule.
        deterministic: ignored (always deterministic).
        backend: ours for the exact rule (``"auto"``, ``"reference"``, ``"triton"``, ``"cuda"``, ``"cpu"``).
    """
    for name, v in (("threshold_single", threshold_single), ("threshold_acc", threshold_acc)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            fail(_OP, f"{name} must be a float in [0, 1], got {v!r}")
    check_tensor(_OP, "target_probs", target_probs, dim=3, dtype=sampling.LOGITS_DTYPES)
    device = target_probs.device
    batch, n, vocab = target_probs.shape
    width = _check_tree_inputs(_OP, device, batch, n, candidates, retrive_index, retrive_next_token,
                               retrive_next_sibling, predicts, accept_index, accept_token_num)
    check_tensor(_OP, "uniform_samples", uniform_samples, dim=2, dtype=torch.float32, device=device)
    check_shape(_OP, "uniform_samples", uniform_samples, (batch, n), f"float32 [B={batch}, n={n}]")
    check_tensor(_OP, "uniform_samples_for_final_sampling", uniform_samples_for_final_sampling, dim=1,
                 dtype=torch.float32, device=device)
    check_shape(_OP, "uniform_samples_for_final_sampling", uniform_samples_for_final_sampling, (batch,),
                f"float32 [B={batch}]")
    parents = parents_from_linked_lists(retrive_next_token, retrive_next_sibling)
    if threshold_single == 1.0 and threshold_acc == 1.0:
        uniforms = uniform_samples.clone()
        uniforms[:, 0] = uniform_samples_for_final_sampling
        indptr = torch.arange(batch + 1, dtype=torch.int32, device=device) * n
        res = sampling.verify_rejection(candidates.reshape(-1).long(), parents.reshape(-1), indptr, None, None,
                                        target_probs=target_probs.reshape(batch * n, vocab), temperature=1.0,
                                        uniforms=uniforms.reshape(-1), max_depth=width - 1, validate=False,
                                        backend=backend)
        _write_outputs(predicts, accept_index, accept_token_num, retrive_index, res.accepted_nodes.long(),
                       res.num_accepted, res.tokens)
        return
    _relaxed(predicts, accept_index, accept_token_num, candidates, retrive_index, retrive_next_sibling, parents,
             uniform_samples, uniform_samples_for_final_sampling, target_probs, float(threshold_single),
             max(float(threshold_acc), 1e-9), width)


def _relaxed(predicts, accept_index, accept_token_num, candidates, retrive_index, next_sibling, parents,
             uniform_samples, final_uniforms, target_probs, threshold_single, threshold_acc, width) -> None:
    """SGLang's relaxed (lossy) acceptance, module docstring."""
    batch, n, vocab = target_probs.shape
    device = target_probs.device
    par = parents.long().clamp(min=0)
    cand = candidates.long()
    inside = (cand >= 0) & (cand < vocab)
    rows = torch.arange(batch, device=device).unsqueeze(1)
    p = torch.where(inside, target_probs[rows, par, cand.clamp(0, vocab - 1)].float(), 0.0)
    prev = _prev_siblings(next_sibling)
    mass = _chain_scan(p.double(), prev, torch.add).float()  # p of c and the siblings tried before it
    coin = uniform_samples.gather(1, par)
    passes = (coin <= mass / threshold_acc) | (p >= threshold_single)
    nodes, num_accepted, last, tokens = _first_passing_path(passes, parents, prev, candidates, width)
    # The final draw: p at the last node less its children's tokens when they were all tried (and rejected).
    weights = target_probs[torch.arange(batch, device=device), last].float()
    tried = (parents.long() == last.unsqueeze(1)) & (num_accepted < width - 1).unsqueeze(1) & inside
    removed = torch.zeros(batch, vocab + 1, device=device)
    removed.scatter_(1, torch.where(tried, cand, vocab), 1.0)
    weights = torch.where(removed[:, :vocab] > 0, 0.0, weights.clamp(min=0))
    cum = weights.double().cumsum(1)
    target = final_uniforms.double() * cum[:, -1]
    hit = cum > target.unsqueeze(1)
    idx = torch.arange(vocab, device=device)
    first = torch.where(hit, idx, vocab).min(1).values
    last_positive = torch.where(weights > 0, idx, -1).max(1).values
    final = torch.where(first < vocab, first, last_positive.clamp(min=0))
    tokens = _put_final(tokens, num_accepted, final)
    _write_outputs(predicts, accept_index, accept_token_num, retrive_index, nodes, num_accepted, tokens)


TREE_MASK_MODES = ("full", "qlen_only")


class TreeBuffers(NamedTuple):
    """What SGLang's ``build_tree_kernel_efficient`` fills, for a static tree.

    tree_mask: bool; ``"full"`` (SGLang's FULL_MASK): per request, n rows of
        ``seq_len + n`` entries (the prefix all True, then ancestor-or-self),
        requests concatenated, flat; ``"qlen_only"`` (QLEN_ONLY): ``[B * n * n]``.
    positions: int64 ``[B * n]``, ``seq_lens[b] + depth``.
    retrive_index: int64 ``[B, n]``, ``b * n + i``.
    retrive_next_token, retrive_next_sibling: int64 ``[B, n]``, first child and
        next sibling (ascending node order), -1 for none.
    """
    tree_mask: torch.Tensor
    positions: torch.Tensor
    retrive_index: torch.Tensor
    retrive_next_token: torch.Tensor
    retrive_next_sibling: torch.Tensor


def build_tree_buffers(tree, seq_lens: torch.Tensor, tree_mask_mode: str = "full",
                       seq_lens_sum: int | None = None) -> TreeBuffers:
    """SGLang's EAGLE tree buffers (``build_tree_kernel_efficient``'s outputs) from our ``Tree``.

    Args:
        tree: ``specdec_kernels.Tree`` of n nodes, the same for every request.
        seq_lens: int32/int64 ``[B]``, tokens in each request's cache before the tree (the
            root sits at position ``seq_lens[b]``).
        tree_mask_mode: ``"full"`` or ``"qlen_only"`` (SGLang's bit-packed mode is not provided:
            ``Tree.packed_mask`` is ours).
        seq_lens_sum: ``sum(seq_lens)`` as a host int, as SGLang passes it; needed for ``"full"``
            (None: read from ``seq_lens``, a sync on CUDA).

    Returns:
        ``TreeBuffers`` on ``seq_lens``' device.
    """
    from ..trees import Tree

    if not isinstance(tree, Tree):
        fail(_OP_BUILD, f"tree must be a specdec_kernels.Tree, got {type(tree).__name__}", TypeError)
    if tree_mask_mode not in TREE_MASK_MODES:
        fail(_OP_BUILD, f"tree_mask_mode must be one of {TREE_MASK_MODES}, got {tree_mask_mode!r}")
    check_tensor(_OP_BUILD, "seq_lens", seq_lens, dim=1, dtype=_INDEX)
    device = seq_lens.device
    batch, n = seq_lens.shape[0], tree.size
    lens = seq_lens.long()
    first_child = [-1] * n
    next_sibling = [-1] * n
    for i in range(n - 1, 0, -1):  # backwards, so lists end up in ascending node order
        par = tree.parents[i]
        next_sibling[i] = first_child[par]
        first_child[par] = i
    next_token = torch.tensor(first_child, dtype=torch.int64, device=device).expand(batch, n).contiguous()
    next_sib = torch.tensor(next_sibling, dtype=torch.int64, device=device).expand(batch, n).contiguous()
    retrive_index = torch.arange(batch * n, dtype=torch.int64, device=device).reshape(batch, n)
    depth = torch.tensor(tree.depths, dtype=torch.int64, device=device)
    positions = (lens.unsqueeze(1) + depth).reshape(-1)
    mask = tree.mask_bool().to(device)
    if tree_mask_mode == "qlen_only":
        tree_mask = mask.expand(batch, n, n).reshape(-1).contiguous()
    else:
        if seq_lens_sum is None:
            seq_lens_sum = int(lens.sum())
        if isinstance(seq_lens_sum, bool) or not isinstance(seq_lens_sum, int) or seq_lens_sum < 0:
            fail(_OP_BUILD, f"seq_lens_sum must be an int >= 0, got {seq_lens_sum!r}")
        tree_mask = torch.ones(seq_lens_sum * n + batch * n * n, dtype=torch.bool, device=device)
        row_len = (lens + n).repeat_interleave(n)                         # [B * n]
        row_start = torch.cumsum(row_len, 0) - row_len
        cols = row_start.unsqueeze(1) + lens.repeat_interleave(n).unsqueeze(1) + torch.arange(n, device=device)
        tree_mask[cols.reshape(-1)] = mask.expand(batch, n, n).reshape(-1)
    return TreeBuffers(tree_mask, positions, retrive_index, next_token, next_sib)

"""Verification sampling: pick each request's accepted path through its drafted
tree, and the bonus token, in one launch for the whole ragged batch.

Layout (shared by the three ops). The tree tokens of B requests are
concatenated: request b owns rows ``qo_indptr[b] .. qo_indptr[b+1]-1``; local
node 0 is the root (the last accepted token; its own token is not re-checked).
``parents`` holds local parent indices (``-1`` at the root, ``parents[i] < i``)
and ``target_logits[i]`` the target's logits after node i, so a node's
children are judged against their parent's row.

A non-root row whose parent is ``-1`` is *inert*: it belongs to the request's
forward (a lookahead window cell, or padding up to a CUDA-graph shape) but is
never a candidate, its token is never read (any value, -1 included) and its
logits row is only read if it were an accepted node, which it cannot be. So a
runtime can verify the rows of one forward in place, without gathering the
candidate rows first.

Rules (DESIGN.md, "Verification semantics"):

* greedy: the first child (lowest index) whose token is the argmax of its
  parent's row (lowest index on ties) is accepted; the bonus token is the
  argmax at the last accepted node. Equal to plain greedy decoding.
* rejection: ``p`` is softmax(logits / temperature) after top-k then top-p
  (see ``target_probs`` in reference/sampling.py for the exact tie rules).
  Children are tried in index order against a running residual ``r`` (``p``
  at first). With ``draft_probs`` (row n = the distribution q the drafter
  sampled node n's children from, i.i.d. when there are several): accept x iff
  ``u * q(x) < r(x)``, else ``r = norm(max(0, r - q))``. Without it the
  children are point-mass (top-k / copied) proposals: accept x iff
  ``u < r(x)``, else ``r(x) = 0`` and renormalise. If no child is accepted the
  next token is drawn from ``r``. A chain is the one-child case and gives
  Leviathan/Chen speculative sampling; a tree gives SpecInfer's multi-step
  rule. Both are lossless: the output is distributed as sampling from ``p``.
* typical (Medusa, lossy by design): child c of an accepted node n is
  acceptable iff ``p_n(c) > min(posterior_threshold, posterior_alpha *
  exp(-H(p_n)))``; the deepest acceptable node wins (ties: larger summed log
  p, then lower index); the bonus is drawn from ``p`` at that node restricted
  to tokens at or above its threshold. No top-k / top-p.

A request whose temperature is 0 follows the greedy rule in every op, so a
batch may mix greedy and sampled requests.

Randomness: every draw is a uniform in [0, 1) tied to a row: row
``qo_indptr[b] + c`` decides child c's acceptance, and the root's row draws
the final token. Pass ``uniforms`` (float32 [N]) to fix them, or ``seed``
(+ ``offset``) to have the kernel draw ``uniforms[i] = philox(seed, offset +
i)`` itself (ints or int64 device tensors, so a CUDA graph can replay the call
while the caller advances ``offset`` by N), or a ``generator`` (or nothing: the
default generator), which fills uniforms with ``torch.rand``.

Probabilities in: pass ``target_probs=`` instead of ``target_logits`` when
the caller holds probabilities (vLLM, FlashInfer and SGLang do). Each rule
then reads a row p as the logits log(p), element by element inside the
kernel (no log pass, no copy), so softmax gives p / sum(p): rows need not be
normalised, temperature acts as p^(1/T), top-k / top-p filter p. Greedy takes
the argmax of p itself (log would only blur near-ties). Probabilities that
already carry the temperature and filters want ``temperature=1`` and no
filters.

Row map: by default node i reads row i of the target (and of draft_probs).
With ``target_indptr`` (int32 [B + 1]) and ``bonus_tokens`` ([B]) the target
has rows of its own: request b's are ``target_indptr[b]:target_indptr[b+1]``,
its node j reading the j-th of them, and a node past them has no row. Its
children are never accepted and a path that ends there emits
``bonus_tokens[b]``, a token the caller sampled itself. This is vLLM's layout
(one row per draft, none for the position after the last one, whose token the
engine samples): verification reads vLLM's rows in place instead of copying
them into one row per node. Uniforms stay one per node.

Invalid rows: a row the rule reads that holds a NaN, or whose largest logit
is not finite (+inf, or all -inf), cannot define a distribution (for
probabilities: a NaN or negative value, or no finite positive maximum). That
request gets ``num_accepted = -1`` and all -1 rows; with ``validate=True`` the
op raises instead, naming the request and the row.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import _checks, backends
from ._checks import fail
from .reference import sampling as ref_sampling

__all__ = ["verify_greedy", "verify_rejection", "verify_typical", "VerifyResult", "philox_uniforms",
           "LOGITS_DTYPES"]

LOGITS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Mirrors kMaxVerifyNodes in csrc/include/specdec/sampling.h.
MAX_TREE_LEN = 256

philox_uniforms = ref_sampling.philox_uniforms


class VerifyResult(NamedTuple):
    """``num_accepted`` int32 [B]: drafted tokens accepted (-1: invalid logits).
    ``accepted_nodes`` int32 [B, max_depth + 1]: local node indices, root
    first, -1 padded; feed it to ``compact_kv`` as is.
    ``tokens`` int64 [B, max_depth + 1]: the accepted tokens then the bonus
    (or correction) token, -1 padded."""
    num_accepted: torch.Tensor
    accepted_nodes: torch.Tensor
    tokens: torch.Tensor


def verify_greedy(draft_tokens, parents, qo_indptr, target_logits=None, *, target_probs=None, target_indptr=None,
                  bonus_tokens=None, allowed_tokens=None, max_depth: int | None = None, validate: bool = True,
                  backend: str = "auto") -> VerifyResult:
    """Greedy verification of a ragged batch of chains or trees.

    Args:
        draft_tokens: int64 or int32 ``[N]``, the token of every node (root included).
        parents: int32 ``[N]``, local parent index, -1 at each root.
        qo_indptr: int32 ``[B + 1]``, request b owns rows ``qo_indptr[b]:qo_indptr[b+1]``
            (at most 256 nodes; an empty request yields num_accepted 0 and -1 rows).
        target_logits: float32, bfloat16 or float16 ``[N, V]``, last dim
            contiguous; read in place, never copied.
        target_probs: the same, holding probabilities, in place of
            target_logits (module docstring); pass exactly one of the two.
        target_indptr, bonus_tokens: the row map (module docstring), both or
            neither: int32 ``[B + 1]`` into the rows of the target (then
            ``[R, V]`` with ``R = target_indptr[B]``, and draft_probs too) and
            int64/int32 ``[B]`` tokens the caller sampled for a path that ends
            at a node without a row.
        allowed_tokens: int32 ``[N, ceil(V / 32)]`` (``[R, ...]`` with the row
            map: one per row of the target) or None: a packed bitmask, bit
            ``j % 32`` of word ``j // 32`` set = token j allowed after that
            node (xgrammar's and vLLM's layout; bits past V are ignored). It
            masks the row before anything else: a disallowed draft token is
            never accepted, greedy picks the best allowed token, and the
            sampling rules sample the masked target (module docstring).
        max_depth: output width - 1. None: the deepest tree (reads ``parents``,
            a sync on CUDA). Nodes deeper than max_depth are ignored.
        validate: check index values and raise on invalid logits (syncs).
        backend: ``"auto"``, ``"reference"``, ``"triton"``, ``"cuda"`` or ``"cpu"``.
    """
    return _verify("verify_greedy", ref_sampling.GREEDY, draft_tokens, parents, qo_indptr, target_logits,
                   target_probs, None, {}, None, None, None, 0, max_depth, validate, backend,
                   target_indptr, bonus_tokens, allowed_tokens=allowed_tokens)


def verify_rejection(draft_tokens, parents, qo_indptr, target_logits=None, draft_probs=None, *,
                     target_probs=None, target_indptr=None, bonus_tokens=None, temperature=1.0, top_k=0,
                     top_p=1.0, min_p=0.0, allowed_tokens=None, uniforms=None, seed=None, offset=0, generator=None,
                     max_depth: int | None = None, validate: bool = True, backend: str = "auto",
                     rule: str = "token") -> VerifyResult:
    """Exact (lossless) rejection sampling over a ragged batch of chains or trees.

    Args (beyond ``verify_greedy``'s):
        target_probs: probabilities in place of target_logits (module docstring).
        target_indptr, bonus_tokens: the row map, as in ``verify_greedy``.
        draft_probs: ``[N, V]`` float32/bfloat16/float16 or None. Row n is the
            drafter's distribution that node n's children were sampled from
            (rows of leaves are not read). None: children are deterministic
            proposals (top-k of a drafter, copied n-grams).
        temperature: float or float32 ``[B]``, >= 0; 0 = greedy for that request.
        top_k: int or int32 ``[B]``, 0 = off. top_p: float or float32 ``[B]`` in (0, 1].
        min_p: float or float32 ``[B]`` in [0, 1], 0 = off: keep x iff
            ``p(x) >= min_p * max p``, tested as ``exp(z(x) - max z) >= min_p``
            in float32 (the same number, normalisation-free). Applied after
            temperature and before top-k and top-p, as vLLM does (min-p and
            top-k commute; transformers and SGLang apply it after top-p, which
            differs only when top_p < 1 too). Every rule verifies against the
            filtered target, so the output is distributed as sampling with
            these filters.
        allowed_tokens: the bitmask, as in ``verify_greedy``.
        uniforms / seed + offset / generator: the randomness (module docstring).
        rule: how a path is accepted; all three are lossless and use the same
            uniforms (node c's decides c, the root's draws the next token).
            ``"token"`` (default): children tried top-down against the running
            residual (module docstring). ``"traversal"``: leaf to root, a node
            decided only after its whole subtree was rejected, by a weight
            carried down the path (sequence-level ratios) and residual measures
            renormalised on each rejection (reference/sampling.py
            ``_walk_traversal`` has the definition); never shorter in
            expectation than "token", and longer wherever a rejected node's
            descendants would have been accepted. ``"block"``: Sun et al.'s
            block verification, which is "traversal" on a chain; a request whose
            tree is not a chain raises with ``validate=True`` and is verified
            with "traversal" otherwise. Every backend runs all three; the
            traversal kernels keep a few scalars per node (no residual row).
    """
    batch = _batch_size("verify_rejection", qo_indptr)
    if rule not in ref_sampling.RULES:
        fail("verify_rejection", f"rule must be one of {', '.join(map(repr, ref_sampling.RULES))}, got {rule!r}")
    device = _target_device(target_logits, target_probs)
    params = {
        "temperature": _per_request("verify_rejection", "temperature", temperature, batch, torch.float32, device),
        "top_k": _per_request("verify_rejection", "top_k", top_k, batch, torch.int32, device),
        "top_p": _per_request("verify_rejection", "top_p", top_p, batch, torch.float32, device),
        "min_p": _per_request("verify_rejection", "min_p", min_p, batch, torch.float32, device),
    }
    mode = ref_sampling.REJECTION if rule == "token" else ref_sampling.TRAVERSAL
    return _verify("verify_rejection", mode, draft_tokens, parents, qo_indptr, target_logits, target_probs,
                   draft_probs, params, uniforms, seed, generator, offset, max_depth, validate, backend,
                   target_indptr, bonus_tokens, rule, allowed_tokens)


def verify_typical(draft_tokens, parents, qo_indptr, target_logits=None, *, target_probs=None, target_indptr=None,
                   bonus_tokens=None, temperature=1.0, posterior_threshold=0.09, posterior_alpha=0.3,
                   allowed_tokens=None, uniforms=None, seed=None, offset=0, generator=None,
                   max_depth: int | None = None, validate: bool = True, backend: str = "auto") -> VerifyResult:
    """Medusa's typical acceptance (lossy: faster, not distributed as the target).

    Args (beyond ``verify_greedy``'s, target_probs and the row map included):
        temperature: float or float32 ``[B]``, >= 0; 0 = greedy for that request.
        posterior_threshold (eps), posterior_alpha: float or float32 ``[B]``, > 0.
        allowed_tokens: the bitmask, as in ``verify_greedy`` (p, its entropy and
            threshold are those of the masked row).
        uniforms / seed + offset / generator: the randomness (module docstring);
            only the root's draw is used (the bonus token).
    """
    op = "verify_typical"
    batch = _batch_size(op, qo_indptr)
    device = _target_device(target_logits, target_probs)
    params = {
        "temperature": _per_request(op, "temperature", temperature, batch, torch.float32, device),
        "posterior_threshold": _per_request(op, "posterior_threshold", posterior_threshold, batch,
                                            torch.float32, device),
        "posterior_alpha": _per_request(op, "posterior_alpha", posterior_alpha, batch, torch.float32, device),
    }
    return _verify(op, ref_sampling.TYPICAL, draft_tokens, parents, qo_indptr, target_logits, target_probs, None,
                   params, uniforms, seed, generator, offset, max_depth, validate, backend, target_indptr, bonus_tokens,
                   allowed_tokens=allowed_tokens)


def _target_device(target_logits, target_probs):
    target = target_logits if target_logits is not None else target_probs
    return target.device if isinstance(target, torch.Tensor) else None


def _batch_size(op, qo_indptr) -> int:
    _checks.check_tensor(op, "qo_indptr", qo_indptr, dim=1, dtype=torch.int32)
    if qo_indptr.numel() == 0:
        fail(op, "qo_indptr must be [B + 1] with B >= 0, got an empty tensor")
    return qo_indptr.numel() - 1


def _per_request(op, name, value, batch, dtype, device):
    """A scalar is broadcast to [B]; a tensor must already be [B] of ``dtype``."""
    if isinstance(value, torch.Tensor):
        _checks.check_tensor(op, name, value, dim=1, dtype=dtype, device=device)
        _checks.check_shape(op, name, value, (batch,), f"[B={batch}]")
        return value.contiguous()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(op, f"{name} must be a number or a [B] tensor, got {type(value).__name__}", TypeError)
    if dtype == torch.int32 and not isinstance(value, int):
        fail(op, f"{name} must be an int, got {value!r}", TypeError)
    return torch.full((batch,), value, dtype=dtype, device=device)


def _verify(op, mode, draft_tokens, parents, qo_indptr, target_logits, target_probs, draft_probs, params, uniforms,
            seed, generator, offset, max_depth, validate, backend, target_indptr=None,
            bonus_tokens=None, rule="token", allowed_tokens=None) -> VerifyResult:
    if (target_logits is None) == (target_probs is None):
        fail(op, "pass exactly one of target_logits and target_probs, got "
                 f"{'both' if target_logits is not None else 'neither'}", TypeError)
    is_probs = target_probs is not None
    target_name = "target_probs" if is_probs else "target_logits"
    target_logits = target_probs if is_probs else target_logits
    _checks.check_tensor(op, target_name, target_logits, dim=2, dtype=LOGITS_DTYPES)
    device = target_logits.device
    num_rows, vocab = target_logits.shape
    if vocab == 0:
        fail(op, f"{target_name} must have a vocabulary of at least 1 (V >= 1), got V = 0")
    _checks.check_last_dim_contiguous(op, target_name, target_logits)
    _checks.check_tensor(op, "draft_tokens", draft_tokens, dim=1, dtype=(torch.int64, torch.int32), device=device)
    mapped = target_indptr is not None
    if mapped != (bonus_tokens is not None):
        fail(op, "pass target_indptr and bonus_tokens together (the row map), got "
                 f"{'target_indptr' if mapped else 'bonus_tokens'} alone", TypeError)
    num_tokens = draft_tokens.numel() if mapped else num_rows
    if not mapped:
        _checks.check_shape(op, "draft_tokens", draft_tokens, (num_tokens,), f"[N={num_tokens}] ({target_name}' rows)")
    _checks.check_index_vector(op, "parents", parents, num_tokens, device)
    batch = _batch_size(op, qo_indptr)
    _checks.check_index_vector(op, "qo_indptr", qo_indptr, batch + 1, device)
    if mapped:
        _checks.check_index_vector(op, "target_indptr", target_indptr, batch + 1, device)
        _checks.check_tensor(op, "bonus_tokens", bonus_tokens, dim=1, dtype=(torch.int64, torch.int32), device=device)
        _checks.check_shape(op, "bonus_tokens", bonus_tokens, (batch,), f"[B={batch}]")
        bonus_tokens = bonus_tokens.long().contiguous()
    if draft_probs is not None:
        _checks.check_tensor(op, "draft_probs", draft_probs, dim=2, dtype=LOGITS_DTYPES, device=device)
        _checks.check_shape(op, "draft_probs", draft_probs, (num_rows, vocab),
                            f"[{'R' if mapped else 'N'}={num_rows}, V={vocab}] ({target_name}' rows)")
        _checks.check_last_dim_contiguous(op, "draft_probs", draft_probs)
    if allowed_tokens is not None:
        words = (vocab + 31) // 32
        _checks.check_tensor(op, "allowed_tokens", allowed_tokens, dim=2, dtype=torch.int32, device=device)
        _checks.check_shape(op, "allowed_tokens", allowed_tokens, (num_rows, words),
                            f"int32 [{'R' if mapped else 'N'}={num_rows}, ceil(V / 32)={words}] (a packed bitmask "
                            f"per row of {target_name})")
        _checks.check_last_dim_contiguous(op, "allowed_tokens", allowed_tokens)
    philox = None
    if mode != ref_sampling.GREEDY:
        uniforms, philox = _randomness(op, uniforms, seed, offset, generator, num_tokens, device)
    lengths = _checks.check_indptr_values(op, qo_indptr, num_tokens) if validate else None
    if max_depth is None:
        max_depth = _deepest(parents, qo_indptr)
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
        fail(op, f"max_depth must be an int >= 0, got {max_depth!r}")
    if max_depth + 1 > MAX_TREE_LEN:
        fail(op, f"max_depth + 1 = {max_depth + 1} exceeds the supported {MAX_TREE_LEN}")
    width = max_depth + 1
    if validate:
        _validate(op, lengths, draft_tokens, parents, qo_indptr, vocab, max_depth, draft_probs, params)
        if rule == "block":
            _validate_chains(op, parents, qo_indptr, lengths)
        if mapped:
            _validate_row_map(op, target_indptr, bonus_tokens, num_rows, vocab)
    draft_tokens = draft_tokens.long()
    chosen = backends.choose(op, backend, device)
    args = (draft_tokens, parents, qo_indptr, target_logits, draft_probs, params.get("temperature"),
            params.get("top_k"), params.get("top_p"), params.get("posterior_threshold"),
            params.get("posterior_alpha"))
    extras = dict(min_p=params.get("min_p"), allowed_tokens=allowed_tokens)
    if chosen == "reference":
        if uniforms is None and philox is not None:
            uniforms = _philox_tensor_uniforms(philox, num_tokens, device)
        out = ref_sampling.verify(*args, uniforms, mode, width, is_probs, target_indptr, bonus_tokens, **extras)
    elif chosen == "triton":
        from .triton import sampling as triton_sampling

        out = triton_sampling.verify(*args, uniforms, philox, mode, width, is_probs, target_indptr, bonus_tokens,
                                     **extras)
    else:
        out = torch.ops.specdec.verify_tree(*args, uniforms, philox, mode, width, is_probs, target_indptr,
                                            bonus_tokens, **extras)
    result = VerifyResult(*out)
    if validate:
        _raise_on_invalid_rows(op, result, target_indptr if mapped else qo_indptr, target_logits, target_name,
                               allowed_tokens)
    return result


def _randomness(op, uniforms, seed, offset, generator, num_tokens, device):
    """-> (uniforms float32 [N] or None, philox int64 [2] (seed, offset) or None)."""
    given = [name for name, v in (("uniforms", uniforms), ("seed", seed), ("generator", generator))
             if v is not None]
    if len(given) > 1:
        fail(op, f"pass at most one of uniforms, seed and generator; got {' and '.join(given)}")
    if uniforms is not None:
        _checks.check_tensor(op, "uniforms", uniforms, dim=1, dtype=torch.float32, device=device)
        _checks.check_shape(op, "uniforms", uniforms, (num_tokens,), f"float32 [N={num_tokens}], one per row")
        return uniforms.contiguous(), None
    if seed is not None:
        parts = []
        for name, v in (("seed", seed), ("offset", offset)):
            if isinstance(v, torch.Tensor):
                _checks.check_tensor(op, name, v, dtype=torch.int64, device=device)
                if v.numel() != 1:
                    fail(op, f"{name} must be an int or a one-element int64 tensor, got shape {tuple(v.shape)}")
                parts.append(v.reshape(1))
            elif isinstance(v, int) and not isinstance(v, bool):
                parts.append(torch.tensor([v & 0xFFFFFFFFFFFFFFFF if v < 2**63 else v - 2**64], dtype=torch.int64)
                             .to(device))
            else:
                fail(op, f"{name} must be an int or a one-element int64 tensor, got {type(v).__name__}", TypeError)
        return None, torch.cat(parts)
    if generator is not None and not isinstance(generator, torch.Generator):
        fail(op, f"generator must be a torch.Generator, got {type(generator).__name__}", TypeError)
    if generator is not None and generator.device.type != device.type:
        fail(op, f"generator is on {generator.device} but target_logits is on {device}")
    return torch.rand(num_tokens, generator=generator, device=device, dtype=torch.float32), None


def _philox_tensor_uniforms(philox, num_tokens, device):
    seed, offset = (int(v) for v in philox.cpu())
    return philox_uniforms(seed, offset, num_tokens).to(device)


def _deepest(parents, qo_indptr) -> int:
    """Depth of the deepest node over all requests (reads values: a sync)."""
    par = parents.cpu().tolist()
    indptr = qo_indptr.cpu().tolist()
    deepest = 0
    for b in range(len(indptr) - 1):
        s, e = max(0, indptr[b]), min(len(par), indptr[b + 1])  # unvalidated indptr must not raise here
        depth = [0] * (e - s)
        for i in range(1, e - s):
            p = par[s + i]
            depth[i] = depth[p] + 1 if 0 <= p < i else 0
        deepest = max(deepest, max(depth, default=0))
    return deepest


def _validate(op, lengths, draft_tokens, parents, qo_indptr, vocab, max_depth, draft_probs, params) -> None:
    if (lengths > MAX_TREE_LEN).any():
        b = int((lengths > MAX_TREE_LEN).nonzero()[0, 0])
        fail(op, f"request {b} has {int(lengths[b])} nodes (qo_indptr); at most {MAX_TREE_LEN} are supported")
    tokens = draft_tokens.cpu().long()
    par = parents.cpu().long()
    starts = torch.repeat_interleave(qo_indptr.cpu().long()[:-1], lengths)
    local = torch.arange(par.numel()) - starts
    is_root = local == 0
    inert = ~is_root & (par == -1)
    bad = ~inert & ((tokens < 0) | (tokens >= vocab))
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        fail(op, f"draft_tokens[{i}] = {int(tokens[i])} is outside the vocabulary [0, {vocab})")
    bad_root = is_root & (par != -1)
    if bad_root.any():
        i = int(bad_root.nonzero()[0, 0])
        fail(op, f"parents[{i}] = {int(par[i])}: row {i} is a root (local node 0) and its parent must be -1")
    bad_parent = ~is_root & ~inert & ((par < 0) | (par >= local))
    if bad_parent.any():
        i = int(bad_parent.nonzero()[0, 0])
        fail(op, f"parents[{i}] = {int(par[i])}: node {int(local[i])} of its request needs a parent in "
                 f"[0, {int(local[i])}) (or -1 for an inert row)")
    deepest = _deepest(parents, qo_indptr)
    if deepest > max_depth:
        fail(op, f"a tree is {deepest} deep but max_depth = {max_depth}; pass max_depth >= {deepest} "
                 "(or None to size the output from the trees)")
    for name, lo, hi, lo_open in (("temperature", 0.0, float("inf"), False), ("top_p", 0.0, 1.0, True),
                                  ("min_p", 0.0, 1.0, False),
                                  ("posterior_threshold", 0.0, float("inf"), True),
                                  ("posterior_alpha", 0.0, float("inf"), True)):
        if name not in params:
            continue
        v = params[name].cpu()
        bad = ~torch.isfinite(v) | (v > hi) | ((v <= lo) if lo_open else (v < lo))
        if bad.any():
            b = int(bad.nonzero()[0, 0])
            interval = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}{']' if hi == 1.0 else ')'}"
            fail(op, f"{name}[{b}] = {float(v[b])} must be finite and in {interval}")
    if "top_k" in params:
        k = params["top_k"].cpu()
        if (k < 0).any():
            b = int((k < 0).nonzero()[0, 0])
            fail(op, f"top_k[{b}] = {int(k[b])} must be >= 0 (0 turns it off)")
    if draft_probs is not None:
        q = draft_probs.float()
        bad_rows = (~torch.isfinite(q) | (q < 0)).any(dim=1).cpu()
        if bad_rows.any():
            i = int(bad_rows.nonzero()[0, 0])
            fail(op, f"draft_probs row {i} holds a negative, NaN or infinite value")


def _validate_chains(op, parents, qo_indptr, lengths) -> None:
    """Block verification needs chains: no node with two children (inert rows are no one's children)."""
    par = parents.cpu().long()
    starts = torch.repeat_interleave(qo_indptr.cpu().long()[:-1], lengths)
    real = par >= 0
    owner = starts[real] + par[real]  # the parent's global row
    counts = torch.bincount(owner, minlength=par.numel())
    if (counts > 1).any():
        row = int((counts > 1).nonzero()[0, 0])
        b = int(torch.searchsorted(qo_indptr.cpu().long(), torch.tensor(row), right=True)) - 1
        fail(op, f"rule='block' verifies chains, but node {row - int(qo_indptr[b])} of request {b} has "
                 f"{int(counts[row])} children; use rule='traversal' for trees (or validate=False, which "
                 "verifies such a request with 'traversal')")


def _validate_row_map(op, target_indptr, bonus_tokens, num_rows, vocab) -> None:
    _checks.check_indptr_values(op, target_indptr, num_rows, name="target_indptr", what="rows of the target")
    bonus = bonus_tokens.cpu()
    bad = (bonus < 0) | (bonus >= vocab)
    if bad.any():
        b = int(bad.nonzero()[0, 0])
        fail(op, f"bonus_tokens[{b}] = {int(bonus[b])} is outside the vocabulary [0, {vocab})")


def _raise_on_invalid_rows(op, result, qo_indptr, target, target_name, allowed_tokens=None) -> None:
    """qo_indptr: where each request's rows of ``target`` lie (the row map's
    target_indptr when given)."""
    flagged = (result.num_accepted < 0).cpu()
    if not flagged.any():
        return
    b = int(flagged.nonzero()[0, 0])
    s, e = (int(x) for x in qo_indptr[b:b + 2].cpu())
    rows = target[s:e].float().cpu()
    if allowed_tokens is not None:
        allowed = ref_sampling.unpack_bitmask(allowed_tokens[s:e].cpu(), rows.shape[1])
        empty = ~allowed.any(dim=1)
        if empty.any():
            i = int(empty.nonzero()[0, 0])
            fail(op, f"allowed_tokens allows no token after node {i} of request {b} (row {s + i}), which the rule "
                     "reads, so nothing can be emitted there. With validate=False such a request returns "
                     "num_accepted = -1 instead of raising.")
        rows = torch.where(allowed, rows, torch.zeros_like(rows) if target_name == "target_probs"
                           else torch.full_like(rows, float("-inf")))
    if target_name == "target_probs":
        rows = torch.log(rows)  # NaN where negative, -inf where 0: the logits the rule reads
        rule = "rows without NaN or negative values whose largest probability is finite and positive"
    else:
        rule = "rows without NaN whose largest logit is finite"
    bad = (torch.isnan(rows).any(dim=1) | ~torch.isfinite(rows.max(dim=1).values)).cpu()
    detail = ""
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        detail = f" (row {s + i}, node {i})"
    fail(op, f"{target_name} of request {b} cannot define a distribution{detail}; the rule reads {rule}. "
             "With validate=False such a request returns num_accepted = -1 instead of raising.")

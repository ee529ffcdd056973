"""vLLM V1's rejection sampler on our kernels.

``rejection_sample`` has the signature, argument order and output convention of
vLLM V1's module-level function in ``vllm/v1/sample/rejection_sampler.py``:

    output = rejection_sample(draft_token_ids, num_draft_tokens, max_spec_len, cu_num_draft_tokens,
                              draft_probs, target_probs, bonus_token_ids, sampling_metadata)

Conventions (vLLM's):
* Request b's drafts are ``draft_token_ids[cu[b] - n_b : cu[b]]`` with
  ``n_b = num_draft_tokens[b]`` and ``cu = cu_num_draft_tokens`` (inclusive
  cumulative sums, ``[B]``). ``target_probs[t]`` (``[num_tokens, V]``) is the
  target's distribution that draft t is judged against, ``draft_probs[t]`` the
  drafter's (None: n-gram proposals, a point mass). ``bonus_token_ids``
  (``[B, 1]``) was sampled by the engine's own sampler from the position after
  the last draft.
* ``target_probs`` holds probabilities (temperature, top-k and top-p already
  applied by vLLM's ``compute_probs``), except when ``sampling_metadata.all_greedy``:
  then, as in vLLM, it holds the raw logits (only their argmax is used).
* A request is greedy when its ``sampling_metadata.temperature`` entry is
  ``<= 0`` (vLLM marks greedy with -1 in older and 0 in newer releases) or
  ``all_greedy`` is set: the drafts are accepted while they equal the argmax,
  the first mismatch emits the argmax, and a fully accepted request emits its
  bonus token. A random request follows exact rejection sampling: draft x is
  accepted with probability ``min(1, p(x) / q(x))`` (``p(x)`` for n-gram
  drafts); the first rejection emits a token drawn from ``norm(max(0, p - q))``
  (n-gram: ``p`` with the draft token removed); a fully accepted request emits
  its bonus token.
* Output: int32 ``[B, max_spec_len + 1]``, the emitted tokens of each request
  left-aligned and padded with ``PLACEHOLDER_TOKEN_ID`` (-1).

Randomness: ``sampling_metadata.generators`` (request index -> torch.Generator)
seed a request's draws, others come from the default generator. The draws are
ours (one uniform per position, the recovered token by inverse CDF), not
vLLM's exponential race, so a seeded request reproduces itself here but not
vLLM's exact tokens; the distribution is the same.

Cost, beyond vLLM's op: nothing of vocabulary size. ``target_probs`` and
``draft_probs`` are read in place (probabilities natively, no log pass, no
fp32 copy): our verify ops' row map (``target_indptr`` + ``bonus_tokens``)
lets request b read vLLM's rows ``cu[b] - n_b .. cu[b] - 1`` and emit
``bonus_token_ids[b]`` when every draft is accepted, so no row is needed for
the bonus position. Index tensors are O(num_tokens + B), plus one float32
uniform per node. No host sync on CUDA beyond what ``num_draft_tokens`` (a
host list, as in vLLM) already gives.
"""
from __future__ import annotations

import torch

from .. import sampling
from .._checks import check_shape, check_tensor, fail

__all__ = ["rejection_sample", "PLACEHOLDER_TOKEN_ID", "MAX_SPEC_LEN"]

PLACEHOLDER_TOKEN_ID = -1
MAX_SPEC_LEN = sampling.MAX_TREE_LEN - 1
_OP = "adapters.vllm.rejection_sample"


def rejection_sample(draft_token_ids: torch.Tensor, num_draft_tokens: list[int], max_spec_len: int,
                     cu_num_draft_tokens: torch.Tensor, draft_probs: torch.Tensor | None,
                     target_probs: torch.Tensor, bonus_token_ids: torch.Tensor, sampling_metadata,
                     *, backend: str = "auto") -> torch.Tensor:
    """vLLM V1's ``rejection_sample`` (module docstring for the conventions).

    Args:
        draft_token_ids: int32/int64 ``[num_tokens]``.
        num_draft_tokens: list of B ints, drafts per request.
        max_spec_len: int, ``>= max(num_draft_tokens)``; the output has ``max_spec_len + 1`` columns.
        cu_num_draft_tokens: int32/int64 ``[B]``, inclusive cumulative sums of ``num_draft_tokens``.
        draft_probs: float ``[num_tokens, V]`` or None (n-gram drafts).
        target_probs: float ``[num_tokens, V]``: probabilities (logits when ``all_greedy``).
        bonus_token_ids: int ``[B, 1]`` (or ``[B]``).
        sampling_metadata: an object with ``all_greedy``, ``temperature`` (float ``[B]`` or None
            when all greedy) and ``generators`` (dict request index -> torch.Generator), as vLLM's.
        backend: ours (``"auto"``, ``"reference"``, ``"triton"``, ``"cuda"``, ``"cpu"``).

    Returns:
        int32 ``[B, max_spec_len + 1]``, -1 padded.
    """
    check_tensor(_OP, "target_probs", target_probs, dim=2, dtype=sampling.LOGITS_DTYPES)
    device = target_probs.device
    num_tokens, vocab = target_probs.shape
    check_tensor(_OP, "draft_token_ids", draft_token_ids, dim=1, dtype=(torch.int32, torch.int64), device=device)
    check_shape(_OP, "draft_token_ids", draft_token_ids, (num_tokens,), f"[num_tokens={num_tokens}]")
    if not isinstance(num_draft_tokens, (list, tuple)) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in num_draft_tokens):
        fail(_OP, "num_draft_tokens must be a list of ints >= 0 (one per request)", TypeError)
    batch = len(num_draft_tokens)
    if sum(num_draft_tokens) != num_tokens:
        fail(_OP, f"num_draft_tokens sums to {sum(num_draft_tokens)} but draft_token_ids has {num_tokens} tokens")
    if isinstance(max_spec_len, bool) or not isinstance(max_spec_len, int) or max_spec_len < 0:
        fail(_OP, f"max_spec_len must be an int >= 0, got {max_spec_len!r}")
    if max(num_draft_tokens, default=0) > max_spec_len:
        fail(_OP, f"a request has {max(num_draft_tokens)} drafts, more than max_spec_len = {max_spec_len}")
    if max_spec_len > MAX_SPEC_LEN:
        fail(_OP, f"max_spec_len = {max_spec_len} exceeds the supported {MAX_SPEC_LEN}")
    check_tensor(_OP, "cu_num_draft_tokens", cu_num_draft_tokens, dim=1, dtype=(torch.int32, torch.int64),
                 device=device)
    check_shape(_OP, "cu_num_draft_tokens", cu_num_draft_tokens, (batch,), f"[B={batch}]")
    check_tensor(_OP, "bonus_token_ids", bonus_token_ids, dtype=(torch.int32, torch.int64), device=device)
    if bonus_token_ids.numel() != batch:
        fail(_OP, f"bonus_token_ids must be [B={batch}, 1], got shape {tuple(bonus_token_ids.shape)}")
    if draft_probs is not None:
        check_tensor(_OP, "draft_probs", draft_probs, dim=2, dtype=sampling.LOGITS_DTYPES, device=device)
        check_shape(_OP, "draft_probs", draft_probs, (num_tokens, vocab), f"[num_tokens={num_tokens}, V={vocab}]")

    all_greedy = bool(getattr(sampling_metadata, "all_greedy", False))
    temperature = getattr(sampling_metadata, "temperature", None)
    if not all_greedy and (not isinstance(temperature, torch.Tensor) or temperature.shape != (batch,)):
        fail(_OP, f"sampling_metadata.temperature must be a [B={batch}] tensor unless all_greedy")

    # Our layout: request b is a chain of n_b + 1 nodes; node 0 is the root
    # (its token unread) and node j + 1 is draft j. vLLM's rows are read in
    # place through the row map: request b's rows cu[b] - n_b .. cu[b] - 1
    # judge its drafts, and its last node has no row, so a fully accepted
    # request emits vLLM's bonus token.
    n = torch.tensor(num_draft_tokens, dtype=torch.int64, device=device)
    total = num_tokens + batch
    indptr = torch.zeros(batch + 1, dtype=torch.int64, device=device)
    torch.cumsum(n + 1, 0, out=indptr[1:])
    row_indptr = torch.zeros(batch + 1, dtype=torch.int32, device=device)
    torch.cumsum(n, 0, out=row_indptr[1:])
    bonus = bonus_token_ids.reshape(-1).long()
    # Draft t of request b is node t + b + 1.
    node_of = torch.arange(num_tokens, device=device) + torch.repeat_interleave(
        torch.arange(batch, device=device), n, output_size=num_tokens) + 1
    tokens = torch.zeros(total, dtype=torch.int64, device=device)
    tokens.index_copy_(0, node_of, draft_token_ids.long())
    req = torch.repeat_interleave(torch.arange(batch, device=device), n + 1, output_size=total)
    parents = (torch.arange(total, device=device) - indptr[req] - 1).to(torch.int32)  # local; the root's is -1
    indptr32 = indptr.to(torch.int32)
    row_map = dict(target_indptr=row_indptr, bonus_tokens=bonus)
    # Our kernels need the vocabulary contiguous; vLLM's tensors are, so this copies nothing there.
    target_probs = target_probs if target_probs.stride(-1) == 1 else target_probs.contiguous()
    if draft_probs is not None and draft_probs.stride(-1) != 1:
        draft_probs = draft_probs.contiguous()

    if all_greedy:
        # vLLM passes logits here (only their argmax is used).
        res = sampling.verify_greedy(tokens, parents, indptr32, target_probs, max_depth=max_spec_len,
                                     validate=False, backend=backend, **row_map)
    else:
        uniforms = torch.rand(total, dtype=torch.float32, device=device)
        generators = getattr(sampling_metadata, "generators", None) or {}
        if generators:
            starts = [0]
            for k in num_draft_tokens:
                starts.append(starts[-1] + k + 1)
            for b, g in generators.items():
                if 0 <= b < batch and num_draft_tokens[b] > 0:  # as vLLM: no draws for a request with no drafts
                    uniforms[starts[b]:starts[b + 1]] = torch.rand(num_draft_tokens[b] + 1, generator=g,
                                                                   device=device, dtype=torch.float32)
        res = sampling.verify_rejection(tokens, parents, indptr32, None, draft_probs, target_probs=target_probs,
                                        temperature=torch.where(temperature.to(device) <= 0, 0.0, 1.0).float(),
                                        uniforms=uniforms,
                                        max_depth=max_spec_len, validate=False, backend=backend, **row_map)
    return res.tokens.to(torch.int32)

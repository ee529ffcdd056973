"""FlashInfer's chain speculative sampling on our kernels.

``chain_speculative_sampling`` has the signature and outputs of
``flashinfer.sampling.chain_speculative_sampling`` (FlashInfer 0.2 - 0.7):

    output_token_ids, accepted_num, emitted_num = chain_speculative_sampling(
        draft_probs, draft_token_ids, target_probs, maybe_output_accepted_token_num=None,
        maybe_output_emitted_draft_token_num=None, deterministic=True, generator=None, seed=None, offset=None)

Conventions (FlashInfer's):
* Every request drafts the same n tokens: ``draft_token_ids`` ``[B, n]``,
  ``draft_probs`` ``[B, n, V]`` (row i: the distribution draft i was sampled
  from), ``target_probs`` ``[B, n + 1, V]`` (row i: the target's distribution
  draft i is judged against; row n: the bonus position). Probabilities, not logits.
* Draft i is accepted iff ``u_i * q(x_i) < p(x_i)``; the first rejection emits
  a token from ``norm(max(0, p - q))``; a fully accepted request emits a token
  from ``target_probs[:, n]``. Exact (lossless).
* ``output_token_ids``: int32 ``[B, n + 1]``, -1 padded.
* ``output_emitted_draft_token_num[b] += `` the drafts emitted (accepted before
  the first rejection). ``output_accepted_token_num[b] += `` that count plus the
  positions from the first rejection on whose draft passes the test on its own
  with a fresh uniform (FlashInfer's acceptance-rate metric, which ignores that
  sampling stops at the first rejection). Passed tensors (int32 ``[B]``) are
  accumulated in place and returned; otherwise fresh zeros are.
* ``deterministic`` is accepted and has no effect: every backend here is
  deterministic. ``generator``, or ``seed`` (+ ``offset``), fix the draws (the
  metric's extra uniforms too when seed and offset are ints); they are ours (our Philox, our inverse-CDF residual draw), so a seed reproduces
  itself here, not FlashInfer's tokens; the distribution is the same.
* A request whose rows hold no valid distribution gets -1 tokens and adds 0 to
  the counters.

Cost, beyond FlashInfer's op: ``target_probs`` is read in place (our ops take
probabilities natively; a non-contiguous tensor is made contiguous first).
``draft_probs`` gets a zero row per request at the bonus position, so it lines
up with our one-row-per-node layout: one ``[B, n + 1, V]`` copy in its own
dtype (no fp32 conversion). The rest is O(B n). No host sync on CUDA.
"""
from __future__ import annotations

import torch

from .. import sampling
from .._checks import check_shape, check_tensor, fail

__all__ = ["chain_speculative_sampling"]

_OP = "adapters.flashinfer.chain_speculative_sampling"


def chain_speculative_sampling(draft_probs: torch.Tensor, draft_token_ids: torch.Tensor, target_probs: torch.Tensor,
                               maybe_output_accepted_token_num: torch.Tensor | None = None,
                               maybe_output_emitted_draft_token_num: torch.Tensor | None = None,
                               deterministic: bool = True, generator: torch.Generator | None = None,
                               seed=None, offset=None, *, backend: str = "auto"):
    """FlashInfer's ``chain_speculative_sampling`` (module docstring for the conventions).

    Args:
        draft_probs: float ``[B, n, V]``.
        draft_token_ids: int32/int64 ``[B, n]``.
        target_probs: float ``[B, n + 1, V]``.
        maybe_output_accepted_token_num, maybe_output_emitted_draft_token_num: int32 ``[B]`` or None.
        deterministic: ignored (always deterministic).
        generator / seed (+ offset): the randomness (at most one of them).
        backend: ours (``"auto"``, ``"reference"``, ``"triton"``, ``"cuda"``, ``"cpu"``).

    Returns:
        (output_token_ids int32 ``[B, n + 1]``, accepted int32 ``[B]``, emitted int32 ``[B]``).
    """
    check_tensor(_OP, "target_probs", target_probs, dim=3, dtype=sampling.LOGITS_DTYPES)
    device = target_probs.device
    batch, n1, vocab = target_probs.shape
    n = n1 - 1
    if n < 0:
        fail(_OP, "target_probs must be [B, n + 1, V] with n >= 0, got n + 1 = 0")
    check_tensor(_OP, "draft_probs", draft_probs, dim=3, dtype=sampling.LOGITS_DTYPES, device=device)
    check_shape(_OP, "draft_probs", draft_probs, (batch, n, vocab), f"[B={batch}, n={n}, V={vocab}]")
    check_tensor(_OP, "draft_token_ids", draft_token_ids, dim=2, dtype=(torch.int32, torch.int64), device=device)
    check_shape(_OP, "draft_token_ids", draft_token_ids, (batch, n), f"[B={batch}, n={n}]")
    counters = []
    for name, t in (("maybe_output_accepted_token_num", maybe_output_accepted_token_num),
                    ("maybe_output_emitted_draft_token_num", maybe_output_emitted_draft_token_num)):
        if t is None:
            t = torch.zeros(batch, dtype=torch.int32, device=device)
        else:
            check_tensor(_OP, name, t, dim=1, dtype=torch.int32, device=device)
            check_shape(_OP, name, t, (batch,), f"int32 [B={batch}]")
        counters.append(t)
    accepted_num, emitted_num = counters
    if seed is None and offset is not None:
        fail(_OP, "offset needs seed")

    # Our layout: request b is a chain of n + 1 nodes (root, then the drafts);
    # row j is the distribution draft j (node j + 1) is judged against.
    rows = batch * n1
    probs = target_probs.reshape(rows, vocab)
    q = torch.cat([draft_probs, draft_probs.new_zeros(batch, 1, vocab)], 1).reshape(rows, vocab)
    tokens = torch.cat([torch.zeros(batch, 1, dtype=torch.int64, device=device), draft_token_ids.long()], 1)
    tokens = tokens.reshape(rows)
    local = torch.arange(n1, dtype=torch.int32, device=device) - 1
    parents = local.repeat(batch)
    indptr = (torch.arange(batch + 1, dtype=torch.int32, device=device) * n1)
    res = sampling.verify_rejection(tokens, parents, indptr, None, q, target_probs=probs, temperature=1.0,
                                    generator=generator, seed=seed, offset=0 if offset is None else offset,
                                    max_depth=n, validate=False, backend=backend)
    emitted = res.num_accepted.clamp(min=0)

    # FlashInfer's metric: the same test on each later position, with fresh uniforms.
    if n:
        if isinstance(seed, int) and (offset is None or isinstance(offset, int)):
            # Philox counters past the ones the verify draws used.
            u = sampling.philox_uniforms(seed, (offset or 0) + rows, batch * n).to(device).reshape(batch, n)
        else:
            u = torch.rand(batch, n, generator=generator, device=device, dtype=torch.float32)
        x = draft_token_ids.long().unsqueeze(-1)
        p_at = target_probs[:, :n].gather(2, x).squeeze(-1).float()
        q_at = draft_probs.gather(2, x).squeeze(-1).float()
        later = torch.arange(n, device=device).unsqueeze(0) >= emitted.unsqueeze(1)
        extra = (later & (u * q_at < p_at)).sum(1)
    else:
        extra = torch.zeros_like(emitted)
    valid = res.num_accepted >= 0
    accepted_num += torch.where(valid, emitted + extra, 0).to(torch.int32)
    emitted_num += emitted.to(torch.int32)
    return res.tokens.to(torch.int32), accepted_num, emitted_num

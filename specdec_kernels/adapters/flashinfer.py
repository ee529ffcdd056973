"""FlashInfer's speculative-decoding calls on our kernels.

``chain_speculative_sampling`` has the signature and outputs of
``flashinfer.sampling.chain_speculative_sampling`` (FlashInfer 0.2 - 0.7), and
``BatchPrefillWithPagedKVCacheWrapper`` the plan/run call pattern FlashInfer
users verify a tree with (a paged prefill whose custom mask shows every
query the whole prefix and its tree ancestors), on our ``tree_attention``:

    wrapper = BatchPrefillWithPagedKVCacheWrapper(workspace, kv_layout="NHD")
    wrapper.plan(qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len,
                 num_qo_heads, num_kv_heads, head_dim, page_size, custom_mask=mask)
    out = wrapper.run(q, (k_cache, v_cache))

Sampling:

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

import math

import torch

from .. import attention, sampling, trees
from .._checks import check_shape, check_tensor, fail

__all__ = ["chain_speculative_sampling", "BatchPrefillWithPagedKVCacheWrapper"]

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


_PREFILL = "adapters.flashinfer.BatchPrefillWithPagedKVCacheWrapper"


class BatchPrefillWithPagedKVCacheWrapper:
    """FlashInfer's paged prefill wrapper for tree verification, on our ``tree_attention``.

    ``plan`` takes FlashInfer's page-table arguments and custom mask and turns
    them into our block table, prefix lengths and packed tree mask (host work,
    once per tree shape, as FlashInfer's plan is); ``run`` is one
    ``tree_attention`` launch, with no host sync, so it can be captured in a
    CUDA graph after ``plan``.

    What is supported is the tree-verification pattern: each request's
    ``qo_len`` queries are its last ``qo_len`` KV positions (the tree, already
    appended to the cache), every query sees the whole prefix (``kv_len -
    qo_len`` positions), and among the tree tokens any mask. ``plan`` raises if
    a custom mask hides a prefix position. ``causal=True`` is the chain case.
    Not supported (raise): ``pos_encoding_mode`` other than ``"NONE"``,
    ``logits_soft_cap``, sliding windows, ``kv_layout`` other than NHD / HND.
    """

    def __init__(self, float_workspace_buffer: torch.Tensor | None = None, kv_layout: str = "NHD", *args, **kwargs):
        if kv_layout not in ("NHD", "HND"):
            fail(_PREFILL, f"kv_layout must be 'NHD' or 'HND', got {kv_layout!r}")
        self._layout = kv_layout
        self._plan = None

    def plan(self, qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads: int,
             num_kv_heads: int, head_dim_qk: int, page_size: int, head_dim_vo: int | None = None,
             custom_mask: torch.Tensor | None = None, packed_custom_mask: torch.Tensor | None = None,
             causal: bool = False, pos_encoding_mode: str = "NONE", window_left: int = -1,
             logits_soft_cap: float | None = None, sm_scale: float | None = None, **kwargs) -> None:
        """FlashInfer's ``plan`` (the arguments above; the rest of FlashInfer's are accepted and unused).

        Args:
            qo_indptr: int ``[B + 1]``, query rows per request.
            paged_kv_indptr: int ``[B + 1]``; paged_kv_indices: int ``[nnz_pages]``, each request's pages;
                paged_kv_last_page_len: int ``[B]``, entries used in its last page.
            custom_mask: bool, each request's ``[qo_len, kv_len]`` block flattened row-major, concatenated;
                or packed_custom_mask: uint8, each request's block bit-packed little-endian, padded to a
                byte (``flashinfer.packbits(..., bitorder="little")`` per request).
            causal: no custom mask, query i sees positions ``<= kv_len - qo_len + i``.
            sm_scale: default ``1 / sqrt(head_dim)``.
        """
        if pos_encoding_mode != "NONE":
            fail(_PREFILL, f"pos_encoding_mode must be 'NONE' (apply RoPE before the call), got {pos_encoding_mode!r}")
        if window_left != -1 or logits_soft_cap not in (None, 0.0):
            fail(_PREFILL, "sliding windows and logits_soft_cap are not supported")
        if head_dim_vo not in (None, head_dim_qk):
            fail(_PREFILL, f"head_dim_vo must equal head_dim_qk = {head_dim_qk}, got {head_dim_vo}")
        if num_qo_heads % num_kv_heads:
            fail(_PREFILL, f"num_qo_heads = {num_qo_heads} must be a multiple of num_kv_heads = {num_kv_heads}")
        if custom_mask is not None and packed_custom_mask is not None:
            fail(_PREFILL, "pass custom_mask or packed_custom_mask, not both")
        masked = custom_mask is not None or packed_custom_mask is not None
        if masked and causal:
            fail(_PREFILL, "causal=True and a custom mask exclude each other")
        if not masked and not causal:
            fail(_PREFILL, "tree verification needs a custom mask (or causal=True for a chain); a mask-free "
                           "non-causal prefill would let tree tokens see their siblings")
        qo = qo_indptr.detach().cpu().long()
        kv_ptr = paged_kv_indptr.detach().cpu().long()
        last = paged_kv_last_page_len.detach().cpu().long()
        batch = qo.numel() - 1
        if kv_ptr.numel() != batch + 1 or last.numel() != batch:
            fail(_PREFILL, f"paged_kv_indptr must be [B + 1 = {batch + 1}] and paged_kv_last_page_len [B = {batch}]")
        pages = kv_ptr[1:] - kv_ptr[:-1]
        qo_len = qo[1:] - qo[:-1]
        if (qo_len < 0).any() or (pages < 0).any() or qo[0] != 0:
            fail(_PREFILL, "qo_indptr and paged_kv_indptr must start at 0 and be non-decreasing")
        if ((last < 1) | (last > page_size))[pages > 0].any():
            fail(_PREFILL, f"paged_kv_last_page_len must be in [1, page_size = {page_size}] for requests with pages")
        kv_len = torch.where(pages > 0, (pages - 1) * page_size + last, 0)
        prefix = kv_len - qo_len
        if (prefix < 0).any():
            b = int((prefix < 0).nonzero()[0, 0])
            fail(_PREFILL, f"request {b} has {int(qo_len[b])} queries but only {int(kv_len[b])} KV positions; the "
                           "tree's own KV must be in the cache before the call")
        if (qo_len > attention.MAX_TREE_LEN).any():
            fail(_PREFILL, f"at most {attention.MAX_TREE_LEN} queries per request are supported")
        device = paged_kv_indices.device
        width = max(1, int(pages.max()) if batch else 1)
        col = torch.arange(width)
        indices = paged_kv_indices.detach().cpu().long()
        idx = (kv_ptr[:-1].unsqueeze(1) + col).clamp(max=max(indices.numel() - 1, 0))
        table = torch.where(col < pages.unsqueeze(1), indices[idx] if indices.numel() else 0, 0)
        tree_mask = None
        if masked:
            tree_mask = self._tree_mask(custom_mask, packed_custom_mask, qo_len, kv_len, prefix).to(device)
        self._plan = dict(
            block_table=table.to(torch.int32).to(device), prefix_lens=prefix.to(torch.int32).to(device),
            qo_indptr=qo.to(torch.int32).to(device), tree_mask=tree_mask, num_qo_heads=num_qo_heads,
            num_kv_heads=num_kv_heads, head_dim=head_dim_qk, page_size=page_size,
            sm_scale=sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim_qk))

    @staticmethod
    def _tree_mask(custom_mask, packed, qo_len, kv_len, prefix) -> torch.Tensor:
        """Our packed int32 [N, words] tree mask from FlashInfer's per-request [qo_len, kv_len] blocks."""
        sizes = qo_len * kv_len
        if packed is not None:
            check_tensor(_PREFILL, "packed_custom_mask", packed, dim=1, dtype=torch.uint8)
            byte_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum((sizes + 7) // 8, 0)])
            if packed.numel() != int(byte_ptr[-1]):
                fail(_PREFILL, f"packed_custom_mask must hold {int(byte_ptr[-1])} bytes (each request's "
                               f"qo_len * kv_len bits, padded to a byte), got {packed.numel()}")
            bits = ((packed.cpu().long().unsqueeze(1) >> torch.arange(8)) & 1).reshape(-1).bool()
            seg_start = byte_ptr[:-1] * 8
        else:
            check_tensor(_PREFILL, "custom_mask", custom_mask, dim=1, dtype=torch.bool)
            if custom_mask.numel() != int(sizes.sum()):
                fail(_PREFILL, f"custom_mask must hold sum(qo_len * kv_len) = {int(sizes.sum())} entries, got "
                               f"{custom_mask.numel()}")
            bits = custom_mask.cpu()
            seg_start = torch.cumsum(sizes, 0) - sizes
        # Every query row: its request, local index, and where its row starts in `bits`.
        req = torch.repeat_interleave(torch.arange(qo_len.numel()), qo_len)
        local = torch.arange(req.numel()) - (torch.cumsum(qo_len, 0) - qo_len)[req]
        row_start = seg_start[req] + local * kv_len[req]
        top = max(bits.numel() - 1, 0)
        # The prefix must be fully visible.
        longest = int(prefix.max()) if prefix.numel() else 0
        if longest and req.numel():
            cols = torch.arange(longest)
            in_prefix = cols < prefix[req].unsqueeze(1)
            seen = bits[(row_start.unsqueeze(1) + cols).clamp(max=top)] | ~in_prefix
            if not seen.all():
                r = int((~seen.all(1)).nonzero()[0, 0])
                fail(_PREFILL, f"the mask hides part of request {int(req[r])}'s prefix from its query "
                               f"{int(local[r])}; tree attention shows every query the whole prefix")
        tmax = max(1, int(qo_len.max()) if qo_len.numel() else 1)
        cols = torch.arange(tmax)
        inside = cols < qo_len[req].unsqueeze(1)
        pos = (row_start + prefix[req]).unsqueeze(1) + cols
        tree = (bits[pos.clamp(max=top)] & inside) if bits.numel() else torch.zeros_like(inside)
        return trees.pack_mask(tree)

    def run(self, q: torch.Tensor, paged_kv_cache, *, return_lse: bool = False, backend: str = "auto"):
        """FlashInfer's ``run``: ``q`` ``[N, num_qo_heads, head_dim]``; ``paged_kv_cache`` a ``(k, v)``
        pair of ``[pages, page_size, H_kv, D]`` (NHD; ``[pages, H_kv, page_size, D]`` for HND) or one
        ``[pages, 2, ...]`` tensor. Returns ``out`` ``[N, num_qo_heads, head_dim]`` (and ``lse``
        ``[N, num_qo_heads]`` float32, natural log, with ``return_lse``). No copy of the cache, no sync."""
        if self._plan is None:
            fail(_PREFILL, "call plan() before run()")
        plan = self._plan
        if isinstance(paged_kv_cache, (tuple, list)):
            if len(paged_kv_cache) != 2:
                fail(_PREFILL, "paged_kv_cache must be a (k_cache, v_cache) pair or one [pages, 2, ...] tensor")
            k, v = paged_kv_cache
        else:
            check_tensor(_PREFILL, "paged_kv_cache", paged_kv_cache, dim=5)
            k, v = paged_kv_cache[:, 0], paged_kv_cache[:, 1]
        if self._layout == "HND":
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        if k.dim() != 4 or k.shape[1] != plan["page_size"] or k.shape[2] != plan["num_kv_heads"]:
            fail(_PREFILL, f"the KV cache must be [pages, page_size={plan['page_size']}, H_kv="
                           f"{plan['num_kv_heads']}, D] in {self._layout} order, got {tuple(k.shape)}")
        if q.dim() != 3 or q.shape[1] != plan["num_qo_heads"] or q.shape[2] != plan["head_dim"]:
            fail(_PREFILL, f"q must be [N, num_qo_heads={plan['num_qo_heads']}, head_dim={plan['head_dim']}], "
                           f"got {tuple(q.shape)}")
        return attention.tree_attention(q, k, v, plan["block_table"], plan["prefix_lens"], plan["qo_indptr"],
                                        plan["tree_mask"], sm_scale=plan["sm_scale"], return_lse=return_lse,
                                        validate=False, backend=backend)

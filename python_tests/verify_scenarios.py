"""Random ragged batches of drafted chains and trees for the verify ops.

Drafted tokens follow the target often enough that paths go deep: a child's
token is its parent row's argmax with probability ``follow``, else random.
Logits can be quantised to a few levels so argmax and top-k ties are common.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class VerifyCase:
    draft_tokens: torch.Tensor
    parents: torch.Tensor
    qo_indptr: torch.Tensor
    target_logits: torch.Tensor
    draft_probs: torch.Tensor | None
    uniforms: torch.Tensor
    sizes: list[int]

    @property
    def batch(self) -> int:
        return len(self.sizes)

    def args(self):
        return self.draft_tokens, self.parents, self.qo_indptr, self.target_logits


def random_parents(gen: torch.Generator, size: int, kind: str) -> list[int]:
    if size == 0:
        return []
    if kind == "chain":
        return [-1] + list(range(size - 1))
    return [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, size)]


def make_case(seed: int, sizes, *, vocab: int, kind: str = "tree", dtype=torch.float32, device="cpu",
              with_q: bool = False, ties: bool = False, follow: float = 0.6, scale: float = 2.0,
              row_stride_pad: int = 0) -> VerifyCase:
    gen = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    if ties:
        logits = torch.randint(0, 3, (n, vocab), generator=gen).float()
    else:
        logits = torch.randn(n, vocab, generator=gen) * scale
    # Rows farther apart than V (a slice of a wider buffer) when row_stride_pad > 0.
    wide = torch.randn(n, vocab + row_stride_pad, generator=gen)
    wide[:, :vocab] = logits
    logits = wide.to(dtype=dtype, device=device)[:, :vocab]
    parents, tokens = [], []
    start = 0
    for size in sizes:
        par = random_parents(gen, size, kind)
        parents += par
        for i, p in enumerate(par):
            if p < 0 or float(torch.rand(1, generator=gen)) >= follow:
                tokens.append(int(torch.randint(0, vocab, (1,), generator=gen)))
            else:
                tokens.append(int(logits[start + p].float().argmax()))
        start += size
    q = None
    if with_q:
        q = torch.softmax(torch.randn(n, vocab, generator=gen) * scale, dim=1).to(dtype)
    indptr = torch.tensor([0] + torch.tensor(sizes, dtype=torch.long).cumsum(0).tolist(), dtype=torch.int32)
    return VerifyCase(
        draft_tokens=torch.tensor(tokens, dtype=torch.int64).to(device),
        parents=torch.tensor(parents, dtype=torch.int32).to(device),
        qo_indptr=indptr.to(device),
        target_logits=logits,
        draft_probs=q.to(device) if q is not None else None,
        uniforms=torch.rand(n, generator=gen).to(device),
        sizes=list(sizes),
    )

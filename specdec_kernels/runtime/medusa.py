"""Medusa heads (Cai et al. 2024) and the drafter that fills a Medusa tree
from them.

Head ``h`` reads the target's last hidden state x (after the final norm) and
predicts the token ``h + 2`` positions ahead: ``num_layers`` residual blocks
``x = x + SiLU(W x + b)`` then a vocabulary projection without bias.

Weights file (safetensors) keys, as Medusa's own ``medusa_lm_head`` state
dict names them (an ``nn.ModuleList`` of ``nn.Sequential``):

* ``{h}.{l}.linear.weight`` ``[H, H]`` and ``{h}.{l}.linear.bias`` ``[H]``:
  block ``l`` of head ``h``;
* ``{h}.{num_layers}.weight`` ``[V, H]``: head ``h``'s projection.

A ``medusa_head.`` prefix on every key (Medusa's full-model checkpoints) is
accepted and stripped.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..trees import MC_SIM_7B_63, Tree
from .step import Draft
from .templates import DraftTemplate


class ResBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)

    def forward(self, x):
        return x + F.silu(self.linear(x))


class MedusaHeads(nn.Module):
    """``num_heads`` heads over hidden size ``hidden``; ``forward(hidden [B, H])``
    returns logits ``[B, num_heads, V]``."""

    def __init__(self, hidden: int, vocab: int, num_heads: int = 4, num_layers: int = 1):
        super().__init__()
        if num_heads < 1 or num_layers < 0:
            raise ValueError(f"need num_heads >= 1 and num_layers >= 0, got {num_heads}, {num_layers}")
        self.hidden, self.vocab, self.num_heads, self.num_layers = hidden, vocab, num_heads, num_layers
        self.heads = nn.ModuleList(
            nn.Sequential(*[ResBlock(hidden) for _ in range(num_layers)], nn.Linear(hidden, vocab, bias=False))
            for _ in range(num_heads))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(hidden) for head in self.heads], dim=1)

    @classmethod
    def random(cls, hidden, vocab, *, num_heads=4, num_layers=1, seed=0, std=0.05, dtype=torch.float32,
               device="cpu"):
        torch.manual_seed(seed)
        heads = cls(hidden, vocab, num_heads, num_layers)
        with torch.no_grad():
            for p in heads.parameters():
                p.normal_(0.0, std)
        return heads.to(dtype=dtype, device=device).eval()

    def state_dict_flat(self) -> dict:
        """The weights under the documented key names (``{h}.{l}.linear.weight``...)."""
        return {k.removeprefix("heads."): v for k, v in self.state_dict().items()}

    def save(self, path):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict_flat().items()}, str(path))

    @classmethod
    def from_file(cls, path, *, dtype=torch.float32, device="cpu") -> "MedusaHeads":
        """Load a safetensors file of head weights (key names in the module
        docstring); the head and layer counts come from the keys."""
        from safetensors.torch import load_file

        state = {k.removeprefix("medusa_head."): v for k, v in load_file(str(Path(path))).items()}
        proj = {}
        for key in state:
            m = re.fullmatch(r"(\d+)\.(\d+)\.weight", key)
            if m:
                proj[int(m.group(1))] = int(m.group(2))
        if not proj or sorted(proj) != list(range(len(proj))) or len(set(proj.values())) != 1:
            raise ValueError(f"{path}: expected keys '{{h}}.{{num_layers}}.weight' for heads 0..n-1 with one "
                             f"layer count, found projections {proj or 'none'}")
        num_layers = proj[0]
        vocab, hidden = state[f"0.{num_layers}.weight"].shape
        heads = cls(hidden, vocab, len(proj), num_layers)
        expected = set(heads.state_dict_flat())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"{path}: Medusa head keys do not match {len(proj)} heads x {num_layers} layers: "
                             f"missing {missing[:4]}, unexpected {extra[:4]}")
        heads.load_state_dict({f"heads.{k}": v for k, v in state.items()})
        return heads.to(dtype=dtype, device=device).eval()


class MedusaDrafter:
    """Fills ``tree`` (from Medusa choices: node ``i`` takes rank
    ``tree.rank[i]`` of head ``tree.head[i]``'s top-k) from the heads' logits
    at the target's hidden state of the last accepted node, which the verify
    step hands back (no extra target pass). The first step of a sequence has
    no hidden state yet and verifies the root alone."""

    def __init__(self, heads: MedusaHeads, choices=MC_SIM_7B_63):
        tree = choices if isinstance(choices, Tree) else Tree.from_choices(choices)
        if tree.choices is None:
            raise ValueError("the Medusa tree must come from choices (Tree.from_choices)")
        if max(tree.head) >= heads.num_heads:
            raise ValueError(f"the choices need {max(tree.head) + 1} heads but the Medusa weights have "
                             f"{heads.num_heads}")
        self.heads, self.tree = heads, tree
        self.top = max(tree.rank) + 1
        device = next(heads.parameters()).device
        self._head_idx = torch.tensor(tree.head[1:], device=device)
        self._rank_idx = torch.tensor(tree.rank[1:], device=device)
        self.template = DraftTemplate(tree.parents[1:])
        self.hidden = {}

    def max_rows(self, k):
        return self.tree.size

    def start(self, seqs, history):
        self.hidden = {}

    def propose(self, seqs, history, ks):
        ready = [s for s in seqs if s in self.hidden]
        drafts = {s: Draft() for s in seqs}
        if ready:
            hidden = torch.stack([self.hidden[s] for s in ready])
            logits = self.heads(hidden.to(next(self.heads.parameters()).dtype))  # [B, heads, V]
            top = torch.topk(logits.float(), min(self.top, logits.shape[-1]), dim=-1).indices
            if top.shape[-1] < self.top:  # vocab smaller than the ranks: repeat the last
                top = torch.cat([top, top[..., -1:].expand(*top.shape[:-1], self.top - top.shape[-1])], -1)
            nodes = top[:, self._head_idx, self._rank_idx]  # stays on the device
            for i, s in enumerate(ready):
                drafts[s] = Draft(tokens=nodes[i], template=self.template)
        return [drafts[s] for s in seqs], 1 if ready else 0

    def accepted(self, seqs, old_lengths, result):
        for i, s in enumerate(seqs):
            self.hidden[s] = result.last_hidden[i]

    def finish(self, seq):
        self.hidden.pop(seq, None)

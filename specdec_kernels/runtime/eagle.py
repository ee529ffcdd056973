"""EAGLE draft heads (Li et al., EAGLE, arXiv 2401.15077; EAGLE-3, arXiv
2503.01840): a one-layer Llama decoder that drafts from the target's own
features, with its own paged KV cache, run by the same ``append_kv`` /
``tree_attention`` ops as the target.

Architecture (EAGLE-1's ``cnets.Model`` with one layer)::

    x   = fc([embed(token) ; feature])        # Linear(2H -> H, bias), embedding first, as EAGLE's code
    x   = x + o_proj(attn(x))                  # no input norm on this layer (EAGLE's layer 0 has none)
    out = x + mlp(post_attention_layernorm(x)) # SwiGLU, the target's shapes
    logits = lm_head(out)                      # the target's LM head, frozen; no final norm

``out`` is the head's prediction of the *next* feature, and is what the next
depth feeds back as its feature while drafting.

Features (which hidden state the head reads):

* ``fusion="eagle1"``: the target's last hidden state *after* the final norm,
  the ``hidden`` ``LlamaModel.forward`` returns (and Medusa reads). This is what
  EAGLE-1 trains on: its data script takes Hugging Face's
  ``hidden_states[-1]``, which Hugging Face's Llama records after ``norm``, and
  its head feeds the predicted feature straight to the LM head.
* ``fusion="eagle3"``: three of the target's hidden states (low, middle, high;
  the pre-norm residual stream) concatenated, ``[N, 3H]``, projected by
  ``fusion`` (``Linear(3H -> H)``, no bias, EAGLE-3's ``fc``) before the same
  layer. EAGLE-3 takes the inputs of layers ``2, L // 2, L - 3`` (Hugging
  Face's ``hidden_states`` indices); for fewer than 7 layers those collide, and
  ``eagle3_layers`` takes ``1, L // 2, L - 1`` instead: for the shipped
  4-layer target, indices ``(1, 2, 3)``, the outputs of decoder layers 0, 1
  and 2 (the inputs of layers 1, 2, 3). Pass them to the target as
  ``target(..., capture=head.capture)`` (``LlamaModel.forward``'s third
  output). Draft elements, whose feature is the head's own ``out``, pass
  ``[N, H]`` and skip the fusion, as in EAGLE-3. Unlike EAGLE-3,
  the layer's attention still reads the H-wide ``fc`` output (EAGLE-3 widens
  q/k/v to 2H), and the target's full vocabulary is kept (no ``d2t`` map).

Training (``bench/train_tiny.py --only eagle``, through ``forward_dense``):
EAGLE-1's loss, ``1.0 * smooth_l1(out, next feature) + 0.1 * CE(target's
next-token distribution, softmax(lm_head(out)))``, with uniform noise on the
input features; the shipped ``eagle_head.safetensors`` is an eagle1 head.
``--eagle-fusion eagle3`` trains the fused variant with the same loss (its
``out`` still regresses onto the target's final feature); EAGLE-3 itself drops
the regression and trains with "training-time test" (unrolled drafting),
which is not implemented here, and it shows: on the tiny target (400 steps)
the fused head's first draft matches the eagle1 head's (82.7 % vs 83.0 % of
the target's greedy tokens) but its deeper drafts are never accepted (greedy
chains 1.00 of 3, eagle1 2.22), since the ``out`` it feeds back is not what
``fc`` saw in training (the fused features).

Element layout (the head's "sequence"): element ``j`` pairs the feature of
token ``j`` with the embedding of token ``j + 1``, sits in cache slot ``j`` at
RoPE position ``j``, and its ``out`` predicts the feature of token ``j + 1``,
so its logits are the draft distribution of token ``j + 2``. With the target's
cache holding ``P`` tokens and the root (last token, not yet in the cache) at
position ``P``, the head's cache holds ``P`` elements too (the last is
``(f[P-1], root)``), and:

* the root's children (depth-1 candidates) come from the logits of the last
  committed element (no extra call);
* a draft node at depth ``d >= 1`` (token ``t``, at position ``P + d``) is the
  element ``(out of its parent's element, t)`` at position ``P + d - 1`` (its
  parent's position; for ``d = 1`` the parent's element is the last committed
  one), and its logits are the distribution of its children. A tree of depth
  ``D`` takes ``D - 1`` ``step`` calls after the commit.

Drafting API::

    logits, out = head.step(features, tokens, positions, cache, block_table, prefix_lens, qo_indptr,
                             tree_mask=None, drafted=None, prefill=False)

* ``features`` ``[N, H]`` (or ``[N, 3H]`` target features under eagle3),
  ``tokens`` int64 ``[N]``, ``positions`` int64 ``[N]``, ragged by
  ``qo_indptr`` (int32 ``[B + 1]``), in the head's dtype and device.
* ``cache``: the head's one-layer ``PagedKVCache`` (``head.new_cache(...)``),
  with its own allocator; ``block_table`` int32 ``[B, max_blocks]`` from it;
  ``prefix_lens`` int32 ``[B]``: committed elements (the tree starts there).
* ``drafted``: int32 ``[B]``, an int (the same for every sequence: no host
  sync) or None (0): draft elements already in the cache after the prefix
  (earlier depths). Row ``i`` of sequence ``b`` is written at
  ``prefix_lens[b] + drafted[b] + i``.
* ``tree_mask``: packed int32 rows (``specdec_kernels.trees`` format) over the
  tree region, bit ``j`` = the element at ``prefix_lens[b] + j``, for
  ``j < drafted[b] + n_b``: a node sets its ancestors' bits and its own.
  None: a chain (every drafted element and the earlier new rows visible).
  The committed prefix is always visible. With ``drafted`` and a mask, each
  sequence's query rows are padded in front with ``drafted[b]`` inert rows
  so ``tree_attention``'s row ``i`` = tree element ``i`` (their outputs are
  dropped), at most 256 elements per tree.
* ``prefill=True``: the new rows attend causally with PyTorch SDPA (empty
  prefix, any length: a prompt), still written with ``append_kv``.
* Returns ``(logits [N, V], out [N, H])``: the draft distribution of each
  row's next token through the target's LM head, and the predicted feature
  the next depth feeds back. ``head.logits(out)`` recomputes the former.

Committing and rolling back: entries written while drafting were computed
from predicted features, so EAGLE discards them all: after a verify step
accepts ``k`` tokens ``a_1..a_k`` and the bonus ``b``, cut the head's cache
back to ``P`` (``cache.allocator.truncate(seq, P)``; no data moves) and run one
``step`` (``drafted=None``, ``tree_mask=None``) over the ``k + 1`` elements
``(f[P], a_1), ..., (f[P+k-1], a_k), (f[P+k], b)`` at positions ``P..P+k``,
with the target's features ``f`` of the root and the accepted nodes (the
verify forward's hidden at those rows); the head's cache is then ``P + k + 1``
long, as the target's, and the last row's logits give the new root's
children. After a prompt, the same: the target's prefill of ``x[0..P-1]``
gives ``f[0..P-1]``, and one ``step(prefill=True)`` commits the ``P`` elements
``(f[j], x[j+1])``. (``compact_kv`` on the head's
one-layer cache, ``compact_kv(cache.k, cache.v, ...)``, moves kept draft
entries into place the way the target's step does, for a drafter that keeps
them instead; EAGLE does not.)

Weights file (safetensors), key names as EAGLE-1's checkpoints (the target's
embedding and LM head are not stored; an ``embed_tokens.weight`` in the file,
as EAGLE-1 ships, is ignored):

============================================  =============  =========================
key                                           shape          what
============================================  =============  =========================
``fc.weight``, ``fc.bias``                    [H, 2H], [H]   [embedding ; feature] -> H
``fusion.weight`` (eagle3 only)               [H, 3H]        low ; mid ; high -> H
``layers.0.self_attn.q_proj.weight``          [Hq*D, H]      (``.bias`` with qkv_bias)
``layers.0.self_attn.k_proj.weight``          [Hkv*D, H]     (``.bias`` with qkv_bias)
``layers.0.self_attn.v_proj.weight``          [Hkv*D, H]     (``.bias`` with qkv_bias)
``layers.0.self_attn.o_proj.weight``          [H, Hq*D]
``layers.0.post_attention_layernorm.weight``  [H]
``layers.0.mlp.gate_proj.weight``             [I, H]
``layers.0.mlp.up_proj.weight``               [I, H]
``layers.0.mlp.down_proj.weight``             [H, I]
============================================  =============  =========================

Metadata (safetensors header): ``format`` = ``specdec_kernels.eagle``,
``fusion`` (``eagle1``/``eagle3``), ``fusion_layers`` (comma-separated
``hidden_states`` indices, eagle3), ``hidden_size``, ``vocab_size``. Heads,
attention shapes, eps and RoPE come from the target's config; the MLP width
``I`` from the file.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import tree_attention
from ..kv_cache import append_kv
from .config import ModelConfig
from .model import DecoderLayer, PagedKVCache, causal_sdpa, rope_cos_sin, rotate

FUSIONS = ("eagle1", "eagle3")
FORMAT = "specdec_kernels.eagle"


def eagle3_layers(num_layers: int) -> tuple[int, int, int]:
    """The low, middle and high hidden states an EAGLE-3 head fuses, as Hugging
    Face ``hidden_states`` indices (``i`` = the input of layer ``i``):
    EAGLE-3's ``(2, L // 2, L - 3)`` when distinct (``L >= 7``), else
    ``(1, L // 2, L - 1)`` (``L >= 4``; the 4-layer tiny target: ``(1, 2, 3)``)."""
    if num_layers < 4:
        raise ValueError(f"fusion='eagle3' needs a target of at least 4 layers for three distinct hidden "
                         f"states, got {num_layers}")
    layers = (2, num_layers // 2, num_layers - 3)
    if len(set(layers)) < 3 or sorted(layers) != list(layers):
        layers = (1, num_layers // 2, num_layers - 1)
    return layers


class EagleHead(nn.Module):
    """An EAGLE draft head for a target of config ``config`` (see the module
    docstring). Built unattached; ``attach(target)`` (done by ``from_target``
    and ``load``) points it at the target's embedding and LM head."""

    def __init__(self, config: ModelConfig, fusion: str = "eagle1", layers=None, *,
                 intermediate_size: int | None = None):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.target_config = config
        self.config = cfg = dataclasses.replace(config, num_layers=1,
                                                intermediate_size=intermediate_size or config.intermediate_size)
        h = cfg.hidden_size
        self.fusion_kind = fusion
        self.fc = nn.Linear(2 * h, h, bias=True)
        self.layers = nn.ModuleList([DecoderLayer(cfg)])
        self.layers[0].input_layernorm = None  # EAGLE's draft layer has no input norm
        if fusion == "eagle3":
            self.fusion_layers = tuple(layers) if layers is not None else eagle3_layers(config.num_layers)
            if len(self.fusion_layers) != 3 or not all(0 <= i <= config.num_layers for i in self.fusion_layers):
                raise ValueError(f"fusion_layers must be three hidden-state indices in [0, {config.num_layers}], "
                                 f"got {self.fusion_layers}")
            self.fusion = nn.Linear(3 * h, h, bias=False)
        else:
            if layers is not None:
                raise ValueError("layers is only for fusion='eagle3'")
            self.fusion_layers = None
            self.fusion = None
        self.register_buffer("inv_freq", cfg.inv_freq().float(), persistent=False)
        self._embed = self._lm_head = None

    # -- construction, target, files ---------------------------------------------------------
    @property
    def capture(self):
        """What to pass as ``target(..., capture=)`` for this head's features:
        the fused layers (eagle3) or None (eagle1 reads ``hidden``)."""
        return self.fusion_layers

    @property
    def feature_size(self) -> int:
        """Width of the target features this head reads: H (eagle1) or 3H (eagle3)."""
        return self.config.hidden_size * (3 if self.fusion is not None else 1)

    def target_features(self, outputs):
        """The features to feed from a target forward's outputs: ``hidden``
        (eagle1) or the captured states (eagle3, run with ``capture=head.capture``)."""
        if self.fusion is None:
            return outputs[1]
        if len(outputs) < 3:
            raise ValueError("an eagle3 head reads captured layers: run the target with capture=head.capture")
        return outputs[2]

    def attach(self, target) -> "EagleHead":
        """Use ``target``'s embedding and LM head (a ``LlamaModel`` or a Hugging
        Face ``LlamaForCausalLM``: ``model.embed_tokens.weight``,
        ``lm_head.weight``). They are referenced (detached), never copied or
        stored: re-attach after moving or converting the target."""
        embed, lm_head = target.model.embed_tokens.weight, target.lm_head.weight
        h = self.config.hidden_size
        if embed.shape != (self.config.vocab_size, h) or lm_head.shape != (self.config.vocab_size, h):
            raise ValueError(f"target embedding {tuple(embed.shape)} / LM head {tuple(lm_head.shape)} do not match "
                             f"the head's vocab {self.config.vocab_size} x hidden {h}")
        self._embed, self._lm_head = embed.detach(), lm_head.detach()
        return self

    @classmethod
    def from_target(cls, target, fusion: str = "eagle1", layers=None, *, intermediate_size=None, seed: int = 0,
                    std: float = 0.02) -> "EagleHead":
        """A freshly initialised head with the target's shapes, dtype and device
        (linears ~ N(0, std) from ``seed``, biases 0, norm weights 1), attached.
        ``target``: a ``LlamaModel`` or a Hugging Face ``LlamaForCausalLM``."""
        head = cls(_config_of(target), fusion, layers, intermediate_size=intermediate_size)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in head.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
        ref = target.lm_head.weight
        return head.to(dtype=ref.dtype, device=ref.device).eval().attach(target)

    def metadata(self) -> dict:
        meta = {"format": FORMAT, "fusion": self.fusion_kind, "hidden_size": str(self.config.hidden_size),
                "vocab_size": str(self.config.vocab_size)}
        if self.fusion_layers is not None:
            meta["fusion_layers"] = ",".join(map(str, self.fusion_layers))
        return meta

    def save(self, path):
        """Write the head's weights (key names in the module docstring), in their dtype."""
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path),
                  metadata=self.metadata())

    @classmethod
    def load(cls, path, target, *, dtype=None, device=None) -> "EagleHead":
        """Load a head file for ``target`` (a ``LlamaModel`` or a Hugging Face
        ``LlamaForCausalLM``; its config gives the attention shapes; default
        dtype and device: the target's LM head's) and attach it."""
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        state.pop("embed_tokens.weight", None)
        cfg = _config_of(target)
        fusion = meta.get("fusion") or ("eagle3" if "fusion.weight" in state else "eagle1")
        if fusion not in FUSIONS:
            raise ValueError(f"{path}: unknown fusion {fusion!r} in its metadata (expected one of {FUSIONS})")
        layers = None
        if fusion == "eagle3" and meta.get("fusion_layers"):
            layers = tuple(int(i) for i in meta["fusion_layers"].split(","))
        fc = state.get("fc.weight")
        if fc is None or tuple(fc.shape) != (cfg.hidden_size, 2 * cfg.hidden_size):
            raise ValueError(f"{path}: fc.weight is {None if fc is None else tuple(fc.shape)}, expected "
                             f"{(cfg.hidden_size, 2 * cfg.hidden_size)} for the target's hidden size "
                             f"{cfg.hidden_size}")
        gate = state.get("layers.0.mlp.gate_proj.weight")
        head = cls(cfg, fusion, layers, intermediate_size=None if gate is None else gate.shape[0])
        expected = head.state_dict()
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or extra:
            raise ValueError(f"{path}: keys do not match an {fusion} EAGLE head: missing {missing[:4]}, "
                             f"unexpected {extra[:4]}")
        wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if state[k].shape != v.shape]
        if wrong:
            raise ValueError(f"{path}: shapes do not match the target: {wrong[:3]}")
        head.load_state_dict(state)
        ref = target.lm_head.weight
        return head.to(dtype=dtype or ref.dtype, device=device or ref.device).eval().attach(target)

    def new_cache(self, num_blocks: int, block_size: int = 16, *, dtype=None, device=None) -> PagedKVCache:
        """The head's own paged cache: one layer, the target's KV heads and head dim."""
        ref = self.fc.weight
        return PagedKVCache(self.config, num_blocks, block_size, dtype=dtype or ref.dtype, device=device or ref.device)

    # -- compute ------------------------------------------------------------------------------
    def _attached(self):
        if self._embed is None:
            raise RuntimeError("the EAGLE head is not attached to a target: call attach(target) (from_target and "
                               "load do)")

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """``[..., 3H]`` target layers -> ``[..., H]`` (eagle3); ``[..., H]`` passes through."""
        h = self.config.hidden_size
        if features.shape[-1] == h:
            return features
        if self.fusion is not None and features.shape[-1] == 3 * h:
            return F.linear(features, self.fusion.weight)
        raise ValueError(f"features have width {features.shape[-1]}; this {self.fusion_kind} head takes "
                         f"{'H' if self.fusion is None else 'H or 3H'} = "
                         f"{h if self.fusion is None else f'{h} or {3 * h}'}")

    def project(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The layer's input ``fc([embed(tokens) ; fuse(features)])``."""
        self._attached()
        e = F.embedding(tokens, self._embed)
        return F.linear(torch.cat([e, self.fuse(features)], dim=-1), self.fc.weight, self.fc.bias)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """The draft distribution's logits: the target's LM head on the head's output."""
        self._attached()
        return F.linear(out, self._lm_head)

    def forward_dense(self, features, tokens, positions=None, attn_mask=None):
        """The same layer over whole sequences with PyTorch SDPA, differentiable
        (training; the reference of ``step``). ``features [B, T, H or 3H]``,
        ``tokens [B, T]``, ``positions [B, T]`` (default ``0..T-1``),
        ``attn_mask`` bool ``[B, T, T]`` (True = visible; default causal).
        Returns ``out [B, T, H]``."""
        cfg = self.config
        b, t = tokens.shape
        hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        x = self.project(features, tokens)
        if positions is None:
            positions = torch.arange(t, device=tokens.device).expand(b, t)
        cos, sin = rope_cos_sin(self.inv_freq, positions.reshape(-1), x.dtype)
        layer = self.layers[0]
        attn = layer.self_attn
        q = rotate(F.linear(x, attn.q_proj.weight, attn.q_proj.bias).reshape(b * t, hq, d), cos, sin)
        k = rotate(F.linear(x, attn.k_proj.weight, attn.k_proj.bias).reshape(b * t, hkv, d), cos, sin)
        v = F.linear(x, attn.v_proj.weight, attn.v_proj.bias).reshape(b * t, hkv, d)
        group = hq // hkv
        q = q.view(b, t, hq, d).transpose(1, 2)
        k = k.view(b, t, hkv, d).repeat_interleave(group, dim=2).transpose(1, 2)
        v = v.view(b, t, hkv, d).repeat_interleave(group, dim=2).transpose(1, 2)
        if attn_mask is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask[:, None])
        x = x + F.linear(o.transpose(1, 2).reshape(b, t, hq * d), attn.o_proj.weight)
        mlp = layer.mlp
        h = layer.post_attention_layernorm(x)
        return x + F.linear(F.silu(F.linear(h, mlp.gate_proj.weight)) * F.linear(h, mlp.up_proj.weight),
                            mlp.down_proj.weight)

    @torch.no_grad()
    def step(self, features, tokens, positions, cache: PagedKVCache, block_table, prefix_lens, qo_indptr,
             tree_mask=None, *, drafted=None, prefill: bool = False, validate: bool = True):
        """One pass of the head over new elements of B sequences (module
        docstring: arguments, tree layout, rollback). Returns
        ``(logits [N, V], out [N, H])``."""
        self._attached()
        cfg = self.config
        n, hq, hkv, d = tokens.shape[0], cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        if validate:
            self._check_step(features, tokens, positions, cache, prefix_lens, qo_indptr, tree_mask, drafted,
                             prefill)
        x = self.project(features, tokens)
        cos, sin = rope_cos_sin(self.inv_freq, positions, x.dtype)
        layer = self.layers[0]
        attn = layer.self_attn
        qkv = F.linear(x, *attn.qkv.get()).view(n, hq + 2 * hkv, d)
        qk = rotate(qkv[:, :hq + hkv], cos, sin)
        q, k, v = qk[:, :hq].contiguous(), qk[:, hq:], qkv[:, hq + hkv:]
        start = prefix_lens if drafted is None else prefix_lens + drafted
        k_cache, v_cache = cache.k[0], cache.v[0]
        append_kv(k, v, k_cache, v_cache, block_table, start, qo_indptr, validate=validate)
        scale = 1.0 / math.sqrt(d)
        if prefill:
            o = causal_sdpa(q, k, v, qo_indptr, hq // hkv)
        elif drafted is None or tree_mask is None:
            # No earlier draft rows, or a chain: they are all visible, so they join the prefix.
            o = tree_attention(q, k_cache, v_cache, block_table, start, qo_indptr, tree_mask, sm_scale=scale,
                               validate=validate)
        else:
            o = self._attend_after_drafted(q, k_cache, v_cache, block_table, prefix_lens, qo_indptr, tree_mask,
                                           drafted, scale, validate)
        x = x + F.linear(o.reshape(n, -1), attn.o_proj.weight)
        out = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.logits(out), out

    def _attend_after_drafted(self, q, k_cache, v_cache, block_table, prefix_lens, qo_indptr, tree_mask, drafted,
                              scale, validate):
        """tree_attention for rows appended after ``drafted`` tree elements:
        row ``i`` of ``tree_attention`` is tree element ``i``, so each sequence's
        rows get ``drafted[b]`` inert rows in front (zero queries, empty mask
        rows), whose outputs are dropped. All on the device."""
        n = q.shape[0]
        if isinstance(drafted, int):  # the same count for every sequence: the padded size needs no sync
            if drafted == 0:
                return tree_attention(q, k_cache, v_cache, block_table, prefix_lens, qo_indptr, tree_mask,
                                      sm_scale=scale, validate=validate)
            total = n + drafted * prefix_lens.shape[0]
            drafted = torch.full_like(prefix_lens, drafted)
        else:
            total = n + int(drafted.sum())  # a host sync on CUDA (the padded row count)
        counts = qo_indptr[1:] - qo_indptr[:-1]
        before = torch.cumsum(drafted, 0) - drafted  # inert rows of the earlier sequences
        seq = torch.repeat_interleave(torch.arange(counts.shape[0], device=q.device), counts.long(), output_size=n)
        rows = torch.arange(n, device=q.device) + (before + drafted).long()[seq]
        padded_q = q.new_zeros(total, *q.shape[1:])
        padded_q[rows] = q
        padded_mask = tree_mask.new_zeros(total, tree_mask.shape[1])
        padded_mask[rows] = tree_mask
        indptr = torch.cat([qo_indptr[:1], qo_indptr[1:] + torch.cumsum(drafted, 0).to(qo_indptr.dtype)])
        o = tree_attention(padded_q, k_cache, v_cache, block_table, prefix_lens, indptr, padded_mask,
                           sm_scale=scale, validate=validate)
        return o[rows]

    def _check_step(self, features, tokens, positions, cache, prefix_lens, qo_indptr, tree_mask, drafted,
                    prefill):
        cfg = self.config
        dtype, device = self.fc.weight.dtype, self.fc.weight.device
        if tokens.dim() != 1 or tokens.dtype != torch.int64:
            raise ValueError(f"tokens must be int64 [N], got {tokens.dtype} {tuple(tokens.shape)}")
        n = tokens.shape[0]
        if positions.shape != (n,) or positions.dtype != torch.int64:
            raise ValueError(f"positions must be int64 [{n}] like tokens, got {positions.dtype} "
                             f"{tuple(positions.shape)}")
        widths = (cfg.hidden_size,) if self.fusion is None else (cfg.hidden_size, 3 * cfg.hidden_size)
        if features.dim() != 2 or features.shape[0] != n or features.shape[1] not in widths:
            raise ValueError(f"features must be [{n}, {' or '.join(map(str, widths))}] for this {self.fusion_kind} "
                             f"head, got {tuple(features.shape)}")
        if features.dtype != dtype:
            raise ValueError(f"features are {features.dtype} but the head is {dtype}")
        for name, t in (("features", features), ("tokens", tokens), ("positions", positions)):
            if t.device != device:
                raise ValueError(f"{name} are on {t.device} but the head is on {device}")
        if self._embed.dtype != dtype or self._embed.device != device:
            raise ValueError(f"the attached target's embedding is {self._embed.dtype} on {self._embed.device}, the "
                             f"head {dtype} on {device}: re-attach after converting either")
        if n and (int(tokens.min()) < 0 or int(tokens.max()) >= cfg.vocab_size):
            raise ValueError(f"tokens must lie in [0, {cfg.vocab_size}), got [{int(tokens.min())}, "
                             f"{int(tokens.max())}]")
        if not isinstance(cache, PagedKVCache) or cache.k.shape[0] != 1 or \
                tuple(cache.k.shape[3:]) != (cfg.num_kv_heads, cfg.head_dim):
            shape = tuple(cache.k.shape) if isinstance(cache, PagedKVCache) else type(cache).__name__
            raise ValueError(f"cache must be the head's own one-layer PagedKVCache (head.new_cache), "
                             f"[1, blocks, block_size, {cfg.num_kv_heads}, {cfg.head_dim}]; got {shape}")
        if cache.k.dtype != dtype:
            raise ValueError(f"the cache is {cache.k.dtype} but the head is {dtype}")
        if qo_indptr.dim() != 1 or prefix_lens.shape != (qo_indptr.shape[0] - 1,):
            raise ValueError(f"prefix_lens [{tuple(prefix_lens.shape)}] and qo_indptr [{tuple(qo_indptr.shape)}] "
                             f"must be [B] and [B + 1]")
        if int(qo_indptr[-1]) != n:
            raise ValueError(f"qo_indptr[-1] = {int(qo_indptr[-1])} but there are {n} rows")
        if drafted is not None:
            if prefill:
                raise ValueError("prefill=True takes no drafted rows (a prompt has an empty prefix)")
            if isinstance(drafted, bool) or not isinstance(drafted, (int, torch.Tensor)):
                raise ValueError(f"drafted must be an int or an int32 tensor [B], got {type(drafted).__name__}")
            if isinstance(drafted, int):
                if drafted < 0:
                    raise ValueError(f"drafted must be >= 0, got {drafted}")
            elif drafted.shape != prefix_lens.shape or drafted.dtype != torch.int32:
                raise ValueError(f"drafted must be int32 [{prefix_lens.shape[0]}], got {drafted.dtype} "
                                 f"{tuple(drafted.shape)}")
            elif drafted.numel() and int(drafted.min()) < 0:
                raise ValueError("drafted counts must be >= 0")
            if tree_mask is not None:
                counts = qo_indptr[1:] - qo_indptr[:-1] + drafted
                longest = int(counts.max()) if counts.numel() else 0
                if tree_mask.dim() != 2 or tree_mask.shape[0] != n or tree_mask.shape[1] * 32 < longest:
                    raise ValueError(f"tree_mask must be int32 [{n}, W] with 32 * W >= drafted + new rows "
                                     f"({longest}) per sequence, got {tuple(tree_mask.shape)}")
        if prefill:
            if tree_mask is not None:
                raise ValueError("prefill=True is causal: pass tree_mask=None")
            if prefix_lens.numel() and int(prefix_lens.max()) != 0:
                raise ValueError("prefill=True needs an empty prefix (prefix_lens all 0)")


def _config_of(target) -> ModelConfig:
    """A ``LlamaModel``'s config, or a Hugging Face model's converted (training)."""
    config = target.config
    return config if isinstance(config, ModelConfig) else ModelConfig.from_hf(config.to_dict())



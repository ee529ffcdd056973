"""A Llama-family decoder (RMSNorm, RoPE, SwiGLU, GQA) over a paged KV cache.

Every forward writes the new tokens' K/V with ``append_kv`` and attends with
``tree_attention``: a decode step is a tree of one node, a verify step a tree
of T nodes under its packed mask. Prefill may instead use PyTorch SDPA over
each prompt (``prefill=True``), still writing K/V through ``append_kv``.
Parameter names follow Hugging Face's ``LlamaForCausalLM``, so a checkpoint's
state dict loads as is.
"""
from __future__ import annotations

import json
import math
import operator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import tree_attention, tree_attention_kernel
from ..block_allocator import BlockAllocator
from ..kv_cache import append_kv, append_kv_kernel
from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        # float32 statistics, then the weight in x's dtype, as Hugging Face
        # computes them (F.rms_norm is bitwise the same in float32, and one op).
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)


class Fused:
    """One weight (and bias) for several ``nn.Linear`` sharing an input, so a
    forward runs one matmul for Q, K and V (or gate and up) instead of three
    (two). The linears' parameters are re-pointed as row blocks of the fused
    tensor, so state dicts keep Hugging Face's names, in-place updates
    (``load_state_dict``) reach the fused tensor, and nothing is stored twice.
    ``get()`` re-fuses when a parameter stopped aliasing it (``.to()``, or a
    parameter replaced): never a stale weight."""

    def __init__(self, *linears: nn.Linear):
        self.linears = linears
        self.weight = self.bias = None
        self._ptrs = None

    def _current(self):
        return tuple(p.data_ptr() for m in self.linears for p in (m.weight, m.bias) if p is not None)

    def get(self):
        if self._ptrs is None or self._current() != self._ptrs:
            self.weight = self._fuse("weight")
            self.bias = self._fuse("bias") if self.linears[0].bias is not None else None
            self._ptrs = self._current()
        return self.weight, self.bias

    def _fuse(self, name):
        parts = [getattr(m, name) for m in self.linears]
        fused = torch.cat([p.detach() for p in parts])
        start = 0
        for m, p in zip(self.linears, parts):
            rows = p.shape[0]
            setattr(m, name, nn.Parameter(fused[start:start + rows], requires_grad=p.requires_grad))
            start += rows
        return fused


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(h, cfg.num_heads * d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * d, h, bias=False)
        self.qkv = Fused(self.q_proj, self.k_proj, self.v_proj)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up = Fused(self.gate_proj, self.up_proj)

    def forward(self, x):
        # F.linear on the weights: the module call's hook machinery is a
        # measurable share of a small model's decode step.
        gate, up = F.linear(x, self.gate_up.get()[0]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj.weight)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class PagedKVCache:
    """K/V of every layer, stacked ``[layers, num_blocks, block_size, Hkv, D]``,
    plus the allocator that hands out their blocks."""

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int = 16, *, dtype=torch.float32,
                 device="cpu"):
        shape = (cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.block_size = block_size


def rope_cos_sin(inv_freq, positions, dtype):
    """RoPE tables for ``positions [N]``: ``(cos, sin)`` ``[N, 1, head_dim]`` in
    ``dtype`` (angles in ``inv_freq``'s dtype, Hugging Face's layout)."""
    angles = positions.to(inv_freq.dtype)[:, None] * inv_freq[None]
    emb = torch.cat((angles, angles), dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate(x, cos, sin):
    """RoPE on [N, H, D] with [N, 1, D] cos/sin (halves rotated, Hugging Face layout)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def causal_sdpa(q, k, v, qo_indptr, group: int):
    """Causal attention of each sequence's rows among themselves (a prompt,
    empty prefix): q [N, Hq, D], k and v [N, Hkv, D] with Hq = group * Hkv,
    ragged by qo_indptr int32 [B + 1] (read on the host)."""
    out = torch.empty_like(q)
    bounds = qo_indptr.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e == s:
            continue
        qs = q[s:e].transpose(0, 1)
        ks = k[s:e].repeat_interleave(group, dim=1).transpose(0, 1)
        vs = v[s:e].repeat_interleave(group, dim=1).transpose(0, 1)
        out[s:e] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1)
    return out


class LlamaModel(nn.Module):
    """``forward`` takes the ragged batch of new tokens and the cache layout
    (see its docstring); ``from_pretrained`` loads a checkpoint folder and
    ``random`` builds one from a config."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", cfg.inv_freq().float(), persistent=False)

    @classmethod
    def random(cls, cfg: ModelConfig, *, seed: int = 0, std: float = 0.05, dtype=torch.float32, device="cpu"):
        torch.manual_seed(seed)
        model = cls(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                else:
                    p.normal_(0.0, std)
        return model.to(dtype=dtype, device=device).eval()

    @classmethod
    def from_pretrained(cls, path, *, dtype=torch.float32, device="cpu"):
        """A Hugging Face checkpoint folder: config.json plus model.safetensors
        or sharded safetensors with model.safetensors.index.json."""
        from safetensors.torch import load_file

        folder = Path(path)
        cfg = ModelConfig.from_folder(folder)
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(f"{folder} has neither model.safetensors nor model.safetensors.index.json")
        state = {}
        for f in files:
            state.update(load_file(str(folder / f)))
        if cfg.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        model = cls(cfg)
        expected = dict(model.named_parameters())
        if cfg.tie_word_embeddings:
            expected.pop("lm_head.weight", None)
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(k for k in set(state) - set(expected) if not k.endswith("rotary_emb.inv_freq"))
        if missing or unexpected:
            raise ValueError(f"{folder}: checkpoint does not match the {cfg.model_type} layout; missing "
                             f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                             f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
        return model.to(dtype=dtype, device=device).eval()

    @torch.no_grad()
    def forward(self, tokens, positions, cache: PagedKVCache, block_table, prefix_lens, qo_indptr,
                tree_mask=None, *, prefill: bool = False, validate: bool = True, capture=None):
        """Run the new tokens of B sequences.

        Args:
            tokens: int64 ``[N]``, ragged by ``qo_indptr`` (int32 ``[B + 1]``).
            positions: int64 ``[N]``, RoPE positions (prefix length + depth in the tree).
            cache, block_table (int32 ``[B, max_blocks]``), prefix_lens (int32 ``[B]``):
                token i of sequence b is written at cache position ``prefix_lens[b] + i``.
            tree_mask: packed int32 ``[N, W]`` (tree_attention's), None = causal.
            prefill: attend with SDPA (prompts: empty prefix, causal, any length).
            capture: None, or hidden-state indices as Hugging Face numbers
                ``output_hidden_states`` (``i < num_layers``: the residual
                stream entering layer ``i``, 0 = the embeddings; ``num_layers``:
                the final norm's output, ``hidden``), e.g. the three layers an
                EAGLE-3 head fuses.
        Returns:
            ``(logits [N, V], hidden [N, H])`` in the model's dtype; hidden is the
            last hidden state after the final norm (what Medusa and EAGLE-1
            heads read). With ``capture``, a third item ``[N, len(capture) * H]``:
            those states concatenated in the order given.
        """
        cfg = self.config
        x = F.embedding(tokens, self.model.embed_tokens.weight)
        cos, sin = rope_cos_sin(self.inv_freq, positions, x.dtype)
        if capture is not None:
            capture = [operator.index(c) for c in capture]
            if not capture or not all(0 <= c <= cfg.num_layers for c in capture):
                raise ValueError(f"capture takes hidden-state indices in [0, {cfg.num_layers}], got {capture}")
            states = {}
        n, hq, hkv, d = tokens.shape[0], cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        sm_scale = 1.0 / math.sqrt(d)
        append, attend = None, None  # layer 0 goes through the checked ops, the rest straight to the kernels
        for i, layer in enumerate(self.model.layers):
            if capture is not None:
                states[i] = x
            h = layer.input_layernorm(x)
            attn = layer.self_attn
            qkv = F.linear(h, *attn.qkv.get()).view(n, hq + 2 * hkv, d)
            qk = rotate(qkv[:, :hq + hkv], cos, sin)  # one RoPE for Q and K
            q, k, v = qk[:, :hq].contiguous(), qk[:, hq:], qkv[:, hq + hkv:]  # append_kv takes strided K/V
            if append is None:
                append_kv(k, v, cache.k[i], cache.v[i], block_table, prefix_lens, qo_indptr, validate=validate)
                append = append_kv_kernel("auto", x.device)
            else:
                append(k, v, cache.k[i], cache.v[i], block_table, prefix_lens, qo_indptr)
            if prefill:
                o = self._sdpa_prefill(q, k, v, qo_indptr)
            elif attend is None:
                o = tree_attention(q, cache.k[i], cache.v[i], block_table, prefix_lens, qo_indptr, tree_mask,
                                   sm_scale=sm_scale, validate=validate)
                attend = tree_attention_kernel("auto", x.device)
            else:
                o = attend(q, cache.k[i], cache.v[i], block_table, prefix_lens, qo_indptr, tree_mask, sm_scale)[0]
            x = x + F.linear(o.reshape(n, -1), attn.o_proj.weight)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        hidden = self.model.norm(x)
        if capture is not None:
            states[cfg.num_layers] = hidden
            return F.linear(hidden, self.lm_head.weight), hidden, torch.cat([states[c] for c in capture], dim=-1)
        return F.linear(hidden, self.lm_head.weight), hidden

    def _sdpa_prefill(self, q, k, v, qo_indptr):
        return causal_sdpa(q, k, v, qo_indptr, self.config.num_heads // self.config.num_kv_heads)

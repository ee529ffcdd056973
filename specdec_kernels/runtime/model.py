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
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import tree_attention
from ..block_allocator import BlockAllocator
from ..kv_cache import append_kv
from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        # float32 statistics, as Hugging Face computes them.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(h, cfg.num_heads * d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * d, h, bias=False)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


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


def rotate(x, cos, sin):
    """RoPE on [N, H, D] with [N, D] cos/sin (halves rotated, Hugging Face layout)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


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
                tree_mask=None, *, prefill: bool = False, validate: bool = True):
        """Run the new tokens of B sequences.

        Args:
            tokens: int64 ``[N]``, ragged by ``qo_indptr`` (int32 ``[B + 1]``).
            positions: int64 ``[N]``, RoPE positions (prefix length + depth in the tree).
            cache, block_table (int32 ``[B, max_blocks]``), prefix_lens (int32 ``[B]``):
                token i of sequence b is written at cache position ``prefix_lens[b] + i``.
            tree_mask: packed int32 ``[N, W]`` (tree_attention's), None = causal.
            prefill: attend with SDPA (prompts: empty prefix, causal, any length).
        Returns:
            ``(logits [N, V], hidden [N, H])`` in the model's dtype; hidden is the
            last hidden state after the final norm (what Medusa heads read).
        """
        cfg = self.config
        x = self.model.embed_tokens(tokens)
        angles = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq[None]
        emb = torch.cat((angles, angles), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        n = tokens.shape[0]
        for i, layer in enumerate(self.model.layers):
            h = layer.input_layernorm(x)
            attn = layer.self_attn
            q = rotate(attn.q_proj(h).view(n, cfg.num_heads, cfg.head_dim), cos, sin)
            k = rotate(attn.k_proj(h).view(n, cfg.num_kv_heads, cfg.head_dim), cos, sin)
            v = attn.v_proj(h).view(n, cfg.num_kv_heads, cfg.head_dim)
            append_kv(k, v, cache.k[i], cache.v[i], block_table, prefix_lens, qo_indptr, validate=validate)
            if prefill:
                o = self._sdpa_prefill(q, k, v, qo_indptr)
            else:
                o = tree_attention(q.contiguous(), cache.k[i], cache.v[i], block_table, prefix_lens, qo_indptr,
                                   tree_mask, validate=validate)
            x = x + attn.o_proj(o.reshape(n, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        hidden = self.model.norm(x)
        return self.lm_head(hidden), hidden

    def _sdpa_prefill(self, q, k, v, qo_indptr):
        group = self.config.num_heads // self.config.num_kv_heads
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

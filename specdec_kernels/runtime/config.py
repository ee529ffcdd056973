"""The Llama-family architecture the runtime implements, read from a Hugging
Face ``config.json`` (Llama, Mistral and Qwen2 layouts). Anything the model
code would silently get wrong is refused with the field named."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..attention import HEAD_DIMS

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")


class UnsupportedConfigError(ValueError):
    """The checkpoint's config asks for something this runtime does not implement."""


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # None or {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"} (Llama 3).
    rope_llama3: dict | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    model_type: str = "llama"
    eos_token_id: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, name) < 1:
                raise UnsupportedConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedConfigError(f"num_attention_heads ({self.num_heads}) must be a multiple of "
                                         f"num_key_value_heads ({self.num_kv_heads})")
        if self.head_dim not in HEAD_DIMS:
            raise UnsupportedConfigError(f"head_dim {self.head_dim} is not supported: tree_attention handles "
                                         f"head dims {HEAD_DIMS}")

    @classmethod
    def from_hf(cls, cfg: dict) -> "ModelConfig":
        """From a parsed Hugging Face config.json."""
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_TYPES:
            raise UnsupportedConfigError(f"model_type {model_type!r} is not supported; expected one of "
                                         f"{SUPPORTED_TYPES}")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedConfigError(f"hidden_act {act!r} is not supported (SwiGLU needs 'silu')")
        for flag in ("mlp_bias",):
            if cfg.get(flag):
                raise UnsupportedConfigError(f"{flag}=True is not supported")
        if model_type == "qwen2" and cfg.get("use_sliding_window"):
            raise UnsupportedConfigError("use_sliding_window=True is not supported (full attention only)")
        if model_type == "mistral" and cfg.get("sliding_window") is not None:
            raise UnsupportedConfigError(f"sliding_window={cfg['sliding_window']} is not supported "
                                         "(full attention only; set it to null if contexts stay shorter)")
        rope = dict(cfg.get("rope_parameters") or {})
        scaling = cfg.get("rope_scaling") or {}
        rope.update(scaling)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        llama3 = None
        if rope_type == "llama3":
            llama3 = {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                           "original_max_position_embeddings")}
        elif rope_type not in ("default", None):
            raise UnsupportedConfigError(f"rope scaling type {rope_type!r} is not supported (default or llama3)")
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        eos = cfg.get("eos_token_id")
        eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
        return cls(
            vocab_size=cfg["vocab_size"], hidden_size=hidden, intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"], num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6 if model_type == "qwen2" else 1e-5),
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))), rope_llama3=llama3,
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
            model_type=model_type, eos_token_id=eos)

    @classmethod
    def from_folder(cls, path) -> "ModelConfig":
        file = Path(path) / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: a checkpoint folder holds config.json and safetensors")
        return cls.from_hf(json.loads(file.read_text()))

    def inv_freq(self):
        """RoPE inverse frequencies [head_dim / 2] (float64), Llama-3 scaled if configured."""
        import torch

        inv = 1.0 / (self.rope_theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim))
        if self.rope_llama3 is None:
            return inv
        s = self.rope_llama3
        old = s["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old / s["low_freq_factor"], old / s["high_freq_factor"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / s["factor"], inv)
        smooth = (old / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
        smoothed = (1 - smooth) * scaled / s["factor"] + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)

"""The minimal decoder runtime: a Llama-family model over a paged KV cache
whose every decode and verify step runs on this library's kernels, and one
generate loop with pluggable drafters."""
from .config import ModelConfig, UnsupportedConfigError
from .generate import GenerationOutput, GenerationStats, generate
from .model import LlamaModel, PagedKVCache

__all__ = ["ModelConfig", "UnsupportedConfigError", "LlamaModel", "PagedKVCache", "generate",
           "GenerationOutput", "GenerationStats"]

"""Pure-PyTorch ground truth for every op: slow, obvious, runs anywhere."""
from .kv_cache import append_kv, compact_kv

__all__ = ["append_kv", "compact_kv"]

"""Pure-PyTorch ground truth for every op: slow, obvious, runs anywhere."""
from .attention import tree_attention
from .kv_cache import append_kv, compact_kv
from .sampling import verify as verify_tree

__all__ = ["append_kv", "compact_kv", "tree_attention", "verify_tree"]

"""specdec-kernels: fused kernels for the verification step of speculative decoding.

Ops (each with ``reference``, ``triton``, ``cuda`` and ``cpu`` backends):
    append_kv, compact_kv           KV-cache writes and rollback (kv_cache.py)
    tree_attention                  attention of tree tokens over a paged prefix (attention.py)
    verify_greedy, verify_rejection, verify_typical
                                    accepted path + bonus token for a ragged batch (sampling.py)
    build_dynamic_tree              EAGLE-2's draft tree from per-depth candidates (dynamic_tree.py)
Trees (trees.py):
    Tree, MC_SIM_7B_63, batch_trees, lookahead_mask   draft trees, packed masks, RoPE offsets
Helpers:
    BlockAllocator                  paged-cache block allocator (block_allocator.py)
    info()                          versions, devices, available backends
"""
from . import _extension
from ._version import __version__
from .attention import tree_attention
from .backends import BackendUnavailableError
from .dynamic_tree import DynamicTree, build_dynamic_tree
from .block_allocator import BlockAllocator, OutOfBlocksError
from .info import info
from .kv_cache import append_kv, compact_kv
from .sampling import VerifyResult, philox_uniforms, verify_greedy, verify_rejection, verify_typical
from .trees import MC_SIM_7B_63, Tree, TreeBatch, batch_trees, lookahead_mask

# Importing the package registers torch.ops.specdec.* when the extension is built.
_extension.loaded()

__all__ = [
    "__version__",
    "append_kv",
    "compact_kv",
    "tree_attention",
    "verify_greedy",
    "verify_rejection",
    "verify_typical",
    "build_dynamic_tree",
    "DynamicTree",
    "VerifyResult",
    "philox_uniforms",
    "Tree",
    "TreeBatch",
    "MC_SIM_7B_63",
    "batch_trees",
    "lookahead_mask",
    "BlockAllocator",
    "OutOfBlocksError",
    "BackendUnavailableError",
    "info",
]

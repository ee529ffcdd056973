"""specdec-kernels: fused kernels for the verification step of speculative decoding.

Ops (each with ``reference``, ``triton``, ``cuda`` and ``cpu`` backends):
    append_kv, compact_kv           KV-cache writes and rollback (kv_cache.py)
    tree_attention                  attention of tree tokens over a paged prefix (attention.py)
Helpers:
    BlockAllocator                  paged-cache block allocator (block_allocator.py)
    info()                          versions, devices, available backends
"""
from . import _extension
from ._version import __version__
from .attention import tree_attention
from .backends import BackendUnavailableError
from .block_allocator import BlockAllocator, OutOfBlocksError
from .info import info
from .kv_cache import append_kv, compact_kv

# Importing the package registers torch.ops.specdec.* when the extension is built.
_extension.loaded()

__all__ = [
    "__version__",
    "append_kv",
    "compact_kv",
    "tree_attention",
    "BlockAllocator",
    "OutOfBlocksError",
    "BackendUnavailableError",
    "info",
]

"""Drop-in call conventions of other engines on our kernels: swap the import.

    adapters.vllm.rejection_sample     vLLM V1's ``vllm/v1/sample/rejection_sampler.py`` function
    adapters.flashinfer.chain_speculative_sampling   ``flashinfer.sampling``'s
    adapters.sglang.tree_speculative_sampling_target_only   sgl-kernel's (exact rule only)

Each module documents what it allocates beyond the engine's own op and where
its draws differ from the engine's (same distribution, other random numbers).
"""
from . import flashinfer, sglang, vllm

__all__ = ["flashinfer", "sglang", "vllm"]

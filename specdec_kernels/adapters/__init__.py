"""Drop-in call conventions of other engines on our kernels: swap the import.

    adapters.vllm.rejection_sample        vLLM V1's ``vllm/v1/sample/rejection_sampler.py`` function
    adapters.flashinfer.chain_speculative_sampling     ``flashinfer.sampling``'s
    adapters.flashinfer.BatchPrefillWithPagedKVCacheWrapper   FlashInfer's custom-mask paged
                                          prefill plan/run pattern, on ``tree_attention``
    adapters.sglang.verify_tree_greedy    sgl-kernel's greedy tree verification
    adapters.sglang.tree_speculative_sampling_target_only   sgl-kernel's (exact rule by default;
                                          SGLang's relaxed thresholds supported, lossy as in SGLang)
    adapters.sglang.build_tree_buffers    ``build_tree_kernel_efficient``'s outputs from our ``Tree``

Each module documents what it allocates beyond the engine's own op and where
its draws differ from the engine's (same distribution, other random numbers).
"""
from . import flashinfer, sglang, vllm

__all__ = ["flashinfer", "sglang", "vllm"]

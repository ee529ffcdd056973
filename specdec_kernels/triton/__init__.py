"""Triton kernels (CUDA tensors; CPU tensors under TRITON_INTERPRET=1).
Imported lazily by the public ops, so triton stays optional."""

"""Compiles every Triton kernel of the package for real GPU targets, ahead of
time and without a GPU. Run in a process without TRITON_INTERPRET (under the
interpreter, @triton.jit gives interpreted functions that cannot compile):

    python python_tests/triton_aot.py 80 90
"""
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from specdec_kernels.triton import kv_cache

BITS = {1: "*i8", 2: "*i16", 4: "*i32"}


def compile_kernel(fn, pointers: dict, constexprs: dict, arch: int):
    """Arguments not named in `pointers` or `constexprs` are i32 scalars."""
    names = fn.arg_names
    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in names}
    src = ASTSource(fn, signature, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32))


def kernels():
    """(name, fn, pointer types, constexprs) per variant."""
    for elem_bytes in (2, 4):
        t = BITS[elem_bytes]
        block_h, block_d = kv_cache._head_tiling(8, 128)
        yield (f"append_kv/{elem_bytes}B", kv_cache._append_kv_kernel,
               dict(k=t, v=t, k_cache=t, v_cache=t, block_table="*i32", prefix_lens="*i32", qo_indptr="*i32"),
               dict(BLOCK_B=8, BLOCK_H=block_h, BLOCK_D=block_d))
        yield (f"compact_kv/{elem_bytes}B", kv_cache._compact_kv_kernel,
               dict(k_layers="*i64", v_layers="*i64", block_table="*i32", prefix_lens="*i32",
                    accepted_nodes="*i32", num_accepted="*i32"),
               dict(ELEM_BYTES=elem_bytes, CHUNK=8, BLOCK_H=2, BLOCK_D=128))


def main(archs):
    for arch in archs:
        for name, fn, pointers, constexprs in kernels():
            compile_kernel(fn, pointers, constexprs, arch)
            print(f"ok {name} sm_{arch}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [80, 90])

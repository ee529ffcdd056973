"""Compiles every Triton kernel of the package for real GPU targets, ahead of
time and without a GPU. Run in a process without TRITON_INTERPRET (under the
interpreter, @triton.jit gives interpreted functions that cannot compile):

    python python_tests/triton_aot.py 80 90
"""
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import triton.language as tl

from specdec_kernels.triton import attention, dynamic_tree, kv_cache, sampling, verify_rows

BITS = {1: "*i8", 2: "*i16", 4: "*i32"}


def compile_kernel(fn, pointers: dict, constexprs: dict, arch: int, divisible_by_16=()):
    """Arguments not named in `pointers` (or other typed args) or `constexprs` are i32 scalars.
    BLOCK_M = 128 tiles launch with 8 warps, as the launcher does. `divisible_by_16`: arguments
    marked as the JIT marks pointers and integers divisible by 16 at launch."""
    names = fn.arg_names
    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in divisible_by_16}
    src = ASTSource(fn, signature, constexprs={(names.index(k),): v for k, v in constexprs.items()}, attrs=attrs)
    options = {"num_warps": 8} if constexprs.get("BLOCK_M") == 128 else {}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


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
    # Representative variants only: each compile takes ~10 s on 2 cores.
    dtypes = {"fp16": ("*fp16", tl.float16), "bf16": ("*bf16", tl.bfloat16), "fp32": ("*fp32", tl.float32)}
    for name, head_dim, has_mask, split in (("fp16", 64, True, True), ("bf16", 128, True, False),
                                            ("fp32", 128, False, True), ("bf16", 256, True, True)):
        t, tl_dtype = dtypes[name]
        yield (f"tree_attention/{name}/D{head_dim}/mask={has_mask}/split={split}",
               attention._tree_attention_kernel,
               dict(q=t, k_cache=t, v_cache=t, block_table="*i32", prefix_lens="*i32", qo_indptr="*i32",
                    tree_mask="*i32", out=t, lse="*fp32", part_out="*fp32", part_lse="*fp32", scale_log2="fp32"),
               dict(HAS_MASK=has_mask, SPLIT=split, OUT_DTYPE=tl_dtype,
                    DOT_PRECISION="ieee" if name == "fp32" else "tf32", UPCAST=False,
                    BLOCK_M=128 if head_dim == 128 else 64, BLOCK_N=64 if head_dim <= 128 else 32,
                    HEAD_DIM=head_dim))
    stats_pointers = dict(pmax_ptr="*fp32", pidx_ptr="*i32", pbad_ptr="*i32", psum_ptr="*fp64", pcnt_ptr="*i32",
                          pent_ptr="*fp64", owner_ptr="*i32")
    for mode, has_q, has_uniforms, logits, probs, mapped, stats in (
            (0, False, False, "*bf16", False, False, False), (1, True, False, "*bf16", False, False, False),
            (1, False, True, "*fp32", False, False, False), (2, False, True, "*fp16", False, False, False),
            (1, True, True, "*fp32", True, True, False), (0, False, False, "*fp32", True, True, False),
            (0, False, False, "*bf16", False, False, True), (1, False, True, "*bf16", False, True, True),
            (2, False, False, "*fp16", True, False, True), (3, True, False, "*bf16", False, False, False),
            (3, False, True, "*fp32", True, True, True)):
        yield (f"verify_tree/mode={mode}/q={has_q}/uniforms={has_uniforms}/{logits[1:]}/probs={probs}/"
               f"row_map={mapped}/row_stats={stats}", sampling._verify_kernel,
               dict(tokens_ptr="*i64", parents_ptr="*i32", indptr_ptr="*i32", logits_ptr=logits, q_ptr=logits,
                    temp_ptr="*fp32", topk_ptr="*i32", topp_ptr="*fp32", minp_ptr="*fp32", eps_ptr="*fp32",
                    alpha_ptr="*fp32",
                    unif_ptr="*fp32", philox_ptr="*i64", res_ptr="*fp32", num_acc_ptr="*i32", nodes_ptr="*i32",
                    out_tok_ptr="*i64", rows_ptr="*i32", bonus_ptr="*i64", logits_stride="i64", q_stride="i64",
                    **stats_pointers),
               dict(MODE=mode, HAS_Q=has_q, HAS_UNIFORMS=has_uniforms, PROBS=probs, MAPPED=mapped, LIBDEVICE=True,
                    BLOCK_V=1024, BLOCK_W=16, MAX_T=sampling.MAX_NODES, STATS=stats, BLOCK_C=64 if stats else 1,
                    BLOCK_H=sampling.BLOCK_H_MAX))
    # The multi-program row pre-pass (verify_rows): launch A per dtype kind, launch B's two phases.
    for logits, probs in (("*bf16", False), ("*fp32", True)):
        yield (f"verify_rows/chunk_max/{logits[1:]}/probs={probs}", verify_rows._chunk_max_kernel,
               dict(logits_ptr=logits, logits_stride="i64", part_max_ptr="*fp32", part_idx_ptr="*i32",
                    part_bad_ptr="*i32"),
               dict(PROBS=probs, BLOCK_V=1024))
    for phase, filters, logits, probs in ((1, True, "*bf16", False), (2, False, "*fp16", True)):
        yield (f"verify_rows/chunk_sum/phase={phase}/filters={filters}/{logits[1:]}/probs={probs}",
               verify_rows._chunk_sum_kernel,
               dict(logits_ptr=logits, logits_stride="i64", rows_ptr="*i32", temp_ptr="*fp32", topk_ptr="*i32",
                    topp_ptr="*fp32", part_max_ptr="*fp32", part_idx_ptr="*i32", part_bad_ptr="*i32",
                    part_sum_ptr="*fp64", part_cnt_ptr="*i32", part_ent_ptr="*fp64", owner_ptr="*i32"),
               dict(PHASE=phase, FILTERS=filters, PROBS=probs, LIBDEVICE=True, BLOCK_V=1024, BLOCK_C=64))
    yield ("build_dynamic_tree", dynamic_tree._dynamic_tree_kernel,
           dict(par_ptr="*i32", tok_ptr="*i64", score_ptr="*fp32", root_ptr="*i64", depth_ptr="*i32",
                sel_ptr="*i32", node_ptr="*i32", tokens_out="*i64", parents_out="*i32", depths_out="*i32",
                mask_out="*i32", source_out="*i32", num_nodes_out="*i32"),
           dict(WORDS=2, WORDS_P2=2, WIDTH_P2=64, BLOCK=dynamic_tree.BLOCK, BLOCK_I=dynamic_tree.BLOCK_I))
    yield ("verify_tree/allowed_tokens_mask/bf16", sampling._bitmask_kernel,
           dict(src_ptr="*bf16", src_stride="i64", dst_ptr="*bf16", words_ptr="*i32", words_stride="i64",
                fill="fp32"),
           dict(BLOCK=1024))
    yield ("merge_splits/bf16", attention._merge_splits_kernel,
           dict(part_out="*fp32", part_lse="*fp32", out="*bf16", lse="*fp32"),
           dict(OUT_DTYPE=tl.bfloat16, BLOCK_S=16, HEAD_DIM=128))


def check_vector_loads(arch):
    """The verify row pre-pass reads a bf16 row 16 bytes per thread per load
    (ld.global.v4) when the row pointer, stride, chunk and V are multiples of
    16, as they are at real vocabulary sizes: its masks must not cost the
    vectorisation."""
    common = dict(logits_ptr="*bf16", logits_stride="i64", part_max_ptr="*fp32", part_idx_ptr="*i32",
                  part_bad_ptr="*i32")
    aligned = ("logits_ptr", "logits_stride", "CHUNK", "V")
    for name, fn, pointers, constexprs in (
            ("chunk_max", verify_rows._chunk_max_kernel, common, dict(PROBS=False, BLOCK_V=1024)),
            ("chunk_sum", verify_rows._chunk_sum_kernel,
             dict(common, rows_ptr="*i32", temp_ptr="*fp32", topk_ptr="*i32", topp_ptr="*fp32",
                  part_sum_ptr="*fp64", part_cnt_ptr="*i32", part_ent_ptr="*fp64", owner_ptr="*i32"),
             dict(PHASE=1, FILTERS=True, PROBS=False, LIBDEVICE=True, BLOCK_V=1024, BLOCK_C=64))):
        ptx = compile_kernel(fn, pointers, constexprs, arch, aligned).asm["ptx"]
        if "ld.global.v4" not in ptx:
            raise SystemExit(f"verify_rows/{name}: no 16-byte loads of the row on sm_{arch}")
        print(f"ok verify_rows/{name} 16-byte loads sm_{arch}")


def main(archs):
    count = 0
    for arch in archs:
        for name, fn, pointers, constexprs in kernels():
            compile_kernel(fn, pointers, constexprs, arch)
            print(f"ok {name} sm_{arch}")
            count += 1
    if archs:
        check_vector_loads(archs[-1])
    if count == 0:
        raise SystemExit("no kernels compiled")
    print(f"compiled {count} kernels")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [80, 90])

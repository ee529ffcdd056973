// The few PTX instructions the tensor-core kernels use, each behind one small
// inline wrapper, so that the CPU harness (csrc/tests/emu, where
// SPECDEC_EMULATED is defined) can give every one its documented meaning and
// run the kernels. On the device each is one `asm volatile` (sm_80+); nothing
// else in the kernels is inline assembly.
//
//   ldmatrix_x4[_trans]      ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16
//   mma_16816<T>             mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32
//   cp_async_16              cp.async.cg.shared.global (16 B, zero-filled past src_bytes)
//   cp_async_commit / _wait  cp.async.commit_group / cp.async.wait_group N
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace specdec {
namespace ptx {

#if !defined(SPECDEC_EMULATED) && defined(__CUDA_ARCH__)
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// Lane 8 i + r gives the address of row r (16 bytes) of 8x8 matrix i; lane l
// gets row l / 4, elements 2 (l % 4), + 1 of each matrix (the transposed forms:
// column l / 4, rows 2 (l % 4), + 1).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#if defined(SPECDEC_EMULATED)
  emu::ldmatrix(r, 4, false, row);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
#else
  (void)r; (void)row;
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
#if defined(SPECDEC_EMULATED)
  emu::ldmatrix(r, 4, true, row);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
#else
  (void)r; (void)row;
#endif
}

// d += a b for a 16x16 (row) times 16x8 (col) tile, fp32 accumulation. Lane
// l = 4 g + t holds a: (g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..);
// b: (k 2t..2t+1, n g), (k 2t+8.., n g); d: (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "fp16 or bf16 operands");
#if defined(SPECDEC_EMULATED)
  const uint32_t b[2] = {b0, b1};
  emu::mma_m16n8k16(d, a, b, std::is_same<T, __nv_bfloat16>::value);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#else
  (void)d; (void)a; (void)b0; (void)b1;
#endif
}

// 16 bytes global -> shared, asynchronous; bytes past src_bytes (0 or 16) are
// zero and src is not read then (it must still be a valid address).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
#if defined(SPECDEC_EMULATED)
  emu::cp_async(dst, src, 16, src_bytes);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
#else
  (void)dst; (void)src; (void)src_bytes;
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(SPECDEC_EMULATED)
  emu::cp_async_commit();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most N of this thread's commit groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(SPECDEC_EMULATED)
  emu::cp_async_wait(N);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Two floats -> one register of two T (lo in the low half), round to nearest even.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint16_t l, h;
  if constexpr (std::is_same<T, __half>::value) {
    const __half a = __float2half_rn(lo), b = __float2half_rn(hi);
    memcpy(&l, &a, 2);
    memcpy(&h, &b, 2);
  } else {
    const __nv_bfloat16 a = __float2bfloat16_rn(lo), b = __float2bfloat16_rn(hi);
    memcpy(&l, &a, 2);
    memcpy(&h, &b, 2);
  }
  return uint32_t(l) | (uint32_t(h) << 16);
}

}  // namespace ptx
}  // namespace specdec

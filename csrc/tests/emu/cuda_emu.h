// A CPU execution harness for our CUDA kernels: force-included (-include) into
// the .cu launchers and C++ CUDA tests after rewrite_cuda.py has turned each
// `k<<<grid, block, smem, stream>>>(args)` into `emu::launch(...)` and each
// `extern __shared__` array into the launch's dynamic shared memory.
//
// Model (see csrc/tests/emu/README.md for the limits):
// - An emulated sm_90 device, "emulated sm_90 (specdec CPU harness)", 132 SMs,
//   48 KB of dynamic shared memory per block unless cudaFuncSetAttribute raised
//   it, at most 227 KB (the H100/H200 opt-in limit).
// - Every CUDA thread of a block is a host thread; the blocks of a grid run one
//   after another. __syncthreads is a real barrier (threads that returned no
//   longer count, as on the device); warp intrinsics exchange values among the
//   lanes named in their mask and fail if a named lane has exited or does not
//   arrive; calling lanes must be named in the mask.
// - Launch checks: block size <= 1024 (x, y <= 1024, z <= 64), grid y, z <=
//   65535, dynamic shared memory within the function's limit. A failed launch
//   runs nothing and sets the error cudaGetLastError returns, as on the device.
// - WMMA fragments are kept whole in every lane (fp32 accumulation); loads
//   check the documented 256-bit pointer alignment and ldm multiples; stores
//   are split among the lanes so each element has one writer.
// - Misaligned vector loads: uint4/float4/uint2 are over-aligned types, so the
//   AddressSanitizer build's -fsanitize=alignment faults on them as the device does.
// - Device memory is host memory; streams are synchronous.
#pragma once

#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Blocks run one after another, so a function-static variable is the block's shared memory.
#define __shared__ static

// ------------------------------------------------------------------ vector types
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// ------------------------------------------------------------------ errors and runtime API
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoDevice = 100,
};
typedef cudaError_t cudaError;
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                      cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlock = 8, cudaDevAttrMultiProcessorCount = 16,
                      cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct CUstream_st {};
typedef CUstream_st* cudaStream_t;
constexpr unsigned cudaStreamNonBlocking = 1;

struct cudaDeviceProp {
  char name[256];
  int major, minor, multiProcessorCount;
  size_t sharedMemPerBlock, sharedMemPerBlockOptin, totalGlobalMem;
  int warpSize, maxThreadsPerBlock;
};

namespace emu {

constexpr int kSMs = 132;
constexpr size_t kDefaultDynamicSmem = 48 * 1024;
constexpr size_t kMaxDynamicSmem = 227 * 1024;
constexpr const char* kDeviceName = "emulated sm_90 (specdec CPU harness)";

[[noreturn]] void fail(const char* fmt, ...);
void set_error(cudaError_t e);
cudaError_t take_error();
size_t smem_limit(const void* func);
void set_smem_limit(const void* func, size_t bytes);

// State of the block being run; the launch owns it.
struct Block {
  std::mutex m;
  std::condition_variable cv;
  int active = 0, arrived = 0;
  uint64_t gen = 0;
  unsigned char* dynamic_smem = nullptr;
  struct Warp {
    uint32_t arrived = 0, exited = 0, members = 0;
    uint64_t gen = 0;
    uint64_t vals[32] = {};
    uint64_t snap[2][32] = {};
  };
  std::vector<Warp> warps;
};

extern thread_local Block* current_block;
extern thread_local unsigned flat_tid;
inline unsigned char* dynamic_shared() { return current_block->dynamic_smem; }

void syncthreads();
void thread_exit();
// Every lane of `mask` contributes `bits`; returns the lanes' values (index = lane).
const uint64_t* warp_exchange(uint32_t mask, uint64_t bits);

struct Config {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
};
inline Config config(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = nullptr) {
  return Config{grid, block, smem, stream};
}

void run_grid(const Config& c, const void* func, void (*body)(void*), void* ctx);

template <typename... P, typename... A>
void launch(void (*kernel)(P...), const Config& c, A&&... args) {
  // Arguments are copied as the device copies kernel parameters.
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  struct Ctx {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...>* params;
  } ctx{kernel, &params};
  run_grid(c, reinterpret_cast<const void*>(kernel),
           [](void* p) {
             auto* x = static_cast<Ctx*>(p);
             std::apply(x->kernel, *x->params);
           },
           &ctx);
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp exchange of a <= 8-byte value");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

}  // namespace emu

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_exchange(mask, 0); }
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  if (width != 32) emu::fail("__shfl_xor_sync: width %d is not emulated", width);
  const uint64_t* vals = emu::warp_exchange(mask, emu::to_bits(v));
  const unsigned src = (emu::flat_tid % 32) ^ unsigned(lane_mask);
  if (!((mask >> src) & 1u)) emu::fail("__shfl_xor_sync: source lane %u is not in mask 0x%08x", src, mask);
  return emu::from_bits<T>(vals[src]);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  if (width != 32) emu::fail("__shfl_sync: width %d is not emulated", width);
  const uint64_t* vals = emu::warp_exchange(mask, emu::to_bits(v));
  const unsigned src = unsigned(src_lane) % 32;
  if (!((mask >> src) & 1u)) emu::fail("__shfl_sync: source lane %u is not in mask 0x%08x", src, mask);
  return emu::from_bits<T>(vals[src]);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  const uint64_t* vals = emu::warp_exchange(mask, pred ? 1 : 0);
  unsigned r = 0;
  for (int l = 0; l < 32; ++l)
    if (((mask >> l) & 1u) && vals[l]) r |= 1u << l;
  return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }

inline int __ffs(unsigned x) { return __builtin_ffs(int(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(unsigned x) { return x == 0 ? 32 : __builtin_clz(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
#include <math.h>

template <typename T>
T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline float atomicAdd(float* p, float v) {
  float old, want;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  do {
    want = old + v;
  } while (!__atomic_compare_exchange(p, &old, &want, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}
template <typename T>
T atomicMax(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}

// ------------------------------------------------------------------ fp16 / bf16
struct __half {
  uint16_t bits;
  __half() = default;
};
struct __nv_bfloat16 {
  uint16_t bits;
  __nv_bfloat16() = default;
};
typedef __half half;
inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, 2);
  return float(f);
}
inline __half __float2half_rn(float x) {
  const _Float16 f = _Float16(x);  // IEEE round to nearest even
  __half h;
  std::memcpy(&h.bits, &f, 2);
  return h;
}
inline __half __float2half(float x) { return __float2half_rn(x); }
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = uint32_t(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  __nv_bfloat16 b;
  if (std::isnan(x)) {
    b.bits = uint16_t((u >> 16) | 0x40);
  } else {
    b.bits = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  return b;
}
inline __nv_bfloat16 __float2bfloat16(float x) { return __float2bfloat16_rn(x); }

// ------------------------------------------------------------------ runtime API
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int d);
cudaError_t cudaMalloc(void** p, size_t bytes);
template <typename T>
cudaError_t cudaMalloc(T** p, size_t bytes) { return cudaMalloc(reinterpret_cast<void**>(p), bytes); }
cudaError_t cudaFree(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* p, int v, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*func)(P...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}

// ------------------------------------------------------------------ WMMA
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  static constexpr int num_elements = rows * cols;  // whole tile in every lane (see the header)
  float x[rows * cols];
};

inline float elem_to_float(const float& v) { return v; }
inline float elem_to_float(const __half& v) { return __half2float(v); }
inline float elem_to_float(const __nv_bfloat16& v) { return __bfloat162float(v); }

template <typename T>
void check_ptr(const T* p, unsigned ldm, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    emu::fail("wmma::%s: pointer %p is not 256-bit aligned", what, static_cast<const void*>(p));
  const unsigned mult = 16 / sizeof(T);
  if (ldm % mult != 0) emu::fail("wmma::%s: ldm %u is not a multiple of %u elements", what, ldm, mult);
}

template <typename Use, int M, int N, int K, typename FT, typename Layout>
void fill_fragment(fragment<Use, M, N, K, FT, Layout>& f, float v) {
  for (float& e : f.x) e = v;
}

template <typename Use, int M, int N, int K, typename FT, typename Layout, typename T>
void load_matrix_sync(fragment<Use, M, N, K, FT, Layout>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same<Use, accumulator>::value, "accumulator loads take a layout_t");
  static_assert(std::is_same<T, FT>::value, "wmma: pointer and fragment element types differ");
  __syncwarp();
  check_ptr(p, ldm, "load_matrix_sync");
  using F = fragment<Use, M, N, K, FT, Layout>;
  constexpr bool row = std::is_same<Layout, row_major>::value;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = elem_to_float(row ? p[r * ldm + c] : p[c * ldm + r]);
  __syncwarp();
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float, void>& f, const float* p, unsigned ldm, layout_t l) {
  __syncwarp();
  check_ptr(p, ldm, "load_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  __syncwarp();
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, float, void>& c) {
  __syncwarp();
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float acc = c.x[i * N + j];
      for (int k = 0; k < K; ++k) acc = std::fma(a.x[i * K + k], b.x[k * N + j], acc);
      out[i * N + j] = acc;
    }
  std::memcpy(d.x, out, sizeof out);
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float, void>& f, unsigned ldm, layout_t l) {
  __syncwarp();
  check_ptr(p, ldm, "store_matrix_sync");
  // One writer per element, as the lanes of a warp share a tile on the device.
  for (int e = int(emu::flat_tid % 32); e < M * N; e += 32) {
    const int r = e / N, c = e % N;
    (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[e];
  }
  __syncwarp();
}
}  // namespace wmma
}  // namespace nvcuda

// A CPU execution harness for our CUDA kernels: force-included (-include) into
// the .cu launchers and C++ CUDA tests after rewrite_cuda.py has turned each
// `k<<<grid, block, smem, stream>>>(args)` into `emu::launch(...)` and each
// `extern __shared__` array into the launch's dynamic shared memory.
//
// Model (see csrc/tests/emu/README.md for the limits):
// - An emulated sm_90 device, "emulated sm_90 (specdec CPU harness)", 132 SMs,
//   48 KB of dynamic shared memory per block unless cudaFuncSetAttribute raised
//   it, at most 227 KB (the H100/H200 opt-in limit).
// - Every CUDA thread is a fiber; the fibers of a block run on one host thread
//   (a worker), switching at __syncthreads and warp intrinsics, and the blocks
//   of a grid are dealt round-robin to kWorkers host threads that run at once,
//   so blocks on different workers are concurrent. The sanitizers are told
//   about every switch, so ThreadSanitizer sees each CUDA thread as a thread
//   and __syncthreads / __syncwarp as the only happens-before edges inside a
//   block. __syncthreads is a barrier (threads that returned no longer count,
//   as on the device); warp intrinsics exchange values among the lanes named in
//   their mask and fail if a named lane has exited or never arrives; calling
//   lanes must be named in the mask. A block whose fibers all wait is a
//   deadlock, reported with what each one waits for.
// - Launch checks: block size <= 1024 (x, y <= 1024, z <= 64), grid y, z <=
//   65535, dynamic shared memory within the function's limit. A failed launch
//   runs nothing and sets the error cudaGetLastError returns, as on the device.
// - Shared memory (static and dynamic) is allocated per block at its exact
//   size, so AddressSanitizer sees overruns, and starts as NaN bytes.
// - mma.sync, ldmatrix, cp.async, wgmma, mbarrier and setmaxnreg (reached
//   through specdec/ptx.cuh) have their PTX meaning: register exchanges among
//   the full warp (or warpgroup) that order no memory, copies that land only
//   at their wait, barriers whose arrivals release and whose waits acquire
//   (see warp_gather, ldmatrix, mma_m16n8k16, cp_async, wgmma, mbarrier_init
//   below).
// - Misaligned vector loads: uint4/float4/uint2 are over-aligned types, so the
//   AddressSanitizer build's -fsanitize=alignment faults on them as the device does.
// - Device memory is host memory; streams are synchronous.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
// `__shared__ T x;` is rewritten by rewrite_cuda.py into a per-block allocation
// (emu::static_shared); one left over is an error.
#define __shared__ __shared___is_rewritten_by_rewrite_cuda_py

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
inline float2 make_float2(float x, float y) { return {x, y}; }

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
                      cudaDevAttrComputeCapabilityMajor = 75, cudaDevAttrComputeCapabilityMinor = 76,
                      cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct CUstream_st {};
typedef CUstream_st* cudaStream_t;
constexpr unsigned cudaStreamNonBlocking = 1;

struct cudaFuncAttributes {
  size_t sharedSizeBytes, constSizeBytes, localSizeBytes;
  int maxThreadsPerBlock, numRegs, ptxVersion, binaryVersion, cacheModeCA, maxDynamicSharedSizeBytes;
};

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

// The block's dynamic shared memory; static `__shared__` variables (one
// allocation per declaration and block, keyed by the address of a static).
unsigned char* dynamic_shared();
void* static_shared_bytes(const void* key, size_t bytes, size_t align);
template <typename T>
T& static_shared(const void* key, size_t align) {
  return *static_cast<T*>(static_shared_bytes(key, sizeof(T), align > alignof(T) ? align : alignof(T)));
}

uint3 thread_idx();
uint3 block_idx();
unsigned lane();
void syncthreads();
// The warp intrinsics. An exchange among the lanes of `mask`: every lane gives
// `bits` and gets the bits of lane `src` (shuffles) or the ballot (src < 0).
// Only __syncwarp orders memory (as documented); shuffles and ballots do not.
enum class WarpOp { kSync, kShuffle, kBallot, kGather };
uint64_t warp_exchange(WarpOp op, uint32_t mask, uint64_t bits, unsigned src);

struct Config {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
};
inline Config config(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = nullptr) {
  return Config{grid, block, smem, stream};
}

void run_grid(const Config& c, const void* func, void (*body)(void*), void* ctx);

// What mma.sync and ldmatrix do among the lanes of a warp: every lane of the
// full warp gives n (<= kMaxGatherWords) 32-bit registers and gets all 32
// lanes' (all[l * n + w]). Synchronises execution, orders no memory.
constexpr int kMaxGatherWords = 8;
void warp_gather(const uint32_t* mine, int n, uint32_t* all);
// Whether [p, p + bytes) lies in the block's shared memory (dynamic or static).
bool in_shared(const void* p, size_t bytes);
// cp.async.cg.shared.global: `src_bytes` (<= bytes) of src are read now, the
// rest of dst is zero-filled; dst is written only when a cp_async_wait
// completes the copy's commit group (by this thread, so ThreadSanitizer sees a
// reader on another thread that skipped the barrier after the wait). Copies
// not yet committed are never completed by a wait; a thread that returns with
// copies outstanding is an error.
void cp_async(void* dst, const void* src, int bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending);
// ldmatrix.sync.aligned.m8n8.x{num}[.trans].shared.b16: lane 8 i + r gives
// row r of matrix i; lane l gets, of matrix i, row l / 4, elements 2 (l % 4)
// and + 1 (transposed: rows 2 (l % 4) and + 1 of column l / 4).
void ldmatrix(uint32_t* r, int num, bool trans, const void* row_addr);
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: d += a b with the PTX
// fragment layouts, fp32 accumulation in k order.
void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, bool bf16);

// sm_90a's warpgroup MMA (see wgmma in cuda_emu.cpp). Dynamic shared memory
// starts at kSharedWindowBase in the shared window the descriptors address.
constexpr uint32_t kSharedWindowBase = 1024;
uint32_t shared_window_addr(const void* p);
// wgmma.mma_async.sync.aligned.m64nNk16.f32.{f16,bf16}: a warpgroup-wide
// exchange (the 128 threads must all call it with the same descriptors),
// then recorded; d is written only when this thread's wgmma_wait completes
// the op's commit group, and the operands in shared memory are read then.
// a_regs: A from registers (the mma.sync A fragment per warp), else a_desc
// (K-major). B from b_desc, K-major or (b_mn_major) MN-major. No swizzle.
void wgmma(float* d, int n, bool bf16, const uint32_t* a_regs, uint64_t a_desc, uint64_t b_desc, bool b_mn_major,
           bool accumulate);
void wgmma_fence();
void wgmma_commit();
void wgmma_wait(int pending);
void fence_proxy_async();

// mbarrier objects (8 bytes of shared memory; the state lives in them, so a
// barrier used before mbarrier_init, or poisoned shared memory, is an error).
// A phase completes when `count` arrivals have happened; arrivals release and
// a completed wait acquires (the only happens-before edges between producer
// and consumer warps). mbarrier_wait(bar, parity) is try_wait.parity in a
// loop: it returns once the phase of that parity has completed (the current
// phase parity differs), so parity 1 passes at once on a fresh barrier. A
// thread waiting here blocks its fiber; a block whose live threads all wait is
// a deadlock.
void mbarrier_init(uint64_t* bar, unsigned count);
void mbarrier_arrive(uint64_t* bar);
void mbarrier_wait(uint64_t* bar, unsigned parity);
// cp.async.mbarrier.arrive (without .noinc: it counts as no arrival): the
// barrier's phase cannot complete before this thread's earlier cp.async
// copies have landed. Emulated by landing them now.
void cp_async_mbarrier_arrive(uint64_t* bar);
// setmaxnreg.{inc,dec}.sync.aligned.u32: a warpgroup-wide exchange; all 128
// threads must ask for the same count, a multiple of 8 in [24, 256].
void setmaxnreg(bool inc, unsigned regs);

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

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_exchange(emu::WarpOp::kSync, mask, 0, 0); }
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  if (width != 32) emu::fail("__shfl_xor_sync: width %d is not emulated", width);
  const unsigned src = emu::lane() ^ unsigned(lane_mask);
  return emu::from_bits<T>(emu::warp_exchange(emu::WarpOp::kShuffle, mask, emu::to_bits(v), src % 32));
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  if (width != 32) emu::fail("__shfl_sync: width %d is not emulated", width);
  return emu::from_bits<T>(emu::warp_exchange(emu::WarpOp::kShuffle, mask, emu::to_bits(v), unsigned(src_lane) % 32));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return unsigned(emu::warp_exchange(emu::WarpOp::kBallot, mask, pred ? 1 : 0, 0));
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
// Exact, and inline: _Float16's conversion is a libgcc call without F16C.
inline float __half2float(__half h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16, em = h.bits & 0x7fffu;
  uint32_t u;
  if (em >= 0x7c00u) {
    u = sign | 0x7f800000u | ((em & 0x3ffu) << 13);  // inf, nan
  } else if (em >= 0x0400u) {
    u = sign | ((em + 0x1c000u) << 13);  // normal: exponent rebiased by 127 - 15
  } else {
    const float f = float(em) * 5.9604644775390625e-8f;  // subnormal: em * 2^-24, exact
    std::memcpy(&u, &f, 4);
    u |= sign;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
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
// The harness compiles every kernel "for sm_90a": ptxVersion = binaryVersion = 90.
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void* func);
template <typename... P>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, void (*func)(P...)) {
  return cudaFuncGetAttributes(attr, reinterpret_cast<const void*>(func));
}
// Resident blocks per SM from threads and shared memory only (the harness
// knows no register counts): min(2048 / threads, 32, 228 KB / (smem + 1 KB)).
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void* func, int block, size_t smem);
template <typename... P>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void (*func)(P...), int block, size_t smem) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(n, reinterpret_cast<const void*>(func), block, smem);
}

// cudaLaunchKernelEx with thread-block clusters (sm_90): the cluster shape
// must divide the grid and hold at most 8 blocks (the portable limit; the
// non-portable opt-in is not emulated); a bad shape refuses the launch with
// cudaErrorInvalidConfiguration, as the device does. What a cluster promises
// is co-scheduling on one GPC; the harness runs blocks as it always does (no
// kernel here uses cluster-scope instructions: distributed shared memory or
// cluster barriers would need the blocks of a cluster on one worker).
enum cudaLaunchAttributeID { cudaLaunchAttributeClusterDimension = 4 };
union cudaLaunchAttributeValue {
  char pad[64];
  struct {
    unsigned int x, y, z;
  } clusterDim;
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  char pad[8 - sizeof(cudaLaunchAttributeID)];
  cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned int numAttrs;
};
namespace emu {
// cudaSuccess, or why the launch is refused (the error is also set for cudaGetLastError).
cudaError_t check_launch_attributes(const cudaLaunchConfig_t& c);
}  // namespace emu
template <typename... P, typename... A>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* c, void (*kernel)(P...), A&&... args) {
  if (c == nullptr) return cudaErrorInvalidValue;
  const cudaError_t err = emu::check_launch_attributes(*c);
  if (err != cudaSuccess) return err;
  emu::launch(kernel, emu::config(c->gridDim, c->blockDim, c->dynamicSmemBytes, c->stream),
              std::forward<A>(args)...);
  return cudaPeekAtLastError();
}

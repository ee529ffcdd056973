// The harness's runtime: launches, barriers, warp exchanges, the runtime API.
#include "cuda_emu.h"

#include <chrono>
#include <cstdarg>
#include <map>

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace emu {

thread_local Block* current_block = nullptr;
thread_local unsigned flat_tid = 0;

namespace {
std::mutex g_mutex;  // the error state and function attributes
cudaError_t g_error = cudaSuccess;
std::map<const void*, size_t>& smem_limits() {
  static std::map<const void*, size_t> m;
  return m;
}
// A barrier or warp exchange that waits this long has lost a thread: a
// deadlock on the device. TSan makes everything slow, hence the margin.
constexpr auto kDeadlock = std::chrono::seconds(60);
}  // namespace

void fail(const char* fmt, ...) {
  std::va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "\n[cuda emulator] error in block (%u,%u,%u) thread (%u,%u,%u): ", blockIdx.x, blockIdx.y,
               blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
  std::fflush(stderr);
  std::abort();
}

void set_error(cudaError_t e) {
  std::lock_guard<std::mutex> l(g_mutex);
  if (g_error == cudaSuccess) g_error = e;
}
cudaError_t take_error() {
  std::lock_guard<std::mutex> l(g_mutex);
  const cudaError_t e = g_error;
  g_error = cudaSuccess;
  return e;
}
size_t smem_limit(const void* func) {
  std::lock_guard<std::mutex> l(g_mutex);
  auto it = smem_limits().find(func);
  return it == smem_limits().end() ? kDefaultDynamicSmem : it->second;
}
void set_smem_limit(const void* func, size_t bytes) {
  std::lock_guard<std::mutex> l(g_mutex);
  smem_limits()[func] = bytes;
}

void syncthreads() {
  Block& b = *current_block;
  std::unique_lock<std::mutex> l(b.m);
  const uint64_t gen = b.gen;
  if (++b.arrived == b.active) {
    b.arrived = 0;
    ++b.gen;
    b.cv.notify_all();
    return;
  }
  if (!b.cv.wait_for(l, kDeadlock, [&] { return b.gen != gen; }))
    fail("__syncthreads: %d of %d live threads arrived within 60 s (a barrier some threads never reach)",
         b.arrived, b.active);
}

void thread_exit() {
  Block& b = *current_block;
  std::lock_guard<std::mutex> l(b.m);
  --b.active;
  Block::Warp& w = b.warps[flat_tid / 32];
  w.exited |= 1u << (flat_tid % 32);
  if (b.arrived > 0 && b.arrived == b.active) {
    b.arrived = 0;
    ++b.gen;
  }
  b.cv.notify_all();
}

const uint64_t* warp_exchange(uint32_t mask, uint64_t bits) {
  Block& b = *current_block;
  const unsigned lane = flat_tid % 32;
  std::unique_lock<std::mutex> l(b.m);
  Block::Warp& w = b.warps[flat_tid / 32];
  if (!((mask >> lane) & 1u)) fail("warp intrinsic: calling lane %u is not in its mask 0x%08x", lane, mask);
  if ((mask & ~w.members) != 0u)
    fail("warp intrinsic: mask 0x%08x names lanes the block does not have (lanes 0x%08x)", mask, w.members);
  if (w.arrived != 0u && (w.arrived & ~mask) != 0u)
    fail("warp intrinsic: lanes 0x%08x wait with another mask than 0x%08x", w.arrived, mask);
  w.vals[lane] = bits;
  w.arrived |= 1u << lane;
  const uint64_t gen = w.gen;
  if (w.arrived == mask) {
    std::memcpy(w.snap[gen & 1], w.vals, sizeof w.vals);
    w.arrived = 0;
    ++w.gen;
    b.cv.notify_all();
    return w.snap[gen & 1];
  }
  const bool done = b.cv.wait_for(l, kDeadlock, [&] {
    if (w.gen != gen) return true;
    if ((w.exited & mask) != 0u)
      fail("warp intrinsic: lanes 0x%08x named in mask 0x%08x exited without arriving", w.exited & mask, mask);
    return false;
  });
  if (!done) fail("warp intrinsic: lanes 0x%08x of mask 0x%08x never arrived", mask & ~w.arrived, mask);
  return w.snap[gen & 1];
}

void run_grid(const Config& c, const void* func, void (*body)(void*), void* ctx) {
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  if (threads == 0 || threads > 1024 || c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64 ||
      c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.x > 0x7fffffffu || c.grid.y > 65535 ||
      c.grid.z > 65535) {
    set_error(cudaErrorInvalidConfiguration);
    return;
  }
  if (c.smem > smem_limit(func)) {
    std::fprintf(stderr, "[cuda emulator] launch refused: %zu B of dynamic shared memory, limit %zu B%s\n", c.smem,
                 smem_limit(func), smem_limit(func) == kDefaultDynamicSmem ? " (cudaFuncSetAttribute not called)" : "");
    set_error(cudaErrorInvalidValue);
    return;
  }
  blockDim = c.block;
  gridDim = c.grid;
  const uint64_t blocks = uint64_t(c.grid.x) * c.grid.y * c.grid.z;
  Block block;
  block.warps.resize((threads + 31) / 32);
  for (size_t w = 0; w < block.warps.size(); ++w) {
    const uint64_t lanes = std::min<uint64_t>(32, threads - 32 * w);
    block.warps[w].members = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  }
  std::vector<unsigned char> smem(c.smem + 1);
  // Block-end barrier: every thread has finished block i before block i + 1 starts.
  std::mutex end_m;
  std::condition_variable end_cv;
  uint64_t end_count = 0, end_gen = 0;

  auto reset = [&] {
    block.active = int(threads);
    block.arrived = 0;
    for (auto& w : block.warps) w.arrived = w.exited = 0;
    // Shared memory starts as garbage on the device: NaN bytes, so a read of
    // an unwritten element shows in the results.
    std::memset(smem.data(), 0xff, smem.size());
  };
  reset();
  block.dynamic_smem = c.smem ? smem.data() : nullptr;

  auto worker = [&](unsigned tid) {
    current_block = &block;
    flat_tid = tid;
    threadIdx = uint3{tid % c.block.x, (tid / c.block.x) % c.block.y, tid / (c.block.x * c.block.y)};
    for (uint64_t i = 0; i < blocks; ++i) {
      blockIdx = uint3{unsigned(i % c.grid.x), unsigned((i / c.grid.x) % c.grid.y),
                       unsigned(i / (uint64_t(c.grid.x) * c.grid.y))};
      body(ctx);
      thread_exit();
      std::unique_lock<std::mutex> l(end_m);
      const uint64_t gen = end_gen;
      if (++end_count == threads) {
        end_count = 0;
        reset();
        ++end_gen;
        end_cv.notify_all();
      } else {
        end_cv.wait(l, [&] { return end_gen != gen; });
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned t = 0; t < threads; ++t) pool.emplace_back(worker, t);
  for (auto& t : pool) t.join();
}

}  // namespace emu

cudaError_t cudaGetLastError() { return emu::take_error(); }
cudaError_t cudaPeekAtLastError() {
  const cudaError_t e = emu::take_error();
  emu::set_error(e);
  return e;
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error (emulated)";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorMemoryAllocation: return "out of memory (emulated)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulated)";
    default: return "error (emulated)";
  }
}
cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return cudaErrorInvalidDevice;
  *p = cudaDeviceProp{};
  std::snprintf(p->name, sizeof p->name, "%s", emu::kDeviceName);
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = emu::kSMs;
  p->sharedMemPerBlock = emu::kDefaultDynamicSmem;
  p->sharedMemPerBlockOptin = emu::kMaxDynamicSmem;
  p->totalGlobalMem = size_t(8) << 30;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int d) {
  if (d != 0) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = emu::kSMs; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = int(emu::kDefaultDynamicSmem); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = int(emu::kMaxDynamicSmem); return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
cudaError_t cudaMalloc(void** p, size_t bytes) {
  // 256-byte aligned like cudaMalloc; exact size so AddressSanitizer sees overruns.
  *p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* p) { std::free(p); return cudaSuccess; }
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind k, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, k);
}
cudaError_t cudaMemset(void* p, int v, size_t bytes) { if (bytes) std::memset(p, v, bytes); return cudaSuccess; }
cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t) { return cudaMemset(p, v, bytes); }
cudaError_t cudaStreamCreate(cudaStream_t* s) { *s = new CUstream_st; return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) { delete s; return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || size_t(value) > emu::kMaxDynamicSmem) return cudaErrorInvalidValue;
  emu::set_smem_limit(func, size_t(value));
  return cudaSuccess;
}

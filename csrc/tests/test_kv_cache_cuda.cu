// CUDA launchers (append_kv_cuda, compact_kv_cuda) through the same suite as
// the CPU kernels: every case is uploaded whole (guard bytes included), run on
// the device, downloaded, and compared with both the naive reference and the
// CPU kernels' output. Exits 77 (skipped) on a machine without a CUDA device.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "kv_cache_test_suite.h"
#include "specdec/kv_cache_cuda.h"

namespace {

using kvtest::AppendCase;
using kvtest::CompactCase;
using kvtest::Guarded;

// A failed CUDA call leaves nothing to trust (an asynchronous kernel fault
// poisons the context), so it ends the test rather than counting a failure.
#define CUDA_OK(expr)                                                                             \
  do {                                                                                            \
    const cudaError_t err_ = (expr);                                                              \
    if (err_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "FAIL %s:%d [%s]: %s returned %s\n", __FILE__, __LINE__,               \
                   kvtest::current_case().c_str(), #expr, cudaGetErrorString(err_));              \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

class DeviceBytes {
 public:
  explicit DeviceBytes(size_t n) { CUDA_OK(cudaMalloc(&ptr_, n > 0 ? n : 16)); }
  ~DeviceBytes() {
    const cudaError_t err = cudaFree(ptr_);
    if (err != cudaSuccess) std::fprintf(stderr, "cudaFree: %s\n", cudaGetErrorString(err));
  }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
  uint8_t* get() const { return static_cast<uint8_t*>(ptr_); }

 private:
  void* ptr_ = nullptr;
};

// A device copy of a guarded buffer, guards and misalignment included.
class DeviceGuarded {
 public:
  DeviceGuarded(const Guarded& g, cudaStream_t s) : mem_(g.bytes.size()), offset_(g.offset) {
    CUDA_OK(cudaMemcpyAsync(mem_.get(), g.bytes.data(), g.bytes.size(), cudaMemcpyHostToDevice, s));
  }
  uint8_t* data() const { return mem_.get() + offset_; }
  void download(Guarded& g, cudaStream_t s) const {
    CUDA_OK(cudaMemcpyAsync(g.bytes.data(), mem_.get(), g.bytes.size(), cudaMemcpyDeviceToHost, s));
  }

 private:
  DeviceBytes mem_;
  size_t offset_;
};

class DeviceInts {
 public:
  DeviceInts(const std::vector<int32_t>& v, cudaStream_t s) : mem_(v.size() * sizeof(int32_t)) {
    CUDA_OK(cudaMemcpyAsync(mem_.get(), v.data(), v.size() * sizeof(int32_t), cudaMemcpyHostToDevice, s));
  }
  const int32_t* get() const { return reinterpret_cast<const int32_t*>(mem_.get()); }

 private:
  DeviceBytes mem_;
};

struct CudaBackend : kvtest::Backend {
  cudaStream_t stream = nullptr;
  kvtest::CpuBackend cpu;

  CudaBackend() { CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)); }
  ~CudaBackend() override {
    const cudaError_t err = cudaStreamDestroy(stream);
    if (err != cudaSuccess) std::fprintf(stderr, "cudaStreamDestroy: %s\n", cudaGetErrorString(err));
  }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  // Runs append_kv_cuda on c's buffers in place; returns the launcher's code.
  cudaError_t run_append(AppendCase& c) {
    const DeviceGuarded k(c.k, stream), v(c.v, stream), kc(c.k_cache, stream), vc(c.v_cache, stream);
    const DeviceInts qo(c.qo_indptr, stream), table(c.t.table, stream), prefix(c.t.prefix_lens, stream);
    const specdec::AppendKVArgs a =
        kvtest::append_args(c, k.data(), v.data(), kc.data(), vc.data(), qo.get(), table.get(), prefix.get());
    const cudaError_t launched = specdec::append_kv_cuda(a, stream);
    CUDA_OK(cudaStreamSynchronize(stream));  // a kernel fault surfaces here
    k.download(c.k, stream);
    v.download(c.v, stream);
    kc.download(c.k_cache, stream);
    vc.download(c.v_cache, stream);
    CUDA_OK(cudaStreamSynchronize(stream));
    return launched;
  }

  cudaError_t run_compact(CompactCase& c) {
    std::vector<std::unique_ptr<DeviceGuarded>> kb, vb;
    for (const Guarded& g : c.k_bufs) kb.push_back(std::make_unique<DeviceGuarded>(g, stream));
    for (const Guarded& g : c.v_bufs) vb.push_back(std::make_unique<DeviceGuarded>(g, stream));
    std::vector<void*> k_layers, v_layers;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const size_t buf = c.stacked ? 0 : size_t(l);
      const size_t step = c.stacked ? size_t(l) * c.layer_step : 0;
      k_layers.push_back(kb[buf]->data() + step);
      v_layers.push_back(vb[buf]->data() + step);
    }
    const DeviceInts table(c.t.table, stream), prefix(c.t.prefix_lens, stream),
        nodes(c.accepted_nodes, stream), accepted(c.num_accepted, stream);
    const specdec::CompactKVArgs a = kvtest::compact_args(c, k_layers.data(), v_layers.data(), table.get(),
                                                          prefix.get(), nodes.get(), accepted.get());
    const cudaError_t launched = specdec::compact_kv_cuda(a, stream);
    CUDA_OK(cudaStreamSynchronize(stream));
    for (size_t i = 0; i < kb.size(); ++i) kb[i]->download(c.k_bufs[i], stream);
    for (size_t i = 0; i < vb.size(); ++i) vb[i]->download(c.v_bufs[i], stream);
    CUDA_OK(cudaStreamSynchronize(stream));
    return launched;
  }

  void append(AppendCase& c) override {
    const AppendCase initial = c;
    AppendCase on_cpu = c;
    cpu.append(on_cpu);
    const cudaError_t err = run_append(c);
    KV_EXPECT_MSG(err == cudaSuccess, "append_kv_cuda returned %s", cudaGetErrorString(err));
    kvtest::expect_buffer("k_cache vs CPU kernel", c.k_cache, on_cpu.k_cache, initial.k_cache, c.layout);
    kvtest::expect_buffer("v_cache vs CPU kernel", c.v_cache, on_cpu.v_cache, initial.v_cache, c.layout);
  }

  void compact(CompactCase& c) override {
    const CompactCase initial = c;
    CompactCase on_cpu = c;
    cpu.compact(on_cpu);
    const cudaError_t err = run_compact(c);
    KV_EXPECT_MSG(err == cudaSuccess, "compact_kv_cuda returned %s", cudaGetErrorString(err));
    kvtest::expect_compact_buffers(c, on_cpu, initial, "CPU kernel");
  }
};

// What only the launchers have: argument checks that refuse to launch, and
// the early return on empty work.
void check_launcher_edges(CudaBackend& be) {
  {
    kvtest::CompactParams p{2, 64, 1, 16, kvtest::kNHD, 1200, false};
    p.min_width = p.max_width = specdec::kMaxPathWidth + 1;
    p.min_tree = p.max_tree = 40;
    CompactCase c = kvtest::make_compact_case(p);
    c.name = "compact_kv_cuda with path_width > kMaxPathWidth";
    kvtest::current_case() = c.name;
    const CompactCase initial = c;
    const cudaError_t err = be.run_compact(c);
    KV_EXPECT_MSG(err == cudaErrorInvalidValue, "returned %s, want cudaErrorInvalidValue",
                  cudaGetErrorString(err));
    for (size_t i = 0; i < c.k_bufs.size(); ++i) {
      kvtest::expect_untouched("K buffer", c.k_bufs[i], initial.k_bufs[i]);
      kvtest::expect_untouched("V buffer", c.v_bufs[i], initial.v_bufs[i]);
    }
  }
  {
    AppendCase c = kvtest::make_append_case(kvtest::AppendParams{2, 128, 2, 16, kvtest::kNHD, 1300, false});
    std::fill(c.qo_indptr.begin(), c.qo_indptr.end(), 0);
    c.num_tokens = 0;
    c.name = "append_kv_cuda with no tokens";
    kvtest::current_case() = c.name;
    const AppendCase initial = c;
    const cudaError_t err = be.run_append(c);
    KV_EXPECT_MSG(err == cudaSuccess, "returned %s", cudaGetErrorString(err));
    kvtest::expect_untouched("k_cache", c.k_cache, initial.k_cache);
    kvtest::expect_untouched("v_cache", c.v_cache, initial.v_cache);
  }
  kvtest::current_case() = "end";
  CUDA_OK(cudaGetLastError());  // no launch left an error behind
}

}  // namespace

int main() {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    if (err != cudaSuccess) std::printf("(cudaGetDeviceCount: %s)\n", cudaGetErrorString(err));
    return 77;
  }
  cudaDeviceProp prop{};
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device 0: %s, sm_%d%d\n", prop.name, prop.major, prop.minor);
  {
    CudaBackend cuda;
    kvtest::run_suite(cuda);
    check_launcher_edges(cuda);
  }
  const int failures = kvtest::failure_count();
  std::printf("test_kv_cache_cuda: %s (%d failures)\n", failures == 0 ? "PASSED" : "FAILED", failures);
  return failures == 0 ? 0 : 1;
}

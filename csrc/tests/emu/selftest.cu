// The harness's own checks: each case is a small kernel with one deliberate
// defect (or none); mutation_test.py runs `selftest CASE` under the named
// sanitizer and expects exactly the "ok" case to pass. "ok" also multiplies a
// 16x16 by a 16x8 tile through cp.async, ldmatrix and mma.sync and compares
// the product with the host's (fragment layouts: PTX ISA, "Matrix Fragments
// for mma.m16n8k16 with floating point type" and "ldmatrix"), and a 64x16 by
// 16x64 product through wgmma both ways the tree attention uses it (PTX ISA,
// "Asynchronous Warpgroup Level Matrix Shared Memory Layout"), and hands 4
// rounds of data from a producer warp to a consumer warp through a ring of
// mbarriers.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "specdec/ptx.cuh"

namespace {

__global__ void ok_kernel(float* out) {
  __shared__ float partial[64];
  partial[threadIdx.x] = float(threadIdx.x);
  __syncthreads();
  float v = partial[63 - threadIdx.x];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[blockIdx.x * 64 + threadIdx.x] = v;
}

// Every block writes out[0]: a race between blocks (no atomics).
__global__ void inter_block_race(float* out) {
  if (threadIdx.x == 0) out[0] = float(blockIdx.x);
}

// Thread 0 writes what thread 1 reads, with no barrier between them.
__global__ void intra_block_race(float* out) {
  __shared__ float x;
  if (threadIdx.x == 0) x = 1.0f;
  if (threadIdx.x == 1) out[0] = x;
}

// Half a warp waits in a full-mask shuffle for lanes that wait at a barrier
// for it: a deadlock. (A barrier that only some threads reach before the rest
// return is not one: exited threads stop counting, on the device and here.)
__global__ void deadlock(float* out) {
  float v = float(threadIdx.x);
  if (threadIdx.x < 16) v = __shfl_sync(0xffffffffu, v, 0);
  else __syncthreads();
  out[threadIdx.x] = v;
}

// One past the end of the dynamic shared memory.
__global__ void smem_overrun(float* out) {
  extern __shared__ float dyn[];
  dyn[threadIdx.x + 1] = 1.0f;  // the launch gives blockDim.x floats
  out[threadIdx.x] = 0.0f;
}

// A 16-byte load from an address that is 4-byte aligned only.
__global__ void misaligned_vector(const float* in, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(in + 1);
  out[threadIdx.x] = v.x;
}

namespace ptx = specdec::ptx;

// One warp: A (16 x 16) and B^T (8 x 16, n-major) reach shared memory by
// cp.async, then D = A B by ldmatrix + mma.sync with the addressing the
// tree-attention kernel uses; out gets D (16 x 8, row-major).
__global__ void mma_ok(const __half* a, const __half* bt, float* out) {
  __shared__ __align__(16) __half sa[16 * 16];
  __shared__ __align__(16) __half sb[8 * 16];
  const int lane = threadIdx.x;
  ptx::cp_async_16(sa + lane * 8, a + lane * 8, 16);
  if (lane < 16) ptx::cp_async_16(sb + lane * 8, bt + lane * 8, 16);
  ptx::cp_async_commit();
  ptx::cp_async_wait<0>();
  __syncthreads();
  uint32_t fa[4], fb[4];
  ptx::ldmatrix_x4(fa, sa + (lane % 16) * 16 + (lane / 16) * 8);
  // Rows of B^T (n) 0..7 twice: matrices 2, 3 repeat 0, 1.
  ptx::ldmatrix_x4(fb, sb + (lane % 8) * 16 + ((lane / 8) % 2) * 8);
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  ptx::mma_16816<__half>(d, fa, fb[0], fb[1]);
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) out[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = d[i];
}

// One warpgroup: D = A B (A 64 x 16, B 16 x 64) twice, as the wgmma tree
// attention addresses its operands: A from shared memory (K-major core
// matrices, LBO 128 B, SBO 256 B) with B K-major (B^T's rows, same layout),
// and A from registers (the mma.sync A fragment) with B MN-major (8 k x 8 n
// core matrices, SBO 128 B along n, LBO 1024 B along k: past all 8 n chunks,
// as V's 16 D bytes). out: both D, row-major.
__global__ void wgmma_ok(const __half* a, const __half* b, float* out) {
  extern __shared__ __align__(128) unsigned char dyn[];
  __half* sa = reinterpret_cast<__half*>(dyn);               // 64 x 16, K-major
  __half* sbk = reinterpret_cast<__half*>(dyn + 2048);       // B^T: 64 n x 16 k, K-major
  __half* sbn = reinterpret_cast<__half*>(dyn + 4096);       // B: 16 k x 64 n, MN-major
  const int tid = threadIdx.x;
  for (int i = tid; i < 64 * 16; i += 128) {
    const int r = i / 16, k = i % 16;
    sa[(r / 8) * 128 + (k / 8) * 64 + (r % 8) * 8 + k % 8] = a[i];
  }
  for (int i = tid; i < 16 * 64; i += 128) {
    const int k = i / 64, n = i % 64;
    sbk[(n / 8) * 128 + (k / 8) * 64 + (n % 8) * 8 + k % 8] = b[i];
    sbn[(n / 8) * 64 + (k / 8) * 512 + (k % 8) * 8 + n % 8] = b[i];
  }
  __syncthreads();
  const int warp = tid / 32, g = tid % 32 / 4, t = tid % 4;
  auto frag = [&](int r, int k) {
    return uint32_t(reinterpret_cast<const uint16_t&>(a[r * 16 + k])) |
           uint32_t(reinterpret_cast<const uint16_t&>(a[r * 16 + k + 1])) << 16;
  };
  const int r0 = 16 * warp + g;
  const uint32_t fa[4] = {frag(r0, 2 * t), frag(r0 + 8, 2 * t), frag(r0, 2 * t + 8), frag(r0 + 8, 2 * t + 8)};
  float d1[32], d2[32];
  ptx::wgmma_fence();
  ptx::wgmma_ss<__half, 64>(d1, ptx::smem_desc(sa, 128, 256), ptx::smem_desc(sbk, 128, 256), false);
  ptx::wgmma_rs<__half, 64>(d2, fa, ptx::smem_desc(sbn, 1024, 128), false);
  ptx::wgmma_commit();
  ptx::wgmma_wait<0>();
  for (int j = 0; j < 8; ++j)
    for (int i = 0; i < 4; ++i) {
      const int row = r0 + 8 * (i / 2), col = 8 * j + 2 * t + i % 2;
      out[row * 64 + col] = d1[4 * j + i];
      out[4096 + row * 64 + col] = d2[4 * j + i];
    }
}

// Thread 0's cp.async lands at its wait; thread 1 reads with no barrier after it.
__global__ void cp_async_no_barrier(const float* in, float* out) {
  __shared__ __align__(16) float x[4];
  if (threadIdx.x == 0) {
    ptx::cp_async_16(x, in, 16);
    ptx::cp_async_commit();
    ptx::cp_async_wait<0>();
  }
  if (threadIdx.x == 1) out[0] = x[0];
}

// Returns with a committed copy never waited for.
__global__ void cp_async_not_waited(const float* in, float* out) {
  __shared__ __align__(16) float x[4];
  ptx::cp_async_16(x, in, 16);
  ptx::cp_async_commit();
  out[threadIdx.x] = 0.0f;
}

// ldmatrix rows must be 16-byte aligned.
__global__ void ldmatrix_misaligned(float* out) {
  __shared__ __align__(16) __half x[16 * 16 + 8];
  for (int i = threadIdx.x; i < 16 * 16 + 8; i += 32) x[i] = __float2half(1.0f);
  __syncthreads();
  uint32_t r[4];
  ptx::ldmatrix_x4(r, x + 2 + (threadIdx.x % 16) * 16);
  out[threadIdx.x] = float(r[0]);
}

// wgmma_ok's two products against the host's; 0 when they agree exactly.
int check_wgmma(float* buf) {
  static __half a[64 * 16], b[16 * 64];
  static float want[64 * 64], got[2 * 64 * 64];
  for (int i = 0; i < 64 * 16; ++i) a[i] = __float2half(float((i * 5) % 7 - 3));
  for (int i = 0; i < 16 * 64; ++i) b[i] = __float2half(float((i * 3) % 5 - 2));
  for (int r = 0; r < 64; ++r)
    for (int n = 0; n < 64; ++n) {
      float acc = 0.0f;
      for (int k = 0; k < 16; ++k) acc += __half2float(a[r * 16 + k]) * __half2float(b[k * 64 + n]);
      want[r * 64 + n] = acc;
    }
  float* out = nullptr;
  __half *da = nullptr, *db = nullptr;
  cudaMalloc(&out, sizeof got);
  cudaMalloc(&da, sizeof a);
  cudaMalloc(&db, sizeof b);
  cudaMemcpy(da, a, sizeof a, cudaMemcpyHostToDevice);
  cudaMemcpy(db, b, sizeof b, cudaMemcpyHostToDevice);
  wgmma_ok<<<1, 128, 6144>>>(da, db, out);
  cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost);
  cudaFree(out);
  cudaFree(da);
  cudaFree(db);
  (void)buf;
  for (int v = 0; v < 2; ++v)
    for (int i = 0; i < 64 * 64; ++i)
      if (got[v * 4096 + i] != want[i]) {
        std::fprintf(stderr, "wgmma_ok (%s): D[%d][%d] = %g, want %g\n", v ? "A in registers, B MN-major" : "A, B K-major",
                     i / 64, i % 64, double(got[v * 4096 + i]), double(want[i]));
        return 1;
      }
  return 0;
}

// mma_ok's product against the host's; 0 when they agree exactly (small integers).
int check_mma(float* buf) {
  __half a[256], bt[128];
  float want[128];
  for (int i = 0; i < 256; ++i) a[i] = __float2half(float((i * 7) % 5 - 2));
  for (int i = 0; i < 128; ++i) bt[i] = __float2half(float((i * 3) % 7 - 3));
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) {
      float acc = 0.0f;
      for (int k = 0; k < 16; ++k) acc += __half2float(a[r * 16 + k]) * __half2float(bt[n * 16 + k]);
      want[r * 8 + n] = acc;
    }
  auto* da = reinterpret_cast<__half*>(buf + 1024);
  auto* db = reinterpret_cast<__half*>(buf + 2048);
  cudaMemcpy(da, a, sizeof a, cudaMemcpyHostToDevice);
  cudaMemcpy(db, bt, sizeof bt, cudaMemcpyHostToDevice);
  mma_ok<<<1, 32>>>(da, db, buf);
  float got[128];
  cudaMemcpy(got, buf, sizeof got, cudaMemcpyDeviceToHost);
  for (int i = 0; i < 128; ++i) {
    if (got[i] != want[i]) {
      std::fprintf(stderr, "mma_ok: D[%d][%d] = %g, want %g\n", i / 8, i % 8, double(got[i]), double(want[i]));
      return 1;
    }
  }
  return 0;
}

// A warpgroup's wgmma (S = A B, 64 x 16 x 8 from zeroed shared memory) with
// no wait: the threads return with the op in flight.
__global__ void wgmma_not_waited(float* out) {
  extern __shared__ __align__(128) unsigned char dyn[];
  for (int i = threadIdx.x; i < 80 * 16 * 2; i += blockDim.x) dyn[i] = 0;
  __syncthreads();
  float d[4];
  specdec::ptx::wgmma_fence();
  specdec::ptx::wgmma_ss<__half, 8>(d, specdec::ptx::smem_desc(dyn, 128, 256),
                                    specdec::ptx::smem_desc(dyn + 64 * 16 * 2, 128, 256), false);
  specdec::ptx::wgmma_commit();
  out[threadIdx.x] = 0.0f;
}

// Warp 3 of the warpgroup returns before the others' wgmma.
__global__ void wgmma_partial_group(float* out) {
  extern __shared__ __align__(128) unsigned char dyn[];
  for (int i = threadIdx.x; i < 80 * 16 * 2; i += blockDim.x) dyn[i] = 0;
  __syncthreads();
  if (threadIdx.x >= 96) return;
  float d[4];
  specdec::ptx::wgmma_fence();
  specdec::ptx::wgmma_ss<__half, 8>(d, specdec::ptx::smem_desc(dyn, 128, 256),
                                    specdec::ptx::smem_desc(dyn + 64 * 16 * 2, 128, 256), false);
  specdec::ptx::wgmma_commit();
  specdec::ptx::wgmma_wait<0>();
  out[threadIdx.x] = d[0];
}

// A producer warp hands 4 rounds of 64 floats to a consumer warp through a
// 2-stage ring of mbarriers (full: the producer's cp.async copies, then its
// arrive; empty: the consumer's arrive), as the wgmma tree attention does;
// the consumer writes what it got to out[round * 64 + i]. `skip_full`: the
// consumer reads without waiting on full (a race TSan must report).
template <bool kSkipFull>
__global__ void mbarrier_ring(const float* in, float* out) {
  extern __shared__ __align__(128) unsigned char dyn[];
  float* stage = reinterpret_cast<float*>(dyn);                 // [2][64]
  uint64_t* full = reinterpret_cast<uint64_t*>(dyn + 2 * 64 * sizeof(float));
  uint64_t* empty = full + 2;
  if (threadIdx.x == 0) {
    for (int s = 0; s < 2; ++s) {
      specdec::ptx::mbarrier_init(&full[s], 32);
      specdec::ptx::mbarrier_init(&empty[s], 32);
    }
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  for (int r = 0; r < 4; ++r) {
    const int s = r % 2;
    if (threadIdx.x < 32) {
      specdec::ptx::mbarrier_wait(&empty[s], ((r / 2) & 1) ^ 1);
      if (lane < 16) specdec::ptx::cp_async_16(stage + s * 64 + lane * 4, in + r * 64 + lane * 4, 16);
      specdec::ptx::cp_async_mbarrier_arrive(&full[s]);
      specdec::ptx::mbarrier_arrive(&full[s]);
    } else {
      if (!kSkipFull) specdec::ptx::mbarrier_wait(&full[s], (r / 2) & 1);
      out[r * 64 + lane] = stage[s * 64 + lane];
      out[r * 64 + 32 + lane] = stage[s * 64 + 32 + lane];
      specdec::ptx::mbarrier_arrive(&empty[s]);
    }
  }
  if (threadIdx.x < 32) specdec::ptx::cp_async_wait<0>();
}

// A wait on a barrier no thread ever arrives on: a deadlock.
__global__ void mbarrier_never_arrives(float* out) {
  extern __shared__ __align__(128) unsigned char dyn[];
  uint64_t* bar = reinterpret_cast<uint64_t*>(dyn);
  if (threadIdx.x == 0) specdec::ptx::mbarrier_init(bar, 1);
  __syncthreads();
  specdec::ptx::mbarrier_wait(bar, 0);
  out[threadIdx.x] = 0.0f;
}

// An arrive on shared memory mbarrier_init never touched.
__global__ void mbarrier_uninitialised(float* out) {
  extern __shared__ __align__(128) unsigned char dyn[];
  specdec::ptx::mbarrier_arrive(reinterpret_cast<uint64_t*>(dyn));
  out[threadIdx.x] = 0.0f;
}

// One warp of the warpgroup asks setmaxnreg for another count.
__global__ void setmaxnreg_mismatch(float* out) {
  if (threadIdx.x < 96) {
    specdec::ptx::setmaxnreg_dec<40>();
  } else {
    specdec::ptx::setmaxnreg_dec<48>();
  }
  out[threadIdx.x] = 0.0f;
}

}  // namespace

// ok_kernel on 4 blocks of 64 threads in clusters of `cluster` blocks.
cudaError_t ok_in_clusters(float* buf, unsigned cluster) {
  cudaLaunchAttribute attr[1] = {};
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster;
  attr[0].val.clusterDim.y = attr[0].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(4);
  cfg.blockDim = dim3(64);
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, ok_kernel, buf);
}

// The mbarrier ring's output against its input; 0 when equal.
int check_mbarrier_ring(float* buf) {
  float host[256];
  for (int i = 0; i < 256; ++i) host[i] = float(i * 3 + 1);
  cudaMemcpy(buf, host, sizeof host, cudaMemcpyHostToDevice);
  mbarrier_ring<false><<<1, 64, 2 * 64 * sizeof(float) + 4 * sizeof(uint64_t)>>>(buf, buf + 1024);
  float got[256];
  cudaMemcpy(got, buf + 1024, sizeof got, cudaMemcpyDeviceToHost);
  for (int i = 0; i < 256; ++i)
    if (got[i] != host[i]) {
      std::fprintf(stderr, "mbarrier ring: element %d is %g, want %g\n", i, got[i], host[i]);
      return 1;
    }
  return 0;
}

int main(int argc, char** argv) {
  const char* c = argc > 1 ? argv[1] : "ok";
  float* buf = nullptr;
  if (cudaMalloc(&buf, 4096 * sizeof(float)) != cudaSuccess) return 2;
  if (!std::strcmp(c, "ok")) {
    ok_kernel<<<4, 64>>>(buf);
    if (check_mma(buf) != 0 || check_wgmma(buf) != 0 || check_mbarrier_ring(buf) != 0) return 1;
    // A cluster launch that divides the grid runs every block.
    if (cudaMemset(buf, 0, 256 * sizeof(float)) != cudaSuccess || ok_in_clusters(buf, 2) != cudaSuccess) return 1;
    float host[256];
    cudaMemcpy(host, buf, sizeof host, cudaMemcpyDeviceToHost);
    if (host[3 * 64 + 5] != 1520.0f) return 1;  // block 3, warp 0: the sum of 32..63
  } else if (!std::strcmp(c, "mbarrier_skip_wait")) {
    mbarrier_ring<true><<<1, 64, 2 * 64 * sizeof(float) + 4 * sizeof(uint64_t)>>>(buf, buf + 1024);
  } else if (!std::strcmp(c, "mbarrier_never_arrives")) {
    mbarrier_never_arrives<<<1, 32, 64>>>(buf);
  } else if (!std::strcmp(c, "mbarrier_uninitialised")) {
    mbarrier_uninitialised<<<1, 32, 64>>>(buf);
  } else if (!std::strcmp(c, "cluster_not_dividing")) {
    // A cluster of 3 for a grid of 4: refused, no block runs.
    if (ok_in_clusters(buf, 3) == cudaSuccess) return 0;
  } else if (!std::strcmp(c, "setmaxnreg_mismatch")) {
    setmaxnreg_mismatch<<<1, 128>>>(buf);
  } else if (!std::strcmp(c, "cp_async_no_barrier")) {
    cp_async_no_barrier<<<1, 32>>>(buf, buf + 1024);
  } else if (!std::strcmp(c, "cp_async_not_waited")) {
    cp_async_not_waited<<<1, 32>>>(buf, buf + 1024);
  } else if (!std::strcmp(c, "ldmatrix_misaligned")) {
    ldmatrix_misaligned<<<1, 32>>>(buf);
  } else if (!std::strcmp(c, "wgmma_not_waited")) {
    wgmma_not_waited<<<1, 128, 80 * 16 * 2>>>(buf);
  } else if (!std::strcmp(c, "wgmma_partial_group")) {
    wgmma_partial_group<<<1, 128, 80 * 16 * 2>>>(buf);
  } else if (!std::strcmp(c, "inter_block_race")) {
    inter_block_race<<<8, 32>>>(buf);
  } else if (!std::strcmp(c, "intra_block_race")) {
    intra_block_race<<<1, 64>>>(buf);
  } else if (!std::strcmp(c, "deadlock")) {
    deadlock<<<1, 32>>>(buf);
  } else if (!std::strcmp(c, "smem_overrun")) {
    smem_overrun<<<1, 64, 64 * sizeof(float)>>>(buf);
  } else if (!std::strcmp(c, "misaligned_vector")) {
    misaligned_vector<<<1, 32>>>(buf, buf + 1024);
  } else if (!std::strcmp(c, "smem_over_limit")) {
    ok_kernel<<<1, 64, 49 * 1024>>>(buf);  // over the 48 KB default, attribute not raised
  } else {
    std::fprintf(stderr, "unknown case %s\n", c);
    return 2;
  }
  const cudaError_t err = cudaGetLastError();
  cudaFree(buf);
  if (err != cudaSuccess) {
    std::fprintf(stderr, "launch failed: %s\n", cudaGetErrorString(err));
    return 1;
  }
  std::printf("%s: ran\n", c);
  return 0;
}

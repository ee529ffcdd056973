// The harness's own checks: each case is a small kernel with one deliberate
// defect (or none); mutation_test.py runs `selftest CASE` under the named
// sanitizer and expects exactly the "ok" case to pass.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>

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

}  // namespace

int main(int argc, char** argv) {
  const char* c = argc > 1 ? argv[1] : "ok";
  float* buf = nullptr;
  if (cudaMalloc(&buf, 4096 * sizeof(float)) != cudaSuccess) return 2;
  if (!std::strcmp(c, "ok")) {
    ok_kernel<<<4, 64>>>(buf);
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

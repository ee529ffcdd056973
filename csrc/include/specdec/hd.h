// SPECDEC_HD marks helpers shared by the CPU and CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define SPECDEC_HD __host__ __device__ __forceinline__
#else
#define SPECDEC_HD inline
#endif

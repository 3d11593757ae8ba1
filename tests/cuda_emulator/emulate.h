// Just enough of CUDA to run gpunet's kernels on the CPU, for the tests.
//
// Each CUDA thread of a block is a fiber (harness.cpp): one OS thread runs the
// block's threads in turn, each until it reaches __syncthreads or returns, so
// the threads meet at every barrier as on a GPU. Blocks run one after another,
// which makes function-static arrays a faithful stand-in for __shared__ memory
// (the library is built with -fno-gnu-unique so that the float and double builds
// of one file never share them). Included before the kernel source with
// -include; nothing here is used on a real GPU.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

using std::max;
using std::min;

struct emu_dim3 {
    unsigned x = 0, y = 0, z = 0;
};
// Plain globals: the scheduler sets threadIdx before it resumes a thread, and
// __syncthreads is an opaque call, so a kernel rereads it after every barrier.
extern emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
extern unsigned char* emu_dynamic_shared;
void __syncthreads();

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __shared__ static
#define DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(emu_dynamic_shared)
#define __align__(n) __attribute__((aligned(n)))

struct alignas(16) int4 {
    int x, y, z, w;
};

inline unsigned __umulhi(unsigned a, unsigned b) {
    return (unsigned)(((unsigned long long)a * b) >> 32);
}

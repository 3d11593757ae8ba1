// Just enough of CUDA to run gpunet's kernels on the CPU, for the tests.
//
// Each CUDA thread of a block is an OS thread (the Python side starts them), so
// the threads of a block really run concurrently and meet at __syncthreads
// (a std::barrier). Blocks run one after another, which makes function-static
// arrays a faithful stand-in for __shared__ memory. Included before the kernel
// source with -include; nothing here is used on a real GPU.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>

using std::max;
using std::min;

struct emu_dim3 {
    unsigned x = 0, y = 0, z = 0;
};
extern thread_local emu_dim3 threadIdx, blockIdx;
extern emu_dim3 blockDim, gridDim;
extern unsigned char emu_dynamic_shared[];
void __syncthreads();

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __shared__ static
#define DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(emu_dynamic_shared)

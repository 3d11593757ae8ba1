// Shared by every gpunet kernel file.
//
// The loader compiles each .cu file once per dtype, defining
//   real_t : the array element type (float or double)
//   acc_t  : the accumulator type (float for float, double for double)
// so one source serves float32 and float64. Sizes are 64-bit where a product of
// dimensions can pass 2^31 (index_t); loop counters over one dimension are int.
#pragma once

#ifndef real_t
#define real_t float
#endif
#ifndef acc_t
#define acc_t float
#endif

typedef long long index_t;

// Dynamic shared memory (sized by the launch) viewed as an array of `type`. A
// macro so that the CPU emulation used by the tests can supply its own buffer.
#ifndef DYNAMIC_SHARED
#define DYNAMIC_SHARED(type, name)                  \
    extern __shared__ unsigned char name##_bytes[]; \
    type* name = reinterpret_cast<type*>(name##_bytes)
#endif

// Block-wide sum of one value per thread, in a fixed tree order (deterministic).
// `scratch` holds blockDim.x acc_t; blockDim.x must be a power of two. Every
// thread of the block must call it; the sum is returned to thread 0.
__device__ __forceinline__ acc_t block_sum(acc_t value, acc_t* scratch) {
    scratch[threadIdx.x] = value;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
        __syncthreads();
    }
    acc_t total = scratch[0];
    __syncthreads();  // scratch may be reused right after
    return total;
}

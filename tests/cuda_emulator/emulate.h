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
#include <cstring>

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

// Bit casts (kernels/batchnorm.cu's reciprocal_sqrt), as CUDA's intrinsics.
inline int __float_as_int(float x) {
    int bits;
    std::memcpy(&bits, &x, 4);
    return bits;
}
inline float __int_as_float(int bits) {
    float x;
    std::memcpy(&x, &bits, 4);
    return x;
}
inline long long __double_as_longlong(double x) {
    long long bits;
    std::memcpy(&bits, &x, 8);
    return bits;
}
inline double __longlong_as_double(long long bits) {
    double x;
    std::memcpy(&x, &bits, 8);
    return x;
}

inline unsigned __umulhi(unsigned a, unsigned b) {
    return (unsigned)(((unsigned long long)a * b) >> 32);
}

// Tensor cores, for the TF32 kernels (kernels/conv2d.cu): cvt.rna.tf32.f32 keeps 10
// mantissa bits, rounding to nearest with ties away from zero; mma.sync m16n8k8 is
// a warp-collective, emulated through a block barrier (every thread of the block
// calls it together, as the kernels do) and a scratch copy of each lane's fragments,
// double-buffered so that one barrier a call suffices. Products of TF32 values are
// exact in float; the sum runs over k in order.
#define MMA_TF32_EMULATED
#include <cstring>

inline unsigned to_tf32(float x) {
    unsigned bits;
    std::memcpy(&bits, &x, 4);
    if ((bits & 0x7f800000u) != 0x7f800000u) bits += 0x1000u;  // not inf or NaN
    return bits & 0xffffe000u;
}

inline float emu_tf32_value(unsigned bits) {
    float x;
    std::memcpy(&x, &bits, 4);
    return x;
}

inline void mma_tf32(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    static unsigned scratch_a[2][32][32][4], scratch_b[2][32][32][2];  // [buffer][warp][lane]
    static unsigned calls[1024];
    const unsigned t = threadIdx.x, warp = t / 32, lane = t % 32, buf = calls[t]++ % 2;
    for (int r = 0; r < 4; ++r) scratch_a[buf][warp][lane][r] = a[r];
    for (int r = 0; r < 2; ++r) scratch_b[buf][warp][lane][r] = b[r];
    __syncthreads();
    const unsigned g = lane / 4, q = lane % 4;
    for (int r = 0; r < 4; ++r) {
        const unsigned row = g + 8 * (r / 2), col = 2 * q + r % 2;
        float sum = c[r];
        for (unsigned k = 0; k < 8; ++k) {
            // A[row][k] is a[(row / 8) + 2 (k / 4)] of lane 4 (row % 8) + k % 4;
            // B[k][col] is b[k / 4] of lane 4 col + k % 4
            const float x = emu_tf32_value(
                scratch_a[buf][warp][4 * (row % 8) + k % 4][row / 8 + 2 * (k / 4)]);
            const float y = emu_tf32_value(scratch_b[buf][warp][4 * col + k % 4][k / 4]);
            sum += x * y;
        }
        c[r] = sum;
    }
}

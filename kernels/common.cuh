// Shared by every gpunet kernel file.
//
// The loader compiles each .cu file once per dtype, defining
//   real_t : the array element type (float or double)
//   acc_t  : the accumulator type (float for float, double for double)
// so one source serves float32 and float64.
//
// Indices are 32-bit: every array a launch touches holds fewer than 2^31 elements,
// less a tile of headroom (gpunet/cuda/runtime.py index_limit: ops sends larger
// arrays down the xp path, and the launchers' check_indexable refuses them), which
// keeps every index product in one IMAD and every division inline. A division by a size that is the
// same for the whole launch goes through `divide` with a multiplier the launcher
// computed (runtime.fast_divisor); there is no floating-point division in any
// kernel either (reciprocals come from the host, or from Newton steps as in
// reciprocal_sqrt below): both would be out-of-line calls,
// which `make kernels-check` (bench/sass_check.py) refuses.
#pragma once

#ifndef real_t
#define real_t float
#endif
#ifndef acc_t
#define acc_t float
#endif

// Dynamic shared memory (sized by the launch) viewed as an array of `type`. A
// macro so that the CPU emulation used by the tests can supply its own buffer.
#ifndef DYNAMIC_SHARED
#define DYNAMIC_SHARED(type, name)                  \
    extern __shared__ unsigned char name##_bytes[]; \
    type* name = reinterpret_cast<type*>(name##_bytes)
#endif

// n / d for 0 <= n < 2^31 and an invariant d >= 1, as a multiply-high, an add and a
// shift (Granlund and Montgomery, 1994): shift = ceil(log2 d), magic =
// floor(2^32 (2^shift - d) / d) + 1, both from runtime.fast_divisor. t <= n, so
// t + n cannot overflow 32 bits while n < 2^31.
__device__ __forceinline__ int divide(int n, int magic, int shift) {
    unsigned t = __umulhi((unsigned)n, (unsigned)magic);
    return (int)((t + (unsigned)n) >> shift);
}

// `pointer`, hidden from the compiler's view of where it points: it cannot fold the
// pointer back into the base and offset it came from, so a loop keeps it in one
// register pair and indexes it with one IMAD.WIDE (rather than re-reading the base
// from the kernel's parameters and adding the offset again at every use); and what a
// kernel reads through it is read there, not kept in registers from an earlier read
// of the same place (the backward data's epilogue re-reads its phase's sizes from
// the table rather than hold them through the loop). Never the address of a kernel's
// by-value parameter (a geometry): escaping into the asm, it would make the compiler
// copy the parameter to a stack frame; the parameter is read where used anyway.
template <class T>
__device__ __forceinline__ T* opaque(T* pointer) {
#ifdef __CUDA_ARCH__
    asm volatile("" : "+l"(pointer));
#endif
    return pointer;
}

template <class T>
__device__ __forceinline__ const T* reread(const T* pointer) {
    return opaque(pointer);
}

// *pointer through the read-only data cache, for a pointer to global memory that the
// compiler cannot prove global (one that went through `opaque`: a plain load of it
// would be a generic LD).
template <class T>
__device__ __forceinline__ T load_global(const T* pointer) {
#ifdef __CUDA_ARCH__
    return __ldg(pointer);
#else
    return *pointer;
#endif
}

// `count` consecutive real_t read as one aligned load (LDG.128 for 4 floats or 2
// doubles) where the caller has checked the alignment.
template <int count>
struct __align__(count * sizeof(real_t)) Packet {
    real_t v[count];
};

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

// 1 / sqrt(v) for a normal v > 0, within an ulp or two. IEEE division and sqrt, and
// double rsqrt, branch to out-of-line slow paths (bench/sass_check.py refuses CALLs):
// instead the bit pattern's estimate (within 3.5%) and Newton steps r (3 - v r^2) / 2,
// each squaring the relative error: 3 reach float's 2^-24, 5 double's 2^-53.
__device__ __forceinline__ float reciprocal_sqrt(float v) {
    float r = __int_as_float(0x5f375a86 - (__float_as_int(v) >> 1));
#pragma unroll
    for (int k = 0; k < 3; ++k) r = r * (1.5f - 0.5f * v * r * r);
    return r;
}

__device__ __forceinline__ double reciprocal_sqrt(double v) {
    double r = __longlong_as_double(0x5fe6eb50c7b537a9LL - (__double_as_longlong(v) >> 1));
#pragma unroll
    for (int k = 0; k < 5; ++k) r = r * (1.5 - 0.5 * v * r * r);
    return r;
}

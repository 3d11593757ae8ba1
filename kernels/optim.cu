// Optimizer updates: one launch per parameter updates its weights and its state in
// place, the same rule as the pure xp functions of gpunet/optim/updates.py
// (sgd_update, momentum_update, rmsprop_update, adam_update, adamw_update), which
// stay the reference; and zero_arrays, zero_grad's one launch for all gradients.
//
// Layout: w (the parameter), g (its gradient) and each state array (momentum
//   buffer, velocity, square average, exp_avg, exp_avg_sq) are flat, contiguous and
//   of the same n elements; every element is independent of the others.
// Thread mapping: grid-stride, thread t of the grid updates elements t, t + stride,
//   ... (stride = gridDim.x blockDim.x; the launcher caps the grid, so a layer's
//   weights never need more blocks than a GPU can hold at once). No atomics, no
//   shared memory, no reduction: each element is read and written by one thread in
//   one order, so the result is bitwise reproducible.
// Scalars come from the host in the kernel's type (real_t): lr, the betas and
//   1 - beta (rounded once, as NumPy rounds the Python float 1.0 - beta), Adam's bias
//   corrections 1 - beta^t and their reciprocals, AdamW's factor 1 - lr weight_decay.
//   `decay` says whether the L2 term `l2 w` joins the gradient (the parameter's
//   `decay` set and a non-zero weight_decay), so that a zero rate never multiplies an
//   infinite weight into NaN where the xp path adds nothing.
// Arithmetic: the operations of the xp functions in their order. Without FMA
//   contraction (g++ on x86-64, the tests' emulator) the state arrays equal NumPy's
//   bit for bit; nvcc contracts `a b + c d` into an FMA, one rounding fewer, so on a
//   GPU they may differ from the xp path by an ulp. Divisions (by the bias corrections,
//   by sqrt(v) + eps) multiply by a reciprocal (the host's, or Newton steps') and
//   correct the quotient with one FMA, and sqrt is a reciprocal square root's Newton
//   steps with one FMA correction: IEEE division and sqrt branch to out-of-line slow
//   paths, which bench/sass_check.py refuses. Both land on the rounded result but in
//   rare cases near a tie (an ulp then), for denominators in the normal range (eps > 0
//   keeps them there).
// Indices are 32-bit (the launcher sends n < 2^31 less a tile); the grid-stride index
// is unsigned, so `i + stride` cannot wrap before the `i < n` test drops it.
#include "common.cuh"

// The grid-stride loop over the n elements of a parameter.
#define FOR_EACH_ELEMENT(i, n)                                                  \
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)(n); \
         i += gridDim.x * blockDim.x)

__device__ __forceinline__ float fused_multiply_add(float a, float b, float c) {
    return fmaf(a, b, c);
}

__device__ __forceinline__ double fused_multiply_add(double a, double b, double c) {
    return fma(a, b, c);
}

// 1 / d for a normal d > 0: the bit pattern's estimate (within 5.1%) and Newton steps
// r (2 - d r), each squaring the relative error: 4 reach float's 2^-24 and double's
// 2^-53 (0.051 -> 2.6e-3 -> 6.8e-6 -> 4.6e-11 -> 2.1e-21), to an ulp or two of rounding.
__device__ __forceinline__ float reciprocal(float d) {
    float r = __int_as_float(0x7ef311c3 - __float_as_int(d));
#pragma unroll
    for (int k = 0; k < 4; ++k) r = r * (2.0f - d * r);
    return r;
}

__device__ __forceinline__ double reciprocal(double d) {
    double r = __longlong_as_double(0x7fde623822fc16e6LL - __double_as_longlong(d));
#pragma unroll
    for (int k = 0; k < 4; ++k) r = r * (2.0 - d * r);
    return r;
}


// sqrt(v) for v >= 0: v / sqrt(v), then one Newton correction from the exact residual
// v - s^2 (an FMA). v = 0 gives 0: the estimate stays finite, and 0 times it is 0.
// A subnormal v (gradients near 1e-19 in float) comes out inexact, far below any eps.
// An infinite v (a finite gradient whose square overflows) is its own root, as sqrt
// gives: the Newton steps would make it NaN. `v - v == 0` holds for finite v alone;
// the choice compiles to a select, no branch.
__device__ __forceinline__ real_t square_root(real_t v) {
    const real_t r = reciprocal_sqrt(v);
    const real_t s = v * r;
    const real_t root = fused_multiply_add((real_t)0.5 * r, fused_multiply_add(-s, s, v), s);
    return v - v == (real_t)0 ? root : v;
}

// a / d given r, 1 / d within an ulp or two: a r, then one correction from the exact
// residual a - d q (the quotient step of CUDA's own division, without its slow path),
// which leaves the rounded quotient in all but rare cases near a tie.
__device__ __forceinline__ real_t quotient(real_t a, real_t d, real_t r) {
    const real_t q = a * r;
    return fused_multiply_add(fused_multiply_add(-d, q, a), r, q);
}

// a / d for a normal d > 0, or an infinite one: a / inf is 0 for a finite a (the xp
// path's step when the square of a gradient overflows), where the estimate goes NaN.
__device__ __forceinline__ real_t quotient(real_t a, real_t d) {
    const real_t q = quotient(a, d, reciprocal(d));
    return d - d == (real_t)0 ? q : (real_t)0 * a;
}

// Adam (decoupled = 0: `decay` adds the L2 term l2 w to the gradient) and AdamW
// (decoupled = 1: `decay` first shrinks w by `shrink` = 1 - lr weight_decay):
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
//   w -= lr (m / correction1) / (sqrt(v / correction2) + eps), correction = 1 - beta^t
// (divided through the host's reciprocals inv_correction = 1 / correction).
extern "C" __global__ void adam_step(real_t* __restrict__ w, const real_t* __restrict__ g,
                                     real_t* __restrict__ m, real_t* __restrict__ v, int n,
                                     real_t lr, real_t beta1, real_t one_minus_beta1,
                                     real_t beta2, real_t one_minus_beta2,
                                     real_t correction1, real_t inv_correction1,
                                     real_t correction2, real_t inv_correction2,
                                     real_t eps, real_t l2, real_t shrink, int decay,
                                     int decoupled) {
    FOR_EACH_ELEMENT(i, n) {
        real_t weight = w[i], grad = g[i];
        if (decay && decoupled) weight = weight * shrink;
        if (decay && !decoupled) grad = grad + l2 * weight;
        const real_t first = m[i] * beta1 + one_minus_beta1 * grad;
        const real_t second = v[i] * beta2 + one_minus_beta2 * grad * grad;
        m[i] = first;
        v[i] = second;
        const real_t m_hat = quotient(first, correction1, inv_correction1);
        const real_t v_hat = quotient(second, correction2, inv_correction2);
        w[i] = weight - quotient(lr * m_hat, square_root(v_hat) + eps);
    }
}

// PyTorch's SGD. `momentum_mode` 0: no buffer (`buffer` is never touched); 1: the
// first step, buffer = g; 2: buffer = momentum buffer + (1 - dampening) g, or + g when
// `dampened` is 0 (dampening = 0: no multiplication by 1). The step is g + momentum
// buffer with `nesterov`, else the buffer (or g without momentum).
extern "C" __global__ void sgd_step(real_t* __restrict__ w, const real_t* __restrict__ g,
                                    real_t* __restrict__ buffer, int n, real_t lr,
                                    real_t momentum, real_t one_minus_dampening, real_t l2,
                                    int decay, int momentum_mode, int dampened,
                                    int nesterov) {
    FOR_EACH_ELEMENT(i, n) {
        const real_t weight = w[i];
        real_t grad = g[i];
        if (decay) grad = grad + l2 * weight;
        real_t step = grad;
        if (momentum_mode) {
            real_t b = grad;
            if (momentum_mode == 2)
                b = buffer[i] * momentum + (dampened ? one_minus_dampening * grad : grad);
            buffer[i] = b;
            step = nesterov ? grad + momentum * b : b;
        }
        w[i] = weight - lr * step;
    }
}

// The notes' momentum: velocity = beta velocity + (1 - beta) g; w -= lr velocity.
extern "C" __global__ void momentum_step(real_t* __restrict__ w, const real_t* __restrict__ g,
                                         real_t* __restrict__ velocity, int n, real_t lr,
                                         real_t beta, real_t one_minus_beta, real_t l2,
                                         int decay) {
    FOR_EACH_ELEMENT(i, n) {
        const real_t weight = w[i];
        real_t grad = g[i];
        if (decay) grad = grad + l2 * weight;
        const real_t vel = velocity[i] * beta + one_minus_beta * grad;
        velocity[i] = vel;
        w[i] = weight - lr * vel;
    }
}

// RMSProp: square_avg = beta square_avg + (1 - beta) g^2; w -= lr g / (sqrt(square_avg)
// + eps).
extern "C" __global__ void rmsprop_step(real_t* __restrict__ w, const real_t* __restrict__ g,
                                        real_t* __restrict__ square_avg, int n, real_t lr,
                                        real_t beta, real_t one_minus_beta, real_t eps,
                                        real_t l2, int decay) {
    FOR_EACH_ELEMENT(i, n) {
        const real_t weight = w[i];
        real_t grad = g[i];
        if (decay) grad = grad + l2 * weight;
        const real_t s = square_avg[i] * beta + one_minus_beta * grad * grad;
        square_avg[i] = s;
        w[i] = weight - quotient(lr * grad, square_root(s) + eps);
    }
}

// zero_grad: array blockIdx.y of the launch, of sizes[y] elements at addresses[y] (a
// device pointer as a 64-bit integer), set to 0; blockIdx.x and the threads stride
// over its elements. One launch zeroes every gradient of an optimizer (of one dtype)
// instead of one fill each.
extern "C" __global__ void zero_arrays(const long long* __restrict__ addresses,
                                       const int* __restrict__ sizes) {
    real_t* __restrict__ array = reinterpret_cast<real_t*>(addresses[blockIdx.y]);
    const int n = sizes[blockIdx.y];
    FOR_EACH_ELEMENT(i, n) array[i] = (real_t)0;
}

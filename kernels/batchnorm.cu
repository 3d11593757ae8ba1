// Batch normalisation over NCHW (or NC, NCL: HW = product of the trailing axes),
// contiguous; statistics are per channel c over the M = N * HW values x[n, c, :].
//
// bn_fwd_stats : mean[c], var[c] (biased). One block per channel; two passes
//                over the channel, the first summing offsets from a pivot sample
//                (x[0, c, 0]) so that a float sum of values near 1e4 keeps the
//                digits of their small spread, the second summing (x - mean)^2.
//                Never E[x^2] - E[x]^2.
// bn_fwd_apply : x_hat = (x - mean) inv_std, y = gamma x_hat + beta; one thread
//                per element.
// bn_bwd_reduce: dbeta[c] = sum dy, dgamma[c] = sum dy x_hat; one block per channel.
// bn_bwd_dx    : training: dx = gamma inv_std (dy - dbeta/M - x_hat dgamma/M);
//                evaluation: dx = gamma inv_std dy. One thread per element.
// Reductions use a fixed thread-to-element assignment and a fixed tree
// (block_sum): results are bitwise reproducible. Activation gradients are
// written with `=`; the parameter gradients are returned, not accumulated.
#include "common.cuh"

// Flat index of the j-th of the M = N * HW values of channel c.
__device__ __forceinline__ index_t channel_element(index_t j, int c, int C, index_t HW) {
    return ((j / HW) * C + c) * HW + j % HW;
}

extern "C" __global__ void bn_fwd_stats(const real_t* __restrict__ x, real_t* __restrict__ mean,
                                        real_t* __restrict__ var, int N, int C, index_t HW) {
    DYNAMIC_SHARED(acc_t, scratch);
    int c = blockIdx.x;
    index_t M = (index_t)N * HW;
    acc_t pivot = x[(index_t)c * HW];
    acc_t shifted = 0;
    for (index_t j = threadIdx.x; j < M; j += blockDim.x)
        shifted += (acc_t)x[channel_element(j, c, C, HW)] - pivot;
    acc_t offset = block_sum(shifted, scratch) / (acc_t)M;
    acc_t mu = pivot + offset;
    acc_t squares = 0;
    for (index_t j = threadIdx.x; j < M; j += blockDim.x) {
        acc_t d = (acc_t)x[channel_element(j, c, C, HW)] - mu;
        squares += d * d;
    }
    acc_t v = block_sum(squares, scratch) / (acc_t)M;
    if (threadIdx.x == 0) {
        mean[c] = (real_t)mu;
        var[c] = (real_t)v;
    }
}

extern "C" __global__ void bn_fwd_apply(const real_t* __restrict__ x,
                                        const real_t* __restrict__ mean,
                                        const real_t* __restrict__ inv_std,
                                        const real_t* __restrict__ gamma,
                                        const real_t* __restrict__ beta,
                                        real_t* __restrict__ y, real_t* __restrict__ x_hat,
                                        index_t total, int C, index_t HW) {
    index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int c = (i / HW) % C;
    real_t h = (x[i] - mean[c]) * inv_std[c];
    x_hat[i] = h;
    y[i] = gamma[c] * h + beta[c];
}

extern "C" __global__ void bn_bwd_reduce(const real_t* __restrict__ dy,
                                         const real_t* __restrict__ x_hat,
                                         real_t* __restrict__ dbeta, real_t* __restrict__ dgamma,
                                         int N, int C, index_t HW) {
    DYNAMIC_SHARED(acc_t, scratch);
    int c = blockIdx.x;
    index_t M = (index_t)N * HW;
    acc_t sum_dy = 0, sum_dy_xhat = 0;
    for (index_t j = threadIdx.x; j < M; j += blockDim.x) {
        index_t k = channel_element(j, c, C, HW);
        sum_dy += dy[k];
        sum_dy_xhat += (acc_t)dy[k] * x_hat[k];
    }
    acc_t total_dy = block_sum(sum_dy, scratch);
    acc_t total_dy_xhat = block_sum(sum_dy_xhat, scratch);
    if (threadIdx.x == 0) {
        dbeta[c] = (real_t)total_dy;
        dgamma[c] = (real_t)total_dy_xhat;
    }
}

extern "C" __global__ void bn_bwd_dx(const real_t* __restrict__ dy,
                                     const real_t* __restrict__ x_hat,
                                     const real_t* __restrict__ gamma,
                                     const real_t* __restrict__ inv_std,
                                     const real_t* __restrict__ dbeta,
                                     const real_t* __restrict__ dgamma,
                                     real_t* __restrict__ dx, index_t total, int C, index_t HW,
                                     index_t M, int training) {
    index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int c = (i / HW) % C;
    acc_t scale = (acc_t)gamma[c] * inv_std[c];
    if (!training) {
        dx[i] = (real_t)(scale * dy[i]);
        return;
    }
    acc_t m = (acc_t)M;
    dx[i] = (real_t)(scale * ((acc_t)dy[i] - dbeta[c] / m - (acc_t)x_hat[i] * dgamma[c] / m));
}

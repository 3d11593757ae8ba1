// Batch normalisation over NCHW (or NC, NCL: HW = product of the trailing axes),
// contiguous; statistics are per channel c over the M = N * HW values x[n, c, :].
//
// A channel's M values are cut into `parts` runs of `chunk` consecutive values (the
// last shorter), one block per (run, channel), so that LeNet's 6 channels still fill
// a GPU; a second kernel combines each channel's partials in run order. `chunk`
// depends on the shapes only (gpunet/cuda/batchnorm.py), never on the GPU, and
// every reduction has a fixed order: results are bitwise reproducible.
//
// bn_fwd_stats  : per run, the mean offset from a pivot (x[0, c, 0], the same for
//                     every run) and the sum of squared deviations from the run's
//                     mean, in two passes over the run. Offsets keep the digits of a
//                     small spread around a large mean (float values near 1e4); never
//                     E[x^2] - E[x]^2.
// bn_fwd_stats_combine  : one thread per channel merges its runs in order (Chan, Golub and
//                     LeVeque's pairwise update) into mean[c] and the biased var[c],
//                     keeps the mean's two parts, pivot[c] and offset[c], writes
//                     inv_std[c] = 1 / sqrt(var[c] + eps) and, in training, updates the
//                     running statistics in place. A forward in training is these two
//                     and bn_fwd_apply: three launches, no elementwise CuPy op.
// bn_fwd_apply      : x_hat = ((x - pivot) - offset) inv_std, y = gamma x_hat + beta (in
//                     evaluation pivot = running mean, offset = 0); one thread per
//                     element, or per 128-bit vector of them where the layout allows. Not
//                     x - mean: a float mean near 1e4 is rounded by 5e-4, which a spread
//                     of 1e-2 would feel.
// bn_bwd_reduce    : per run, sum dy and sum dy x_hat; bn_bwd_reduce_combine sums the runs in
//                     order into dbeta[c], dgamma[c]. bn_fwd_stats and bn_bwd_reduce
//                     keep four loads a thread in flight (UNROLL).
// bn_bwd_dx         : training: dx = gamma inv_std (dy - dbeta/M - x_hat dgamma/M);
//                     evaluation: dx = gamma inv_std dy. One thread per element or
//                     vector, as bn_fwd_apply.
// Divisions: by HW and C through `divide`; by counts through reciprocals and merge
// weights computed on the host (`weights`, per run: 1/count, count/(count so far),
// (count before) count / (count so far)). Activation gradients are written with `=`;
// the parameter gradients are returned, not accumulated.
#include "common.cuh"

// Division by HW and by C; passed by value (the launcher's NumPy scalar of 7 int32
// fields, cached per shape), in the kernel's parameter space: no load, no register.
struct ChannelGeometry {
    int C, HW, M, hw_magic, hw_shift, c_magic, c_shift;
};

// Flat index of the j-th of the M values of channel c.
__device__ __forceinline__ int channel_element(int j, int c, const ChannelGeometry& g) {
    const int n = divide(j, g.hw_magic, g.hw_shift);
    return (n * g.C + c) * g.HW + (j - n * g.HW);
}

// The channel of flat element i.
__device__ __forceinline__ int channel_of(int i, const ChannelGeometry& g) {
    const int plane = divide(i, g.hw_magic, g.hw_shift);
    return plane - divide(plane, g.c_magic, g.c_shift) * g.C;
}

// The block-strided loops below issue UNROLL loads before the UNROLL adds that use
// them, so that each warp keeps UNROLL loads in flight (a plain loop waits for each
// load before its add). The adds keep the plain loop's order: the same sums, bit for
// bit. `j < end - (UNROLL - 1) * step` never computes an index past end + step.
#define UNROLL 4

// Block (run, channel) = (blockIdx.x, blockIdx.y); partials laid out [c][run].
extern "C" __global__ void bn_fwd_stats(const real_t* __restrict__ x,
                                            real_t* __restrict__ offset_mean,
                                            real_t* __restrict__ squares,
                                            const ChannelGeometry g,
                                            const real_t* __restrict__ weights, int chunk) {
    DYNAMIC_SHARED(acc_t, scratch);
    const int c = blockIdx.y, run = blockIdx.x, step = blockDim.x;
    const int begin = run * chunk, end = g.M - begin < chunk ? g.M : begin + chunk;
    const acc_t pivot = x[c * g.HW];
    acc_t shifted = 0;
    int j = begin + threadIdx.x;
    for (; j < end - (UNROLL - 1) * step; j += UNROLL * step) {
        acc_t v[UNROLL];
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) v[k] = x[channel_element(j + k * step, c, g)];
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) shifted += v[k] - pivot;
    }
    for (; j < end; j += step) shifted += (acc_t)x[channel_element(j, c, g)] - pivot;
    const acc_t offset = block_sum(shifted, scratch) * (acc_t)weights[3 * run];
    acc_t sum_sq = 0;
    j = begin + threadIdx.x;
    for (; j < end - (UNROLL - 1) * step; j += UNROLL * step) {
        acc_t v[UNROLL];
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) v[k] = x[channel_element(j + k * step, c, g)];
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
            const acc_t d = v[k] - pivot - offset;
            sum_sq += d * d;
        }
    }
    for (; j < end; j += step) {
        const acc_t d = (acc_t)x[channel_element(j, c, g)] - pivot - offset;
        sum_sq += d * d;
    }
    const acc_t total_sq = block_sum(sum_sq, scratch);
    if (threadIdx.x == 0) {
        offset_mean[c * gridDim.x + run] = (real_t)offset;
        squares[c * gridDim.x + run] = (real_t)total_sq;
    }
}


// weights[3 r + 1] = n_r / (n_0 + ... + n_r), weights[3 r + 2] = (n_0 + ... + n_{r-1}) n_r /
// (n_0 + ... + n_r); `inv_m` = 1 / M. Also inv_std[c] = 1 / sqrt(var[c] + eps) and, when
// `update_running`, the running statistics in place: running_mean = (1 - momentum)
// running_mean + momentum mean, running_var = (1 - momentum) running_var + var_momentum
// var (var_momentum = momentum M / (M - 1): the unbiased variance).
extern "C" __global__ void bn_fwd_stats_combine(const real_t* __restrict__ x,
                                            const real_t* __restrict__ offset_mean,
                                            const real_t* __restrict__ squares,
                                            real_t* __restrict__ mean, real_t* __restrict__ var,
                                            real_t* __restrict__ pivot,
                                            real_t* __restrict__ mean_offset,
                                            real_t* __restrict__ inv_std,
                                            real_t* __restrict__ running_mean,
                                            real_t* __restrict__ running_var,
                                            const ChannelGeometry g,
                                            const real_t* __restrict__ weights, int parts,
                                            acc_t inv_m, acc_t eps, acc_t momentum,
                                            acc_t var_momentum, int update_running) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= g.C) return;
    acc_t offset = offset_mean[c * parts], m2 = squares[c * parts];
    for (int run = 1; run < parts; ++run) {
        const acc_t delta = (acc_t)offset_mean[c * parts + run] - offset;
        offset += delta * (acc_t)weights[3 * run + 1];
        m2 += (acc_t)squares[c * parts + run] + delta * delta * (acc_t)weights[3 * run + 2];
    }
    const real_t batch_mean = (real_t)((acc_t)x[c * g.HW] + offset);
    const real_t batch_var = (real_t)(m2 * inv_m);
    mean[c] = batch_mean;
    var[c] = batch_var;
    pivot[c] = x[c * g.HW];
    mean_offset[c] = (real_t)offset;
    inv_std[c] = (real_t)reciprocal_sqrt((acc_t)batch_var + eps);  // of the rounded var
    if (update_running) {
        const acc_t keep = (acc_t)1 - momentum;
        running_mean[c] = (real_t)(keep * running_mean[c] + momentum * batch_mean);
        running_var[c] = (real_t)(keep * running_var[c] + var_momentum * batch_var);
    }
}

// Elementwise kernels read and write `VECTOR` neighbours at once (128-bit) when the
// launcher says `vectors`: HW a multiple of VECTOR, so a vector never straddles two
// channels, and every array 16-byte aligned. Thread i then handles elements
// VECTOR i .. VECTOR i + VECTOR - 1, else element i.
#define VECTOR (16 / (int)sizeof(real_t))

extern "C" __global__ void bn_fwd_apply(const real_t* __restrict__ x,
                                        const real_t* __restrict__ pivot,
                                        const real_t* __restrict__ mean_offset,
                                        const real_t* __restrict__ inv_std,
                                        const real_t* __restrict__ gamma,
                                        const real_t* __restrict__ beta,
                                        real_t* __restrict__ y, real_t* __restrict__ x_hat,
                                        const ChannelGeometry g, int total,
                                        int vectors) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (vectors) {
        const int i = t * VECTOR;
        if (i >= total) return;
        const int c = channel_of(i, g);
        const real_t p = pivot[c], o = mean_offset[c];
        const real_t s = inv_std[c], a = gamma[c], b = beta[c];
        const Packet<VECTOR> in = *reinterpret_cast<const Packet<VECTOR>*>(x + i);
        Packet<VECTOR> h, out;
#pragma unroll
        for (int k = 0; k < VECTOR; ++k) {
            h.v[k] = ((in.v[k] - p) - o) * s;
            out.v[k] = a * h.v[k] + b;
        }
        *reinterpret_cast<Packet<VECTOR>*>(x_hat + i) = h;
        *reinterpret_cast<Packet<VECTOR>*>(y + i) = out;
        return;
    }
    if (t >= total) return;
    const int c = channel_of(t, g);
    const real_t h = ((x[t] - pivot[c]) - mean_offset[c]) * inv_std[c];
    x_hat[t] = h;
    y[t] = gamma[c] * h + beta[c];
}

extern "C" __global__ void bn_bwd_reduce(const real_t* __restrict__ dy,
                                          const real_t* __restrict__ x_hat,
                                          real_t* __restrict__ sum_dy,
                                          real_t* __restrict__ sum_dy_xhat,
                                          const ChannelGeometry g,
                                          int chunk) {
    DYNAMIC_SHARED(acc_t, scratch);
    const int c = blockIdx.y, run = blockIdx.x, step = blockDim.x;
    const int begin = run * chunk, end = g.M - begin < chunk ? g.M : begin + chunk;
    acc_t a = 0, b = 0;
    int j = begin + threadIdx.x;
    for (; j < end - (UNROLL - 1) * step; j += UNROLL * step) {
        acc_t d[UNROLL], h[UNROLL];
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
            const int i = channel_element(j + k * step, c, g);
            d[k] = dy[i];
            h[k] = x_hat[i];
        }
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
            a += d[k];
            b += d[k] * h[k];
        }
    }
    for (; j < end; j += step) {
        const int k = channel_element(j, c, g);
        a += dy[k];
        b += (acc_t)dy[k] * x_hat[k];
    }
    const acc_t total_a = block_sum(a, scratch);
    const acc_t total_b = block_sum(b, scratch);
    if (threadIdx.x == 0) {
        sum_dy[c * gridDim.x + run] = (real_t)total_a;
        sum_dy_xhat[c * gridDim.x + run] = (real_t)total_b;
    }
}

extern "C" __global__ void bn_bwd_reduce_combine(const real_t* __restrict__ sum_dy,
                                          const real_t* __restrict__ sum_dy_xhat,
                                          real_t* __restrict__ dbeta, real_t* __restrict__ dgamma,
                                          int C, int parts) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    acc_t a = 0, b = 0;
    for (int run = 0; run < parts; ++run) {
        a += sum_dy[c * parts + run];
        b += sum_dy_xhat[c * parts + run];
    }
    dbeta[c] = (real_t)a;
    dgamma[c] = (real_t)b;
}

// training: dx = scale (dy - dbeta / M - x_hat dgamma / M), scale = gamma inv_std
__device__ __forceinline__ acc_t input_grad(acc_t scale, acc_t dy, acc_t x_hat, acc_t mean_dy,
                                            acc_t mean_dy_xhat, int training) {
    return training ? scale * (dy - mean_dy - x_hat * mean_dy_xhat) : scale * dy;
}

extern "C" __global__ void bn_bwd_dx(const real_t* __restrict__ dy,
                                     const real_t* __restrict__ x_hat,
                                     const real_t* __restrict__ gamma,
                                     const real_t* __restrict__ inv_std,
                                     const real_t* __restrict__ dbeta,
                                     const real_t* __restrict__ dgamma,
                                     real_t* __restrict__ dx,
                                     const ChannelGeometry g, int total,
                                     acc_t inv_m, int training, int vectors) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int i = vectors ? t * VECTOR : t;
    if (i >= total) return;
    const int c = channel_of(i, g);
    const acc_t scale = (acc_t)gamma[c] * inv_std[c];
    const acc_t mean_dy = dbeta[c] * inv_m, mean_dy_xhat = dgamma[c] * inv_m;
    if (vectors) {
        const Packet<VECTOR> d = *reinterpret_cast<const Packet<VECTOR>*>(dy + i);
        const Packet<VECTOR> h = *reinterpret_cast<const Packet<VECTOR>*>(x_hat + i);
        Packet<VECTOR> out;
#pragma unroll
        for (int k = 0; k < VECTOR; ++k)
            out.v[k] = (real_t)input_grad(scale, d.v[k], h.v[k], mean_dy, mean_dy_xhat, training);
        *reinterpret_cast<Packet<VECTOR>*>(dx + i) = out;
        return;
    }
    dx[i] = (real_t)input_grad(scale, dy[i], x_hat[i], mean_dy, mean_dy_xhat, training);
}

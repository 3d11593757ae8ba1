// Max and average pooling over NCHW, contiguous.
//
// Geometry: window (R, S), stride (sh, sw), padding (ph, pw) on each side,
//   output OH = (H + 2 ph - R) / sh + 1 (likewise OW); padding is -inf for max
//   and 0 for average, whose divisor is always R*S (PyTorch count_include_pad).
// Thread mapping: forward, one thread per output element; backward, one thread
//   per input-gradient element, which gathers from every window that covers it
//   (no atomics: deterministic, each dx written exactly once with `=`).
// max_pool2d_fwd saves each window's argmax as the offset r*S + s of its first
//   maximum in row-major order (ties keep the first; NaN propagates), so the
//   backward pass routes each window's gradient to exactly one input.
#include "common.cuh"

// Passed as a pointer to 12 int32 in device memory (the launcher caches one per shape).
struct PoolGeometry {
    int N, C, H, W, OH, OW, R, S, sh, sw, ph, pw;
};

// The windows o along one axis that cover padded position p: o*stride <= p < o*stride + size,
// clipped to [0, out - 1].
__device__ __forceinline__ void covering_windows(int p, int size, int stride, int out, int& lo,
                                                 int& hi) {
    lo = p >= size ? (p - size) / stride + 1 : 0;
    hi = min(p / stride, out - 1);
}

extern "C" __global__ void max_pool2d_fwd(const real_t* __restrict__ x, real_t* __restrict__ y,
                                          int* __restrict__ argmax,
                                          const PoolGeometry* __restrict__ geometry) {
    const PoolGeometry g = *geometry;
    index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
    index_t total = (index_t)g.N * g.C * g.OH * g.OW;
    if (i >= total) return;
    int ow = i % g.OW, oh = (i / g.OW) % g.OH;
    index_t nc = i / ((index_t)g.OH * g.OW);
    const real_t* plane = x + nc * g.H * g.W;
    real_t best = 0;
    int best_offset = -1;
    for (int r = 0; r < g.R; ++r) {
        int h = oh * g.sh - g.ph + r;
        if (h < 0 || h >= g.H) continue;
        for (int s = 0; s < g.S; ++s) {
            int w = ow * g.sw - g.pw + s;
            if (w < 0 || w >= g.W) continue;
            real_t v = plane[h * g.W + w];
            bool is_nan = v != v;
            if (best_offset < 0 || v > best || (is_nan && best == best)) {
                best = v;
                best_offset = r * g.S + s;
            }
        }
    }
    y[i] = best;
    argmax[i] = best_offset;
}

// dx[i] = sum of dy over the windows covering input element i whose gradient
// `routes(o, offset)` sends there (offset = r*S + s of i inside window o).
template <class Routes>
__device__ void gather_windows(const real_t* __restrict__ dy, real_t* __restrict__ dx,
                               const PoolGeometry& g, acc_t scale, Routes routes) {
    index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (index_t)g.N * g.C * g.H * g.W) return;
    int w = i % g.W, h = (i / g.W) % g.H;
    index_t nc = i / ((index_t)g.H * g.W);
    int hp = h + g.ph, wp = w + g.pw;  // position in the padded input
    int oh_lo, oh_hi, ow_lo, ow_hi;
    covering_windows(hp, g.R, g.sh, g.OH, oh_lo, oh_hi);
    covering_windows(wp, g.S, g.sw, g.OW, ow_lo, ow_hi);
    acc_t sum = 0;
    for (int oh = oh_lo; oh <= oh_hi; ++oh)
        for (int ow = ow_lo; ow <= ow_hi; ++ow) {
            index_t o = (nc * g.OH + oh) * g.OW + ow;
            if (routes(o, (hp - oh * g.sh) * g.S + (wp - ow * g.sw))) sum += dy[o];
        }
    dx[i] = (real_t)(sum * scale);
}

struct ToArgmax {  // max pooling: only the window's (first) maximum
    const int* argmax;
    __device__ bool operator()(index_t o, int offset) const { return argmax[o] == offset; }
};

struct ToAll {  // average pooling: every input of the window
    __device__ bool operator()(index_t, int) const { return true; }
};

extern "C" __global__ void max_pool2d_bwd(const real_t* __restrict__ dy,
                                          const int* __restrict__ argmax, real_t* __restrict__ dx,
                                          const PoolGeometry* __restrict__ geometry) {
    gather_windows(dy, dx, *geometry, (acc_t)1, ToArgmax{argmax});
}

extern "C" __global__ void avg_pool2d_fwd(const real_t* __restrict__ x, real_t* __restrict__ y,
                                          const PoolGeometry* __restrict__ geometry) {
    const PoolGeometry g = *geometry;
    index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
    index_t total = (index_t)g.N * g.C * g.OH * g.OW;
    if (i >= total) return;
    int ow = i % g.OW, oh = (i / g.OW) % g.OH;
    const real_t* plane = x + (i / ((index_t)g.OH * g.OW)) * g.H * g.W;
    acc_t sum = 0;
    for (int r = 0; r < g.R; ++r) {
        int h = oh * g.sh - g.ph + r;
        if (h < 0 || h >= g.H) continue;
        for (int s = 0; s < g.S; ++s) {
            int w = ow * g.sw - g.pw + s;
            if (w >= 0 && w < g.W) sum += plane[h * g.W + w];
        }
    }
    y[i] = (real_t)(sum / (acc_t)(g.R * g.S));
}

extern "C" __global__ void avg_pool2d_bwd(const real_t* __restrict__ dy, real_t* __restrict__ dx,
                                          const PoolGeometry* __restrict__ geometry) {
    const PoolGeometry g = *geometry;
    gather_windows(dy, dx, g, (acc_t)1 / (acc_t)(g.R * g.S), ToAll{});
}

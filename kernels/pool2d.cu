// Max and average pooling over NCHW, contiguous.
//
// Geometry: window (R, S), stride (sh, sw), padding (ph, pw) on each side; the
//   output size OH, OW comes from the host (floor((H + 2 ph - R) / sh) + 1, or
//   PyTorch's ceil_mode, whose last window may overhang the bottom/right padding:
//   positions outside the input are skipped whatever their side). Padding is -inf
//   for max; average divides each window's sum by the size of its part inside the
//   count bounds [h_lo, h_hi) x [w_lo, w_hi) (from the host: the padded input with
//   PyTorch's count_include_pad, the input alone without), never the overhang. It
//   multiplies by reciprocal[count], a host table of 1/k for k <= R*S: a floating-point
//   division is an out-of-line slow-path routine on the GPU.
// Thread mapping: forward, one thread per output element (reading each window row
//   of a 2-wide, stride-2 window as one 2-element vector where aligned); backward,
//   one thread per input-gradient element, which gathers from every window that covers it
//   (no atomics: deterministic, each dx written exactly once with `=`).
// max_pool2d_fwd saves each window's argmax as the offset r*S + s of its first
//   maximum in row-major order (ties keep the first; NaN propagates), so the
//   backward pass routes each window's gradient to exactly one input.
// Indices are 32-bit; divisions by the output and input sizes and by the strides go
// through `divide`.
#include "common.cuh"

// Passed by value (the launcher's NumPy scalar of 28 int32 fields, cached per shape): it
// lives in the kernel's parameter space, read as an operand of the instruction that
// uses it, with no load and no register; each *_magic, *_shift pair divides by the size named (runtime.fast_divisor);
// [h_lo, h_hi) x [w_lo, w_hi), in input coordinates, is what an average's divisor counts.
struct PoolGeometry {
    int N, C, H, W, OH, OW, R, S, sh, sw, ph, pw, ow_magic, ow_shift, oh_magic, oh_shift,
        w_magic, w_shift, h_magic, h_shift, sh_magic, sh_shift, sw_magic, sw_shift, h_lo, h_hi,
        w_lo, w_hi;
};

// The divisor of average window (oh, ow): its positions inside the count bounds
// (1 to R*S: every window starts inside the input or its top/left padding).
__device__ __forceinline__ int window_count(const PoolGeometry& g, int oh, int ow) {
    const int h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
    return (min(h0 + g.R, g.h_hi) - max(h0, g.h_lo)) * (min(w0 + g.S, g.w_hi) - max(w0, g.w_lo));
}

// Output element i as (plane, oh, ow).
__device__ __forceinline__ void output_position(int i, const PoolGeometry& g, int& plane, int& oh,
                                                int& ow) {
    const int q = divide(i, g.ow_magic, g.ow_shift);
    ow = i - q * g.OW;
    plane = divide(q, g.oh_magic, g.oh_shift);
    oh = q - plane * g.OH;
}

// The windows o along one axis that cover padded position p: o*stride <= p < o*stride + size,
// clipped to [0, out - 1].
__device__ __forceinline__ void covering_windows(int p, int size, int magic, int shift, int out,
                                                 int& lo, int& hi) {
    lo = p >= size ? divide(p - size, magic, shift) + 1 : 0;
    hi = min(divide(p, magic, shift), out - 1);
}

// Calls visit(value, r*S + s) for each element of output i's window inside x, in
// row-major order. With `pairs` (the launcher checked S = 2, stride 2, no left
// padding, W even and x aligned) each window row is one aligned 2-element load.
template <class Visit>
__device__ __forceinline__ void visit_window(const real_t* __restrict__ x, const PoolGeometry& g,
                                             int i, int pairs, Visit visit) {
    int nc, oh, ow;
    output_position(i, g, nc, oh, ow);
    const real_t* plane = x + nc * g.H * g.W;
    for (int r = 0; r < g.R; ++r) {
        const int h = oh * g.sh - g.ph + r;
        if (h < 0 || h >= g.H) continue;
        if (pairs) {
            const Packet<2> row = *reinterpret_cast<const Packet<2>*>(plane + h * g.W + 2 * ow);
            visit(row.v[0], r * 2);
            visit(row.v[1], r * 2 + 1);
            continue;
        }
        for (int s = 0; s < g.S; ++s) {
            const int w = ow * g.sw - g.pw + s;
            if (w >= 0 && w < g.W) visit(plane[h * g.W + w], r * g.S + s);
        }
    }
}

extern "C" __global__ void max_pool2d_fwd(const real_t* __restrict__ x, real_t* __restrict__ y,
                                          int* __restrict__ argmax,
                                          const PoolGeometry g, int pairs) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= g.N * g.C * g.OH * g.OW) return;
    real_t best = 0;
    int best_offset = -1;
    visit_window(x, g, i, pairs, [&](real_t v, int offset) {
        const bool is_nan = v != v;
        if (best_offset < 0 || v > best || (is_nan && best == best)) {
            best = v;
            best_offset = offset;
        }
    });
    y[i] = best;
    argmax[i] = best_offset;
}

// dx[i] = sum over the windows o = (oh, ow) covering input element i of the share
// `routes(o, oh, ow, offset)` of dy[o] sent there (offset = r*S + s of i inside window o).
template <class Routes>
__device__ void gather_windows(real_t* __restrict__ dx, const PoolGeometry& g, Routes routes) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= g.N * g.C * g.H * g.W) return;
    const int q = divide(i, g.w_magic, g.w_shift), w = i - q * g.W;
    const int nc = divide(q, g.h_magic, g.h_shift), h = q - nc * g.H;
    const int hp = h + g.ph, wp = w + g.pw;  // position in the padded input
    int oh_lo, oh_hi, ow_lo, ow_hi;
    covering_windows(hp, g.R, g.sh_magic, g.sh_shift, g.OH, oh_lo, oh_hi);
    covering_windows(wp, g.S, g.sw_magic, g.sw_shift, g.OW, ow_lo, ow_hi);
    acc_t sum = 0;
    for (int oh = oh_lo; oh <= oh_hi; ++oh)
        for (int ow = ow_lo; ow <= ow_hi; ++ow) {
            const int o = (nc * g.OH + oh) * g.OW + ow;
            sum += routes(o, oh, ow, (hp - oh * g.sh) * g.S + (wp - ow * g.sw));
        }
    dx[i] = (real_t)sum;
}

struct ToArgmax {  // max pooling: all of dy[o] to the window's (first) maximum
    const real_t* dy;
    const int* argmax;
    __device__ acc_t operator()(int o, int, int, int offset) const {
        return argmax[o] == offset ? (acc_t)dy[o] : (acc_t)0;
    }
};

struct ToAll {  // average pooling: dy[o] over the window's divisor to each of its inputs
    const real_t* dy;
    const acc_t* reciprocal;
    const PoolGeometry& g;  // the kernel's parameter
    __device__ acc_t operator()(int o, int oh, int ow, int) const {
        return (acc_t)dy[o] * reciprocal[window_count(g, oh, ow)];
    }
};

extern "C" __global__ void max_pool2d_bwd(const real_t* __restrict__ dy,
                                          const int* __restrict__ argmax, real_t* __restrict__ dx,
                                          const PoolGeometry g) {
    gather_windows(dx, g, ToArgmax{dy, argmax});
}

extern "C" __global__ void avg_pool2d_fwd(const real_t* __restrict__ x, real_t* __restrict__ y,
                                          const PoolGeometry g,
                                          const acc_t* __restrict__ reciprocal, int pairs) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= g.N * g.C * g.OH * g.OW) return;
    acc_t sum = 0;
    visit_window(x, g, i, pairs, [&](real_t v, int) { sum += v; });
    int nc, oh, ow;
    output_position(i, g, nc, oh, ow);
    y[i] = (real_t)(sum * reciprocal[window_count(g, oh, ow)]);
}

extern "C" __global__ void avg_pool2d_bwd(const real_t* __restrict__ dy, real_t* __restrict__ dx,
                                          const PoolGeometry g,
                                          const acc_t* __restrict__ reciprocal) {
    gather_windows(dx, g, ToAll{dy, reciprocal, g});
}

// 2-D convolution (cross-correlation, as Conv2d) over NCHW, contiguous.
//
// Every pass is one implicit GEMM, C[m][j] = sum_t A(m, t) B(t, j), computed by
// implicit_gemm below; A and B are never materialised, their loaders index straight
// into x, weight or dy and return 0 for padding:
//   conv2d_fwd        y[n,k,oh,ow]  rows k, columns (n,oh,ow), reduction t = (c,r,s)
//                     A = weight[k][t], B = x[n, c, oh*sh - pt + r, ow*sw - pl + s];
//                     `_split` kernels: the z-th slice of t into partial[z] (split-K
//                     where the grid would leave SMs idle), conv2d_fwd_reduce sums the
//                     slices in order z = 0, 1, ... and adds the bias
//   conv2d_bwd_data   dx[n,c,h,w]   rows c, columns (n,h,w) of one stride phase,
//                     reduction t = (k,j,l) over the taps r = ph + j sh, s = pw + l sw
//                     that reach the phase: A = weight[k][c][r][s], B = dy[n, k,
//                     oh_top - j, ow_top - l] where inside dy (a gather: each dx is
//                     written once, no atomics, no zero tap); split-K as the forward,
//                     summed by conv2d_bwd_weight_reduce
//   conv2d_bwd_weight partial[z][k][(c,r,s)] over the z-th slice of the (n,oh,ow)
//                     reduction (split-K: that reduction is long and M x N small);
//                     conv2d_bwd_weight_reduce sums the slices in order z = 0, 1, ...;
//                     the GEMM's columns run (r,s,c), channels padded to 4, and
//                     `_vec` kernels read dy as aligned vectors (see WeightOperands)
//   conv2d_fwd_direct, conv2d_bwd_data_direct, conv2d_bwd_weight_direct: not GEMMs,
//                     one thread per y, dx or dw element, for few filters, few
//                     channels or few short filters, where a GEMM tile would be
//                     mostly padding (see each kernel below;
//                     gpunet/cuda/conv2d_plan.py chooses)
//   conv2d_bwd_bias   db[k] = sum dy[:, k]: per-block partial sums over runs of the
//                     (n,oh,ow) values (fixed tree), summed in run order by
//                     conv2d_bwd_weight_reduce.
//
// Thread mapping: 16 x 16 threads compute a BM x BN tile of C, each thread TM x TN
// of it (rows ty*4 + i%4 + 64 (i/4), columns tx*4 + j%4 + 64 (j/4), so that a thread
// reads its operands from shared memory as 4-wide vectors). Two tiles, one kernel
// each: 128 x 128 (8 x 8 a thread), and, as `<pass>_wide`, 64 x 256 (4 x 16; 64 x 128
// in double) for GEMMs of at most 64 rows, as LeNet's 6 and 16 channels, which would
// leave most of a 128-row tile idle; and, as `<pass>_tf32`, the 128 x 128 tile on
// TF32 tensor cores, launched only when TF32 is allowed (float only; see below).
// The reduction advances TILE_K at a time through two shared-memory buffers: the
// global loads of step k+1 are issued into registers before the FMAs of step k and
// stored to the other buffer after them, one barrier per step. The square tile's
// pipeline is peeled and its loop runs two steps a turn, buffers 0 then 1, so that
// the loop holds the FMAs, their shared loads, the fetch and its count, nothing else
// (bench/sass_check.py holds its FFMA share to --min-loop-ffma). C leaves through
// shared memory, so that a warp stores 32 neighbouring outputs.
//
// No division in the main loop: each thread splits its output column into (n, oh,
// ow) (backward data: the phase's (n, h, w)) once; the (c,r,s) or (k,j,l) of a
// reduction index comes from a per-shape table of filter taps (built and cached by
// the launcher, as CUTLASS's and cuDNN's implicit GEMMs precompute them; the
// backward data's per phase), padded past its end so that a step reads its taps with
// no bound and no branch (TAP_PADDING); a tap gives its place in the window one-hot,
// and each thread holds its window's rows and columns inside the input as bit masks
// (window_bits), so that the padding test is two logic instructions an element. The
// forward and backward-data operands are stepped through pointers held in registers
// (`opaque`), and every load is predicated, none behind a branch: the forward's
// weights as scalar loads whatever the rows' alignment. The weight gradient carries
// the (n,oh,ow) of its reduction index from step to step with a compare-and-subtract
// per level (see WeightOperands). What division is left is by a per-launch constant,
// through `divide`, or once a thread.
// Accumulation in acc_t; deterministic: fixed reduction order, no atomics. Outputs
// are written with `=`; parameter gradients are returned, the caller accumulates.
#include "common.cuh"

// The reduction step is a compile-time option (-DTILE_K=8 or 16) so that one GPU
// run of bench/gpu_check.py can time both; the launchers do not depend on it.
#ifndef TILE_K
#define TILE_K 8
#endif
#define GEMM_THREADS 256
#define DIRECT_THREADS 256  // the block of the _direct kernels (not GEMMs)
// Blocks an SM must hold (the second argument of the GEMMs' __launch_bounds__):
// two of 8 warps in float, so that one block's FMAs hide the other's barrier and
// loads; ptxas then keeps a thread to 65536 / (2 * 256) = 128 registers. The double
// build's 8 x 8 accumulators take 128 registers by themselves: one block. So do the
// 128 x 128 backward passes in float, which spill at 128 (bench/sass_check.py fails
// on any spill and on fewer blocks an SM than declared).
#define GEMM_MIN_BLOCKS (sizeof(acc_t) == 4 ? 2 : 1)
// The launcher's tap tables (gpunet/cuda/conv2d.py) give a tap's place in its window
// one-hot: bit i for offset i < WINDOW_EXTENT (launchers send larger filters down the
// xp path), so that a thread tests a tap against its window with two logic
// instructions, its window's rows and columns inside the input being bit masks
// (window_bits). They run TAP_PADDING taps past each list's end, at offsets with bit
// TAP_OUTSIDE, which no window holds: a step may read the whole of its TILE_K taps
// without a bound on t.
#define TAP_PADDING 16
#define WINDOW_EXTENT 31
#define TAP_OUTSIDE (-2147483647 - 1)  // bit 31

// The window offsets i < WINDOW_EXTENT with lo <= i < hi, as the bits of a mask.
__device__ __forceinline__ unsigned window_bits(int lo, int hi) {
    lo = max(lo, 0);
    hi = min(hi, WINDOW_EXTENT);
    return lo < hi ? (~0u >> (32 - hi)) & (~0u << lo) : 0u;
}

// Whether a tap (its one-hot offsets) falls inside a window (the masks of its rows and
// columns inside the input).
__device__ __forceinline__ bool tap_inside(int4 tap, unsigned rows_in, unsigned cols_in) {
    return (((unsigned)tap.y & ~rows_in) | ((unsigned)tap.z & ~cols_in)) == 0;
}

// Passed by value (the launcher's NumPy scalar of 29 int32 fields, cached per shape):
// the kernel's parameter space, read as an operand of the instruction that uses it,
// with no load and no register. Device functions take it as `const ConvGeometry&`
// (inlined, the reference is the parameter's address). Each *_magic, *_shift pair divides by the size named (runtime.fast_divisor).
struct ConvGeometry {
    int N, C, H, W, K, R, S, OH, OW, sh, sw, pt, pl, ow_magic, ow_shift, p_magic, p_shift,
        w_magic, w_shift, hw_magic, hw_shift, s_magic, s_shift, rs_magic, rs_shift, sh_magic,
        sh_shift, sw_magic, sw_shift;
};

// A block of 16 x 16 threads computes BM x BN of C, each thread TM x TN of it.
template <int TM_, int TN_>
struct TileShape {
    static constexpr int TM = TM_, TN = TN_, BM = 16 * TM, BN = 16 * TN;
    static constexpr int A_PER = TILE_K * BM / GEMM_THREADS;  // A, B elements a thread
    static constexpr int B_PER = TILE_K * BN / GEMM_THREADS;  // loads per step
    static constexpr int B_ROWS_PER_PASS = GEMM_THREADS / BN;
};
typedef TileShape<8, 8> TileSquare;  // 128 x 128: the default
// 64 x 256 (64 x 128 in double, whose 4 x 16 accumulators would not fit in registers)
typedef TileShape<4, sizeof(acc_t) == 4 ? 16 : 8> TileWide;

// Where C goes: C[m][j] (+ bias[m]) to out[column_offset(j) + m row_stride] for m <
// rows, j < cols. Operands::output() gives it after the main loop, so that a kernel
// can read it then (from its parameters) rather than hold it in registers through
// the loop.
struct GemmOut {
    real_t* out;
    int rows, cols, row_stride;
};

// Writing C out: each thread owns one column of the tile, whose offset in `out` it
// computes once, and copies that column of a 16-row slice staged in shared memory,
// so that a warp stores 32 neighbouring outputs.
template <int BN>
struct OutColumn {
    int col, offset;
    bool valid;
    template <class Operands>
    __device__ OutColumn(const Operands& ops, int cols)
        : col(ops.col0 + threadIdx.x % BN), offset(0), valid(col < cols) {
        if (valid) offset = ops.column_offset(col);
    }
    // Slice row r is row `first + r * step` of C.
    template <bool kBias>
    __device__ void write(const acc_t (*slice)[BN], int first, int step, int M,
                          real_t* __restrict__ out, int row_stride,
                          const real_t* __restrict__ bias) const {
#pragma unroll 1
        for (int r = threadIdx.x / BN; r < 16; r += GEMM_THREADS / BN) {
            const int m = first + r * step;
            if (m < M && valid)
                out[offset + m * row_stride] =
                    (real_t)(slice[r][threadIdx.x % BN] + (kBias ? (acc_t)bias[m] : (acc_t)0));
        }
    }
};

// The GEMM over one BM x BN tile of C; `ops` loads A and B (fetch: the next step
// into registers; stash: registers into shared memory) and maps a column to its
// offset in `out`. C[m][j] (+ bias[m] when kBias) goes to
// out[column_offset(j) + m * row_stride].
template <class Tile, bool kBias, class Operands>
__device__ __forceinline__ void implicit_gemm(Operands ops, int steps,
                                              const real_t* __restrict__ bias) {
    constexpr int TM = Tile::TM, TN = Tile::TN, BM = Tile::BM, BN = Tile::BN;
    constexpr bool kPeeled = TM == 8;
    // The operand buffers; then Bs holds one 16-row slice of C on its way out. A's
    // rows are padded by Operands::A_PAD (see WeightOperands).
    __shared__ __align__(16) acc_t As[2][TILE_K][BM + Operands::A_PAD];
    __shared__ __align__(16) acc_t Bs[2][TILE_K][BN];
    static_assert(sizeof(Bs) >= 16 * BN * sizeof(acc_t), "C slice does not fit in Bs");
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    acc_t acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0;

    // One step's products from one buffer; called with a constant buffer, so that its
    // shared-memory addresses are a register and an immediate.
    const auto multiply = [&](const acc_t(*As_k)[BM + Operands::A_PAD],
                              const acc_t(*Bs_k)[BN]) __attribute__((always_inline)) {
#pragma unroll
        for (int kk = 0; kk < TILE_K; ++kk) {
            acc_t a[TM], b[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = As_k[kk][(i / 4) * 64 + ty * 4 + i % 4];
#pragma unroll
            for (int j = 0; j < TN; ++j) b[j] = Bs_k[kk][(j / 4) * 64 + tx * 4 + j % 4];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
        }
    };
    // Step s fetches tile s into registers, multiplies tile s - 1 (in flight
    // meanwhile), then stores tile s into the buffer tile s - 1 did not use: tile s
    // lives in buffer s % 2. For the square tile the pipeline is peeled (step 0 only
    // fetches, the last multiply has nothing to fetch) and its steady part runs two
    // steps a turn, so that the loop tests nothing but its count and names its
    // buffers as constants; the wide tile, whose fetch holds twice the B taps, would
    // spill so, and keeps one loop that tests the step.
    typename Operands::Fragment staged;
    if constexpr (kPeeled) {
        if (steps > 0) {
            ops.fetch(staged);
            ops.stash(staged, As[0], Bs[0]);
        }
        __syncthreads();
        int step = 1;
        for (; step + 1 < steps; step += 2) {
            ops.fetch(staged);
            multiply(As[0], Bs[0]);
            ops.stash(staged, As[1], Bs[1]);
            __syncthreads();
            ops.fetch(staged);
            multiply(As[1], Bs[1]);
            ops.stash(staged, As[0], Bs[0]);
            __syncthreads();
        }
        // step is odd: tile step - 1 is in buffer 0, and at most one tile is left
        if (step < steps) {
            ops.fetch(staged);
            multiply(As[0], Bs[0]);
            ops.stash(staged, As[1], Bs[1]);
            __syncthreads();
            multiply(As[1], Bs[1]);
        } else if (steps > 0) {
            multiply(As[0], Bs[0]);
        }
    } else {
        for (int step = 0; step <= steps; ++step) {
            if (step < steps) ops.fetch(staged);
            if (step > 0) multiply(As[(step - 1) & 1], Bs[(step - 1) & 1]);
            if (step < steps) ops.stash(staged, As[step & 1], Bs[step & 1]);
            __syncthreads();
        }
    }
    __syncthreads();  // the buffers are read: Bs takes the C slices below

    // Out through shared memory, 16 rows at a time: the i-th slice holds rows
    // i%4 + 4 ty + 64 (i/4) of the tile.
    acc_t(*slice)[BN] = reinterpret_cast<acc_t(*)[BN]>(&Bs[0][0][0]);
    const GemmOut o = ops.output();
    const OutColumn<BN> column(ops, o.cols);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) slice[ty][(j / 4) * 64 + tx * 4 + j % 4] = acc[i][j];
        __syncthreads();
        column.template write<kBias>(slice, blockIdx.y * BM + (i / 4) * 64 + i % 4, 4, o.rows,
                                     o.out, o.row_stride, bias);
        __syncthreads();
    }
}

// ---- the TF32 tensor-core main loop (opt-in, float only) ----------------------------
// The same 128 x 128 tile, operands and epilogue; the products run on tensor cores,
// mma.sync m16n8k8 with A and B rounded to TF32 (10 mantissa bits, cvt.rna: nearest,
// ties away from zero) and float accumulation: a relative error near 2^-11 per
// product instead of float's 2^-24. Warp w computes rows 64 (w / 4) .. + 64 and
// columns 32 (w % 4) .. + 32 of the tile as 4 x 4 MMAs of 16 x 8. Fragment layouts
// (PTX ISA, mma.m16n8k8 .tf32), with g = lane / 4 and q = lane % 4:
//   A (16 x 8, row): a[r] = A[g + 8 (r % 2)][q + 4 (r / 2)]
//   B (8 x 8, col):  b[r] = B[q + 4 r][g]
//   C (16 x 8):      c[r] = C[g + 8 (r / 2)][2 q + r % 2]
// cvt.tf32 and mma .tf32 exist from sm_80 on: below that (ptxas would reject the whole
// file) CONV_TF32 is 0 and the `_tf32` kernels run the float FMA loop instead; the
// launcher never picks them there (runtime.tf32_supported).
#if defined(MMA_TF32_EMULATED) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
#define CONV_TF32 1
#else
#define CONV_TF32 0
#endif
#if CONV_TF32 && !defined(MMA_TF32_EMULATED)  // tests/cuda_emulator/emulate.h supplies its own
__device__ __forceinline__ unsigned to_tf32(float x) {
    unsigned bits;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(bits) : "f"(x));
    return bits;
}

__device__ __forceinline__ void mma_tf32(float (&c)[4], const unsigned (&a)[4],
                                         const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

#if CONV_TF32
#define TF32_PAD 8  // shared rows of 136: the 32 lanes of a fragment load hit 32 banks

template <bool kBias, class Operands>
__device__ __forceinline__ void implicit_gemm_tf32(Operands ops, int steps,
                                                   const float* __restrict__ bias) {
    constexpr int BM = TileSquare::BM, BN = TileSquare::BN;
    __shared__ __align__(16) float As[2][TILE_K][BM + TF32_PAD];
    __shared__ __align__(16) float Bs[2][TILE_K][BN + TF32_PAD];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, q = lane % 4, row0 = (warp / 4) * 64, col0 = (warp % 4) * 32;
    float acc[4][4][4];
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0;

    typename Operands::Fragment staged;
    for (int step = 0; step <= steps; ++step) {
        if (step < steps) ops.fetch(staged);
        if (step > 0) {
            const int buf = (step - 1) & 1;
#pragma unroll
            for (int k0 = 0; k0 < TILE_K; k0 += 8) {
                unsigned a[4][4], b[4][2];
#pragma unroll
                for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                    for (int r = 0; r < 4; ++r)
                        a[mt][r] = to_tf32(As[buf][k0 + q + 4 * (r / 2)][row0 + mt * 16 + g + 8 * (r % 2)]);
#pragma unroll
                for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                    for (int r = 0; r < 2; ++r)
                        b[nt][r] = to_tf32(Bs[buf][k0 + q + 4 * r][col0 + nt * 8 + g]);
#pragma unroll
                for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                    for (int nt = 0; nt < 4; ++nt) mma_tf32(acc[mt][nt], a[mt], b[nt]);
            }
        }
        if (step < steps) ops.stash(staged, As[step & 1], Bs[step & 1]);
        __syncthreads();
    }

    // Out through shared memory: slice p holds rows 64 (p / 4) + 16 (p % 4) .. + 16,
    // written by the four warps that computed them.
    static_assert(sizeof(Bs) >= 16 * BN * sizeof(float), "C slice does not fit in Bs");
    float(*slice)[BN] = reinterpret_cast<float(*)[BN]>(&Bs[0][0][0]);
    const GemmOut o = ops.output();
    const OutColumn<BN> column(ops, o.cols);
#pragma unroll
    for (int p = 0; p < 8; ++p) {
        if (warp / 4 == p / 4) {
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int r = 0; r < 4; ++r)
                    slice[g + 8 * (r / 2)][col0 + nt * 8 + 2 * q + r % 2] = acc[p % 4][nt][r];
        }
        __syncthreads();
        column.template write<kBias>(slice, blockIdx.y * BM + (p / 4) * 64 + (p % 4) * 16, 1,
                                     o.rows, o.out, o.row_stride, bias);
        __syncthreads();
    }
}
#endif  // CONV_TF32

// The main loop of a kernel: tensor cores for the float build's `_tf32` kernels; the
// double build has no TF32, and its `_tf32` kernels are the plain double ones (as
// are the float ones below sm_80).
template <class Tile, bool kTF32, bool kBias, class Operands>
__device__ __forceinline__ void run_gemm(Operands ops, int steps, const real_t* bias) {
#if CONV_TF32
    if constexpr (kTF32 && sizeof(real_t) == 4)
        implicit_gemm_tf32<kBias>(ops, steps, (const float*)bias);
    else
#endif
        implicit_gemm<Tile, kBias>(ops, steps, bias);
}

// A pointer into an operand that the backward data's main loop indexes: held in a
// register pair (opaque) by the square tile; the wide tile, whose fetch holds twice the
// B taps, would spill so (sm_90), and lets the compiler rebuild it from the kernel's
// parameters where it is used.
template <class Tile, class T>
__device__ __forceinline__ T* loop_pointer(T* pointer) {
    if constexpr (Tile::TM == 8)
        return opaque(pointer);
    else
        return pointer;
}

// The B operand's thread mapping, shared by the three passes: one column of the
// tile, rows row, row + B_ROWS_PER_PASS, ...
template <class Tile>
struct BColumn {
    int row, col;
    __device__ BColumn() : row(threadIdx.x / Tile::BN), col(threadIdx.x % Tile::BN) {}
};

// The operand mapping of the forward and backward-data passes: each thread loads
// A_PER neighbouring reduction indices of one A row and B_PER rows of one B column,
// a step at a time, into a Fragment that `stash` puts in shared memory.
template <class Tile>
struct RowOperands {
    static constexpr int BM = Tile::BM, BN = Tile::BN, A_PER = Tile::A_PER, B_PER = Tile::B_PER;
    static constexpr int B_ROWS_PER_PASS = Tile::B_ROWS_PER_PASS;
    static constexpr int A_PAD = 0;  // A is stashed along its rows, 16 lanes a row
    struct Fragment {
        real_t a[A_PER], b[B_PER];
    };
    int col0;          // the block's first column of C
    int a_row, a_col;  // A: row a_row, reduction t + a_col .. t + a_col + A_PER - 1 at step t
    BColumn<Tile> b;   // (initialised before b_valid, which reads it)
    bool a_valid, b_valid;

    __device__ RowOperands(int rows, int cols, int first_col)
        : col0(first_col),
          a_row(blockIdx.y * BM + threadIdx.x / (TILE_K / A_PER)),
          a_col(threadIdx.x % (TILE_K / A_PER) * A_PER),
          b(),
          a_valid(a_row < rows),
          b_valid(first_col + b.col < cols) {}

    template <class ARows, class BRows>  // As[k][m], Bs[k][j]: shared arrays of any row length
    __device__ void stash(const Fragment& f, ARows As, BRows Bs) const {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) As[a_col + i][a_row % BM] = f.a[i];
#pragma unroll
        for (int i = 0; i < B_PER; ++i) Bs[b.row + B_ROWS_PER_PASS * i][b.col] = f.b[i];
    }
};

// ---- forward: rows k, columns (n,oh,ow), reduction (c,r,s) --------------------------
// taps[t] = {c*H*W + i*W + j, 1 << i, 1 << j, unused}, (i, j) = (r d_h, s d_w), then
// TAP_PADDING taps {0, TAP_OUTSIDE, TAP_OUTSIDE, 0}
template <class Tile>
struct ForwardOperands : RowOperands<Tile> {
    using Base = RowOperands<Tile>;
    using typename Base::Fragment;
    using Base::A_PER, Base::B_PER, Base::B_ROWS_PER_PASS, Base::a_row,
        Base::a_col, Base::a_valid, Base::b, Base::b_valid;
    // The kernel's parameter, read in the epilogue (output, column_offset) where it is
    // used: an operand in the parameter space, so the loop holds no register for it.
    const ConvGeometry& geometry;
    real_t* __restrict__ out;  // y, or the split slices' partial sums laid out as y
    // A: a_next[i] for i < a_left, the thread's next A_PER weights of its row (a_left
    // counts down to the slice's end; 0 from the start for a row past K). Scalar
    // predicated loads, whatever the row's alignment: one path, no branch.
    const real_t* __restrict__ a_next;
    int a_left;
    // B: x_window[tap.x] when the tap is inside the window's rows_in, cols_in (bit i:
    // row ih0 + i, column iw0 + i, inside x); next_taps: the thread's first tap of the
    // next step
    const real_t* __restrict__ x_window;
    const int4* __restrict__ next_taps;
    unsigned rows_in, cols_in;

    // The reduction indices t_begin .. t_end - 1 of (c, r, s) (all of them but in a
    // split-K slice)
    __device__ ForwardOperands(const real_t* x, const real_t* w, const int* taps,
                               const ConvGeometry& g, real_t* out_, int t_begin, int t_end_)
        : Base(g.K, g.N * g.OH * g.OW, blockIdx.x * Tile::BN), geometry(g), out(out_) {
        const int CRS = g.C * g.R * g.S;
        a_next = w + a_row * CRS + t_begin + a_col;
        a_left = (a_valid ? t_end_ : t_begin) - (t_begin + a_col);
        next_taps = reinterpret_cast<const int4*>(taps) + t_begin + b.row;
        const int j = blockIdx.x * Tile::BN + b.col, P = g.OH * g.OW;
        const int n = divide(j, g.p_magic, g.p_shift), p = j - n * P;
        const int oh = divide(p, g.ow_magic, g.ow_shift), ow = p - oh * g.OW;
        const int ih0 = oh * g.sh - g.pt, iw0 = ow * g.sw - g.pl;
        // may point before x (a window over the top border): only tap offsets that land
        // inside x are read through it
        x_window = opaque(x + (n * g.C * g.H * g.W + ih0 * g.W + iw0));
        // a column past the GEMM's reads nothing: no row of its window is inside
        rows_in = b_valid ? window_bits(-ih0, g.H - ih0) : 0u;
        cols_in = window_bits(-iw0, g.W - iw0);
    }

    __device__ void fetch(Fragment& f) {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) f.a[i] = i < a_left ? a_next[i] : (real_t)0;
        a_next += TILE_K;
        a_left -= TILE_K;
        // No bound on t: a split slice ends on a whole step (chunks are multiples of
        // 4 TILE_K), the last at C R S, past which the table holds TAP_PADDING taps
        // outside every window. So each element is one tap load, its window test and
        // a predicated load: no branch.
#pragma unroll
        for (int i = 0; i < B_PER; ++i) {
            const int4 tap = next_taps[B_ROWS_PER_PASS * i];
            f.b[i] = tap_inside(tap, rows_in, cols_in) ? load_global(x_window + tap.x)
                                                        : (real_t)0;
        }
        next_taps += TILE_K;
    }

    // y[n][k][p] at n K P + p + k P; slice z of a split at z N K P (grid.z is 1 unsplit)
    __device__ GemmOut output() const {
        const ConvGeometry& g = geometry;
        const int P = g.OH * g.OW;
        return {out + blockIdx.z * g.N * g.K * P, g.K, g.N * P, P};
    }

    __device__ int column_offset(int j) const {
        const ConvGeometry& g = geometry;
        const int P = g.OH * g.OW, n = divide(j, g.p_magic, g.p_shift);
        return n * g.K * P + (j - n * P);
    }
};

// The blockIdx.z-th `chunk` of the (c, r, s) reduction (all of it unsplit: chunk
// C R S, grid.z 1) into out[z]
template <class Tile, bool kTF32, bool kBias>
__device__ __forceinline__ void conv2d_fwd_tile(const real_t* x, const real_t* w,
                                                const real_t* bias, real_t* out,
                                                const ConvGeometry& g, const int* taps,
                                                int chunk) {
    const int CRS = g.C * g.R * g.S, t_begin = blockIdx.z * chunk;
    const int t_end = CRS - t_begin < chunk ? CRS : t_begin + chunk;
    run_gemm<Tile, kTF32, kBias>(
        ForwardOperands<Tile>(x, w, taps, g, out, t_begin, t_end),
        (t_end - t_begin + TILE_K - 1) / TILE_K, bias);
}

// Split-K: the blockIdx.z-th `chunk` of the (c, r, s) reduction into partial[z], laid
// out as y, without the bias; conv2d_fwd_reduce sums the slices in order z = 0, 1, ...
// and adds it. Kernels of their own, so that the plain ones keep their registers;
// the float 128 x 128 one spills at 128 registers (the slice's bounds and offset), so
// it declares one block an SM, as the 128 x 128 backward passes do.
template <class Tile, bool kTF32>
__device__ __forceinline__ void conv2d_fwd_split_tile(const real_t* x, const real_t* w,
                                                      real_t* partial,
                                                      const ConvGeometry& g,
                                                      const int* taps, int chunk) {
    conv2d_fwd_tile<Tile, kTF32, false>(x, w, (const real_t*)nullptr, partial, g, taps,
                                        chunk);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS)
conv2d_fwd(const real_t* __restrict__ x, const real_t* __restrict__ w, const real_t* __restrict__ bias,
           real_t* __restrict__ y, const ConvGeometry g,
           const int* __restrict__ taps) {
    conv2d_fwd_tile<TileSquare, false, true>(x, w, bias, y, g, taps, 1 << 30);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 1)
conv2d_fwd_split(const real_t* __restrict__ x, const real_t* __restrict__ w,
                 real_t* __restrict__ partial, const ConvGeometry g,
                 const int* __restrict__ taps, int chunk) {
    conv2d_fwd_split_tile<TileSquare, false>(x, w, partial, g, taps, chunk);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS)
conv2d_fwd_wide(const real_t* __restrict__ x, const real_t* __restrict__ w, const real_t* __restrict__ bias,
                real_t* __restrict__ y, const ConvGeometry g,
                const int* __restrict__ taps) {
    conv2d_fwd_tile<TileWide, false, true>(x, w, bias, y, g, taps, 1 << 30);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS)
conv2d_fwd_wide_split(const real_t* __restrict__ x, const real_t* __restrict__ w,
                      real_t* __restrict__ partial, const ConvGeometry g,
                      const int* __restrict__ taps, int chunk) {
    conv2d_fwd_split_tile<TileWide, false>(x, w, partial, g, taps, chunk);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS)
conv2d_fwd_tf32(const real_t* __restrict__ x, const real_t* __restrict__ w, const real_t* __restrict__ bias,
                real_t* __restrict__ y, const ConvGeometry g,
                const int* __restrict__ taps) {
    conv2d_fwd_tile<TileSquare, true, true>(x, w, bias, y, g, taps, 1 << 30);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS)
conv2d_fwd_tf32_split(const real_t* __restrict__ x, const real_t* __restrict__ w,
                      real_t* __restrict__ partial, const ConvGeometry g,
                      const int* __restrict__ taps, int chunk) {
    conv2d_fwd_split_tile<TileSquare, true>(x, w, partial, g, taps, chunk);
}

// y[n][k][p] = partial[0] + partial[1] + ... (in that order, over `splits` slices of
// `count` = N K P values) + bias[k].
extern "C" __global__ void conv2d_fwd_reduce(const real_t* __restrict__ partial,
                                             const real_t* __restrict__ bias,
                                             real_t* __restrict__ y, int count, int splits,
                                             int P, int K) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    acc_t sum = 0;
    for (int z = 0; z < splits; ++z) sum += partial[z * count + i];
    y[i] = (real_t)(sum + (acc_t)bias[i / P % K]);
}

// ---- forward, direct: one thread per output, for few filters ----------------------
// For K <= 16 filters (LeNet's 6 and 16) a GEMM tile of 64 rows would issue 4 to 64
// times the useful multiply-adds. Block (x, k) computes y[n, k, oh, ow] for 256
// consecutive (n, oh, ow), thread by thread, summing over (c, r, s) in that order
// (the GEMM's) with taps in the padding skipped (predicated: issued, not useful);
// filter k goes through shared memory FWD_DIRECT_TAPS weights at a time (whole
// channels; the launcher takes R S <= FWD_DIRECT_TAPS), where every lane of a warp
// reads the same address; x reads run along ow. Deterministic: one thread writes each
// output once, in a fixed order.
#define FWD_DIRECT_TAPS 2048
extern "C" __global__ void __launch_bounds__(DIRECT_THREADS, 4)
conv2d_fwd_direct(const real_t* __restrict__ x, const real_t* __restrict__ w,
                  const real_t* __restrict__ bias, real_t* __restrict__ y,
                  const ConvGeometry g) {
    __shared__ real_t ws[FWD_DIRECT_TAPS];
    const int k = blockIdx.y, P = g.OH * g.OW, RS = g.R * g.S, HW = g.H * g.W;
    const int j = blockIdx.x * DIRECT_THREADS + threadIdx.x;
    const bool valid = j < g.N * P;
    const int n = valid ? j / P : 0, p = j - n * P, oh = p / g.OW, ow = p - oh * g.OW;
    const int ih0 = oh * g.sh - g.pt, iw0 = ow * g.sw - g.pl;
    const int per = FWD_DIRECT_TAPS / RS;  // whole channels of the filter a pass
    const real_t* xc = x + n * g.C * HW + ih0 * g.W + iw0;
    acc_t acc = 0;
    for (int c0 = 0; c0 < g.C; c0 += per) {
        const int taps = (g.C - c0 < per ? g.C - c0 : per) * RS;
        __syncthreads();  // the last pass's weights are read
        for (int i = threadIdx.x; i < taps; i += DIRECT_THREADS)
            ws[i] = w[(k * g.C + c0) * RS + i];
        __syncthreads();
        if (!valid) continue;
        for (int c = 0; c < taps; c += RS, xc += HW) {
            for (int r = 0; r < g.R; ++r) {
                if ((unsigned)(ih0 + r) >= (unsigned)g.H) continue;
                for (int s = 0; s < g.S; ++s) {
                    if ((unsigned)(iw0 + s) < (unsigned)g.W)
                        acc += (acc_t)ws[c + r * g.S + s] * (acc_t)xc[r * g.W + s];
                }
            }
        }
    }
    if (valid) y[(n * g.K + k) * P + p] = (real_t)(acc + (acc_t)bias[k]);
}

// ---- backward data: rows c, columns (n,h,w) of one stride phase, reduction (k,j,l) --
// At stride s only the taps r = ph + j sh (of the spread filter: r d_h) reach a dx
// row h with (h + pt) % sh == ph, from dy row oh = oh_top - j, oh_top = (h + pt - ph) /
// sh; so dx is computed phase by phase (as conv2d_bwd_data_direct does), each phase a
// dense GEMM over only its taps: no zero tap, and no division in the loop, just the
// bounds of oh and ow (stride 1 is the one phase, j = r). The grid's x blocks run
// through the phases in turn. The launcher's table (gpunet/cuda/conv2d.py,
// data_phase_table) opens with three int4 a phase,
//   {taps offset, taps count, first block, columns}, {h0, w0, rows, cols},
//   {oh_top0, ow_top0, weights offset, 0}
// (h0, w0: the phase's first dx row and column; rows x cols its positions a sample),
// and holds each phase's taps, (k, j, l) in order:
//   {k OH OW - j OW - l, 1 << j, 1 << l, k C R S + r S + s},
// each phase's followed by TAP_PADDING taps {0, TAP_OUTSIDE, TAP_OUTSIDE, 0}; then,
// from `weights offset` (in int32, a multiple of 4), each phase's weight indices (the
// taps' last field, the padding's included) on their own, so that a thread reads its
// A_PER of a step as one vector.
// Split-K (blockIdx.z: the z-th `chunk` of the phase's taps) writes partial[z] laid
// out as dx; conv2d_bwd_weight_reduce sums the slices in order. Unsplit, partial is dx.
struct DataPhase {
    int4 head, place, top;
};

// `count` weight indices of the backward data's table, read as one aligned vector.
template <int count>
struct __align__(count * sizeof(int)) WeightIndices {
    int v[count];
};

template <class Tile>
struct DataOperands : RowOperands<Tile> {
    using Base = RowOperands<Tile>;
    using typename Base::Fragment;
    using Base::A_PER, Base::B_PER, Base::B_ROWS_PER_PASS, Base::a_row,
        Base::a_col, Base::a_valid, Base::b, Base::b_valid, Base::col0;
    // The kernel's parameter, read in the epilogue (column_offset), as the forward's
    const ConvGeometry& geometry;
    const int4* __restrict__ place;  // the phase's {h0, w0, rows, cols}
    // A: w_row[a_indices->v[i]] for i < a_left (counting down to the slice's end; 0
    // from the start for a row past C); a_indices: the thread's weight indices of the
    // next step
    const real_t* __restrict__ w_row;
    const WeightIndices<A_PER>* __restrict__ a_indices;
    int a_left;
    // B: dy_window[tap.x] if the tap is inside rows_in, cols_in (bit j: dy row oh_top -
    // j inside dy; bit l: column ow_top - l); b_taps: the thread's first B tap of the
    // next step
    const real_t* __restrict__ dy_window;
    const int4* __restrict__ b_taps;
    unsigned rows_in, cols_in;

    __device__ DataOperands(const real_t* dy, const real_t* w, const int4* table,
                            const ConvGeometry& g, const DataPhase& phase,
                            const int4* place_, int t_begin, int t_end_)
        : Base(g.C, phase.head.w, (blockIdx.x - phase.head.z) * Tile::BN),
          geometry(g), place(place_) {
        const int4* taps = table + phase.head.x;  // the phase's
        const int cols = phase.place.w, per_sample = phase.place.z * cols;
        // may point past w (a row past C): read only for rows inside it
        w_row = loop_pointer<Tile>(w + a_row * g.R * g.S);
        a_indices = reinterpret_cast<const WeightIndices<A_PER>*>(
                        reinterpret_cast<const int*>(table) + phase.top.z + t_begin + a_col);
        a_left = (a_valid ? t_end_ : t_begin) - (t_begin + a_col);
        b_taps = taps + t_begin + b.row;
        // once a thread, by sizes of the phase: the loop below divides by nothing
        const int j = b_valid ? col0 + b.col : 0;
        const int n = j / per_sample, q = j - n * per_sample, hq = q / cols;
        const int oh_top = phase.top.x + hq, ow_top = phase.top.y + (q - hq * cols);
        // may point outside dy: only tap offsets that land inside it are read through it
        dy_window = loop_pointer<Tile>(dy + (n * g.K * g.OH * g.OW + oh_top * g.OW + ow_top));
        // j with 0 <= oh_top - j < OH; none for a column past the phase's
        rows_in = b_valid ? window_bits(oh_top - g.OH + 1, oh_top + 1) : 0u;
        cols_in = window_bits(ow_top - g.OW + 1, ow_top + 1);
    }

    __device__ void fetch(Fragment& f) {
        // past the phase's end the indices are its padding ones: read, not used
        const WeightIndices<A_PER> index = *a_indices;
#pragma unroll
        for (int i = 0; i < A_PER; ++i)
            f.a[i] = i < a_left ? load_global(w_row + index.v[i]) : (real_t)0;
        a_indices += TILE_K / A_PER;
        a_left -= TILE_K;
        // No bound on t (as the forward's): a split slice ends on a whole step, the
        // last at the phase's end, past which its list holds TAP_PADDING taps outside
        // dy; a column past the phase's starts outside dy. One tap load, the window
        // test and a predicated load an element: no branch.
#pragma unroll
        for (int i = 0; i < B_PER; ++i) {
            const int4 tap = b_taps[B_ROWS_PER_PASS * i];
            f.b[i] = tap_inside(tap, rows_in, cols_in) ? load_global(dy_window + tap.x)
                                                        : (real_t)0;
        }
        b_taps += TILE_K;
    }

    GemmOut out;  // partial[z], laid out as dx
    __device__ GemmOut output() const { return out; }

    __device__ int column_offset(int j) const {  // dx[n][c][h][w]: n C H W + h W + w (+ c H W)
        const ConvGeometry& g = geometry;
        const int4 at = *reread(place);
        const int cols = at.w, per_sample = at.z * cols;
        const int n = j / per_sample, q = j - n * per_sample, hq = q / cols;
        return n * g.C * g.H * g.W + (at.x + hq * g.sh) * g.W + at.y + (q - hq * cols) * g.sw;
    }
};

template <class Tile, bool kTF32>
__device__ __forceinline__ void conv2d_bwd_data_tile(const real_t* dy, const real_t* w,
                                                     real_t* partial,
                                                     const ConvGeometry& g,
                                                     const int* table_, int chunk) {
    const int4* table = reinterpret_cast<const int4*>(table_);
    const int phases = g.sh * g.sw;
    int p = 0;  // the phase of this block: the last whose first block is at most blockIdx.x
    while (p + 1 < phases && table[3 * (p + 1)].z <= (int)blockIdx.x) ++p;
    const DataPhase phase = {table[3 * p], table[3 * p + 1], table[3 * p + 2]};
    const int t_begin = blockIdx.z * chunk;
    const int t_end = phase.head.y - t_begin < chunk ? max(phase.head.y, t_begin)
                                                     : t_begin + chunk;
    DataOperands<Tile> ops(dy, w, table, g, phase, table + 3 * p + 1, t_begin, t_end);
    ops.out = {partial + blockIdx.z * g.N * g.C * g.H * g.W, g.C, phase.head.w, g.H * g.W};
    run_gemm<Tile, kTF32, false>(ops, (t_end - t_begin + TILE_K - 1) / TILE_K,
                                 (const real_t*)nullptr);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 1)
conv2d_bwd_data(const real_t* __restrict__ dy, const real_t* __restrict__ w,
                real_t* __restrict__ partial, const ConvGeometry g,
                const int* __restrict__ table, int chunk) {
    conv2d_bwd_data_tile<TileSquare, false>(dy, w, partial, g, table, chunk);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS)
conv2d_bwd_data_wide(const real_t* __restrict__ dy, const real_t* __restrict__ w,
                     real_t* __restrict__ partial, const ConvGeometry g,
                     const int* __restrict__ table, int chunk) {
    conv2d_bwd_data_tile<TileWide, false>(dy, w, partial, g, table, chunk);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS)
conv2d_bwd_data_tf32(const real_t* __restrict__ dy, const real_t* __restrict__ w,
                     real_t* __restrict__ partial, const ConvGeometry g,
                     const int* __restrict__ table, int chunk) {
    conv2d_bwd_data_tile<TileSquare, true>(dy, w, partial, g, table, chunk);
}

// ---- backward data, direct: one thread per dx element, phase by phase --------------
// For few channels (C <= DIRECT_MAX_C) a GEMM tile of C rows would be mostly padding,
// and at stride s only one tap in s x s reaches a given dx. So dx is split into its
// sh x sw phases, blockIdx.z = ph * sw + pw: the (h, w) with (h + pt) % sh == ph and
// (w + pl) % sw == pw. Exactly the taps r = ph + j sh, s = pw + l sw reach them, at
// oh = oh_top - j, ow = ow_top - l; each thread clips j, l to dy once, then runs a
// dense loop over (k, j, l) with no division and no zero tap. A gather: each dx is
// written once, in a fixed order, no atomics. Threads of a block share the phase
// (the same taps: no divergence but at the border) and run along w (dy reads coalesce,
// weight reads are the same address across the warp). Where the grid would leave
// part of a wave idle the launcher splits the sum over k: blockIdx.y takes filters
// k_chunk y .. + k_chunk into partial[y], laid out as dx, and conv2d_bwd_weight_reduce
// sums the slices in order (unsplit, partial is dx).
extern "C" __global__ void __launch_bounds__(DIRECT_THREADS, 4)
conv2d_bwd_data_direct(const real_t* __restrict__ dy, const real_t* __restrict__ w,
                       real_t* __restrict__ partial, const ConvGeometry g,
                       int k_chunk) {
    const int ph = blockIdx.z / g.sw, pw = blockIdx.z - ph * g.sw;
    // the first h >= 0 of the phase, the phase's rows, its taps along r (same along w)
    const int h0 = ((ph - g.pt) % g.sh + g.sh) % g.sh, w0 = ((pw - g.pl) % g.sw + g.sw) % g.sw;
    const int hq_count = h0 < g.H ? (g.H - h0 + g.sh - 1) / g.sh : 0;
    const int wq_count = w0 < g.W ? (g.W - w0 + g.sw - 1) / g.sw : 0;
    const int r_taps = ph < g.R ? (g.R - ph + g.sh - 1) / g.sh : 0;
    const int s_taps = pw < g.S ? (g.S - pw + g.sw - 1) / g.sw : 0;
    const int i = blockIdx.x * DIRECT_THREADS + threadIdx.x;
    if (i >= g.N * g.C * hq_count * wq_count) return;
    const int wq = i % wq_count, rest = i / wq_count;
    const int hq = rest % hq_count, nc = rest / hq_count;
    const int n = nc / g.C, c = nc - n * g.C;
    const int h = h0 + hq * g.sh, x = w0 + wq * g.sw;
    // dx[h, x] takes dy[oh_top - j, ow_top - l] * w[ph + j sh, pw + l sw], (h + pt - ph)
    // divisible by sh by the choice of phase
    const int oh_top = (h + g.pt - ph) / g.sh, ow_top = (x + g.pl - pw) / g.sw;
    const int j_lo = max(0, oh_top - g.OH + 1), j_hi = min(r_taps, oh_top + 1);
    const int l_lo = max(0, ow_top - g.OW + 1), l_hi = min(s_taps, ow_top + 1);
    const int P = g.OH * g.OW, RS = g.R * g.S;
    const real_t* dy_k = dy + n * g.K * P + (oh_top - j_lo) * g.OW + (ow_top - l_lo);
    const real_t* w_k = w + c * RS + (ph + j_lo * g.sh) * g.S + pw + l_lo * g.sw;
    const int k_begin = blockIdx.y * k_chunk;
    const int k_end = g.K - k_begin < k_chunk ? g.K : k_begin + k_chunk;
    dy_k += k_begin * P;
    w_k += k_begin * g.C * RS;
    acc_t acc = 0;
    for (int k = k_begin; k < k_end; ++k, dy_k += P, w_k += g.C * RS) {
        const real_t* dy_j = dy_k;
        const real_t* w_j = w_k;
        for (int j = j_lo; j < j_hi; ++j, dy_j -= g.OW, w_j += g.sh * g.S) {
            for (int l = 0; l < l_hi - l_lo; ++l)
                acc += (acc_t)w_j[l * g.sw] * (acc_t)dy_j[-l];
        }
    }
    partial[blockIdx.y * g.N * g.C * g.H * g.W + ((n * g.C + c) * g.H + h) * g.W + x] =
        (real_t)acc;
}

// ---- backward weight: rows k, columns (r,s,c), reduction (n,oh,ow) in one slice ----
// The GEMM's columns run channel-fastest over the channels padded to C4 = C rounded up
// to 4: column j = (r S + s) C4 + c. A thread's B elements come in runs of 4 columns,
// channels c .. c + 3 of one tap (r, s) at one reduction index: the run shares its
// window test and its addresses differ by H W, so a step tests a window once a run.
// A padded channel (c >= C; none when C % 4 == 0) reads channel C - 1, and its
// column's sums go to a scratch slice past the last one (partial[gridDim.z], which
// the launcher then allocates), never read.
// No division in the loop: each thread carries the (n, oh, ow) of its reduction index
// from step to step, as the window's corner and the offsets of x and dy, advanced by
// TILE_K = d_n P + d_oh OW + d_ow with one compare-and-subtract carry into oh and one
// into n (d_ow < OW, d_oh < OH: each carries at most once).
// A (dy, rows k): with kPackedDy (the launcher's choice: OH OW % 4 == 0, dy aligned) a
// thread reads VECA = min(A_PER, 4) consecutive reduction indices of a row as one
// aligned vector, the vector holding the thread's B index: in one image (P % 4 == 0),
// so B's carried dy offset addresses it; else A_PER rows at its B index, one load each.
template <class Tile, bool kPackedDy>
struct WeightOperands {
    static constexpr int BM = Tile::BM, BN = Tile::BN, A_PER = Tile::A_PER, B_PER = Tile::B_PER;
    static constexpr int RUN = 4, RUNS = B_PER / RUN;     // B: runs of 4 channels
    static constexpr int GROUPS = GEMM_THREADS / TILE_K;  // threads per reduction index
    static constexpr int VECA = A_PER < 4 ? A_PER : 4, PACKS = A_PER / VECA;
    static constexpr int A_LOADS = kPackedDy ? PACKS : A_PER;
    static_assert(RUNS * RUN == B_PER && GROUPS * B_PER == BN, "B's runs do not tile BN");
    static_assert(sizeof(real_t) == sizeof(acc_t), "B is stashed as vectors of real_t");
    // The thread's place (kk, group): a warp holds 4 reduction indices (kk) of 8 column
    // groups, lane / 8 and lane % 8. So an eighth of a warp, whose 16-byte stores of a
    // row of Bs are one phase, stores 8 runs of columns on 8 distinct sets of banks;
    // and each of a warp's loads of x reads 4 neighbouring (oh, ow) of 8 runs, not 32
    // scattered places. A is stashed down columns, each lane of a warp on its own bank
    // when rows are padded by 8 (kk's lane / 8 moves 8 banks; the 4-wide reads stay
    // 16-byte aligned).
    static_assert(TILE_K % 4 == 0 && GROUPS % 8 == 0, "a warp: 4 indices x 8 groups");
    static constexpr int A_PAD = 8;
    static __device__ int thread_kk() {
        return 4 * (threadIdx.x / 32 % (TILE_K / 4)) + threadIdx.x % 32 / 8;
    }
    static __device__ int thread_group() {
        return 8 * (threadIdx.x / 32 / (TILE_K / 4)) + threadIdx.x % 8;
    }
    struct Fragment {
        real_t a[A_PER], b[B_PER];
    };
    const ConvGeometry& geometry;  // the kernel's parameter, read by the epilogue only
    int col0;
    // The thread's reduction index t + kk (kk = thread_kk()): left = t_end - it,
    // counting down; h, w: the window corner of its first run (oh sh + r - pt, ow sw +
    // s - pl); x_at = x + n C H W + oh sh W + ow sw - (pt W + pl); dy_at = dy + n K P +
    // oh OW + ow - a_lead (pointers, not offsets: a load adds an offset to one; the
    // offsets below are unsigned, from a pointer set before them, so that the compiler
    // widens them to 64 bits with a zero rather than hold a sign-extended copy)
    int left, h, w;
    const real_t* __restrict__ x_at;
    const real_t* __restrict__ dy_at;
    // Per step: w += w_step, carried into oh at w_limit (w -= w_span); h += h_step
    // (h_step_row with that carry: sh more), carried into n at h_limit (h -= h_span);
    // the pointers by their steps plus the carries' corrections.
    int w_step, w_limit, w_span, h_step, h_step_row, h_limit, h_span;
    int x_step, x_row, x_image, dy_step, dy_image;
    unsigned H, W;
    unsigned a_offset[A_LOADS];  // A: dy_at[a_offset[i]]
    int a_lead;                  // packed: t + kk - a_lead starts the thread's vector
    unsigned b_offset[B_PER];    // B: x_at[b_offset[e]]
    int h_run[RUNS], w_run[RUNS];  // run q's corner: h + h_run[q], w + w_run[q]

    __device__ WeightOperands(const real_t* dy, const real_t* x,
                              const ConvGeometry& g,
                              int t_begin, int t_end)
        : geometry(g), col0(blockIdx.x * BN) {
        const int P = g.OH * g.OW, RS = g.R * g.S, C4 = (g.C + 3) & ~3, HW = g.H * g.W;
        const int kk = thread_kk(), group = thread_group();
        H = g.H;
        W = g.W;
        // where the thread's reduction index starts, and the step TILE_K in (n, oh, ow)
        const int tb = t_begin + kk;
        left = t_end - tb;
        const int n = divide(tb, g.p_magic, g.p_shift), p = tb - n * P;
        const int oh = divide(p, g.ow_magic, g.ow_shift), ow = p - oh * g.OW;
        const int d_n = divide(TILE_K, g.p_magic, g.p_shift), d_p = TILE_K - d_n * P;
        const int d_oh = divide(d_p, g.ow_magic, g.ow_shift), d_ow = d_p - d_oh * g.OW;
        w_step = d_ow * g.sw;
        w_span = g.OW * g.sw;
        h_step = d_oh * g.sh;
        h_step_row = h_step + g.sh;
        h_span = g.OH * g.sh;
        x_step = d_n * g.C * HW + h_step * g.W + w_step;
        x_row = g.sh * g.W - w_span;
        x_image = g.C * HW - h_span * g.W;
        dy_step = TILE_K + d_n * (g.K - 1) * P;
        dy_image = (g.K - 1) * P;
        // may point outside x or dy (a window over the border, an index past the slice):
        // read only where inside
        x_at = reread(x + (n * g.C * HW + oh * g.sh * g.W + ow * g.sw - (g.pt * g.W + g.pl)));
        // B: run q holds columns q BN / RUNS + 4 group .. + 3 of the tile
        int h0 = 0, w0 = 0;
#pragma unroll
        for (int q = 0; q < RUNS; ++q) {
            int j = col0 + q * (BN / RUNS) + RUN * group;
            if (j >= RS * C4) j = 0;  // a run past the GEMM's columns: read, never written
            const int rs = j / C4, c = j - rs * C4;  // once a thread
            const int r = divide(rs, g.s_magic, g.s_shift), s = rs - r * g.S;
            const int hq = r - g.pt, wq = s - g.pl;
            if (q == 0) {
                h0 = hq;
                w0 = wq;
            }
            h_run[q] = hq - h0;
            w_run[q] = wq - w0;
#pragma unroll
            for (int e = 0; e < RUN; ++e)
                b_offset[q * RUN + e] = min(c + e, g.C - 1) * HW + r * g.W + s;
        }
        h = oh * g.sh + h0;
        w = ow * g.sw + w0;
        w_limit = w_span + w0;
        h_limit = h_span + h0;
        // A: rows past K read row K - 1 (their sums are never written)
        const int row0 = blockIdx.y * BM;
        if constexpr (kPackedDy) {
            a_lead = kk % VECA;
#pragma unroll
            for (int i = 0; i < PACKS; ++i) {
                const int k = row0 + VECA * group + a_lead + VECA * GROUPS * i;
                a_offset[i] = min(k, g.K - 1) * P;
            }
        } else {
            a_lead = 0;
#pragma unroll
            for (int i = 0; i < A_PER; ++i)
                a_offset[i] = min(row0 + group + GROUPS * i, g.K - 1) * P;
        }
        dy_at = reread(dy + (n * g.K * P + p - a_lead));
    }

    // Loads through load_global (the read-only data cache): x_at and dy_at went through
    // reread, which hides that they point to global memory (and keeps the compiler
    // from folding them back into a parameter plus a 64-bit offset at every load).
    static __device__ __forceinline__ Packet<VECA> load_packet(const real_t* p) {
        Packet<VECA> v;
#ifdef __CUDA_ARCH__
        if constexpr (sizeof(real_t) == 4 && VECA == 4) {
            const float4 u = __ldg(reinterpret_cast<const float4*>(p));
            v.v[0] = u.x, v.v[1] = u.y, v.v[2] = u.z, v.v[3] = u.w;
        } else if constexpr (sizeof(real_t) == 4 && VECA == 2) {
            const float2 u = __ldg(reinterpret_cast<const float2*>(p));
            v.v[0] = u.x, v.v[1] = u.y;
        } else {  // doubles, two at a time
#pragma unroll
            for (int e = 0; e < VECA; e += 2) {
                const double2 u = __ldg(reinterpret_cast<const double2*>(p + e));
                v.v[e] = u.x, v.v[e + 1] = u.y;
            }
        }
#else
#pragma unroll
        for (int e = 0; e < VECA; ++e) v.v[e] = p[e];
#endif
        return v;
    }

    // Predicated loads (a run's and a vector's on one test), then the carry: no branch.
    __device__ void fetch(Fragment& f) {
        const bool live = left > 0;
        if constexpr (kPackedDy) {
            // the vector starts a_lead before the thread's index: inside the slice when
            // that index is (slices start and end on multiples of 4)
            const bool a_live = left + a_lead > 0;
#pragma unroll
            for (int i = 0; i < PACKS; ++i) {
                Packet<VECA> v;
                if (a_live)
                    v = load_packet(dy_at + a_offset[i]);
                else
#pragma unroll
                    for (int e = 0; e < VECA; ++e) v.v[e] = 0;
#pragma unroll
                for (int e = 0; e < VECA; ++e) f.a[i * VECA + e] = v.v[e];
            }
        } else {
#pragma unroll
            for (int i = 0; i < A_PER; ++i)
                f.a[i] = live ? load_global(dy_at + a_offset[i]) : (real_t)0;
        }
#pragma unroll
        for (int q = 0; q < RUNS; ++q) {
            const bool in = live && (unsigned)(h + h_run[q]) < H && (unsigned)(w + w_run[q]) < W;
#pragma unroll
            for (int e = 0; e < RUN; ++e)
                f.b[q * RUN + e] = in ? load_global(x_at + b_offset[q * RUN + e]) : (real_t)0;
        }
        left -= TILE_K;
        w += w_step;
        const bool next_row = w >= w_limit;
        if (next_row) w -= w_span;
        h += next_row ? h_step_row : h_step;
        const bool next_image = h >= h_limit;
        if (next_image) h -= h_span;
        // hidden again: the compiler would otherwise carry the sum of the steps as an offset
        // and rebuild each address from it, with a 64-bit sign extension a load
        x_at = reread(x_at + (x_step + (next_row ? x_row : 0) + (next_image ? x_image : 0)));
        dy_at = reread(dy_at + (dy_step + (next_image ? dy_image : 0)));
    }

    template <class ARows, class BRows>  // As[k][m], Bs[k][j]: shared arrays of any row length
    __device__ void stash(const Fragment& f, ARows As, BRows Bs) const {
        const int kk = thread_kk(), group = thread_group();
        if constexpr (kPackedDy) {
            const int first = kk - kk % VECA, row = VECA * group + kk % VECA;
#pragma unroll
            for (int i = 0; i < PACKS; ++i)
#pragma unroll
                for (int e = 0; e < VECA; ++e)
                    As[first + e][row + VECA * GROUPS * i] = f.a[i * VECA + e];
        } else {
#pragma unroll
            for (int i = 0; i < A_PER; ++i) As[kk][group + GROUPS * i] = f.a[i];
        }
#pragma unroll
        for (int q = 0; q < RUNS; ++q) {
            Packet<RUN> v;
#pragma unroll
            for (int e = 0; e < RUN; ++e) v.v[e] = f.b[q * RUN + e];
            *reinterpret_cast<Packet<RUN>*>(&Bs[kk][q * (BN / RUNS) + RUN * group]) = v;
        }
    }

    real_t* __restrict__ partial;
    // partial[z], its rows and columns from the parameter after the main loop
    __device__ GemmOut output() const {
        const ConvGeometry& g = geometry;
        const int CRS = g.C * g.R * g.S;
        return {partial + blockIdx.z * g.K * CRS, g.K, g.R * g.S * ((g.C + 3) & ~3), CRS};
    }

    // GEMM column j = (r S + s) C4 + c to dw's c R S + r S + s; a padded channel's to
    // the scratch slice past the last (once a thread, in the epilogue)
    __device__ int column_offset(int j) const {
        const ConvGeometry& g = geometry;
        const int RS = g.R * g.S, C4 = (g.C + 3) & ~3;
        const int rs = j / C4, c = j - rs * C4;
        if (c >= g.C) return (gridDim.z - blockIdx.z) * g.K * g.C * RS;
        return c * RS + rs;
    }
};

template <class Tile, bool kTF32, bool kPackedDy>
__device__ __forceinline__ void conv2d_bwd_weight_tile(const real_t* dy, const real_t* x,
                                                       real_t* partial,
                                                       const ConvGeometry& g, int chunk) {
    const int total = g.N * g.OH * g.OW;
    const int t_begin = blockIdx.z * chunk;
    const int t_end = total - t_begin < chunk ? total : t_begin + chunk;
    WeightOperands<Tile, kPackedDy> ops(dy, x, g, t_begin, t_end);
    ops.partial = partial;
    run_gemm<Tile, kTF32, false>(ops, (t_end - t_begin + TILE_K - 1) / TILE_K,
                                 (const real_t*)nullptr);
}

// `_vec`: dy read as aligned vectors (OH OW % 4 == 0 and dy aligned to 16 bytes: the
// launcher's choice, copying a misaligned dy); the others read it one element a load.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 1)
conv2d_bwd_weight(const real_t* __restrict__ dy, const real_t* __restrict__ x,
                  real_t* __restrict__ partial, const ConvGeometry g,
                  int chunk) {
    conv2d_bwd_weight_tile<TileSquare, false, false>(dy, x, partial, g, chunk);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 1)
conv2d_bwd_weight_vec(const real_t* __restrict__ dy, const real_t* __restrict__ x,
                      real_t* __restrict__ partial, const ConvGeometry g,
                      int chunk) {
    conv2d_bwd_weight_tile<TileSquare, false, true>(dy, x, partial, g, chunk);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS)
conv2d_bwd_weight_wide(const real_t* __restrict__ dy, const real_t* __restrict__ x,
                       real_t* __restrict__ partial, const ConvGeometry g,
                       int chunk) {
    conv2d_bwd_weight_tile<TileWide, false, false>(dy, x, partial, g, chunk);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS)
conv2d_bwd_weight_wide_vec(const real_t* __restrict__ dy, const real_t* __restrict__ x,
                           real_t* __restrict__ partial, const ConvGeometry g,
                           int chunk) {
    conv2d_bwd_weight_tile<TileWide, false, true>(dy, x, partial, g, chunk);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS)
conv2d_bwd_weight_tf32(const real_t* __restrict__ dy, const real_t* __restrict__ x,
                       real_t* __restrict__ partial, const ConvGeometry g,
                       int chunk) {
    conv2d_bwd_weight_tile<TileSquare, true, false>(dy, x, partial, g, chunk);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS)
conv2d_bwd_weight_tf32_vec(const real_t* __restrict__ dy, const real_t* __restrict__ x,
                           real_t* __restrict__ partial, const ConvGeometry g,
                           int chunk) {
    conv2d_bwd_weight_tile<TileSquare, true, true>(dy, x, partial, g, chunk);
}

// ---- backward weight, direct: one thread per dw element, a slice of (n,oh,ow) each --
// For few filters and short filters (K C R S small: LeNet's 6 x 25 and 16 x 150) a
// GEMM tile of 64 x 256 would be mostly padding. Thread i of the x grid owns
// dw[k][(c,r,s)] = i and sums dy[n,k,oh,ow] x[n,c,oh sh - pt + r, ow sw - pl + s]
// over the blockIdx.y-th `chunk` of the (n,oh,ow) reduction, in order, into
// partial[blockIdx.y][i]; conv2d_bwd_weight_reduce sums the slices in order. (n,oh,ow)
// advance by one per term: no division in the loop. Lanes of a warp share k mostly
// (dy reads are the same address), and read x along s.
extern "C" __global__ void __launch_bounds__(DIRECT_THREADS, 4)
conv2d_bwd_weight_direct(const real_t* __restrict__ dy, const real_t* __restrict__ x,
                         real_t* __restrict__ partial, const ConvGeometry g,
                         int chunk) {
    const int RS = g.R * g.S, CRS = g.C * RS, P = g.OH * g.OW, total = g.N * P;
    const int i = blockIdx.x * DIRECT_THREADS + threadIdx.x;
    if (i >= g.K * CRS) return;
    const int k = i / CRS, crs = i - k * CRS, c = crs / RS, rs = crs - c * RS;
    const int r = rs / g.S, s = rs - r * g.S;
    const int t_begin = blockIdx.y * chunk;
    const int t_end = total - t_begin < chunk ? total : t_begin + chunk;
    int n = t_begin / P, p = t_begin - n * P, oh = p / g.OW, ow = p - oh * g.OW;
    acc_t acc = 0;
    for (int t = t_begin; t < t_end; ++t) {
        const int h = oh * g.sh - g.pt + r, w = ow * g.sw - g.pl + s;
        if ((unsigned)h < (unsigned)g.H && (unsigned)w < (unsigned)g.W)
            acc += (acc_t)dy[(n * g.K + k) * P + oh * g.OW + ow] *
                   (acc_t)x[((n * g.C + c) * g.H + h) * g.W + w];
        if (++ow == g.OW) {
            ow = 0;
            if (++oh == g.OH) {
                oh = 0;
                ++n;
            }
        }
    }
    partial[blockIdx.y * g.K * CRS + i] = (real_t)acc;
}

// dw[i] = partial[0][i] + partial[1][i] + ... in that order, over `splits` slices.
extern "C" __global__ void conv2d_bwd_weight_reduce(const real_t* __restrict__ partial,
                                                    real_t* __restrict__ dw, int count,
                                                    int splits) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    acc_t sum = 0;
    for (int z = 0; z < splits; ++z) sum += partial[z * count + i];
    dw[i] = (real_t)sum;
}

// partial[run][k] = sum of dy[:, k] over the run-th `chunk` of its N OH OW values, one
// block per (run, k), so that a layer of 6 filters still fills a GPU;
// conv2d_bwd_weight_reduce then sums the runs in order.
#define BIAS_UNROLL 4

extern "C" __global__ void conv2d_bwd_bias(const real_t* __restrict__ dy,
                                           real_t* __restrict__ partial,
                                           const ConvGeometry g, int chunk) {
    DYNAMIC_SHARED(acc_t, scratch);
    const int k = blockIdx.y, run = blockIdx.x, P = g.OH * g.OW, total = g.N * P;
    const int begin = run * chunk, end = total - begin < chunk ? total : begin + chunk;
    const int step = blockDim.x;
    acc_t sum = 0;
    int t = begin + threadIdx.x;
    // BIAS_UNROLL loads issued before the adds that use them (a warp keeps them in
    // flight); the adds keep the plain loop's order, so the sums are bit for bit those
    // of one load at a time. t + 3 step < end: no index past the run.
    for (; t < end - (BIAS_UNROLL - 1) * step; t += BIAS_UNROLL * step) {
        acc_t v[BIAS_UNROLL];
#pragma unroll
        for (int u = 0; u < BIAS_UNROLL; ++u) {
            const int i = t + u * step, n = divide(i, g.p_magic, g.p_shift);
            v[u] = dy[(n * g.K + k) * P + i - n * P];
        }
#pragma unroll
        for (int u = 0; u < BIAS_UNROLL; ++u) sum += v[u];
    }
    for (; t < end; t += step) {
        const int n = divide(t, g.p_magic, g.p_shift);
        sum += dy[(n * g.K + k) * P + t - n * P];
    }
    const acc_t result = block_sum(sum, scratch);
    if (threadIdx.x == 0) partial[run * g.K + k] = (real_t)result;
}

// The runtime side of emulate.h: launch geometry, thread indices, the barrier.
#include <memory>

thread_local emu_dim3 threadIdx, blockIdx;
emu_dim3 blockDim, gridDim;
alignas(64) unsigned char emu_dynamic_shared[1 << 16];
static std::unique_ptr<std::barrier<>> block_barrier;

void __syncthreads() { block_barrier->arrive_and_wait(); }

extern "C" void emu_begin_block(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                unsigned bz) {
    gridDim = {gx, gy, gz};
    blockDim = {bx, by, bz};
    block_barrier = std::make_unique<std::barrier<>>(bx * by * bz);
}

extern "C" void emu_set_thread(unsigned bx, unsigned by, unsigned bz, unsigned tx, unsigned ty,
                               unsigned tz) {
    blockIdx = {bx, by, bz};
    threadIdx = {tx, ty, tz};
}

// The runtime side of emulate.h: a grid launched block by block, each block's
// threads run as fibers on the calling OS thread.
//
// Why fibers: one OS thread per CUDA thread costs a thread start per CUDA thread
// and a kernel-mode wake-up per barrier. A fiber switch on x86-64 is the dozen
// instructions of emu_switch below; elsewhere it is swapcontext, which also
// saves the signal mask with two system calls (a conv2d backward of 6.5 million
// switches: 4.7 s with swapcontext). The scheduler resumes each thread in
// turn until all of them wait at the barrier (then releases it) or have
// returned. A barrier that some threads reach while others have returned is a
// divergent __syncthreads: undefined on a GPU, an error here. The order in which
// threads run flips on alternate launches (`reverse`), so a kernel whose result
// depends on the order of its threads gives different results on two runs.
#include <sys/mman.h>
#include <ucontext.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <vector>

emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
unsigned char* emu_dynamic_shared = nullptr;

namespace {

enum State { READY, AT_BARRIER, DONE };

constexpr size_t STACK_BYTES = 64 * 1024;

#if defined(__x86_64__)
// emu_switch(&from, to): saves the callee-saved registers, SSE and x87 control
// words on the current stack, stores its pointer in *from, and resumes the
// stack `to` saved the same way.
extern "C" void emu_switch(void** from, void* to);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size emu_switch, .-emu_switch
)");

struct Context {
    void* sp = nullptr;
};

void fiber_main();

[[noreturn]] void fiber_entry() {
    fiber_main();
    __builtin_unreachable();
}

// A fresh stack that emu_switch "returns" into fiber_entry from, aligned as
// the ABI wants at a function's entry.
void prepare(Context& context, char* stack) {
    auto top = reinterpret_cast<uintptr_t>(stack + STACK_BYTES) & ~uintptr_t(15);
    auto* slot = reinterpret_cast<uint64_t*>(top) - 1;  // a dummy return address: rsp = 8 mod 16
    *--slot = reinterpret_cast<uint64_t>(&fiber_entry);
    for (int i = 0; i < 6; ++i) *--slot = 0;  // rbp rbx r12 r13 r14 r15
    uint32_t csr[2];
    csr[1] = 0;
    asm volatile("stmxcsr %0; fnstcw %1" : "=m"(csr[0]), "=m"(csr[1]));
    *--slot = uint64_t(csr[0]) | (uint64_t(csr[1]) << 32);
    context.sp = slot;
}

void switch_to(Context& from, Context& to) { emu_switch(&from.sp, to.sp); }
#else
struct Context {
    ucontext_t uc;
};

void fiber_main();

void prepare(Context& context, char* stack) {
    getcontext(&context.uc);
    context.uc.uc_stack.ss_sp = stack;
    context.uc.uc_stack.ss_size = STACK_BYTES;
    context.uc.uc_link = nullptr;
    makecontext(&context.uc, fiber_main, 0);
}

void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

struct Fiber {
    Context context;
    emu_dim3 index;
    State state;
};

Context scheduler;
std::vector<Fiber> fibers;
std::vector<char*> stacks;
Fiber* current = nullptr;
void (*current_thunk)(void**) = nullptr;
void** current_args = nullptr;
char error_message[256];

void fiber_main() {
    current_thunk(current_args);
    current->state = DONE;
    switch_to(current->context, scheduler);  // never resumed: the next block prepares it anew
}

// Runs one block; returns false (with error_message set) on a divergent barrier.
bool run_block(unsigned count, bool reverse) {
    for (unsigned t = 0; t < count; ++t) {
        Fiber& f = fibers[t];
        prepare(f.context, stacks[t]);
        f.index = {t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
        f.state = READY;
    }
    for (;;) {
        unsigned waiting = 0, done = 0;
        for (unsigned i = 0; i < count; ++i) {
            Fiber& f = fibers[reverse ? count - 1 - i : i];
            if (f.state == READY) {
                threadIdx = f.index;
                current = &f;
                switch_to(scheduler, f.context);
            }
            waiting += f.state == AT_BARRIER;
            done += f.state == DONE;
        }
        if (done == count) return true;
        if (waiting == count) {
            for (unsigned t = 0; t < count; ++t) fibers[t].state = READY;
            continue;
        }
        std::snprintf(error_message, sizeof error_message,
                      "divergent __syncthreads in block (%u, %u, %u): %u thread(s) wait at a "
                      "barrier that %u thread(s) of the block never reach (they returned)",
                      blockIdx.x, blockIdx.y, blockIdx.z, waiting, done);
        return false;
    }
}

}  // namespace

void __syncthreads() {
    Fiber* self = current;
    self->state = AT_BARRIER;
    switch_to(self->context, scheduler);
}

// Runs `thunk(args)` as every thread of a (gx, gy, gz) grid of (bx, by, bz) blocks
// with `shared_bytes` of dynamic shared memory, filled with 0xff bytes (NaN for
// floats) before each block so that reading it before writing shows. Returns
// nullptr, or the reason the launch failed.
extern "C" const char* emu_launch(void (*thunk)(void**), void** args, unsigned gx, unsigned gy,
                                  unsigned gz, unsigned bx, unsigned by, unsigned bz,
                                  size_t shared_bytes, int reverse) {
    unsigned count = bx * by * bz;
    if (fibers.size() < count) fibers.resize(count);
    while (stacks.size() < count) {
        // A PROT_NONE page below each stack: an overflow faults instead of
        // silently overwriting the next thread's stack.
        void* region = mmap(nullptr, STACK_BYTES + 4096, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (region == MAP_FAILED) return "cannot allocate the emulator's thread stacks";
        mprotect(region, 4096, PROT_NONE);
        stacks.push_back(static_cast<char*>(region) + 4096);
    }
    std::vector<unsigned char> shared(shared_bytes ? shared_bytes : 1);
    emu_dynamic_shared = shared.data();
    gridDim = {gx, gy, gz};
    blockDim = {bx, by, bz};
    current_thunk = thunk;
    current_args = args;
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                blockIdx = {x, y, z};
                std::memset(shared.data(), 0xff, shared.size());
                if (!run_block(count, reverse != 0)) return error_message;
            }
    emu_dynamic_shared = nullptr;
    return nullptr;
}

// EMU_THUNK(kernel) defines `extern "C" void emu_thunk_<kernel>(void** args)`,
// which calls the kernel with its arguments read from args[i] as the types the
// kernel declares: the layout of cuLaunchKernel's kernelParams.
#pragma once
#include <type_traits>
#include <utility>

template <class... P, std::size_t... I>
void emu_call(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<P>*>(args[I])...);
}

template <class... P>
void emu_call(void (*kernel)(P...), void** args) {
    emu_call(kernel, args, std::index_sequence_for<P...>{});
}

#define EMU_THUNK(kernel) \
    extern "C" void emu_thunk_##kernel(void** args) { emu_call(kernel, args); }

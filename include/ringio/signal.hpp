// wait_signal(): wait for SIGINT, SIGTERM, ... as an awaitable (loop.add_signal_handler).
#pragma once

#include <array>
#include <cstddef>
#include <span>
#include <type_traits>

#include "ringio/task.hpp"

namespace ringio {

/// Up to 8 signal numbers, written as a braced list: wait_signal({SIGINT, SIGTERM}).
/// (Not std::initializer_list: GCC 12 miscompiles its backing array inside coroutines.)
class signal_set {
public:
    template <class... S>
        requires(sizeof...(S) >= 1 && sizeof...(S) <= 8 && (std::is_convertible_v<S, int> && ...))
    signal_set(S... signals) noexcept : sigs_{static_cast<int>(signals)...}, n_(sizeof...(S)) {}

    [[nodiscard]] std::span<const int> signals() const noexcept { return {sigs_.data(), n_}; }

private:
    std::array<int, 8> sigs_{};
    std::size_t n_;
};

/// Completes with the number of the first of `signals` that arrives. The signals are blocked
/// in the loop's thread from the first call until the loop is destroyed and read through a
/// signalfd on the ring, so one that arrives while nobody waits stays pending for the next
/// wait_signal() instead of killing the process. ringio's own threads block all signals; block
/// these in threads you start yourself, or the kernel may deliver them there.
/// Throws std::system_error if the signalfd cannot be created, std::invalid_argument for an
/// invalid signal number.
/// Cancel safety: safe; a signal is consumed only when wait_signal returns it.
///
///   int sig = co_await ringio::wait_signal({SIGINT, SIGTERM});
task<int> wait_signal(signal_set signals);

}  // namespace ringio

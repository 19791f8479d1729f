// wait_signal(): wait for SIGINT, SIGTERM, ... as an awaitable (loop.add_signal_handler).
#pragma once

#include <initializer_list>

#include "ringio/task.hpp"

namespace ringio {

/// Completes with the number of the first of `signals` that arrives. The signals are blocked
/// in the loop's thread from the first call until the loop is destroyed and read through a
/// signalfd on the ring, so one that arrives while nobody waits stays pending for the next
/// wait_signal() instead of killing the process. ringio's own threads block all signals; block
/// these in threads you start yourself, or the kernel may deliver them there.
/// Throws std::system_error if the signalfd cannot be created, std::invalid_argument for an
/// empty or invalid set.
/// Cancel safety: safe; a signal is consumed only when wait_signal returns it.
///
///   int sig = co_await ringio::wait_signal({SIGINT, SIGTERM});
task<int> wait_signal(std::initializer_list<int> signals);

}  // namespace ringio

// The loop's io_uring, set up with the best flags the kernel accepts. Private to the runtime:
// only the loop and this file see liburing's ring (the epoll backend is runtime/reactor.hpp).
#pragma once

#include <liburing.h>

#include <string>
#include <system_error>

#include "ringio/event_loop.hpp"

namespace ringio::detail {

class ring {
public:
    ring(const loop_options& options, ring_features& features);
    ~ring();
    ring(const ring&) = delete;
    ring& operator=(const ring&) = delete;

    io_uring raw{};
};

/// Why io_uring_setup failed with `err`, and what to do about it.
std::string setup_error_cause(int err);
/// The message for a failed io_uring_setup: "ringio: cannot set up io_uring: CAUSE".
std::string setup_error_message(int err);

/// Thrown by ring's constructor: io_uring cannot be used here (setup failed, or a first
/// operation could not run). cause() is the reason without the "ringio: ..." prefix.
class ring_unavailable : public std::system_error {
public:
    ring_unavailable(int err, std::string cause);
    [[nodiscard]] const std::string& cause() const noexcept { return cause_; }

private:
    std::string cause_;
};

}  // namespace ringio::detail

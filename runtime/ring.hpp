// The loop's io_uring, set up with the best flags the kernel accepts. Private to the runtime:
// keeping liburing behind this file leaves room for a readiness (epoll) backend later.
#pragma once

#include <liburing.h>

#include <string>

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

/// The message for a failed io_uring_setup: names the cause and what to do about it.
std::string setup_error_message(int err);

}  // namespace ringio::detail

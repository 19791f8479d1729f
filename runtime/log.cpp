#include "ringio/log.hpp"

#include <mutex>
#include <utility>
#include <cstdio>

namespace ringio {
namespace {

void default_handler(log_level level, std::string_view message) {
    fmt::print(stderr, "ringio: {}: {}\n", level == log_level::error ? "error" : "warning", message);
}

std::mutex handler_mutex;
log_handler& handler() {
    static log_handler h = default_handler;
    return h;
}

}  // namespace

log_handler set_log_handler(log_handler h) {
    std::lock_guard lock(handler_mutex);
    return std::exchange(handler(), std::move(h));
}

void log(log_level level, std::string_view message) noexcept {
    std::lock_guard lock(handler_mutex);
    try {
        if (auto& h = handler()) h(level, message);
    } catch (...) {
    }
}

}  // namespace ringio

// The library's single logging hook. ringio prints nothing except through it.
#pragma once

#include <functional>
#include <string_view>

#include <fmt/format.h>

namespace ringio {

enum class log_level { warning, error };

/// Receives one line per event: a task whose exception nobody retrieved, a connection handler
/// that threw, accept back-off. The default handler writes "ringio: LEVEL: MESSAGE" to stderr.
using log_handler = std::function<void(log_level, std::string_view)>;

/// Replaces the handler (for every thread); an empty function silences the library. Returns the
/// previous handler. Not meant to be called while loops on other threads are logging.
log_handler set_log_handler(log_handler handler);

/// Sends one line to the current handler. Never throws: logging runs on paths that must not
/// fail (completions, destructors), so a handler that throws, or a line that cannot be
/// formatted for lack of memory, is dropped.
void log(log_level level, std::string_view message) noexcept;

template <class... Args>
void log(log_level level, fmt::format_string<Args...> format, Args&&... args) noexcept {
    try {
        log(level, std::string_view(fmt::format(format, std::forward<Args>(args)...)));
    } catch (...) {
    }
}

}  // namespace ringio

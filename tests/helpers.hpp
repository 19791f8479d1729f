// Test helpers: a counter of live objects (put one in a coroutine frame to see it freed) and
// a count of this process's open file descriptors.
#pragma once

#include <dirent.h>

#include <cstddef>
#include <cstdlib>
#include <string_view>

#include <doctest/doctest.h>

#include <ringio/event_loop.hpp>

namespace test {

/// Counts instances alive; a `counted c;` local in a coroutine tracks that frame's lifetime.
struct counted {
    static inline long live = 0;
    counted() noexcept { ++live; }
    counted(const counted&) noexcept { ++live; }
    counted& operator=(const counted&) = default;
    ~counted() { --live; }
};

/// Entries in /proc/self/fd (minus the one opendir uses).
inline std::size_t open_fds() {
    std::size_t n = 0;
    if (DIR* d = ::opendir("/proc/self/fd")) {
        while (::readdir(d)) ++n;
        ::closedir(d);
        n -= 3;  // ".", ".." and the directory's own fd
    }
    return n;
}

/// True (and a message says so) when this test runs on the epoll backend: for tests of what
/// only io_uring has (its features, kernel timeouts, raw SQEs, provided buffer rings, multishot).
inline bool skip_on_epoll(std::string_view what) {
    bool epoll;
    if (ringio::event_loop* loop = ringio::event_loop::current()) {
        epoll = loop->backend() == ringio::backend_kind::epoll;
    } else {
        const char* b = std::getenv("RINGIO_BACKEND");
        epoll = b && std::string_view(b) == "epoll";
    }
    if (epoll) MESSAGE("skipped on the epoll backend: " << what);
    return epoll;
}

}  // namespace test

// Test helpers: a counter of live objects (put one in a coroutine frame to see it freed) and
// a count of this process's open file descriptors.
#pragma once

#include <dirent.h>

#include <cstddef>

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

}  // namespace test

// Helpers for the stress tests (tests/stress_*.cpp): a seeded PRNG whose seed is printed, the
// file-descriptor limit raised to its hard limit, heap and RSS figures, and whether the build is
// sanitized (sanitized builds run smaller counts, each documented where it is chosen).
#pragma once

#include <doctest/doctest.h>

#include <malloc.h>
#include <sys/resource.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#if defined(__SANITIZE_ADDRESS__)
#define RINGIO_STRESS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RINGIO_STRESS_ASAN 1
#endif
#endif
// ThreadSanitizer replaces malloc too (mallinfo2 then reports nothing): the heap is counted
// through the sanitizer's allocator, as under AddressSanitizer.
#if defined(RINGIO_STRESS_ASAN) || defined(__SANITIZE_THREAD__)
#define RINGIO_STRESS_SANITIZER_HEAP 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define RINGIO_STRESS_SANITIZER_HEAP 1
#endif
#endif
#ifdef RINGIO_STRESS_SANITIZER_HEAP
// From <sanitizer/allocator_interface.h>, which not every distribution installs with g++.
extern "C" std::size_t __sanitizer_get_current_allocated_bytes(void);
#endif

namespace stress {

/// True in AddressSanitizer builds (about 5-20x slower): the tests then use smaller counts.
#ifdef RINGIO_STRESS_ASAN
inline constexpr bool sanitized = true;
#else
inline constexpr bool sanitized = false;
#endif

/// The seed for a test's PRNG: $RINGIO_STRESS_SEED if set (to replay a failure), else a random
/// one. Printed either way, so a failing run can be repeated.
inline std::uint64_t seed(const char* test) {
    std::uint64_t s;
    if (const char* env = std::getenv("RINGIO_STRESS_SEED"))
        s = std::strtoull(env, nullptr, 0);
    else
        s = (std::uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
    std::fprintf(stderr, "%s: seed %llu (replay with RINGIO_STRESS_SEED=%llu)\n", test,
                 static_cast<unsigned long long>(s), static_cast<unsigned long long>(s));
    return s;
}

/// Raises RLIMIT_NOFILE's soft limit to the hard one (a soft limit of 1024 is common); returns
/// the soft limit now in force.
inline std::size_t raise_fd_limit() {
    rlimit r{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &r) == 0);
    if (r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        REQUIRE(::setrlimit(RLIMIT_NOFILE, &r) == 0);
    }
    return static_cast<std::size_t>(r.rlim_cur);
}

/// Bytes of heap in use (malloc'ed and not freed, mmapped blocks included), or under ASan (whose
/// allocator replaces malloc) the sanitizer's count.
inline std::size_t heap_in_use() {
#ifdef RINGIO_STRESS_SANITIZER_HEAP
    return __sanitizer_get_current_allocated_bytes();
#else
    struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;  // hblkhd: blocks above the mmap threshold (128 KiB and up)
#endif
}

/// Returns free heap memory to the system where it can (so RSS figures mean something).
inline void trim_heap() {
#ifndef RINGIO_STRESS_SANITIZER_HEAP
    ::malloc_trim(0);
#endif
}

/// The resident set size (VmRSS) of this process, or of process `pid` (a server the test
/// started), in bytes; 0 if unknown.
inline std::size_t rss_bytes(pid_t pid = 0) {
    char path[64] = "/proc/self/status";
    if (pid > 0) std::snprintf(path, sizeof path, "/proc/%d/status", static_cast<int>(pid));
    std::FILE* f = std::fopen(path, "r");
    if (!f) return 0;
    char line[256];
    std::size_t kib = 0;
    while (std::fgets(line, sizeof line, f))
        if (std::strncmp(line, "VmRSS:", 6) == 0) kib = std::strtoull(line + 6, nullptr, 10);
    std::fclose(f);
    return kib * 1024;
}

/// The byte at `offset` of stream number `id`: depends on both, and on the offset's higher bits,
/// so that a lost, repeated or reordered chunk shows.
inline unsigned char pattern(std::uint64_t id, std::uint64_t offset) noexcept {
    std::uint64_t x = (offset >> 6) * 0x9E3779B97F4A7C15ull ^ (id * 0xBF58476D1CE4E5B9ull);
    x ^= x >> 29;
    return static_cast<unsigned char>(x + offset);
}

/// Fills `out` with stream `id`'s bytes from `offset` on.
inline void fill_pattern(std::uint64_t id, std::uint64_t offset, unsigned char* out, std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) out[i] = pattern(id, offset + i);
}

/// The index of the first byte of `data` that differs from stream `id` at `offset`, or n.
inline std::size_t check_pattern(std::uint64_t id, std::uint64_t offset, const unsigned char* data, std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i)
        if (data[i] != pattern(id, offset + i)) return i;
    return n;
}

}  // namespace stress

#include "ringio/detail/frame_cache.hpp"

#include <array>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define RINGIO_NO_FRAME_CACHE 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RINGIO_NO_FRAME_CACHE 1
#endif
#endif

namespace ringio::detail {
namespace {

// Size classes of 16 bytes (malloc's own granule) up to 2 KiB cover the frames of ordinary
// coroutines; bigger frames go straight to operator new. Finer classes cost nothing on the hot
// path and save what rounding up wastes in every frame a waiting connection keeps alive (with
// 64-byte classes, about 150 bytes per idle echo_server connection). A class's blocks are 8
// bytes short of a multiple of 16, because glibc's malloc adds an 8-byte header and rounds the
// sum up to 16: a 56-byte Task state then takes a 64-byte chunk, where a 64-byte block took 80.
// Each class keeps at most max_cached blocks so that a burst of a million tasks does not pin its
// memory forever.
constexpr std::size_t granule = 16;
constexpr std::size_t classes = 128;
constexpr std::size_t max_cached = 4096;

struct free_block {
    free_block* next;
};

// Set when this thread's cache is destroyed (thread exit, or exit() for the main thread): frames
// created or destroyed after that, from a static destructor say, bypass the cache.
constinit thread_local bool cache_gone = false;

struct cache {
    std::array<free_block*, classes> heads{};
    std::array<std::size_t, classes> counts{};

    ~cache() {
        cache_gone = true;
        for (auto*& head : heads) {
            while (head) {
                free_block* next = head->next;
                ::operator delete(head);
                head = next;
            }
        }
    }
};

thread_local cache tls_cache;

// Blocks handed out and not yet freed on this thread (see live_frames()). A plain
// constant-initialized thread_local: one increment or decrement, no TLS guard.
thread_local std::size_t tls_live = 0;

constexpr std::size_t header = 8;  // malloc's, per chunk
// Class c holds blocks of block_size(c) bytes: the largest that fit a malloc chunk of (c+1)*16.
constexpr std::size_t class_of(std::size_t n) noexcept { return (n + header + granule - 1) / granule - 1; }
constexpr std::size_t block_size(std::size_t c) noexcept { return (c + 1) * granule - header; }
static_assert(block_size(class_of(56)) == 56 && block_size(class_of(57)) == 72 && class_of(1) == 0);

}  // namespace

void* frame_alloc(std::size_t n) {
#ifdef RINGIO_NO_FRAME_CACHE
    // Under ASan every frame goes back to the allocator so that use-after-free is caught.
    void* p = ::operator new(n);
#else
    std::size_t c = class_of(n);
    void* p;
    if (c >= classes || cache_gone) {
        p = ::operator new(n);
    } else if (cache& k = tls_cache; free_block* b = k.heads[c]) {
        k.heads[c] = b->next;
        --k.counts[c];
        p = b;
    } else {
        p = ::operator new(block_size(c));
    }
#endif
    ++tls_live;  // after the allocation, which may throw
    return p;
}

void frame_free(void* p, std::size_t n) noexcept {
    --tls_live;
#ifdef RINGIO_NO_FRAME_CACHE
    ::operator delete(p, n);
    return;
#endif
    std::size_t c = class_of(n);
    if (c >= classes || cache_gone) {
        ::operator delete(p);
        return;
    }
    cache& k = tls_cache;
    if (k.counts[c] >= max_cached) {
        ::operator delete(p);
        return;
    }
    auto* b = static_cast<free_block*>(p);
    b->next = k.heads[c];
    k.heads[c] = b;
    ++k.counts[c];
}

std::size_t live_frames() noexcept { return tls_live; }

}  // namespace ringio::detail

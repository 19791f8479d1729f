#include "ringio/detail/buffer_ring.hpp"

#include <sys/mman.h>

#include <cstring>
#include <system_error>

#include "ring.hpp"

namespace ringio::detail {

buffer_ring::buffer_ring(loop_core& loop, unsigned count, std::size_t size, bool prefault)
    : loop_(&loop), size_(size), count_(count) {
    if (count == 0 || (count & (count - 1)) != 0 || count > 32768)
        throw std::invalid_argument("ringio: buffer ring size must be a power of two up to 32768");
    // Everything that can fail before the group is registered, so that a failure leaks nothing.
    data_ = std::make_unique_for_overwrite<std::byte[]>(count * size);
    if (loop.backend() == backend_kind::epoll) {
        // In userspace: the reactor takes the free buffers (no kernel object, no group id).
        free_.reserve(count);
        for (unsigned i = count; i-- > 0;) free_.push_back(static_cast<std::uint16_t>(i));
        if (prefault) std::memset(data_.get(), 0, count * size);
        loop_ = nullptr;
        return;
    }
    ring_bytes_ = count * sizeof(io_uring_buf);
    void* mem = ::mmap(nullptr, ring_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED) throw make_system_error(errno, "ringio: mmap for a buffer ring");
    try {
        group_ = loop.acquire_buffer_group();
    } catch (...) {
        ::munmap(mem, ring_bytes_);
        throw;
    }
    ring_ = static_cast<io_uring_buf_ring*>(mem);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uint64_t>(mem);
    reg.ring_entries = count;
    reg.bgid = group_;
    int rc = io_uring_register_buf_ring(&loop.ring_->raw, &reg, 0);
    if (rc < 0) {
        ::munmap(mem, ring_bytes_);
        loop.release_buffer_group(group_);
        throw make_system_error(-rc, "ringio: io_uring_register_buf_ring");
    }
    io_uring_buf_ring_init(ring_);
    if (prefault) std::memset(data_.get(), 0, count * size);
    int mask = io_uring_buf_ring_mask(count);
    for (unsigned i = 0; i < count; ++i)
        io_uring_buf_ring_add(ring_, buffer(static_cast<std::uint16_t>(i)), static_cast<unsigned>(size),
                              static_cast<unsigned short>(i), mask, static_cast<int>(i));
    io_uring_buf_ring_advance(ring_, static_cast<int>(count));
}

buffer_ring::~buffer_ring() {
    detach();
    if (ring_) ::munmap(ring_, ring_bytes_);
}

void buffer_ring::detach() noexcept {
    if (!loop_) return;
    io_uring_unregister_buf_ring(&loop_->ring_->raw, group_);
    loop_->release_buffer_group(group_);
    loop_ = nullptr;
}

void buffer_ring::recycle(std::uint16_t id) noexcept {
    if (ring_) {
        io_uring_buf_ring_add(ring_, buffer(id), static_cast<unsigned>(size_), id, io_uring_buf_ring_mask(count_), 0);
        io_uring_buf_ring_advance(ring_, 1);
    } else {
        free_.push_back(id);  // (reserved: never allocates)
    }
    ++recycled_;
    // Every waiter tries again: waking only one loses the wake-up when that one finds EOF and
    // takes no buffer. Those that lose the race wait again (the ring runs dry only under load).
    // (ready() only queues a new receive; it never waits again synchronously.)
    while (buffer_waiter* w = waiters_.pop_front()) w->ready(w);
}

}  // namespace ringio::detail

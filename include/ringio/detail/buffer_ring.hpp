// A ring of provided buffers (io_uring_register_buf_ring): the kernel picks a free buffer
// when data arrives, so a receive needs no buffer of its own per operation. On the epoll
// backend the same ring lives in userspace: the reactor picks the free buffer (take_free()), so
// streams work the same way on both backends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "ringio/detail/intrusive_list.hpp"

struct io_uring_buf_ring;

namespace ringio::detail {
class loop_core;
}

namespace ringio::detail {

/// Someone waiting for a buffer to come back to the ring (after a receive ended in ENOBUFS).
struct buffer_waiter : list_node {
    void (*ready)(buffer_waiter*) noexcept = nullptr;
};

class buffer_ring {
public:
    /// Registers `count` (a power of two, <= 32768) buffers of `size` bytes under a buffer
    /// group id unique in `loop` (ids of rings freed before are reused). With `prefault`, the memory is touched now, so that it is
    /// resident from the start instead of growing as the kernel cycles through the buffers.
    /// Throws std::system_error if the kernel refuses.
    buffer_ring(loop_core& loop, unsigned count, std::size_t size, bool prefault = false);
    ~buffer_ring();  // unregisters and gives the id back (unless detached): no operation may use the group any more
    buffer_ring(const buffer_ring&) = delete;
    buffer_ring& operator=(const buffer_ring&) = delete;

    [[nodiscard]] std::uint16_t group() const noexcept { return group_; }
    [[nodiscard]] std::size_t buffer_size() const noexcept { return size_; }
    [[nodiscard]] unsigned count() const noexcept { return count_; }
    [[nodiscard]] std::byte* buffer(std::uint16_t id) const noexcept { return data_.get() + id * size_; }
    /// Gives buffer `id` back to the kernel (or the userspace ring), and wakes every waiter.
    void recycle(std::uint16_t id) noexcept;
    /// The epoll backend: a free buffer's id, taken (as the kernel would take it), or -1.
    int take_free() noexcept {
        if (free_.empty()) return -1;
        int id = free_.back();
        free_.pop_back();
        return id;
    }
    /// The epoll backend: gives back a buffer take_free() gave that a receive did not fill.
    void untake(std::uint16_t id) noexcept { free_.push_back(id); }
    [[nodiscard]] bool in_userspace() const noexcept { return ring_ == nullptr; }

    /// Records that a completion handed buffer `id` to us (for in_use()).
    void taken() noexcept { ++taken_; }
    /// How many buffers were given back so far (wrapping): tells whether any came back since.
    [[nodiscard]] std::uint32_t recycled() const noexcept { return recycled_; }
    /// Buffers handed to us by completions and not given back yet.
    [[nodiscard]] std::uint32_t in_use() const noexcept { return taken_ - recycled_; }
    /// How many receives found the ring dry (ended with ENOBUFS), as its owners report them.
    [[nodiscard]] std::uint64_t exhausted() const noexcept { return exhausted_; }
    void ran_dry() noexcept { ++exhausted_; }
    /// `w->ready` runs (once) when the next buffer is given back; it must not wait again at once.
    void wait(buffer_waiter* w) noexcept { waiters_.push_back(w); }
    static void cancel_wait(buffer_waiter* w) noexcept {
        if (w->linked()) intrusive_list<buffer_waiter>::erase(w);
    }

    /// Unregisters the group now, while the loop is alive; owners that outlive the loop may
    /// still recycle (into memory the kernel no longer reads) and destroy the ring safely.
    void detach() noexcept;

private:
    loop_core* loop_;
    io_uring_buf_ring* ring_ = nullptr;
    std::size_t ring_bytes_ = 0;
    std::unique_ptr<std::byte[]> data_;
    std::size_t size_;
    unsigned count_;
    std::uint16_t group_ = 0;
    intrusive_list<buffer_waiter> waiters_;
    std::vector<std::uint16_t> free_;  // the epoll backend's free buffers (capacity: count)
    std::uint32_t recycled_ = 0;
    std::uint32_t taken_ = 0;
    std::uint64_t exhausted_ = 0;
};

}  // namespace ringio::detail

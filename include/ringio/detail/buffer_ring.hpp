// A ring of provided buffers (io_uring_register_buf_ring): the kernel picks a free buffer
// when data arrives, so a multishot receive needs no buffer of its own per operation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

struct io_uring_buf_ring;

namespace ringio {
class event_loop;
}

namespace ringio::detail {

class buffer_ring {
public:
    /// Registers `count` (a power of two, <= 32768) buffers of `size` bytes under a buffer
    /// group id unique in `loop`. Throws std::system_error if the kernel refuses.
    buffer_ring(event_loop& loop, unsigned count, std::size_t size);
    ~buffer_ring();  // unregisters: no operation may be using the group any more
    buffer_ring(const buffer_ring&) = delete;
    buffer_ring& operator=(const buffer_ring&) = delete;

    [[nodiscard]] std::uint16_t group() const noexcept { return group_; }
    [[nodiscard]] std::size_t buffer_size() const noexcept { return size_; }
    [[nodiscard]] unsigned count() const noexcept { return count_; }
    [[nodiscard]] std::byte* buffer(std::uint16_t id) const noexcept { return data_.get() + id * size_; }
    /// Gives buffer `id` back to the kernel.
    void recycle(std::uint16_t id) noexcept;

private:
    event_loop& loop_;
    io_uring_buf_ring* ring_ = nullptr;
    std::size_t ring_bytes_ = 0;
    std::unique_ptr<std::byte[]> data_;
    std::size_t size_;
    unsigned count_;
    std::uint16_t group_;
};

}  // namespace ringio::detail

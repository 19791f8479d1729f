// Growable FIFO on a power-of-two array: the ready queue. The loop reserves room before it can
// be needed (one entry per live Task), so pushing from a completion never allocates.
#pragma once

#include <cassert>
#include <cstddef>
#include <memory>
#include <utility>

namespace ringio::detail {

template <class T>
class ring_buffer {
public:
    ring_buffer() = default;
    ring_buffer(const ring_buffer&) = delete;
    ring_buffer& operator=(const ring_buffer&) = delete;

    [[nodiscard]] bool empty() const noexcept { return head_ == tail_; }
    [[nodiscard]] std::size_t size() const noexcept { return tail_ - head_; }
    [[nodiscard]] std::size_t capacity() const noexcept { return cap_; }

    /// Room for at least n entries in all (may throw std::bad_alloc).
    void reserve(std::size_t n) {
        if (n <= cap_) return;
        std::size_t cap = cap_ ? cap_ : 256;
        while (cap < n) cap *= 2;
        grow(cap);
    }
    void push(T value) {
        if (size() == cap_) grow(cap_ ? cap_ * 2 : 256);
        push_unchecked(std::move(value));
    }
    /// Requires room (reserve()).
    void push_unchecked(T value) noexcept {
        assert(size() < cap_);
        data_[tail_++ & (cap_ - 1)] = std::move(value);
    }

    T pop() noexcept { return std::move(data_[head_++ & (cap_ - 1)]); }

private:
    void grow(std::size_t cap) {
        auto data = std::make_unique<T[]>(cap);
        for (std::size_t i = 0, n = size(); i < n; ++i) data[i] = std::move(data_[(head_ + i) & (cap_ - 1)]);
        tail_ = size();
        head_ = 0;
        data_ = std::move(data);
        cap_ = cap;
    }

    std::unique_ptr<T[]> data_;
    std::size_t cap_ = 0;
    std::size_t head_ = 0;  // monotonically increasing; masked on access
    std::size_t tail_ = 0;
};

}  // namespace ringio::detail

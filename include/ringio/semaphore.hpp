// semaphore: a counter tasks can wait on (asyncio.Semaphore).
#pragma once

#include <cstddef>

#include "ringio/detail/wait_queue.hpp"

namespace ringio {

/// acquire() takes one unit, waiting while there is none; release() gives one back, handing it
/// to the longest waiter first (FIFO fairness: a new arrival never overtakes a waiter).
class semaphore {
public:
    explicit semaphore(std::size_t initial = 1) noexcept : value_(initial) {}
    semaphore(const semaphore&) = delete;
    semaphore& operator=(const semaphore&) = delete;

    /// True when acquire() would wait.
    [[nodiscard]] bool locked() const noexcept { return value_ == 0 || !waiters_.empty(); }
    [[nodiscard]] std::size_t value() const noexcept { return value_; }

    bool try_acquire() noexcept {
        if (locked()) return false;
        --value_;
        return true;
    }

    /// Cancel safety: safe. Cancelled while waiting: cancelled_error and no unit is taken;
    /// cancelled after a unit was handed over: the unit is held and the cancellation is raised
    /// at the task's next suspension point.
    [[nodiscard]] auto acquire() noexcept { return awaiter{*this}; }

    void release() noexcept {
        if (detail::waiter* w = waiters_.front())
            w->grant();  // the unit goes straight to the waiter
        else
            ++value_;
    }

private:
    struct awaiter : detail::waiter {
        semaphore& s;
        explicit awaiter(semaphore& sem) noexcept : s(sem) {}
        bool await_ready() noexcept { return s.try_acquire(); }
        bool await_suspend(std::coroutine_handle<> caller) { return park(s.waiters_, caller); }
        void await_resume() { resume(); }
    };

    detail::intrusive_list<detail::waiter> waiters_;
    std::size_t value_;
};

}  // namespace ringio

// condition: wait for a notification while holding a mutex (asyncio.Condition).
#pragma once

#include <cstddef>
#include <limits>

#include "ringio/detail/wait_queue.hpp"
#include "ringio/mutex.hpp"
#include "ringio/task.hpp"

namespace ringio {

/// A condition variable for tasks. It uses the mutex given to it (or one of its own); wait()
/// and notify() must be called with that mutex held.
///
///   auto guard = co_await cond.scoped_lock();
///   co_await cond.wait_for([&] { return !items.empty(); });
class condition {
public:
    condition() noexcept : m_(&own_) {}
    explicit condition(mutex& m) noexcept : m_(&m) {}
    condition(const condition&) = delete;
    condition& operator=(const condition&) = delete;

    [[nodiscard]] mutex& lock_object() noexcept { return *m_; }
    [[nodiscard]] auto lock() noexcept { return m_->lock(); }
    [[nodiscard]] auto scoped_lock() noexcept { return m_->scoped_lock(); }
    void unlock() { m_->unlock(); }
    [[nodiscard]] bool locked() const noexcept { return m_->locked(); }

    /// Releases the mutex, waits for notify(), then takes the mutex again before returning.
    /// Cancel safety: safe; the mutex is held again when cancelled_error leaves wait(). A
    /// cancelled waiter never consumes a notification.
    task<> wait() {
        if (!m_->locked()) throw invalid_state_error("ringio: condition::wait without holding the mutex");
        m_->unlock();
        bool cancelled = false;
        try {
            co_await awaiter{*this};
        } catch (const cancelled_error&) {
            cancelled = true;
        }
        co_await m_->lock_uncancellable();
        if (cancelled) throw cancelled_error();
    }

    /// wait() until pred() is true; returns pred's last value.
    template <class Pred>
    task<bool> wait_for(Pred pred) {
        while (!pred()) co_await wait();
        co_return true;
    }

    /// Wakes up to n waiters (in the order they waited).
    void notify(std::size_t n = 1) {
        if (!m_->locked()) throw invalid_state_error("ringio: condition::notify without holding the mutex");
        for (; n > 0; --n) {
            detail::waiter* w = waiters_.front();
            if (!w) break;
            w->grant();
        }
    }
    void notify_all() { notify(std::numeric_limits<std::size_t>::max()); }

private:
    struct awaiter : detail::waiter {
        condition& c;
        explicit awaiter(condition& cv) noexcept : c(cv) {}
        bool await_ready() const noexcept { return false; }
        bool await_suspend(std::coroutine_handle<> caller) { return park(c.waiters_, caller); }
        void await_resume() { resume(); }
    };

    mutex own_;
    mutex* m_;
    detail::intrusive_list<detail::waiter> waiters_;
};

}  // namespace ringio

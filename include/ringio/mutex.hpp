// mutex: a FIFO-fair lock for tasks (asyncio.Lock).
#pragma once

#include <utility>

#include "ringio/detail/wait_queue.hpp"

namespace ringio {

class mutex;

/// Owns a locked mutex; unlocks when destroyed (std::unique_lock for tasks).
class [[nodiscard]] mutex_guard {
public:
    mutex_guard() noexcept = default;
    explicit mutex_guard(mutex& m) noexcept : m_(&m) {}
    mutex_guard(mutex_guard&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
    mutex_guard& operator=(mutex_guard&& o) noexcept {
        if (this != &o) {
            reset();
            m_ = std::exchange(o.m_, nullptr);
        }
        return *this;
    }
    ~mutex_guard() { reset(); }
    void reset() noexcept;
    [[nodiscard]] bool owns_lock() const noexcept { return m_ != nullptr; }

private:
    mutex* m_ = nullptr;
};

/// Not reentrant. unlock() hands the lock straight to the longest waiter, so no later arrival
/// can overtake it (FIFO fairness).
class mutex {
public:
    mutex() = default;
    mutex(const mutex&) = delete;
    mutex& operator=(const mutex&) = delete;

    [[nodiscard]] bool locked() const noexcept { return locked_; }

    /// Takes the lock if it is free and nobody waits; never suspends.
    bool try_lock() noexcept {
        if (locked_) return false;
        locked_ = true;
        return true;
    }

    /// Waits for the lock (pair with unlock(), or use scoped_lock()).
    /// Cancel safety: safe. Cancelled while waiting: cancelled_error, the lock is not taken and
    /// the next waiter is unaffected. Cancelled after the lock was handed over: the lock is held
    /// and the cancellation is raised at the task's next suspension point.
    [[nodiscard]] auto lock() noexcept { return lock_awaiter{*this, true}; }

    /// lock() that ignores cancellation (used to re-acquire after a condition wait).
    [[nodiscard]] auto lock_uncancellable() noexcept { return lock_awaiter{*this, false}; }

    /// lock(), giving a guard that unlocks when it goes out of scope.
    ///
    ///   auto guard = co_await m.scoped_lock();
    [[nodiscard]] auto scoped_lock() noexcept { return guard_awaiter{{*this, true}}; }

    /// Releases the lock; the longest waiter (if any) owns it next. Unlocking a mutex that is
    /// not locked throws invalid_state_error.
    void unlock() {
        if (!locked_) throw invalid_state_error("ringio: unlock of a mutex that is not locked");
        if (detail::waiter* w = waiters_.front())
            w->grant();  // ownership passes; locked_ stays true
        else
            locked_ = false;
    }

private:
    struct lock_awaiter : detail::waiter {
        mutex& m;
        bool cancellable;
        lock_awaiter(mutex& mx, bool c) noexcept : m(mx), cancellable(c) {}
        bool await_ready() noexcept { return m.try_lock(); }
        bool await_suspend(std::coroutine_handle<> caller) { return park(m.waiters_, caller, cancellable); }
        void await_resume() { resume(); }
    };
    struct guard_awaiter : lock_awaiter {
        mutex_guard await_resume() {
            lock_awaiter::await_resume();
            return mutex_guard(m);
        }
    };

    detail::intrusive_list<detail::waiter> waiters_;
    bool locked_ = false;
};

inline void mutex_guard::reset() noexcept {
    if (m_) std::exchange(m_, nullptr)->unlock();
}

}  // namespace ringio

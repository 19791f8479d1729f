// event: a flag tasks can wait for (asyncio.Event).
#pragma once

#include "ringio/detail/wait_queue.hpp"

namespace ringio {

/// Starts clear; set() wakes every waiter and lets later waits pass until clear().
class event {
public:
    event() = default;
    event(const event&) = delete;
    event& operator=(const event&) = delete;

    [[nodiscard]] bool is_set() const noexcept { return set_; }

    /// Sets the flag and wakes all waiters (they run on a later pass, in the order they waited).
    void set() noexcept {
        set_ = true;
        while (detail::waiter* w = waiters_.front()) w->grant();
    }
    void clear() noexcept { set_ = false; }

    /// Waits until the flag is set; returns at once if it is.
    /// Cancel safety: safe. Cancelled before set(): cancelled_error and the waiter is gone.
    /// Cancelled after set() woke it: returns, and the cancellation is raised at the task's next
    /// suspension point.
    [[nodiscard]] auto wait() noexcept { return awaiter{*this}; }

private:
    struct awaiter : detail::waiter {
        event& e;
        explicit awaiter(event& ev) noexcept : e(ev) {}
        bool await_ready() const noexcept { return e.set_; }
        bool await_suspend(std::coroutine_handle<> caller) { return park(e.waiters_, caller); }
        void await_resume() { resume(); }
    };

    detail::intrusive_list<detail::waiter> waiters_;
    bool set_ = false;
};

}  // namespace ringio

// sleep(), sleep_until() and yield_now(): timers in the loop's userspace heap.
#pragma once

#include <chrono>
#include <coroutine>

#include "ringio/errors.hpp"
#include "ringio/event_loop.hpp"

namespace ringio {

using clock = detail::clock;

namespace detail {

class sleep_awaiter : timer_node, suspend_point, parking {
public:
    explicit sleep_awaiter(clock::time_point when, bool yield) noexcept : yield_(yield) {
        timer_node::deadline = when;
    }

    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) {
        if (!park(h)) {
            cancelled_ = true;
            return false;
        }
        on_cancel = [](suspend_point* sp) noexcept {
            auto* self = static_cast<sleep_awaiter*>(sp);
            self->loop->remove_timer(self);
            self->cancelled_ = true;
            self->unpark();
        };
        if (yield_) {
            // Behind every task that is ready now: they all run before this one again. Already
            // queued, so a cancel() meanwhile only marks the task; await_resume raises it.
            unpark();
            return true;
        }
        fire = [](timer_node* n) noexcept { static_cast<sleep_awaiter*>(n)->unpark(); };
        loop->add_timer(this);
        task->suspended_at = this;
        return true;
    }
    void await_resume() {
        // Nothing is lost by raising here even if the timer fired first: a sleep has no result.
        if (cancelled_ || task->take_cancel()) {
            cancelled_ = false;
            task->take_cancel();
            throw cancelled_error();
        }
    }

private:
    bool yield_;
    bool cancelled_ = false;
};

}  // namespace detail

/// Suspends the task until `deadline` (never earlier) on the loop's clock.
/// Cancel safety: safe; cancelling removes the timer at once and throws cancelled_error.
[[nodiscard]] inline detail::sleep_awaiter sleep_until(clock::time_point deadline) noexcept {
    return detail::sleep_awaiter(deadline, false);
}

/// Suspends the task for at least `d`. sleep(0) (or less) is yield_now(), as asyncio.sleep(0).
/// Cancel safety: safe, as sleep_until.
///
///   co_await ringio::sleep(10ms);
template <class Rep, class Period>
[[nodiscard]] detail::sleep_awaiter sleep(std::chrono::duration<Rep, Period> d) noexcept {
    if (d <= d.zero()) return detail::sleep_awaiter(clock::time_point{}, true);
    // Read the clock now rather than using the loop's per-pass reading, which may be stale:
    // the deadline must never come before the call plus d.
    return detail::sleep_awaiter(clock::now() + std::chrono::ceil<clock::duration>(d), false);
}

/// Lets every other task that is ready run first, then continues.
/// Cancel safety: safe; a pending cancellation is raised here.
[[nodiscard]] inline detail::sleep_awaiter yield_now() noexcept { return detail::sleep_awaiter(clock::time_point{}, true); }

}  // namespace ringio

// sleep(), sleep_until() and yield_now(): timers in the loop's userspace heap.
#pragma once

#include <chrono>
#include <coroutine>

#include "ringio/detail/suspension.hpp"
#include "ringio/errors.hpp"
#include "ringio/event_loop.hpp"

namespace ringio {

using clock = detail::clock;

namespace detail {

class sleep_awaiter : timer_node, suspension {
public:
    explicit sleep_awaiter(clock::time_point when, bool yield) noexcept : yield_(yield) {
        timer_node::deadline = when;
    }

    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) {
        if (!begin(h)) return false;
        if (yield_) {
            // Behind every task that is ready now: they all run before this one again. Already
            // queued, so a cancel() meanwhile only marks the task; await_resume raises it.
            wake();
            return true;
        }
        fire = [](timer_node* n) noexcept { static_cast<sleep_awaiter*>(n)->wake(); };
        loop_core::running().add_timer(this);
        arm([](suspension* sp) noexcept {
            auto* self = static_cast<sleep_awaiter*>(sp);
            loop_core::current()->remove_timer(self);
            self->wake(true);
        });
        return true;
    }
    void await_resume() {
        // Nothing is lost by raising here even if the timer fired first: a sleep has no result.
        cancel_if_requested();
        resume();
    }

private:
    bool yield_;
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

// wait_for(), timeout() and shield(): deadlines and protection from cancellation.
#pragma once

#include <chrono>
#include <coroutine>
#include <optional>
#include <type_traits>
#include <utility>

#include "ringio/detail/suspension.hpp"
#include "ringio/errors.hpp"
#include "ringio/event_loop.hpp"
#include "ringio/task.hpp"
#include "ringio/task_handle.hpp"
#include "ringio/time.hpp"

namespace ringio {

namespace detail {

/// Waits for `target` to finish; at `deadline` cancels it and keeps waiting for it. A join
/// point: the waiter's own cancellation is passed on to the target, which is waited for.
class deadline_awaiter : done_waiter, timer_node, suspension {
public:
    deadline_awaiter(task_base* target, clock::time_point when) noexcept : target_(target) {
        timer_node::deadline = when;
    }

    bool await_ready() const noexcept { return target_->done(); }
    bool await_suspend(std::coroutine_handle<> h) {
        begin(h, cancel_kind::join);
        loop_core::running().add_timer(this);  // may throw: before anything is registered
        notify = [](done_waiter* w, task_base* t) noexcept {
            auto* a = static_cast<deadline_awaiter*>(w);
            loop_core::current()->remove_timer(a);
            // Our own cancellation ended it: that is the outcome (it wins over the deadline).
            a->wake(a->cancelling() && t->state() == task_base::status::cancelled);
        };
        fire = [](timer_node* n) noexcept {
            auto* a = static_cast<deadline_awaiter*>(n);
            a->timed_out_ = true;
            a->target_->cancel();
        };
        target_->add_done_waiter(this);
        arm([](suspension* sp) noexcept {
            auto* a = static_cast<deadline_awaiter*>(sp);
            loop_core::current()->remove_timer(a);
            a->target_->cancel();
        });
        return true;
    }
    /// Returns normally when the target ended by itself; throws as wait_for documents.
    void await_resume() {
        target_->mark_retrieved();
        resume();
        if (target_->state() != task_base::status::cancelled) return;
        if (timed_out_) throw timeout_error();
        raise_cancelled();  // somebody else cancelled the target
    }

private:
    task_base* target_;
    bool timed_out_ = false;
};

template <class A>
using await_result_t = decltype(std::declval<A>().await_resume());

template <class A>
auto as_task(A aw) -> task<decltype(std::declval<A&>().operator co_await().await_resume())>
    requires requires { std::declval<A&>().operator co_await(); }
{
    co_return co_await aw;
}

template <class A>
auto as_task(A aw) -> task<await_result_t<A&>>
    requires requires { std::declval<A&>().await_resume(); }
{
    co_return co_await aw;
}

}  // namespace detail

namespace detail {

// One coroutine frame per wait_for: the deadline is `at`, or `d` from the moment it is awaited.
template <class T>
task<T> wait_deadline(task_handle<T> h, std::optional<clock::duration> d, clock::time_point at) {
    if (d) at = clock::now() + *d;
    co_await deadline_awaiter(h.base(), at);
    co_return handle_result(h);
}
template <class T>
task<T> wait_deadline(task<T> t, std::optional<clock::duration> d, clock::time_point at) {
    if (d) at = clock::now() + *d;
    task_handle<T> h = create_task(std::move(t));
    co_await deadline_awaiter(h.base(), at);
    co_return handle_result(h);
}

}  // namespace detail

/// Waits for `h` until `deadline`; then cancels it, waits for it to finish and throws
/// timeout_error (asyncio.wait_for). If the task finishes by itself first, its value is
/// returned or its exception rethrown, even if the deadline passed meanwhile.
/// Cancel safety: cancelling the caller cancels the task, waits for it, then throws
/// cancelled_error (or returns the task's value if it had already finished: nothing is lost,
/// and the cancellation is raised at the caller's next suspension point).
template <class T>
task<T> wait_until(task_handle<T> h, clock::time_point deadline) {
    return detail::wait_deadline(std::move(h), std::nullopt, deadline);
}

/// The same for a task, which starts only when the result is awaited (like every task: a
/// wait_until that is made but never awaited runs nothing).
template <class T>
task<T> wait_until(task<T> t, clock::time_point deadline) {
    return detail::wait_deadline(std::move(t), std::nullopt, deadline);
}

/// wait_until() with a deadline `d` after the moment it is awaited. Works on a task, a
/// task_handle, or any other awaitable (run as a task of its own). Lazy, as tasks are: nothing
/// starts, and the clock does not run, until the result is awaited.
///
///   std::string line = co_await ringio::wait_for(reader.read_line(), 5s);
template <class T, class Rep, class Period>
task<T> wait_for(task<T> t, std::chrono::duration<Rep, Period> d) {
    return detail::wait_deadline(std::move(t), std::chrono::ceil<clock::duration>(d), {});
}
template <class T, class Rep, class Period>
task<T> wait_for(task_handle<T> h, std::chrono::duration<Rep, Period> d) {
    return detail::wait_deadline(std::move(h), std::chrono::ceil<clock::duration>(d), {});
}
template <class A, class Rep, class Period>
auto wait_for(A aw, std::chrono::duration<Rep, Period> d) {
    return wait_for(detail::as_task(std::move(aw)), d);
}

/// The block of code `body` with a time limit (asyncio.timeout): inside, the expiry is seen as
/// cancelled_error; outside, as timeout_error. The same as wait_for(body, d).
///
///   co_await ringio::timeout(1s, [&]() -> ringio::task<> { ... }());
template <class T, class Rep, class Period>
task<T> timeout(std::chrono::duration<Rep, Period> d, task<T> body) {
    return wait_for(std::move(body), d);
}
template <class T>
task<T> timeout_at(clock::time_point deadline, task<T> body) {
    return wait_until(std::move(body), deadline);
}

namespace detail {

/// Waits for `target` but does not pass the waiter's cancellation on to it: the waiter leaves
/// at once (an interrupt point), the target runs on.
class shield_awaiter : done_waiter, suspension {
public:
    explicit shield_awaiter(task_base* target) noexcept : target_(target) {}

    bool await_ready() const noexcept { return target_->done(); }
    bool await_suspend(std::coroutine_handle<> h) {
        if (!begin(h)) return false;
        notify = [](done_waiter* w, task_base*) noexcept { static_cast<shield_awaiter*>(w)->wake(); };
        target_->add_done_waiter(this);
        arm([](suspension* sp) noexcept {
            auto* a = static_cast<shield_awaiter*>(sp);
            a->target_->remove_done_waiter(a);
            a->wake(true);
        });
        return true;
    }
    void await_resume() {
        resume();
        if (target_->state() == task_base::status::cancelled) {
            target_->mark_retrieved();
            raise_cancelled();
        }
    }

private:
    task_base* target_;
};

}  // namespace detail

/// Runs `t` as its own Task that the caller's cancellation does not reach (asyncio.shield):
/// the caller gets cancelled_error at once, the shielded task runs on to its end (and its
/// failure, if nobody retrieves it, is logged). It must therefore not refer to the caller's
/// locals.
template <class T>
task<T> shield(task<T> t) {
    task_handle<T> h = create_task(std::move(t));
    co_await detail::shield_awaiter(h.base());
    co_return detail::handle_result(h);
}

}  // namespace ringio

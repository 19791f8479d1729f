// wait_for(), timeout() and shield(): deadlines and protection from cancellation.
#pragma once

#include <chrono>
#include <coroutine>
#include <type_traits>
#include <utility>

#include "ringio/errors.hpp"
#include "ringio/event_loop.hpp"
#include "ringio/task.hpp"
#include "ringio/task_handle.hpp"
#include "ringio/time.hpp"

namespace ringio {

namespace detail {

/// Waits for `target` to finish; at `deadline` cancels it and keeps waiting for it.
class deadline_awaiter : done_waiter, timer_node, suspend_point {
public:
    deadline_awaiter(task_base* target, clock::time_point when) noexcept : target_(target) {
        timer_node::deadline = when;
    }
    deadline_awaiter(const deadline_awaiter&) = delete;
    deadline_awaiter& operator=(const deadline_awaiter&) = delete;

    bool await_ready() const noexcept { return target_->done(); }
    bool await_suspend(std::coroutine_handle<> h) {
        loop_ = &event_loop::running();
        self_ = loop_->current_task();
        h_ = h;
        notify = [](done_waiter* w, task_base*) noexcept {
            auto* a = static_cast<deadline_awaiter*>(w);
            a->loop_->remove_timer(a);
            a->loop_->wake(a->self_, a->h_);
        };
        fire = [](timer_node* n) noexcept {
            auto* a = static_cast<deadline_awaiter*>(n);
            a->timed_out_ = true;
            a->target_->cancel();
        };
        on_cancel = [](suspend_point* sp) noexcept {
            auto* a = static_cast<deadline_awaiter*>(sp);
            a->loop_->remove_timer(a);
            a->target_->cancel();
        };
        target_->add_done_waiter(this);
        if (self_->cancel_requested()) {
            target_->cancel();  // an earlier cancel() of ours: pass it on and wait
        } else {
            loop_->add_timer(this);
            self_->suspended_at = this;
        }
        return true;
    }
    /// Returns normally when the target ended by itself; throws as wait_for documents.
    void await_resume() {
        target_->mark_retrieved();
        if (target_->state() != task_base::status::cancelled) return;
        if (self_ && self_->take_cancel()) throw cancelled_error();
        if (timed_out_) throw timeout_error();
        throw cancelled_error();  // somebody else cancelled the target
    }

private:
    task_base* target_;
    event_loop* loop_ = nullptr;
    task_base* self_ = nullptr;
    std::coroutine_handle<> h_;
    bool timed_out_ = false;
};

template <class T>
decltype(auto) handle_result(task_handle<T>& h) {
    if constexpr (std::is_void_v<T> || std::is_reference_v<T>)
        return h.result();
    else
        return T(std::move(const_cast<T&>(h.result())));
}

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

/// Waits for `h` until `deadline`; then cancels it, waits for it to finish and throws
/// timeout_error (asyncio.wait_for). If the task finishes by itself first, its value is
/// returned or its exception rethrown, even if the deadline passed meanwhile.
/// Cancel safety: cancelling the caller cancels the task, waits for it, then throws
/// cancelled_error (or returns the task's value if it had already finished: nothing is lost,
/// and the cancellation is raised at the caller's next suspension point).
template <class T>
task<T> wait_until(task_handle<T> h, clock::time_point deadline) {
    co_await detail::deadline_awaiter(h.base(), deadline);
    co_return detail::handle_result(h);
}

template <class T>
task<T> wait_until(task<T> t, clock::time_point deadline) {
    return wait_until(create_task(std::move(t)), deadline);
}

/// wait_until() with a deadline `d` from now. Works on a task, a task_handle, or any other
/// awaitable (run as a task of its own).
///
///   std::string line = co_await ringio::wait_for(reader.read_line(), 5s);
template <class T, class Rep, class Period>
task<T> wait_for(task<T> t, std::chrono::duration<Rep, Period> d) {
    return wait_until(std::move(t), clock::now() + std::chrono::ceil<clock::duration>(d));
}
template <class T, class Rep, class Period>
task<T> wait_for(task_handle<T> h, std::chrono::duration<Rep, Period> d) {
    return wait_until(std::move(h), clock::now() + std::chrono::ceil<clock::duration>(d));
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

/// Waits for `target` but does not pass the waiter's cancellation on to it.
class shield_awaiter : done_waiter, suspend_point, parking {
public:
    explicit shield_awaiter(task_base* target) noexcept : target_(target) {}
    shield_awaiter(const shield_awaiter&) = delete;
    shield_awaiter& operator=(const shield_awaiter&) = delete;

    bool await_ready() const noexcept { return target_->done(); }
    bool await_suspend(std::coroutine_handle<> h) {
        if (!park(h)) {
            cancelled_ = true;
            return false;
        }
        notify = [](done_waiter* w, task_base*) noexcept { static_cast<shield_awaiter*>(w)->unpark(); };
        on_cancel = [](suspend_point* sp) noexcept {
            auto* a = static_cast<shield_awaiter*>(sp);
            task_base::remove_done_waiter(a);
            a->cancelled_ = true;
            a->unpark();
        };
        target_->add_done_waiter(this);
        task->suspended_at = this;
        return true;
    }
    void await_resume() {
        if (cancelled_) {
            task->take_cancel();
            throw cancelled_error();
        }
        if (target_->state() == task_base::status::cancelled) {
            target_->mark_retrieved();
            throw cancelled_error();
        }
    }

private:
    task_base* target_;
    bool cancelled_ = false;
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

// create_task() and task_handle<T>: running a task<T> concurrently, like asyncio.create_task.
#pragma once

#include <coroutine>
#include <exception>
#include <type_traits>
#include <utility>

#include "ringio/detail/suspension.hpp"
#include "ringio/errors.hpp"
#include "ringio/event_loop.hpp"
#include "ringio/task.hpp"

namespace ringio {

/// A reference to a Task started with create_task(). Copies refer to the same Task; the Task
/// runs to its end whether or not any handle is left (fire and forget is allowed; a failure
/// nobody retrieved is then logged). Use it on the loop's thread only.
template <class T = void>
class task_handle {
public:
    task_handle() noexcept = default;
    explicit task_handle(detail::task_base* t) noexcept : t_(t) {}  // adopts one reference
    task_handle(const task_handle& o) noexcept : t_(o.t_) {
        if (t_) t_->add_ref();
    }
    task_handle(task_handle&& o) noexcept : t_(std::exchange(o.t_, nullptr)) {}
    task_handle& operator=(task_handle o) noexcept {
        std::swap(t_, o.t_);
        return *this;
    }
    ~task_handle() {
        if (t_) t_->release();
    }

    [[nodiscard]] bool valid() const noexcept { return t_ != nullptr; }
    /// True once the task has returned, thrown or been cancelled.
    [[nodiscard]] bool done() const noexcept { return t_->done(); }
    /// True when the task ended by cancellation.
    [[nodiscard]] bool cancelled() const noexcept { return t_->state() == detail::task_base::status::cancelled; }
    /// Requests cancellation: the task's current (or next) suspension point throws
    /// cancelled_error. Returns false if the task is done or a cancellation is already pending.
    bool cancel() noexcept { return t_->cancel(); }

    /// The task's exception (cancelled_error for a cancelled task), or null; requires done().
    [[nodiscard]] std::exception_ptr exception() const {
        require_done();
        t_->mark_retrieved();
        return t_->promise().exception;
    }

    /// The value, or rethrows the task's exception; requires done(). Throws
    /// invalid_state_error before that.
    decltype(auto) result() const& {
        require_done();
        t_->mark_retrieved();
        return promise().get();
    }

    /// Awaits the end of the task and gives its value or rethrows (for a move-only T, await an
    /// rvalue handle: co_await std::move(h)).
    /// Cancel safety: cancelling the awaiting task cancels this task too and still waits for it
    /// to finish; then cancelled_error is thrown if it ended cancelled, otherwise its outcome is
    /// returned and the awaiter's cancellation stays pending for its next suspension point.
    auto operator co_await() const& noexcept { return awaiter<false>{t_}; }
    auto operator co_await() && noexcept { return awaiter<true>{t_}; }

    /// The Task itself, for ringio's combinators.
    [[nodiscard]] detail::task_base* base() const noexcept { return t_; }

private:
    using promise_type = typename task<T>::promise_type;

    promise_type& promise() const { return static_cast<promise_type&>(t_->promise()); }
    void require_done() const {
        if (!t_->done()) throw invalid_state_error("ringio: task result is not set yet");
    }

    // A join point: a cancellation of the awaiting task (also one already pending) is passed
    // on to the awaited one, which is then waited for.
    template <bool Rvalue>
    struct awaiter : detail::done_waiter, detail::suspension {
        detail::task_base* target;

        explicit awaiter(detail::task_base* t) noexcept : target(t) {}

        bool await_ready() const noexcept { return target->done(); }
        bool await_suspend(std::coroutine_handle<> caller) {
            begin(caller, detail::cancel_kind::join);
            notify = [](detail::done_waiter* w, detail::task_base* t) noexcept {
                auto* self = static_cast<awaiter*>(w);
                self->wake(t->state() == detail::task_base::status::cancelled);
            };
            target->add_done_waiter(this);
            arm([](detail::suspension* sp) noexcept { static_cast<awaiter*>(sp)->target->cancel(); });
            return true;
        }
        decltype(auto) await_resume() {
            target->mark_retrieved();
            resume();  // the target ended cancelled: throws, consuming the awaiter's cancellation
            if (target->state() == detail::task_base::status::cancelled) raise_cancelled();  // never suspended
            auto& p = static_cast<promise_type&>(target->promise());
            if constexpr (std::is_void_v<T> || std::is_reference_v<T>) {
                return p.get();
            } else if constexpr (Rvalue) {
                return T(std::move(p).get());
            } else {
                static_assert(std::is_copy_constructible_v<T>,
                              "await a move-only task_handle as an rvalue: co_await std::move(handle)");
                return T(p.get());
            }
        }
    };

    detail::task_base* t_ = nullptr;
};

namespace detail {
/// The value of a finished Task through its handle (moved out), or its exception rethrown.
template <class T>
decltype(auto) handle_result(task_handle<T>& h) {
    if constexpr (std::is_void_v<T> || std::is_reference_v<T>)
        return h.result();
    else
        return T(std::move(const_cast<T&>(h.result())));
}
}  // namespace detail

/// Starts `t` as a separate Task on the running loop (asyncio.create_task). It does not run
/// inline: it starts on a later pass of the loop. Throws invalid_state_error outside a loop.
///
///   auto h = ringio::create_task(fetch(url));
///   ...
///   auto body = co_await h;
template <class T>
task_handle<T> create_task(task<T> t) {
    detail::loop_core& loop = detail::loop_core::running();
    if (!t.valid()) throw invalid_state_error("ringio: create_task of an empty task");
    auto h = t.release();
    return task_handle<T>(loop.start_task(h, &h.promise()));  // adopts the caller's reference
}
/// An operation that is not a coroutine itself (reader.read(n)) runs as a task of its own.
template <class Op>
    requires requires(Op op) { std::move(op).as_task(); }
auto create_task(Op op) {
    return create_task(std::move(op).as_task());
}

}  // namespace ringio

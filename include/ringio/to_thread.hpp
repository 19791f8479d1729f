// to_thread(): run a blocking function on ringio's thread pool without blocking the loop.
#pragma once

#include <coroutine>
#include <exception>
#include <functional>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>

#include "ringio/detail/suspension.hpp"
#include "ringio/errors.hpp"
#include "ringio/event_loop.hpp"

namespace ringio {

namespace detail {

/// A job for the pool; `run` is called on a worker thread.
struct pool_job {
    pool_job* next = nullptr;
    void (*run)(pool_job*) noexcept = nullptr;
};

/// Queues a job on the process-wide pool (threads start on demand, all signals blocked in them).
void pool_submit(pool_job* job);
/// Threads the pool has started so far.
std::size_t pool_threads() noexcept;

template <class F>
class to_thread_awaiter : pool_job, remote_item, suspension {
public:
    using result_type = std::invoke_result_t<F&>;

    explicit to_thread_awaiter(F f) : fn_(std::move(f)) {}

    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) {
        if (!begin(h)) return false;
        loop_ = &loop_core::running();
        pool_job::run = [](pool_job* j) noexcept {
            auto* self = static_cast<to_thread_awaiter*>(j);
            try {
                if constexpr (std::is_void_v<result_type>) {
                    std::invoke(self->fn_);
                    self->value_.emplace();
                } else {
                    self->value_.emplace(std::invoke(self->fn_));
                }
            } catch (...) {
                self->error_ = std::current_exception();
            }
            self->loop_->post(self, false);  // last touch of *self on the worker thread
        };
        remote_item::run = [](remote_item* r, bool) noexcept {
            // Always live: the loop waits for this Task, so it cannot be gone.
            auto* self = static_cast<to_thread_awaiter*>(r);
            self->wake(self->cancelling());
        };
        pool_submit(this);
        // The function cannot be interrupted: a cancel() only marks the point, and the
        // cancellation is raised when the function has returned.
        arm([](suspension*) noexcept {});
        return true;
    }

    result_type await_resume() {
        resume();
        if (error_) std::rethrow_exception(error_);
        if constexpr (!std::is_void_v<result_type>) return std::move(*value_);
    }

private:
    using stored = std::conditional_t<std::is_void_v<result_type>, bool, result_type>;
    F fn_;
    loop_core* loop_ = nullptr;
    std::optional<std::conditional_t<std::is_void_v<result_type>, std::monostate, stored>> value_;
    std::exception_ptr error_;
};

}  // namespace detail

/// Runs fn() on a worker thread and resumes the task on its loop with the result (or the
/// exception fn threw). Use it for blocking calls (getaddrinfo, file I/O, CPU-heavy work).
/// Cancel safety: fn cannot be interrupted. A cancelled caller still waits for fn to return
/// (so fn may safely refer to the caller's locals), then gets cancelled_error; fn's result is
/// discarded.
///
///   auto digest = co_await ringio::to_thread([&] { return sha256(file); });
template <class F>
[[nodiscard]] detail::to_thread_awaiter<std::decay_t<F>> to_thread(F&& fn) {
    return detail::to_thread_awaiter<std::decay_t<F>>(std::forward<F>(fn));
}

}  // namespace ringio

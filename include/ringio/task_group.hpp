// task_group: structured concurrency (asyncio.TaskGroup).
#pragma once

#include <coroutine>
#include <exception>
#include <memory>
#include <vector>

#include "ringio/errors.hpp"
#include "ringio/event_loop.hpp"
#include "ringio/task.hpp"
#include "ringio/task_handle.hpp"

namespace ringio {

/// Children started with create_task() run concurrently; wait() joins them all. The first
/// child that fails makes the group cancel the others and refuse new children; once every child
/// has finished, wait() throws task_group_error holding each failure. Destroying a group whose
/// children have not all finished is a programming error and aborts.
///
///   ringio::task_group g;
///   for (auto& url : urls) g.create_task(fetch(url));
///   co_await g.wait();
class task_group {
public:
    task_group() = default;
    task_group(const task_group&) = delete;
    task_group& operator=(const task_group&) = delete;
    ~task_group();

    /// Starts `t` as a child. Throws invalid_state_error once the group is shutting down (a
    /// child failed or the waiter was cancelled).
    template <class T>
    task_handle<T> create_task(task<T> t) {
        if (aborting_) throw invalid_state_error("ringio: task_group is shutting down");
        task_handle<T> h = ringio::create_task(std::move(t));
        adopt(h.base());
        return h;
    }

    /// Waits until every child has finished, including children added meanwhile.
    /// Throws task_group_error if any child failed (other than by the group's own
    /// cancellation). Cancel safety: cancelling the caller cancels every child and waits for
    /// them all, then throws cancelled_error (or task_group_error if children failed).
    task<> wait();

    /// Cancels every child that is still running; the group then refuses new children.
    void cancel() noexcept;

    [[nodiscard]] std::size_t size() const noexcept { return running_; }

private:
    struct child : detail::done_waiter {
        task_group* group = nullptr;
        detail::task_base* task = nullptr;
    };
    struct wait_awaiter;

    void adopt(detail::task_base* t);
    void child_done(child* c) noexcept;

    std::vector<std::unique_ptr<child>> children_;
    std::vector<std::exception_ptr> errors_;
    std::size_t running_ = 0;
    bool aborting_ = false;
    event_loop* loop_ = nullptr;
    detail::task_base* waiter_task_ = nullptr;
    std::coroutine_handle<> waiter_;
};

}  // namespace ringio

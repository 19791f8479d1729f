// task_group and with_task_group(): structured concurrency (asyncio.TaskGroup).
#pragma once

#include <coroutine>
#include <exception>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "ringio/detail/intrusive_list.hpp"
#include "ringio/errors.hpp"
#include "ringio/event_loop.hpp"
#include "ringio/task.hpp"
#include "ringio/task_handle.hpp"

namespace ringio {

/// Children started with create_task() run concurrently; wait() joins them all. The first
/// child that fails makes the group cancel the others and refuse new children; once every child
/// has finished, wait() throws task_group_error holding each failure. A finished child is
/// released at once (its frame and what it owns, a socket say, go); only its error is kept.
///
/// Prefer with_task_group(), which always joins. A plain group destroyed while children still
/// run (its owner was cancelled, or threw, before wait()) cancels them and lets them finish on
/// their own: the group itself is then out of the picture, but those children must not refer
/// to the owner's locals.
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
    /// child failed or the waiter was cancelled); then `t` never runs.
    template <class T>
    task_handle<T> create_task(task<T> t) {
        if (aborting_) throw invalid_state_error("ringio: task_group is shutting down");
        auto c = std::make_unique<child>();  // first: a failure here starts nothing
        task_handle<T> h = ringio::create_task(std::move(t));
        adopt(c.release(), h.base());
        return h;
    }

    /// Waits until every child has finished, including children added meanwhile.
    /// Throws task_group_error if any child failed (other than by the group's own
    /// cancellation), invalid_state_error if another task is waiting already.
    /// Cancel safety: a join point. Cancelling the caller (also before it waits) cancels every
    /// child and waits for them all, then throws cancelled_error (or task_group_error if
    /// children failed).
    task<> wait();

    /// Cancels every child that is still running; the group then refuses new children.
    void cancel() noexcept;

    /// Children still running.
    [[nodiscard]] std::size_t size() const noexcept { return running_; }

private:
    struct group_link : detail::list_node {};
    // One per child while it runs; kept after it ended only if it failed (for its error).
    struct child : detail::done_waiter, group_link {
        task_group* group = nullptr;
        detail::task_base* task = nullptr;
        std::exception_ptr error;
    };
    struct wait_awaiter;

    void adopt(child* c, detail::task_base* t) noexcept;
    void child_done(child* c, detail::task_base* t) noexcept;

    detail::intrusive_list<group_link> running_list_;
    detail::intrusive_list<group_link> failed_;
    std::size_t running_ = 0;
    bool aborting_ = false;
    wait_awaiter* waiter_ = nullptr;
};

namespace detail {
template <class F>
using group_body_t = std::invoke_result_t<F&, task_group&>;
}

/// Runs `body(group)` and joins every child it starts, whatever way the body ends: asyncio's
/// `async with asyncio.TaskGroup() as group:`. The body runs as a child of the group, so:
/// - it returns: the other children are awaited; the body's value is returned;
/// - it or a child fails: every other child, the body included, is cancelled and awaited;
///   then task_group_error holds every failure (the body's too);
/// - the caller is cancelled: everything is cancelled and awaited; then cancelled_error.
/// Nothing started in the group outlives the call, so children may refer to the caller's
/// locals. `body` returns a task<T> (typically a coroutine lambda; it is kept alive meanwhile).
///
///   co_await ringio::with_task_group([&](ringio::task_group& g) -> ringio::task<> {
///       for (auto& url : urls) g.create_task(fetch(url));
///       co_return;
///   });
template <class F>
auto with_task_group(F body) -> task<typename detail::group_body_t<F>::value_type> {
    using T = typename detail::group_body_t<F>::value_type;
    task_group g;
    task_handle<T> h = g.create_task(body(g));
    co_await g.wait();
    co_return detail::handle_result(h);
}

}  // namespace ringio

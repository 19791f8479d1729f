// Waiting for several Tasks at once: the machinery under gather() and gather_settled().
#pragma once

#include <coroutine>
#include <memory>
#include <span>

#include "ringio/detail/suspension.hpp"
#include "ringio/errors.hpp"

namespace ringio::detail {

/// Waits until every task in `tasks` has finished. With fail_fast, the first task that ends
/// other than successfully (while the join is not already cancelling) makes the join cancel
/// the others; it still waits for all of them, so nothing outlives the join.
///
/// A join point: cancelling the awaiting task (also before it got here) cancels every child and
/// waits for them all. await_resume then returns the first failed child (or nullptr); it throws
/// cancelled_error only when the awaiter was cancelled and some child ended cancelled, i.e.
/// when the results are incomplete.
class join_awaiter : suspension {
public:
    join_awaiter(std::span<task_base* const> tasks, bool fail_fast) : tasks_(tasks), fail_fast_(fail_fast) {}

    bool await_ready() noexcept {
        for (task_base* t : tasks_)
            if (!t->done()) return false;
        return true;
    }

    bool await_suspend(std::coroutine_handle<> h) {
        begin(h, cancel_kind::join);
        waiters_ = std::make_unique<child_waiter[]>(tasks_.size());  // before anything is registered
        noted_ = true;
        for (std::size_t i = 0; i < tasks_.size(); ++i) {
            task_base* t = tasks_[i];
            if (t->done()) {
                note_done(t);
                continue;
            }
            ++remaining_;
            waiters_[i].join = this;
            waiters_[i].task = t;
            waiters_[i].notify = [](done_waiter* w, task_base*) noexcept {
                auto* cw = static_cast<child_waiter*>(w);
                cw->join->child_done(cw->task);
            };
            t->add_done_waiter(&waiters_[i]);
        }
        if (remaining_ == 0) return false;
        arm([](suspension* sp) noexcept { static_cast<join_awaiter*>(sp)->cancel_children(); });
        return true;
    }

    task_base* await_resume() {
        if (!noted_)
            for (task_base* t : tasks_) note_done(t);  // await_ready path: nothing noted yet
        for (task_base* t : tasks_) t->mark_retrieved();
        resume();
        return first_failed_;
    }

private:
    struct child_waiter : done_waiter {
        join_awaiter* join = nullptr;
        task_base* task = nullptr;
    };

    void cancel_children() noexcept {
        children_cancelled_ = true;
        for (task_base* t : tasks_) t->cancel();
    }

    void note_done(task_base* t) noexcept {
        if (first_failed_ || children_cancelled_) return;
        if (t->state() == task_base::status::failed || t->state() == task_base::status::cancelled) {
            first_failed_ = t;
            if (fail_fast_) cancel_children();
        }
    }

    void child_done(task_base* t) noexcept {
        note_done(t);
        if (--remaining_ > 0) return;
        // Cancelled by the awaiter's cancellation, with results missing: that is the outcome.
        bool incomplete = false;
        for (task_base* c : tasks_) incomplete |= c->state() == task_base::status::cancelled;
        wake(cancelling() && incomplete && !first_failed_);
    }

    std::span<task_base* const> tasks_;
    bool fail_fast_;
    bool children_cancelled_ = false;
    bool noted_ = false;
    std::unique_ptr<child_waiter[]> waiters_;
    std::size_t remaining_ = 0;
    task_base* first_failed_ = nullptr;
};

/// Rethrows the failure join_awaiter returned: a child that ended cancelled raises
/// cancelled_error as the caller's own would (consuming a cancellation the caller had pending).
[[noreturn]] inline void rethrow_failure(task_base* failed) {
    if (failed->state() == task_base::status::cancelled) suspension::raise_cancelled();
    std::rethrow_exception(failed->promise().exception);
}

}  // namespace ringio::detail

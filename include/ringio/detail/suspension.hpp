// suspension: one place where a Task waits, and the one cancellation protocol every ringio
// awaiter follows. Private to ringio. docs/runtime.md ("Cancellation") explains it with the
// table of which awaiter is which kind; docs/semantics.md has the user's view.
//
// An awaiter embeds (or points to) a suspension and drives it in four steps:
//
//   bool await_suspend(std::coroutine_handle<> h) {
//       if (!sp.begin(h, cancel_kind::interrupt)) return false;  // cancelled before starting
//       start();                                                  // queue, submit, register...
//       sp.arm(&on_cancel);                                       // cancel() reaches it from now
//       return true;
//   }
//   // on completion (grant, CQE, timer, reply):  sp.wake();
//   // in on_cancel(suspension*): interrupt and sp.wake(true), or ask the operation to stop and
//   //   wake on its own completion (sp.cancelling() tells that the request was made)
//   T await_resume() { sp.resume(); return result; }          // throws cancelled_error if so
//
// The rules it enforces, so that no awaiter has to get them right again:
// - A cancellation already pending when the point is reached: `interrupt` points do not start
//   and throw at once; `join` points (they wait for other Tasks, which must end first) run their
//   cancel action at once and still wait; `none` points are not cancellation points.
// - cancel() runs the action at most once, and only while the point is armed; every wake
//   disarms it. One state says where the point is; impossible transitions are assertions.
// - resume() consumes the Task's cancellation if, and only if, it throws cancelled_error; an
//   operation that completed anyway returns its result and the cancellation stays pending for
//   the Task's next suspension point (nothing is lost). Code above a point that turns the
//   cancellation into another error (task_group::wait's task_group_error) requests it again, so
//   that it is never lost either.
// - The Task is the one recorded at begin(), never looked up again.
// Cost: 32 bytes, no allocation, no atomics, one function pointer.
#pragma once

#include <cassert>
#include <coroutine>
#include <cstdint>

#include "ringio/detail/task_base.hpp"
#include "ringio/errors.hpp"
#include "ringio/event_loop.hpp"

namespace ringio::detail {

/// What a cancellation already pending does when a point is reached (its cancel-safety class).
enum class cancel_kind : std::uint8_t {
    /// Not started, not suspended: cancelled_error at once. Sleeps, waits on events, locks,
    /// semaphores, conditions and queues, stream reads and drains, accepts, datagram receives,
    /// io_uring operations, to_thread, shield, call_on.
    interrupt,
    /// The cancel action runs at once and the point still waits: what it waits for are Tasks
    /// that must end first. Awaiting a task_handle, gather, wait_for/timeout, task_group::wait.
    join,
    /// Not a cancellation point: a cancellation stays pending for the next one. io::close,
    /// mutex::lock_uncancellable, socket::close.
    none,
};

class suspension {
public:
    enum class state : std::uint8_t {
        idle,        // not waiting (never suspended, or resumed)
        bound,       // begin() ran; not armed yet (an await_suspend that throws from here on
                     // leaves nothing behind)
        waiting,     // suspended and armed: cancel() runs the action
        cancelling,  // the action ran; the operation may still own its resources
        completed,   // woken with a result
        cancelled,   // woken by the cancellation, or refused to start
    };
    using action = void (*)(suspension*) noexcept;

    suspension() noexcept = default;
    /// An awaiter may be moved before it is awaited (wait_for(queue.get(), 1s) does): the copy
    /// is a fresh point, bound when it is awaited. Never while waiting.
    suspension([[maybe_unused]] const suspension& o) noexcept { assert(o.st_ != state::waiting && o.st_ != state::cancelling); }
    suspension& operator=(const suspension&) = delete;
    ~suspension() { assert(st_ != state::waiting && st_ != state::cancelling); }  // never while a Task waits here

    /// In await_suspend, before anything starts: binds to the running Task and `h`. Returns
    /// false for an `interrupt` point when a cancellation is pending: start nothing and return
    /// false from await_suspend; resume() then throws.
    bool begin(std::coroutine_handle<> h, cancel_kind kind = cancel_kind::interrupt) {
        task_ = loop_core::running().current_task();
        h_ = h;
        kind_ = kind;
        if (kind == cancel_kind::interrupt && task_->cancel_requested()) {
            st_ = state::cancelled;
            return false;
        }
        st_ = state::bound;
        return true;
    }

    /// After the operation started: cancel() reaches `on_cancel` from now until the next wake.
    /// A `join` point with a cancellation pending runs it at once. A `none` point never arms.
    void arm(action on_cancel) noexcept {
        assert(st_ == state::bound && kind_ != cancel_kind::none);
        action_ = on_cancel;
        st_ = state::waiting;
        if (task_->cancel_requested()) {  // only a join gets here with one pending
            cancel();
            return;
        }
        task_->suspended_at = this;
    }

    /// Queues the Task to resume, with the outcome (completed, or cancelled); disarms. Called
    /// once per suspension, from a completion, a grant, a timer or the cancel action.
    void wake(bool cancelled = false) noexcept {
        assert(st_ == state::bound || st_ == state::waiting || st_ == state::cancelling);
        if (task_->suspended_at == this) task_->suspended_at = nullptr;
        st_ = cancelled ? state::cancelled : state::completed;
        loop_core::current()->schedule(task_, h_);
    }

    /// In await_resume: throws cancelled_error, consuming the Task's cancellation, when the
    /// outcome was cancelled; otherwise returns (a pending cancellation stays pending).
    void resume() {
        state s = st_;
        st_ = state::idle;
        if (s == state::cancelled) {
            task_->take_cancel();
            throw cancelled_error();
        }
    }

    /// The same outcome for an awaiter that knew it without suspending (await_ready was true,
    /// e.g. the awaited task had ended cancelled): consumes the running Task's cancellation.
    /// (With nothing recorded by begin(), the Task is the running one: the awaiter's.)
    [[noreturn]] static void raise_cancelled() {
        if (loop_core* loop = loop_core::current())
            if (task_base* t = loop->current_task()) t->take_cancel();
        throw cancelled_error();
    }

    /// For points that lose nothing by it (a sleep, a yield): a cancellation that arrived while
    /// the Task was queued to resume counts as this point's outcome.
    void cancel_if_requested() noexcept {
        if (task_ && task_->cancel_requested()) st_ = state::cancelled;
    }

    /// True once the cancel action ran and before the wake: the operation was asked to stop.
    [[nodiscard]] bool cancelling() const noexcept { return st_ == state::cancelling; }
    [[nodiscard]] state current_state() const noexcept { return st_; }
    [[nodiscard]] task_base* owner() const noexcept { return task_; }
    [[nodiscard]] std::coroutine_handle<> handle() const noexcept { return h_; }

private:
    friend class task_base;
    // From task_base::cancel(), once, while armed (or from arm() for a join).
    void cancel() noexcept {
        task_->suspended_at = nullptr;
        st_ = state::cancelling;
        action_(this);
    }

    action action_ = nullptr;
    task_base* task_ = nullptr;
    std::coroutine_handle<> h_;
    state st_ = state::idle;
    cancel_kind kind_ = cancel_kind::interrupt;
};

}  // namespace ringio::detail

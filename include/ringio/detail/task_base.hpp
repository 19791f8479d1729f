// The state shared by every coroutine of one asyncio-style Task, and the promise half that all
// task<T> coroutines have in common. Private to ringio.
#pragma once

#include <coroutine>
#include <cstdint>
#include <exception>

#include "ringio/detail/frame_cache.hpp"
#include "ringio/detail/intrusive_list.hpp"

namespace ringio {
class event_loop;
}

namespace ringio::detail {

class task_base;

class suspension;  // ringio/detail/suspension.hpp: where a Task waits, and how cancel() reaches it

/// Somebody waiting for a Task to finish (an awaiter of its handle, gather, a task_group).
/// notify gets the Task that finished (still alive during the call).
struct done_waiter : list_node {
    void (*notify)(done_waiter*, task_base*) noexcept = nullptr;
};

struct promise_base {
    std::coroutine_handle<> continuation;  // the awaiting coroutine of the same Task
    task_base* root = nullptr;             // set when this coroutine is the body of a Task
    std::exception_ptr exception;
    bool cancelled = false;  // exception holds a cancelled_error

    static void* operator new(std::size_t n) { return frame_alloc(n); }
    static void operator delete(void* p, std::size_t n) noexcept { frame_free(p, n); }

    std::suspend_always initial_suspend() noexcept { return {}; }
    void unhandled_exception() noexcept;
};

/// One Task: a chain of coroutines that runs as a unit, is cancelled as a unit and is what the
/// loop schedules. Reference counted: the loop holds a reference until the Task finishes, every
/// task_handle holds one. Single-threaded: only the owning loop's thread touches it.
class task_base : public list_node /* node in the loop's list of live tasks */ {
public:
    enum class status : std::uint8_t { pending, done, failed, cancelled };

    /// Creates the Task for coroutine `body` (its promise must derive from promise_base), which
    /// it owns from the call on (destroyed if this throws). It belongs to the calling thread's
    /// loop, the only one it ever runs on.
    static task_base* make(std::coroutine_handle<> body, promise_base* promise);

    /// asyncio Task.cancel(): false when the task is finished or a cancellation is already on its
    /// way, true otherwise. A suspended Task's suspension point runs its cancel action now.
    bool cancel() noexcept;

    /// True while a cancel() has not yet been raised as cancelled_error in the task.
    [[nodiscard]] bool cancel_requested() const noexcept { return cancel_requested_; }
    /// Consumes the pending cancellation; the caller raises cancelled_error (only
    /// suspension::resume does, so that a cancellation is consumed exactly where it is raised).
    bool take_cancel() noexcept {
        bool r = cancel_requested_;
        cancel_requested_ = false;
        return r;
    }

    [[nodiscard]] bool done() const noexcept { return status_ != status::pending; }
    [[nodiscard]] status state() const noexcept { return status_; }
    [[nodiscard]] promise_base& promise() const noexcept { return *promise_; }
    [[nodiscard]] std::coroutine_handle<> body() const noexcept { return body_; }

    /// Waiters are notified in the order they came. `w` must not be waiting already.
    void add_done_waiter(done_waiter* w) noexcept {
        if (!first_waiter_) {
            w->prev = w->next = w;
            first_waiter_ = w;
            return;
        }
        list_node* last = first_waiter_->prev;
        w->prev = last;
        w->next = first_waiter_;
        last->next = w;
        first_waiter_->prev = w;
    }
    /// Takes `w` off this Task's waiters (nothing if it is not waiting).
    void remove_done_waiter(done_waiter* w) noexcept {
        if (!w->linked()) return;
        if (w->next == w) {
            first_waiter_ = nullptr;
        } else {
            w->prev->next = w->next;
            w->next->prev = w->prev;
            if (first_waiter_ == w) first_waiter_ = static_cast<done_waiter*>(w->next);
        }
        w->prev = w->next = nullptr;
    }

    void mark_retrieved() noexcept { retrieved_ = true; }
    void add_ref() noexcept { ++refs_; }
    void release() noexcept;

    // Called by the loop and the promise.
    void finish() noexcept;          // the body returned or threw
    void finish_unstarted() noexcept;  // cancelled before it ever ran
    suspension* suspended_at = nullptr;  // set and cleared by suspension only

private:
    task_base(std::coroutine_handle<> body, promise_base* p) noexcept : body_(body), promise_(p) {}
    ~task_base();

    // 56 bytes (a 64-byte malloc chunk): every connection's Task has one for as long as it
    // lives. No loop pointer (a Task runs on its creator's thread, whose loop is
    // event_loop::current()); the waiters as a ring reached through one pointer rather than a
    // list head; flags as bits, the last bytes (the access sections only order them).
    std::coroutine_handle<> body_;
    promise_base* promise_;
    done_waiter* first_waiter_ = nullptr;  // a ring (prev/next), in the order they came
    std::uint32_t refs_ = 1;
    status status_ = status::pending;

public:
    bool started : 1 = false;
    bool shutdown_cancelled : 1 = false;  // cancelled once by the loop's shutdown

private:
    bool cancel_requested_ : 1 = false;
    bool retrieved_ : 1 = false;
};

}  // namespace ringio::detail

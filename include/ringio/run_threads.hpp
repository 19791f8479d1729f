// Thread per core: run_threads() starts one event loop per thread, shared-nothing, and
// call_on() runs a function on another loop of the group for the rare cases that need to talk.
//
//   ringio::run_threads(4, [](std::size_t i) -> ringio::task<> {
//       auto srv = co_await ringio::start_server(handle, "0.0.0.0", 8080, {.reuse_port = true});
//       co_await stop_requested(i);   // however the program decides to stop
//   });
//
// See docs/runtime.md, "Many loops: thread per core".
#pragma once

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "ringio/detail/suspension.hpp"
#include "ringio/errors.hpp"
#include "ringio/event_loop.hpp"
#include "ringio/task.hpp"
#include "ringio/task_handle.hpp"

namespace ringio {

/// How run_threads() sets up its loops and threads.
struct thread_options {
    /// Passed to every loop's constructor.
    loop_options loop;
    /// Pins loop i's thread to one CPU (pthread_setaffinity_np): the i-th CPU, modulo their
    /// count, of the CPUs the calling thread may run on. Off by default: the scheduler places
    /// the threads. The calling thread (which runs loop 0) gets its affinity back on return.
    bool pin_to_cpus = false;
};

namespace detail {
struct group_state;
}

/// The loops of one run_threads() call. Valid while run_threads() runs; any of its loops may
/// use it (loop_group::current() finds it). loop(i) is for call_on() and
/// event_loop::call_soon_threadsafe(): nothing else of another loop may be touched.
class loop_group {
public:
    /// How many loops the group has.
    [[nodiscard]] std::size_t size() const noexcept;
    /// Loop i (0 <= i < size()); throws std::out_of_range otherwise.
    [[nodiscard]] event_loop& loop(std::size_t i) const;
    /// The index of the calling thread's loop in the group.
    [[nodiscard]] std::size_t index() const;

    /// The group of the calling thread's loop, or nullptr when the calling thread does not run
    /// a loop of a run_threads() group.
    [[nodiscard]] static loop_group* current() noexcept;

private:
    friend struct detail::group_state;
    explicit loop_group(detail::group_state* st) noexcept : st_(st) {}
    detail::group_state* st_;
};

namespace detail {

/// Runs the group: `body(i)` on loop i. The non-template half of run_threads().
void run_loop_threads(std::size_t n, const thread_options& options, const std::function<task<>(std::size_t)>& body);


template <class R>
struct unwrap_task {
    using type = R;
    static constexpr bool is_task = false;
};
template <class T>
struct unwrap_task<task<T>> {
    using type = T;
    static constexpr bool is_task = true;
};

template <class T, class F>
task<> store_result(F& fn, std::size_t i, std::optional<T>& out) {
    out.emplace(co_await fn(i));
}

// ---- call_on ----

struct call_request : remote_item {};
struct call_reply : remote_item {};

/// The state of one call_on(), shared by the caller and the target loop: one reference for the
/// caller's awaiter, one for the round trip (request, work on the target, reply), dropped when
/// the reply has run on the caller's loop, or has been freed with the caller's inbox when that
/// loop is gone. Whichever side finishes last frees it, so neither frame is touched after it is
/// gone.
struct call_base : call_request, call_reply {
    std::shared_ptr<inbox> caller;          // where the reply goes (valid even after that loop is gone)
    suspension* waiter = nullptr;           // caller's thread only; null once the caller left
    std::atomic<bool> abandoned{false};     // the caller was cancelled: skip the work if not begun
    std::exception_ptr error;
    bool finished = false;                  // the work ran to its end (error or value set)
    std::atomic<std::uint32_t> refs{1};
    void (*destroy)(call_base*) noexcept = nullptr;

    void release() noexcept {
        if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) destroy(this);
    }
    /// Sends the outcome back to the caller's loop (from the target's thread). The reply gives
    /// up its reference to the caller's inbox first: a reply sitting in the inbox of a loop
    /// that is gone must not keep that inbox alive (the inbox frees it when it goes).
    void send_reply() noexcept {
        std::shared_ptr<inbox> box = std::move(caller);
        box->post(static_cast<call_reply*>(this), false);
    }
};

template <class T>
struct call_value {
    std::optional<T> value;
};
template <>
struct call_value<void> {};

template <class F>
struct call_state : call_base, call_value<typename unwrap_task<std::invoke_result_t<F&>>::type> {
    using result = std::invoke_result_t<F&>;
    using value_type = typename unwrap_task<result>::type;
    static_assert(!std::is_reference_v<value_type>, "call_on: return a value, not a reference");

    std::optional<F> fn;

    explicit call_state(F f) : fn(std::move(f)) {
        destroy = [](call_base* b) noexcept { delete static_cast<call_state*>(b); };
        call_request::run = [](remote_item* r, bool live) noexcept {
            auto* self = static_cast<call_state*>(static_cast<call_request*>(r));
            self->start(live);
        };
    }

    // On the target's thread.
    void start(bool live) noexcept {
        if (!live) {  // (only if the target loop vanished without closing: never from ringio)
            error = std::make_exception_ptr(invalid_state_error("ringio: call_on: the target loop was destroyed"));
        } else if (abandoned.load(std::memory_order_relaxed)) {
            error = std::make_exception_ptr(cancelled_error());
        } else if constexpr (unwrap_task<result>::is_task) {
            try {
                create_task(run_task(reply_guard{this}));
            } catch (...) {
                // Out of memory: the guard, destroyed with the argument or the frame, replied.
            }
            return;
        } else {
            try {
                if constexpr (std::is_void_v<value_type>)
                    (*fn)();
                else
                    this->value.emplace((*fn)());
            } catch (...) {
                error = std::current_exception();
            }
        }
        fn.reset();  // on the target's thread: what it captured belongs there
        send_reply();
    }

    // Sends the reply when a remote Task's frame goes, also when the Task never ran (a loop
    // that shuts down cancels Tasks before their first step): exactly one reply either way.
    struct reply_guard {
        call_state* st;
        explicit reply_guard(call_state* s) noexcept : st(s) {}
        reply_guard(reply_guard&& o) noexcept : st(std::exchange(o.st, nullptr)) {}
        ~reply_guard() {
            if (!st) return;
            if (!st->finished) st->error = std::make_exception_ptr(cancelled_error());
            st->fn.reset();
            st->send_reply();
        }
    };

    static task<> run_task(reply_guard guard) {
        call_state* st = guard.st;
        try {
            if constexpr (std::is_void_v<value_type>)
                co_await (*st->fn)();
            else
                st->value.emplace(co_await (*st->fn)());
        } catch (...) {
            // Also cancelled_error: the target loop shutting down, handed on to the caller.
            st->error = std::current_exception();
        }
        st->finished = true;
    }
};

void call_on_reply(remote_item* r, bool live) noexcept;

template <class F>
class call_on_awaiter : suspension {
    using state = call_state<F>;

public:
    call_on_awaiter(loop_handle target, F fn) : target_(std::move(target)), fn_(std::move(fn)) {}
    ~call_on_awaiter() {
        if (st_) {
            if (st_->waiter == this) st_->waiter = nullptr;
            st_->release();
        }
    }

    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) {
        if (!begin(h)) return false;
        if (!target_.valid()) throw invalid_state_error("ringio: call_on: empty loop_handle");
        st_ = new state(std::move(fn_));
        st_->caller = loop_core::running().door();
        st_->waiter = this;
        st_->call_reply::run = &call_on_reply;
        st_->refs.fetch_add(1, std::memory_order_relaxed);  // the round trip's
        if (!target_.door()->post(static_cast<call_request*>(st_), true)) {
            st_->refs.fetch_sub(1, std::memory_order_relaxed);
            st_->waiter = nullptr;
            refused_ = true;
            return false;
        }
        // The caller leaves at once; the work goes on (or is skipped if it has not begun) and
        // its outcome is dropped when the reply arrives.
        arm([](suspension* sp) noexcept {
            auto* self = static_cast<call_on_awaiter*>(sp);
            self->st_->waiter = nullptr;
            self->st_->abandoned.store(true, std::memory_order_relaxed);
            self->wake(true);
        });
        return true;
    }

    typename state::value_type await_resume() {
        resume();
        if (refused_) throw invalid_state_error("ringio: call_on: the target loop is closed (it has stopped taking calls)");
        if (st_->error) std::rethrow_exception(st_->error);
        if constexpr (!std::is_void_v<typename state::value_type>) return std::move(*st_->value);
    }

private:
    friend void call_on_reply(remote_item* r, bool live) noexcept;
    loop_handle target_;
    F fn_;
    state* st_ = nullptr;
    bool refused_ = false;
};

}  // namespace detail

/// Runs `fn(i)` for i = 0 .. n-1 on n event loops, one per thread, and returns when every one
/// has finished: nothing for task<void>, else their values in index order. Loop 0 runs on the
/// calling thread (which must not have a loop already), loops 1 .. n-1 on new threads. The
/// loops share nothing; they reach each other only through call_on() and
/// event_loop::call_soon_threadsafe(), with loop_group::current()->loop(j).
///
/// A loop whose fn has returned keeps running (its other tasks, calls from other loops) until
/// every fn has returned; then every loop shuts down as run() does (remaining tasks cancelled),
/// and calls to it are refused. If some fn throws, the others are cancelled (their main task,
/// through call_soon_threadsafe) and, once all have finished, the first exception is rethrown.
/// Throws std::invalid_argument for n == 0, invalid_state_error when called on a loop's
/// thread, std::system_error when a loop or a thread cannot be set up (then no fn runs).
///
/// Signals: new threads inherit the calling thread's signal mask. Block the signals that
/// wait_signal() will read (SIGINT, SIGTERM) before calling run_threads, so that the kernel
/// does not deliver them to a loop thread that does not wait for them.
///
///   std::vector<int> v = ringio::run_threads(2, [](std::size_t i) -> ringio::task<int> {
///       auto& group = *ringio::loop_group::current();
///       int other = co_await ringio::call_on(group.loop(1 - i), [] { return 21; });
///       co_return other * 2;
///   });  // {42, 42}
template <class F>
auto run_threads(std::size_t n, F fn, const thread_options& options = {}) {
    using result = std::invoke_result_t<F&, std::size_t>;
    static_assert(detail::unwrap_task<result>::is_task, "run_threads: fn(std::size_t) must return a ringio::task");
    using T = typename detail::unwrap_task<result>::type;
    if constexpr (std::is_void_v<T>) {
        detail::run_loop_threads(n, options, [&fn](std::size_t i) -> task<> { return fn(i); });
    } else {
        std::vector<std::optional<T>> slots(n);
        detail::run_loop_threads(n, options, [&fn, &slots](std::size_t i) -> task<> {
            return detail::store_result<T>(fn, i, slots[i]);
        });
        std::vector<T> out;
        out.reserve(n);
        for (auto& s : slots) out.push_back(std::move(*s));
        return out;
    }
}

/// Runs `fn()` on the loop `target` and resumes the caller on its own loop with the result or
/// the exception. `fn` returns a value (it runs between the target's passes, like
/// call_soon_threadsafe) or a task<T> (it runs as a Task of its own on the target, and the
/// caller gets its T). Calling the caller's own loop works too (it takes a trip through the
/// inbox). Cost: one allocation and two cross-thread posts (each an eventfd write only when
/// the other loop's inbox was empty).
///
/// `fn` is moved to the target and destroyed there; capture by value what it needs, since a
/// cancelled caller does not wait for it. With GCC 12, name a lambda whose captures have
/// destructors before passing it (a GCC bug destroys such a temporary twice inside co_await;
/// docs/runtime.md, "Compiler bugs").
///
/// Cancel safety: the caller gets cancelled_error at once. The work is skipped if it has not
/// begun; if it has, it runs to its end on the target and its result is dropped. The shared
/// state is freed by whichever side finishes last, so nothing dangles and nothing leaks.
///
/// Lifetime: always safe, through the loop_handle `target` converts to. A loop takes calls until
/// it is closed (destroyed, or its run_threads group has ended: every loop of a group takes
/// calls until every fn has returned); a call to a closed loop throws invalid_state_error
/// instead of posting. A call that got in is always answered: by its result, or with
/// cancelled_error when the target's shutdown cancels the Task it started. A reply whose caller
/// loop is gone is freed.
///
///   auto& group = *ringio::loop_group::current();
///   std::size_t n = co_await ringio::call_on(group.loop(1), [] { return room.size(); });
template <class F>
[[nodiscard]] detail::call_on_awaiter<std::decay_t<F>> call_on(loop_handle target, F&& fn) {
    return detail::call_on_awaiter<std::decay_t<F>>(std::move(target), std::forward<F>(fn));
}

}  // namespace ringio

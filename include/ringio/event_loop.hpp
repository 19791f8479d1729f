// The event loop: one per thread, owning one io_uring. See docs/runtime.md for a pass, step by
// step. Most code never touches the loop directly: ringio::run() makes one and the awaitables
// find it through event_loop::current().
#pragma once

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

#include "ringio/detail/intrusive_list.hpp"
#include "ringio/detail/ring_buffer.hpp"
#include "ringio/detail/task_base.hpp"
#include "ringio/detail/timer_heap.hpp"
#include "ringio/errors.hpp"
#include "ringio/task.hpp"

struct io_uring_sqe;

namespace ringio {

namespace detail {

/// One io_uring operation. Lives in the awaiting coroutine frame; its address is the SQE's
/// user_data, so submitting allocates nothing. The SQE is filled late (prep), because an
/// operation may wait in the loop's overflow queue until the completion queue has room.
struct io_request : list_node {
    void (*prep)(io_request*, io_uring_sqe*) noexcept = nullptr;
    /// Runs inside the completion loop: records the result and schedules, never resumes.
    void (*complete)(io_request*, int res, std::uint32_t flags) noexcept = nullptr;
};

/// Work posted from another thread: an intrusive node in the loop's lock-free inbox.
struct remote_item {
    remote_item* next = nullptr;
    /// Runs on the loop thread; `live` is false when the loop is being destroyed and the item
    /// is only to be freed.
    void (*run)(remote_item*, bool live) noexcept = nullptr;
};

class ring;
class buffer_ring;

}  // namespace detail

/// What the running kernel offered when the loop's ring was set up.
struct ring_features {
    bool single_issuer = false;
    bool defer_taskrun = false;
    bool coop_taskrun = false;
    bool taskrun_flag = false;     // the kernel flags pending completion work in the SQ ring
    bool ext_arg = false;          // wait with a timeout without spending an SQE
    bool nodrop = false;           // the kernel keeps completions that overflow the CQ
    bool multishot_accept = false;
    bool recv_multishot = false;
    bool buf_ring = false;         // provided buffer rings (io_uring_register_buf_ring)
    bool msg_ring = false;
    bool send_zc = false;
    bool sqpoll = false;           // a kernel thread polls the SQ (loop_options::sqpoll)
    bool registered_ring = false;  // io_uring_enter uses a registered ring index, not the fd
    unsigned sq_entries = 0;
    unsigned cq_entries = 0;
};

struct loop_options {
    unsigned sq_entries = 1024;  // submission queue size; a full SQ is submitted, never fatal
    unsigned cq_entries = 0;     // 0 = 8 * sq_entries
    /// Operations allowed in flight at once; the rest wait in order in the loop's overflow
    /// queue. 0 = automatic: half the CQ on kernels that drop completions when the CQ is full,
    /// unbounded where the kernel keeps them (IORING_FEAT_NODROP, 5.5+) and the loop flushes
    /// them, since an idle connection's receive may stay in flight for hours.
    std::size_t max_in_flight = 0;
    /// Receive buffers shared by every stream of the loop (a provided buffer ring, Linux 5.19+):
    /// a connection holds one only between the data's arrival and its reading, so an idle
    /// connection holds none. A power of two; 0 = every stream
    /// receives into its own memory instead. Allocated (and touched) when the first stream or
    /// server starts. When all are taken, receives wait until one is given back.
    unsigned stream_buffers = 1024;
    unsigned stream_buffer_size = 4096;
    /// A kernel thread polls the submission queue (IORING_SETUP_SQPOLL), so submitting costs no
    /// system call while it is awake; it sleeps after sqpoll_idle without work. It spends a CPU
    /// of its own and rules out DEFER_TASKRUN: worth it only with a core to spare and a steady
    /// stream of submissions (see bench/README.md). Falls back to no SQPOLL where refused.
    bool sqpoll = false;
    std::chrono::milliseconds sqpoll_idle{50};
    /// Registers the ring's fd with itself (io_uring_register_ring_fd, 5.18), which saves the
    /// kernel a file lookup on every io_uring_enter.
    bool register_ring_fd = true;
};

/// An io_uring event loop. Create it on the thread that runs it; it is bound to that thread.
/// Everything except call_soon_threadsafe() must be called from that thread.
class event_loop {
public:
    /// Sets up the ring. Throws std::system_error naming the cause when io_uring is unavailable
    /// (ENOSYS: kernel without io_uring; EPERM: seccomp or kernel.io_uring_disabled; ENOMEM:
    /// RLIMIT_MEMLOCK on kernels before 5.12) and invalid_state_error when this thread already
    /// has a loop.
    explicit event_loop(loop_options options = {});
    ~event_loop();
    event_loop(const event_loop&) = delete;
    event_loop& operator=(const event_loop&) = delete;

    /// The loop of the calling thread, or nullptr.
    [[nodiscard]] static event_loop* current() noexcept;
    /// The loop of the calling thread; throws invalid_state_error when there is none.
    [[nodiscard]] static event_loop& running();

    /// Runs `main` and every task it creates until `main` finishes, then cancels the tasks that
    /// are left and waits for them and for every in-flight kernel operation. Returns main's
    /// value or rethrows its exception.
    template <class T>
    T run_until_complete(task<T> main);

    /// Schedules fn to run on this loop's thread; callable from any thread. Callbacks run in the
    /// order they were posted, between the loop's passes.
    void call_soon_threadsafe(std::function<void()> fn);

    /// The loop's clock, read once per pass (after waiting for completions).
    [[nodiscard]] detail::clock::time_point now() const noexcept { return now_; }
    [[nodiscard]] const ring_features& features() const noexcept { return features_; }
    /// Operations the kernel has not yet completed (including internal ones).
    [[nodiscard]] std::size_t in_flight() const noexcept { return inflight_; }
    [[nodiscard]] std::size_t live_tasks() const noexcept { return live_count_; }
    [[nodiscard]] std::size_t pending_timers() const noexcept { return timers_.size(); }

    // ---- for awaitables (ringio's own and users' custom ones) ----

    /// The Task being run right now, or nullptr between tasks.
    [[nodiscard]] detail::task_base* current_task() const noexcept { return current_; }
    /// Queues `h` (a coroutine of `t`) to resume on a later pass; t is no longer suspended.
    void wake(detail::task_base* t, std::coroutine_handle<> h) {
        t->suspended_at = nullptr;
        ready_.push(ready_entry{t, h});
    }
    /// Makes the Task whose body is `body` and starts it: it is live and its first step queued.
    /// Owns `body` from the call on: if this throws (out of memory), the coroutine is destroyed.
    /// The Task has two references, the loop's and the caller's.
    detail::task_base* start_task(std::coroutine_handle<> body, detail::promise_base* promise);
    /// Submits an operation (or queues it until the CQ has room).
    void submit(detail::io_request* r);
    /// Queues `r` to be submitted at the end of this pass (after the ready tasks ran), so that
    /// its prep() sees everything they did; safe to call from a completion callback.
    void submit_later(detail::io_request* r) { overflow_.push_back(r); }
    /// Asks the kernel to cancel `r`; `r` completes (often with -ECANCELED) later.
    void cancel_io(detail::io_request* r);
    /// Asks the kernel to cancel every operation on `fd` (they complete with -ECANCELED).
    void cancel_fd(int fd);
    void add_timer(detail::timer_node* n) { timers_.push(n); }
    void remove_timer(detail::timer_node* n) noexcept {
        if (n->armed()) timers_.erase(n);
    }
    /// Posts an item from any thread; it runs on the loop thread.
    void post(detail::remote_item* item) noexcept;

    /// A buffer group id not yet used on this loop (for detail::buffer_ring).
    [[nodiscard]] std::uint16_t next_buffer_group() noexcept { return next_bgid_++; }
    /// The receive buffers streams share (loop_options::stream_buffers), set up on first use;
    /// null when the kernel lacks provided buffer rings, or they are off.
    [[nodiscard]] const std::shared_ptr<detail::buffer_ring>& stream_buffers();

    /// Keeps signals blocked in this thread (for wait_signal) until the loop is destroyed.
    void block_signals(const void* sigset);

private:
    friend class detail::task_base;
    friend class detail::buffer_ring;
    friend void detail::defer_resume(std::coroutine_handle<>) noexcept;
    void task_finished() noexcept { --live_count_; }

    struct ready_entry {
        detail::task_base* task = nullptr;
        std::coroutine_handle<> h;
    };

    void run_until(detail::task_base* root);
    void shutdown();
    void run_pass();
    [[nodiscard]] bool finished() const noexcept;
    void run_ready();
    void wait_for_completions(bool block);
    [[nodiscard]] bool kernel_has_work() const noexcept;
    void reap() noexcept;
    void flush_overflow();
    void fire_timers() noexcept;
    void drain_inbox();
    void arm_wakeup();
    void push_sqe(detail::io_request* r);
    io_uring_sqe* get_sqe();

    // Owned by the loop thread.
    std::unique_ptr<detail::ring> ring_;
    ring_features features_;
    detail::ring_buffer<ready_entry> ready_;
    detail::timer_heap timers_;
    detail::intrusive_list<detail::io_request> overflow_;  // waiting for CQ room
    detail::intrusive_list<detail::task_base> live_;
    std::size_t live_count_ = 0;
    std::size_t inflight_ = 0;
    std::size_t max_inflight_ = 0;
    detail::task_base* current_ = nullptr;
    std::coroutine_handle<> inline_next_;  // see detail::tail_call_transfer
    detail::task_base* root_ = nullptr;  // run_until's goal; null while shutting down
    detail::clock::time_point now_;
    bool stopping_ = false;
    std::uint16_t next_bgid_ = 0;
    std::shared_ptr<detail::buffer_ring> stream_buffers_;
    unsigned stream_buffer_count_ = 0;  // 0 once set up, or when off or failed
    unsigned stream_buffer_size_ = 0;

    // Wake-up from other threads: an eventfd read kept armed on the ring.
    int wake_fd_ = -1;
    std::uint64_t wake_buf_ = 0;
    struct wake_request : detail::io_request {
        event_loop* loop = nullptr;
    } wake_req_;
    bool wake_armed_ = false;
    bool inbox_ready_ = false;

    // Signals blocked for wait_signal, restored at destruction.
    std::unique_ptr<unsigned char[]> saved_sigmask_;

    // Touched by any thread.
    std::atomic<detail::remote_item*> inbox_{nullptr};
    std::atomic<int> posters_{0};  // threads inside post()
};

namespace detail {

/// What every awaiter that parks a task keeps: the loop, the Task and the coroutine to resume.
struct parking {
    event_loop* loop = nullptr;
    task_base* task = nullptr;
    std::coroutine_handle<> handle;

    /// Binds to the running loop and its current Task. Returns false, consuming it, when a
    /// cancellation is pending: the awaiter then does not suspend and raises cancelled_error.
    bool park(std::coroutine_handle<> h, bool cancellable = true) {
        loop = &event_loop::running();
        task = loop->current_task();
        if (cancellable && task->take_cancel()) return false;
        handle = h;
        return true;
    }
    /// Queues the parked coroutine to run on a later pass.
    void unpark() noexcept { loop->wake(task, handle); }
};

}  // namespace detail

/// Runs `main` on a new event loop in this thread (asyncio.run). Returns its value or rethrows.
///
///   int main() { return ringio::run(amain()); }
template <class T>
T run(task<T> main, loop_options options = {}) {
    event_loop loop(options);
    return loop.run_until_complete(std::move(main));
}

template <class T>
T event_loop::run_until_complete(task<T> main) {
    if (!main.valid()) throw invalid_state_error("run_until_complete: empty task");
    if (current() != this) throw invalid_state_error("run_until_complete: not the thread that made this loop");
    auto h = main.release();
    detail::task_base* root = start_task(h, &h.promise());  // one reference ours, dropped below
    struct releaser {
        detail::task_base* t;
        ~releaser() { t->release(); }
    } guard{root};
    run_until(root);
    root->mark_retrieved();
    if constexpr (std::is_void_v<T>) {
        h.promise().get();
    } else if constexpr (std::is_reference_v<T>) {
        return h.promise().get();
    } else {
        return std::move(h.promise()).get();
    }
}

}  // namespace ringio

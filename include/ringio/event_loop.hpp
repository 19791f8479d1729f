// The event loop: one per thread, owning one io_uring. See docs/runtime.md for a pass, step by
// step. Most code never touches the loop directly: ringio::run() makes one and the awaitables
// find it through event_loop::current().
#pragma once

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "ringio/detail/intrusive_list.hpp"
#include "ringio/detail/ring_buffer.hpp"
#include "ringio/detail/task_base.hpp"
#include "ringio/detail/timer_heap.hpp"
#include "ringio/errors.hpp"
#include "ringio/task.hpp"

struct io_uring_sqe;

namespace ringio {

class event_loop;

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

/// Which kernel interface a loop uses for its I/O (docs/runtime.md, "Backends").
enum class backend_kind : std::uint8_t {
    automatic,  // io_uring where it can be set up and probed, else epoll (said once on stderr)
    io_uring,
    epoll,
};

struct loop_options {
    /// automatic unless the RINGIO_BACKEND environment variable (io_uring or epoll) says
    /// otherwise. Forcing io_uring where it is blocked throws the setup error.
    backend_kind backend = backend_kind::automatic;
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

namespace detail {

struct io_request;

/// What one kind of operation does: fill its SQE, and take its completion. A static table per
/// kind (Asio's and unifex's type erasure, without virtual): every request is a pointer to one.
struct io_ops {
    /// Fills the SQE (late: an operation may first wait in the overflow queue). On the epoll
    /// backend the SQE it fills is the operation's description (runtime/reactor.hpp).
    void (*prep)(io_request*, io_uring_sqe*) noexcept;
    /// Runs inside the completion loop: records the result and schedules, never resumes.
    void (*complete)(io_request*, int res, std::uint32_t flags) noexcept;
};

/// One I/O operation. Lives in the awaiting coroutine frame (or the object it belongs to); its
/// address is the SQE's user_data, so submitting allocates nothing.
struct io_request : list_node {
    const io_ops* ops = nullptr;
    /// Where the epoll backend holds it (its own bookkeeping; unused on io_uring).
    std::uint8_t reactor_state = 0;

    void prep(io_uring_sqe* sqe) noexcept { ops->prep(this, sqe); }
    void complete(int res, std::uint32_t flags) noexcept { ops->complete(this, res, flags); }
};

/// Work posted from another thread: an intrusive node in a loop's inbox.
struct remote_item {
    remote_item* next = nullptr;
    /// Runs on the loop thread; `live` is false when the loop is gone and the item is only to
    /// be freed (an internal reply that arrived after its loop was destroyed).
    void (*run)(remote_item*, bool live) noexcept = nullptr;
};

/// A loop's door for other threads: a lock-free stack of posted items and an eventfd that wakes
/// the loop. Reference counted, so that a loop_handle (or a call_on reply on its way) still
/// reaches valid memory after the loop is gone: posting then fails cleanly or the item is freed.
class inbox {
public:
    inbox();
    ~inbox();  // frees what is left (run(item, false)), closes the eventfd
    inbox(const inbox&) = delete;
    inbox& operator=(const inbox&) = delete;

    /// Any thread. A user's post (call_soon_threadsafe, a call_on request) is refused (false)
    /// once the inbox is closed; an internal one (a reply, a to_thread result) always goes in.
    bool post(remote_item* item, bool user) noexcept;
    /// The loop's thread: everything posted so far, oldest first.
    remote_item* take() noexcept;
    [[nodiscard]] bool has_items() const noexcept { return head_.load(std::memory_order_acquire) != nullptr; }
    /// Refuses users' posts from now on; returns once no post is in progress.
    void close() noexcept;
    [[nodiscard]] bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }
    /// Returns once no post (of any kind) is in progress.
    void quiesce() const noexcept;
    [[nodiscard]] int fd() const noexcept { return fd_; }

private:
    std::atomic<remote_item*> head_{nullptr};
    std::atomic<std::uint32_t> posting_{0};
    std::atomic<bool> closed_{false};
    int fd_ = -1;
};

class ring;
class reactor;
class buffer_ring;
class suspension;
inline thread_local class loop_core* tls_core = nullptr;  // the calling thread's loop

/// The loop's internals, for ringio's awaitables and sockets. Not for users: event_loop derives
/// from it privately, and ringio's code reaches it through loop_core::running()/current().
class loop_core {
public:
    /// The calling thread's loop, or nullptr.
    [[nodiscard]] static loop_core* current() noexcept { return tls_core; }
    /// The calling thread's loop; throws invalid_state_error when there is none.
    [[nodiscard]] static loop_core& running();
    [[nodiscard]] event_loop& loop() noexcept;

    /// The Task being run right now, or nullptr between tasks.
    [[nodiscard]] task_base* current_task() const noexcept { return current_; }
    /// Queues `h` (a coroutine of `t`) to resume on a later pass. Allocates nothing: the ready
    /// queue always has room for one entry per live Task, and a Task is queued at most once.
    void schedule(task_base* t, std::coroutine_handle<> h) noexcept { ready_.push_unchecked(ready_entry{t, h}); }
    /// Makes the Task whose body is `body` and starts it: it is live and its first step queued.
    /// Owns `body` from the call on: if this throws (out of memory), the coroutine is destroyed.
    /// The Task has two references, the loop's and the caller's.
    task_base* start_task(std::coroutine_handle<> body, promise_base* promise);

    /// Submits an operation (or queues it until the CQ has room).
    void submit(io_request* r);
    /// Queues `r` to be submitted at the end of this pass (after the ready tasks ran), so that
    /// its prep() sees everything they did; safe to call from a completion callback.
    void submit_later(io_request* r) noexcept {
        if (reactor_) [[unlikely]]
            submit_to_reactor(r);
        else
            overflow_.push_back(r);
    }
    /// Asks the kernel to cancel `r`; `r` completes (often with -ECANCELED) later. One still in
    /// the overflow queue completes with -ECANCELED at once. If the ring fails, the failure is
    /// raised by the loop's next pass (never here).
    void cancel_io(io_request* r) noexcept;
    /// Asks the kernel to cancel every operation on `fd` (they complete with -ECANCELED).
    void cancel_fd(int fd) noexcept;

    void add_timer(timer_node* n) { timers_.push(n); }
    void remove_timer(timer_node* n) noexcept {
        if (n->armed()) timers_.erase(n);
    }
    [[nodiscard]] clock::time_point now() const noexcept { return now_; }
    [[nodiscard]] const ring_features& features() const noexcept { return features_; }
    [[nodiscard]] backend_kind backend() const noexcept { return reactor_ ? backend_kind::epoll : backend_kind::io_uring; }
    /// Whether cancel_fd() cancels exactly the operations on an fd (io_uring 5.19+, epoll);
    /// else sockets end their operations with shutdown(2).
    [[nodiscard]] bool can_cancel_fd() const noexcept { return reactor_ || features_.buf_ring; }

    /// epoll only (no-ops on io_uring): a socket fd is registered for good (edge-triggered) and
    /// made non-blocking (`*made_nonblocking`: it was blocking) when its first operation starts,
    /// and forgotten before it is closed or handed away (`handed_back`: it stays open, so what
    /// the backend set on it is undone). False when it cannot be registered (it is then
    /// registered per wait).
    bool watch_fd(int fd, bool* made_nonblocking) noexcept;
    void forget_fd(int fd, bool handed_back) noexcept;

    /// Posts an item to this loop's inbox (the loop's thread, or any other while the loop lives).
    bool post(remote_item* item, bool user) noexcept { return inbox_->post(item, user); }
    [[nodiscard]] const std::shared_ptr<inbox>& door() const noexcept { return inbox_; }

    /// A buffer group id not in use on this loop (for buffer_ring); ids of rings that were
    /// freed are reused. Throws std::system_error (ENOSPC) when all 65,536 are in use.
    std::uint16_t acquire_buffer_group();
    void release_buffer_group(std::uint16_t id) noexcept;
    /// The receive buffers streams share (loop_options::stream_buffers), set up on first use
    /// (registered with the ring, or in userspace for the epoll backend); null when the kernel
    /// lacks provided buffer rings, or they are off.
    [[nodiscard]] const std::shared_ptr<buffer_ring>& stream_buffers();

    /// Keeps signals blocked in this thread (for wait_signal) until the loop is destroyed.
    void block_signals(const void* sigset);

    /// Refuses users' posts (call_soon_threadsafe, call_on) from now on (run_threads, when a
    /// group ends; the destructor).
    void close_inbox() noexcept { inbox_->close(); }

protected:
    explicit loop_core(const loop_options& options);
    ~loop_core();
    loop_core(const loop_core&) = delete;
    loop_core& operator=(const loop_core&) = delete;

    void run_until(task_base* root);
    void shutdown();
    /// What the destructor does while the loop is whole (see ~event_loop).
    void close() noexcept;

    friend class task_base;
    friend class buffer_ring;
    friend void defer_resume(std::coroutine_handle<>) noexcept;
    void task_finished() noexcept { --live_count_; }

    struct ready_entry {
        task_base* task = nullptr;
        std::coroutine_handle<> h;
    };

    void run_pass();
    [[nodiscard]] bool finished() const noexcept;
    [[nodiscard]] bool idle() const noexcept;
    void run_ready();
    void wait_for_completions(bool block);
    [[nodiscard]] bool kernel_has_work() const noexcept;
    void reap() noexcept;
    void flush_overflow();
    void fire_timers() noexcept;
    void drain_inbox() noexcept;
    void arm_wakeup();
    void push_sqe(io_request* r);
    io_uring_sqe* get_sqe();
    void submit_to_reactor(io_request* r) noexcept;
    void setup_backend(const loop_options& options);
    void fail(std::exception_ptr e) noexcept;

    // Owned by the loop thread. Exactly one of ring_ (io_uring) and reactor_ (epoll).
    std::unique_ptr<ring> ring_;
    std::unique_ptr<reactor> reactor_;
    ring_features features_;
    ring_buffer<ready_entry> ready_;
    timer_heap timers_;
    intrusive_list<io_request> overflow_;  // waiting for CQ room
    intrusive_list<task_base> live_;
    std::size_t live_count_ = 0;
    std::size_t inflight_ = 0;
    std::size_t max_inflight_ = 0;
    task_base* current_ = nullptr;
    std::coroutine_handle<> inline_next_;  // see detail::tail_call_transfer
    task_base* root_ = nullptr;            // run_until's goal; null while shutting down
    clock::time_point now_;
    std::exception_ptr failure_;  // a ring failure in a noexcept path, raised by the next pass
    bool running_ = false;        // inside run_until (re-entry is refused)
    bool stopping_ = false;
    std::uint32_t next_bgid_ = 0;  // buffer group ids never used yet start here
    std::vector<std::uint16_t> free_bgids_;
    std::shared_ptr<buffer_ring> stream_buffers_;
    unsigned stream_buffer_count_ = 0;  // 0 once set up, or when off or failed
    unsigned stream_buffer_size_ = 0;

    // Wake-up from other threads: an eventfd read kept armed on the ring.
    std::shared_ptr<inbox> inbox_;
    std::uint64_t wake_buf_ = 0;
    struct wake_request : io_request {
        loop_core* loop = nullptr;
    } wake_req_;
    bool wake_armed_ = false;
    bool inbox_ready_ = false;

    // Signals blocked for wait_signal, restored at destruction.
    std::unique_ptr<unsigned char[]> saved_sigmask_;
};

}  // namespace detail

/// A reference to an event loop that any thread may hold and post through, also after the
/// loop is gone: posting to a closed or destroyed loop throws invalid_state_error instead of
/// touching freed memory. Copyable; cheap (one shared pointer).
///
///   ringio::loop_handle h = ringio::event_loop::running();   // on the loop's thread
///   std::thread([h] { h.call_soon_threadsafe([] { ... }); }).detach();
class loop_handle {
public:
    loop_handle() noexcept = default;
    loop_handle(event_loop& loop) noexcept;  // NOLINT: implicit, as a reference would be
    /// Schedules fn to run on the loop's thread, after the callbacks posted before it. Throws
    /// invalid_state_error when the loop is closed (being destroyed, or a run_threads group
    /// that has ended) or the handle is empty.
    void call_soon_threadsafe(std::function<void()> fn) const;
    /// True once the loop refuses posts.
    [[nodiscard]] bool closed() const noexcept;
    [[nodiscard]] bool valid() const noexcept { return inbox_ != nullptr; }
    [[nodiscard]] const std::shared_ptr<detail::inbox>& door() const noexcept { return inbox_; }

private:
    std::shared_ptr<detail::inbox> inbox_;
};

/// An io_uring event loop. Create it on the thread that runs it; it is bound to that thread.
/// Everything except call_soon_threadsafe() must be called from that thread.
class event_loop : private detail::loop_core {
public:
    /// Sets up the backend (loop_options::backend, RINGIO_BACKEND): io_uring where it can be set
    /// up and probed, else epoll, announced once per process through the log hook ("io_uring
    /// unavailable (CAUSE); using epoll"). Forcing io_uring where it is unavailable throws
    /// std::system_error naming the cause (ENOSYS: kernel without io_uring; EPERM: seccomp or
    /// kernel.io_uring_disabled; ENOMEM: RLIMIT_MEMLOCK on kernels before 5.12); a bad
    /// RINGIO_BACKEND throws std::invalid_argument; a second loop on this thread
    /// invalid_state_error.
    explicit event_loop(loop_options options = {});
    /// Closes the loop: from now on posts to it are refused (invalid_state_error). What was
    /// posted before runs, Tasks still alive are cancelled and waited for, like a last
    /// run_until_complete, so nothing posted is dropped and nothing in flight is abandoned.
    ~event_loop();
    event_loop(const event_loop&) = delete;
    event_loop& operator=(const event_loop&) = delete;

    /// The loop of the calling thread, or nullptr.
    [[nodiscard]] static event_loop* current() noexcept { return detail::tls_core ? &detail::tls_core->loop() : nullptr; }
    /// The loop of the calling thread; throws invalid_state_error when there is none.
    [[nodiscard]] static event_loop& running() { return loop_core::running().loop(); }

    /// Runs `main` and every task it creates until `main` finishes, then cancels the tasks that
    /// are left and waits for them and for every in-flight kernel operation. Returns main's
    /// value or rethrows its exception. Throws invalid_state_error when called from another
    /// thread or while this loop is already running (from one of its own tasks). If the loop
    /// itself fails (the ring), the tasks are still cancelled and waited for before the error
    /// leaves.
    template <class T>
    T run_until_complete(task<T> main);

    /// Schedules fn to run on this loop's thread; callable from any thread. Callbacks run in the
    /// order they were posted, between the loop's passes; one posted while the loop is not
    /// running runs when it runs again, or when it is destroyed. Throws invalid_state_error once
    /// the loop is closed. Use a loop_handle to post from code that may outlive the loop.
    void call_soon_threadsafe(std::function<void()> fn) const;
    /// A handle for other threads (see loop_handle).
    [[nodiscard]] loop_handle handle() noexcept { return loop_handle(*this); }

    /// The loop's clock, read once per pass (after waiting for completions).
    using loop_core::now;
    /// What io_uring offered (all false on the epoll backend).
    using loop_core::features;
    /// The backend this loop runs on: io_uring or epoll (never automatic).
    using loop_core::backend;
    /// Operations the kernel has not yet completed (including internal ones).
    [[nodiscard]] std::size_t in_flight() const noexcept { return inflight_; }
    [[nodiscard]] std::size_t live_tasks() const noexcept { return live_count_; }
    [[nodiscard]] std::size_t pending_timers() const noexcept { return timers_.size(); }

private:
    friend class detail::loop_core;
    friend class loop_handle;
};

namespace detail {
inline event_loop& loop_core::loop() noexcept { return static_cast<event_loop&>(*this); }
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
    if (!main.valid()) throw invalid_state_error("ringio: run_until_complete: empty task");
    if (current() != this) throw invalid_state_error("ringio: run_until_complete: not the thread that made this loop");
    if (running_) throw invalid_state_error("ringio: run_until_complete: this event loop is already running");
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

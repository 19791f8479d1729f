#include "ringio/event_loop.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <string_view>
#include <cstring>
#include <limits>
#include <thread>

#include "reactor.hpp"
#include "ring.hpp"
#include "ringio/detail/buffer_ring.hpp"
#include "ringio/log.hpp"

namespace ringio {
namespace detail {
namespace {

// user_data of operations whose completion needs no action (cancel requests).
constexpr std::uint64_t ignored_udata = 0;

}  // namespace

// ---- the inbox ----

inbox::inbox() {
    fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd_ < 0) throw make_system_error(errno, "ringio: eventfd for the loop's wake-up");
}

inbox::~inbox() {
    // Only internal items can be left (users' posts to a closed inbox are refused, and the loop
    // runs what it accepted): replies that arrived after their loop was destroyed.
    for (remote_item* item = head_.exchange(nullptr); item;) {
        remote_item* next = item->next;
        item->run(item, false);
        item = next;
    }
    ::close(fd_);
}

bool inbox::post(remote_item* item, bool user) noexcept {
    // TRICKY: once the item is published the loop may run it, finish and start destroying
    // itself while this thread still has the eventfd write to do; the loop's destructor waits
    // (quiesce) until no post is in progress. Checking `closed_` after announcing the post pairs
    // with close(): either this post sees it, or close() waits for this post.
    posting_.fetch_add(1, std::memory_order_seq_cst);
    if (user && closed_.load(std::memory_order_seq_cst)) {
        posting_.fetch_sub(1, std::memory_order_seq_cst);
        return false;
    }
    remote_item* head = head_.load(std::memory_order_relaxed);
    do {
        item->next = head;
    } while (!head_.compare_exchange_weak(head, item, std::memory_order_release, std::memory_order_relaxed));
    // Only the post that finds the inbox empty needs to wake the loop: later ones ride along.
    if (head == nullptr) {
        std::uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(fd_, &one, sizeof one);
    }
    posting_.fetch_sub(1, std::memory_order_seq_cst);
    return true;
}

remote_item* inbox::take() noexcept {
    remote_item* list = head_.exchange(nullptr, std::memory_order_acquire);
    remote_item* fifo = nullptr;  // the inbox is a stack: reverse it to keep post order
    while (list) {
        remote_item* next = list->next;
        list->next = fifo;
        fifo = list;
        list = next;
    }
    return fifo;
}

void inbox::close() noexcept {
    closed_.store(true, std::memory_order_seq_cst);
    quiesce();
}

void inbox::quiesce() const noexcept {
    // seq_cst, as the loads and stores it pairs with in post() and close().
    while (posting_.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
}

// ---- setup ----

namespace {

backend_kind requested_backend(const loop_options& options) {
    if (options.backend != backend_kind::automatic) return options.backend;
    const char* env = std::getenv("RINGIO_BACKEND");
    if (!env || !*env) return backend_kind::automatic;
    std::string_view v(env);
    if (v == "io_uring") return backend_kind::io_uring;
    if (v == "epoll") return backend_kind::epoll;
    throw std::invalid_argument(fmt::format("ringio: RINGIO_BACKEND must be io_uring or epoll, not '{}'", v));
}

// The fallback is said once per process, however many loops (threads) make it.
std::atomic<bool> fallback_announced{false};

}  // namespace

void loop_core::setup_backend(const loop_options& options) {
    backend_kind want = requested_backend(options);
    if (want != backend_kind::epoll) {
        try {
            ring_ = std::make_unique<ring>(options, features_);
            return;
        } catch (const ring_unavailable& e) {
            if (want == backend_kind::io_uring) throw;
            if (!fallback_announced.exchange(true))
                log(log_level::warning, "io_uring unavailable ({}); using epoll", e.cause());
        }
    }
    reactor_ = std::make_unique<reactor>();
    reactor_->done_ctx = this;
    reactor_->done = [](void* ctx, io_request* r, int res, std::uint32_t flags) noexcept {
        if (!(flags & IORING_CQE_F_MORE)) --static_cast<loop_core*>(ctx)->inflight_;
        r->complete(res, flags);
    };
}

loop_core::loop_core(const loop_options& options) {
    if (tls_core) throw invalid_state_error("ringio: this thread already has an event loop (run() cannot nest)");
    setup_backend(options);
    // Without NODROP a completion that finds the CQ full is lost: keep in-flight work to half
    // the CQ (the rest is headroom for cancel requests and multishot completions). With NODROP
    // the kernel keeps overflowed completions until the next io_uring_enter flushes them, so
    // long-lived operations (a receive on each of 100,000 idle connections) need no bound.
    // epoll has no queue to overflow.
    if (options.max_in_flight)
        max_inflight_ = options.max_in_flight;
    else
        max_inflight_ = reactor_ || features_.nodrop ? std::numeric_limits<std::size_t>::max() : features_.cq_entries / 2;
    if (features_.buf_ring || reactor_) {  // (on epoll the ring lives in userspace)
        stream_buffer_count_ = options.stream_buffers;
        stream_buffer_size_ = options.stream_buffer_size;
    }
    ready_.reserve(256);
    inbox_ = std::make_shared<inbox>();
    bool made_nonblocking;  // (an eventfd made with EFD_NONBLOCK)
    if (reactor_ && !reactor_->try_watch(inbox_->fd(), &made_nonblocking))
        throw make_system_error(errno, "ringio: epoll_ctl for the loop's wake-up");
    wake_req_.loop = this;
    static constexpr io_ops wake_ops{
        [](io_request* r, io_uring_sqe* sqe) noexcept {
            loop_core* loop = static_cast<wake_request*>(r)->loop;
            // Offset -1: an eventfd has no position (io_uring ignores the offset; a pread would fail).
            io_uring_prep_read(sqe, loop->inbox_->fd(), &loop->wake_buf_, sizeof loop->wake_buf_,
                               static_cast<std::uint64_t>(-1));
        },
        [](io_request* r, int, std::uint32_t) noexcept {
            loop_core* loop = static_cast<wake_request*>(r)->loop;
            loop->wake_armed_ = false;
            loop->inbox_ready_ = true;
        }};
    wake_req_.ops = &wake_ops;
    now_ = clock::now();
    tls_core = this;
}

bool loop_core::watch_fd(int fd, bool* made_nonblocking) noexcept {
    *made_nonblocking = false;
    return !reactor_ || reactor_->try_watch(fd, made_nonblocking);
}
void loop_core::forget_fd(int fd, bool handed_back) noexcept {
    if (reactor_) reactor_->forget(fd, handed_back);
}
void loop_core::submit_to_reactor(io_request* r) noexcept {
    ++inflight_;
    reactor_->submit(r);
}

void loop_core::close() noexcept {
    // Users' posts are refused from here on; what was accepted runs, what is alive is cancelled
    // and waited for (a loop that never ran, or ran and was posted to since, ends the same way).
    inbox_->close();
    try {
        if (!idle() || wake_armed_) shutdown();
    } catch (...) {
        // The ring failed (io_uring_enter): what is still in flight cannot be waited for.
        // Tearing the ring down makes the kernel finish it; the Tasks still alive are abandoned
        // (their frames are leaked rather than freed under the kernel).
        log(log_level::error, "event loop failed while shutting down: {}; {} task(s) abandoned",
            describe(std::current_exception()), live_count_);
    }
    // Internal posts may still be on their way (a worker's eventfd write after its result ran).
    inbox_->quiesce();
    drain_inbox();
}

loop_core::~loop_core() {
    // Streams that outlive the loop may still hold the ring: it stays valid memory for them.
    if (stream_buffers_) stream_buffers_->detach();
    if (reactor_) reactor_->buffers = nullptr;
    stream_buffers_.reset();
    if (saved_sigmask_) pthread_sigmask(SIG_SETMASK, reinterpret_cast<sigset_t*>(saved_sigmask_.get()), nullptr);
    ring_.reset();
    reactor_.reset();
    tls_core = nullptr;
}

loop_core& loop_core::running() {
    if (!tls_core) throw invalid_state_error("ringio: no event loop in this thread (call this inside ringio::run)");
    return *tls_core;
}

const std::shared_ptr<buffer_ring>& loop_core::stream_buffers() {
    if (!stream_buffers_ && stream_buffer_count_ > 0) {
        unsigned count = std::exchange(stream_buffer_count_, 0);
        try {
            stream_buffers_ = std::make_shared<buffer_ring>(*this, count, stream_buffer_size_, true);
            if (reactor_) reactor_->buffers = stream_buffers_.get();
        } catch (const std::exception& e) {
            // Streams then receive into their own memory: slower and larger, but correct.
            log(log_level::warning, "stream receive buffers unavailable ({}); using one receive per read", e.what());
        }
    }
    return stream_buffers_;
}

std::uint16_t loop_core::acquire_buffer_group() {
    if (!free_bgids_.empty()) {
        std::uint16_t id = free_bgids_.back();
        free_bgids_.pop_back();
        return id;
    }
    if (next_bgid_ > std::numeric_limits<std::uint16_t>::max())
        throw make_system_error(ENOSPC, "ringio: all 65,536 buffer group ids of this loop are in use");
    free_bgids_.reserve(next_bgid_ + 1);  // so that release_buffer_group never allocates
    return static_cast<std::uint16_t>(next_bgid_++);
}

void loop_core::release_buffer_group(std::uint16_t id) noexcept { free_bgids_.push_back(id); }

void defer_resume(std::coroutine_handle<> h) noexcept { tls_core->inline_next_ = h; }

task_base* loop_core::start_task(std::coroutine_handle<> body, promise_base* promise) {
    task_base* t = task_base::make(body, promise);  // destroys body if it throws
    try {
        // Room for every live Task's entry, so that waking one never allocates.
        ready_.reserve(live_count_ + 1);
    } catch (...) {
        t->release();  // the only reference: destroys the coroutine
        throw;
    }
    t->add_ref();
    schedule(t, body);
    live_.push_back(t);
    ++live_count_;
    return t;
}

void loop_core::fail(std::exception_ptr e) noexcept {
    if (!failure_) failure_ = std::move(e);
}

// ---- submission ----

io_uring_sqe* loop_core::get_sqe() {
    io_uring* r = &ring_->raw;
    io_uring_sqe* sqe = io_uring_get_sqe(r);
    while (!sqe) {
        // SQ full: hand what is queued to the kernel and take a fresh slot. EBUSY means the
        // kernel holds overflowed completions: reap them (they only schedule) and retry.
        int rc = io_uring_submit(r);
        if (rc == -EBUSY || rc == -EAGAIN) reap();
        else if (rc < 0 && rc != -EINTR) throw make_system_error(-rc, "ringio: io_uring_submit");
        sqe = io_uring_get_sqe(r);
    }
    return sqe;
}

void loop_core::push_sqe(io_request* r) {
    if (reactor_) {
        submit_to_reactor(r);
        return;
    }
    io_uring_sqe* sqe = get_sqe();
    r->prep(sqe);
    io_uring_sqe_set_data(sqe, r);
    ++inflight_;
}

void loop_core::submit(io_request* r) {
    // In-flight work stays below what the CQ holds; the rest waits in order.
    if (inflight_ >= max_inflight_ || !overflow_.empty()) {
        overflow_.push_back(r);
        return;
    }
    push_sqe(r);
}

void loop_core::cancel_io(io_request* r) noexcept {
    if (reactor_) {
        reactor_->cancel(r);
        return;
    }
    if (r->linked()) {  // never reached the kernel
        intrusive_list<io_request>::erase(r);
        r->complete(-ECANCELED, 0);
        return;
    }
    try {
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_cancel(sqe, r, 0);
        io_uring_sqe_set_data64(sqe, ignored_udata);
        ++inflight_;
    } catch (...) {
        fail(std::current_exception());
    }
}

void loop_core::cancel_fd(int fd) noexcept {
    if (reactor_) {
        reactor_->cancel_fd(fd);
        return;
    }
    try {
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, ignored_udata);
        ++inflight_;
    } catch (...) {
        fail(std::current_exception());
    }
}

void loop_core::flush_overflow() {
    while (inflight_ < max_inflight_ && !overflow_.empty()) push_sqe(overflow_.pop_front());
}

// ---- completion ----

void loop_core::reap() noexcept {
    io_uring* r = &ring_->raw;
    unsigned head;
    unsigned count = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(r, head, cqe) {
        ++count;
        std::uint64_t udata = cqe->user_data;
        if (udata == LIBURING_UDATA_TIMEOUT) continue;  // liburing's own wait timeout (no EXT_ARG)
        if (!(cqe->flags & IORING_CQE_F_MORE)) --inflight_;
        if (udata == ignored_udata) continue;
        auto* req = reinterpret_cast<io_request*>(static_cast<std::uintptr_t>(udata));
        req->complete(cqe->res, cqe->flags);
    }
    io_uring_cq_advance(r, count);
}

bool loop_core::kernel_has_work() const noexcept {
    io_uring* r = &ring_->raw;
    if (!features_.taskrun_flag || io_uring_sq_ready(r) > 0) return true;
    unsigned flags = IO_URING_READ_ONCE(*r->sq.kflags);
    return flags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW);
}

void loop_core::wait_for_completions(bool block) {
    if (reactor_) {
        reactor_->flush();  // what this pass submitted: often done at once, without waiting
        long long timeout = 0;
        // Not while operations wait for the next flush (submitted by this one's completions),
        // nor with nothing in flight and no timer (nothing could end the wait; at shutdown).
        // Nor when the flush completed the wake-up read (the inbox waits to be drained).
        if (block && ready_.empty() && !inbox_ready_ && !reactor_->has_work() && (inflight_ > 0 || !timers_.empty())) {
            timeout = -1;
            if (!timers_.empty()) {
                auto wait = timers_.top()->deadline - clock::now();
                timeout = std::max<long long>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count());
            }
        }
        reactor_->wait(timeout);
        return;
    }
    io_uring* r = &ring_->raw;
    int rc = 0;
    if (!block) {
        if (features_.sqpoll) {
            // The kernel thread takes the SQEs (io_uring_submit enters only to wake it); enter
            // for events only when completion work waits for this thread.
            rc = io_uring_submit(r);
            unsigned flags = IO_URING_READ_ONCE(*r->sq.kflags);
            if (rc >= 0 && (flags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW))) rc = io_uring_get_events(r);
        } else if (kernel_has_work()) {
            // A busy pass with nothing to submit and no completion work pending costs no syscall.
            rc = io_uring_submit_and_get_events(r);
        }
    } else if (!timers_.empty()) {
        auto wait = timers_.top()->deadline - clock::now();
        if (wait <= clock::duration::zero()) {
            if (kernel_has_work()) rc = io_uring_submit_and_get_events(r);
        } else {
            auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count();
            __kernel_timespec ts{};
            ts.tv_sec = ns / 1'000'000'000;
            ts.tv_nsec = ns % 1'000'000'000;
            io_uring_cqe* cqe = nullptr;
            rc = io_uring_submit_and_wait_timeout(r, &cqe, 1, &ts, nullptr);
        }
    } else {
        rc = io_uring_submit_and_wait(r, 1);
    }
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN)
        throw make_system_error(-rc, "ringio: waiting for io_uring completions");
    reap();
    flush_overflow();
}

// ---- timers and the inbox ----

void loop_core::fire_timers() noexcept {
    while (!timers_.empty() && timers_.top()->deadline <= now_) {
        timer_node* n = timers_.pop();
        n->fire(n);
    }
}

void loop_core::drain_inbox() noexcept {
    inbox_ready_ = false;
    for (remote_item* item = inbox_->take(); item;) {
        remote_item* next = item->next;
        item->run(item, true);
        item = next;
    }
}

void loop_core::arm_wakeup() {
    if (wake_armed_ || stopping_) return;
    wake_armed_ = true;
    push_sqe(&wake_req_);  // bypasses the overflow queue: the loop must always hear other threads
}

// ---- passes ----

void loop_core::run_ready() {
    // Only what was ready when the pass began: tasks that keep yielding cannot starve I/O.
    for (std::size_t n = ready_.size(); n > 0; --n) {
        ready_entry e = ready_.pop();
        current_ = e.task;
        if (!e.task->started) [[unlikely]] {
            e.task->started = true;
            if (e.task->cancel_requested()) {  // cancelled before its first step: never runs
                e.task->finish_unstarted();
                continue;
            }
        }
        e.h.resume();
        while (inline_next_) std::exchange(inline_next_, {}).resume();
    }
    current_ = nullptr;
}

bool loop_core::finished() const noexcept { return root_ ? root_->done() : live_count_ == 0; }

bool loop_core::idle() const noexcept {
    return live_count_ == 0 && inflight_ == 0 && ready_.empty() && overflow_.empty() && !inbox_->has_items();
}

void loop_core::run_pass() {
    if (failure_) std::rethrow_exception(std::exchange(failure_, nullptr));
    run_ready();
    if (inbox_ready_) drain_inbox();
    arm_wakeup();
    flush_overflow();  // including sends queued by this pass's writes
    // Block only when nothing is ready and the goal is not reached yet.
    wait_for_completions(ready_.empty() && !finished());
    now_ = clock::now();
    fire_timers();
}

void loop_core::run_until(task_base* root) {
    running_ = true;
    root_ = root;
    std::exception_ptr failure;
    try {
        while (!root->done()) run_pass();
    } catch (...) {
        // The loop itself failed (the ring): still cancel what is left and wait for it, so that
        // no frame is freed under the kernel, then report the failure.
        failure = std::current_exception();
    }
    root_ = nullptr;
    try {
        shutdown();
    } catch (...) {
        if (!failure) failure = std::current_exception();
    }
    running_ = false;
    if (failure) std::rethrow_exception(failure);
}

void loop_core::shutdown() {
    // Like asyncio.run: cancel the Tasks that are left, each once (and Tasks started while the
    // others unwind, on the next round), and run until all have finished; then cancel every
    // operation still in flight and wait for it, so that nothing the kernel may touch is freed.
    // Work posted meanwhile runs; if it started Tasks, round again. What is posted after the last
    // round waits in the inbox for the next run, or for the destructor (which closes the inbox
    // first, so a thread that keeps posting cannot keep a shutdown from ending).
    struct flag_request : io_request {
        bool* flag;
    };
    while (true) {
        while (live_count_ > 0) {
            live_.for_each([](task_base* t) {
                if (!t->shutdown_cancelled) {
                    t->shutdown_cancelled = true;
                    t->cancel();
                }
            });
            run_pass();
        }
        // Every task is done; what is still in flight or queued belongs to no one who will wait
        // for it (a background flush to a peer that does not read, say). Cancel all of it,
        // repeatedly if completions queue more, so that the loop can end.
        stopping_ = true;
        if (wake_armed_) cancel_io(&wake_req_);
        bool cancel_any_pending = false;
        flag_request req;
        req.flag = &cancel_any_pending;
        static constexpr io_ops cancel_any_ops{
            [](io_request*, io_uring_sqe* sqe) noexcept { io_uring_prep_cancel(sqe, nullptr, IORING_ASYNC_CANCEL_ANY); },
            [](io_request* r, int, std::uint32_t) noexcept { *static_cast<flag_request*>(r)->flag = false; }};
        req.ops = &cancel_any_ops;
        while (inflight_ > 0 || !ready_.empty() || !overflow_.empty()) {
            while (io_request* r = overflow_.pop_front()) r->complete(-ECANCELED, 0);
            if (reactor_) {
                reactor_->cancel_all();
            } else if (inflight_ > 0 && !cancel_any_pending) {
                cancel_any_pending = true;
                push_sqe(&req);
            }
            run_ready();
            while (io_request* r = overflow_.pop_front()) r->complete(-ECANCELED, 0);
            wait_for_completions(ready_.empty() && inflight_ > 0);
        }
        stopping_ = false;
        if (failure_) std::rethrow_exception(std::exchange(failure_, nullptr));
        // What was posted until now runs (the wake-up read is gone: look at the inbox itself).
        drain_inbox();
        if (live_count_ == 0 && ready_.empty() && overflow_.empty() && inflight_ == 0) break;
    }
}

void loop_core::block_signals(const void* set) {
    auto* add = static_cast<const sigset_t*>(set);
    if (!saved_sigmask_) {
        saved_sigmask_ = std::make_unique<unsigned char[]>(sizeof(sigset_t));
        pthread_sigmask(SIG_BLOCK, add, reinterpret_cast<sigset_t*>(saved_sigmask_.get()));
    } else {
        pthread_sigmask(SIG_BLOCK, add, nullptr);
    }
}

namespace {
struct callback_item : remote_item {
    std::function<void()> fn;
};

void post_callback(inbox& box, std::function<void()> fn) {
    auto item = std::make_unique<callback_item>();
    item->fn = std::move(fn);
    item->run = [](remote_item* i, bool live) noexcept {
        std::unique_ptr<callback_item> self(static_cast<callback_item*>(i));
        if (!live) return;
        try {
            self->fn();
        } catch (...) {
            log(log_level::error, "exception in call_soon_threadsafe callback: {}", describe(std::current_exception()));
        }
    };
    if (!box.post(item.get(), true))
        throw invalid_state_error("ringio: call_soon_threadsafe: the event loop is closed");
    (void)item.release();
}
}  // namespace

}  // namespace detail

// ---- the public faces ----

event_loop::event_loop(loop_options options) : loop_core(options) {}

event_loop::~event_loop() { close(); }

void event_loop::call_soon_threadsafe(std::function<void()> fn) const { detail::post_callback(*inbox_, std::move(fn)); }

loop_handle::loop_handle(event_loop& loop) noexcept : inbox_(loop.inbox_) {}

void loop_handle::call_soon_threadsafe(std::function<void()> fn) const {
    if (!inbox_) throw invalid_state_error("ringio: call_soon_threadsafe on an empty loop_handle");
    detail::post_callback(*inbox_, std::move(fn));
}

bool loop_handle::closed() const noexcept { return !inbox_ || inbox_->closed(); }

}  // namespace ringio

#include "ringio/event_loop.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <limits>
#include <thread>

#include "ring.hpp"
#include "ringio/detail/buffer_ring.hpp"
#include "ringio/log.hpp"

namespace ringio {
namespace {

thread_local event_loop* tls_loop = nullptr;

// user_data of operations whose completion needs no action (cancel requests).
constexpr std::uint64_t ignored_udata = 0;

}  // namespace

event_loop::event_loop(loop_options options) {
    if (tls_loop) throw invalid_state_error("ringio: this thread already has an event loop (run() cannot nest)");
    ring_ = std::make_unique<detail::ring>(options, features_);
    // Without NODROP a completion that finds the CQ full is lost: keep in-flight work to half
    // the CQ (the rest is headroom for cancel requests and multishot completions). With NODROP
    // the kernel keeps overflowed completions until the next io_uring_enter flushes them, so
    // long-lived operations (a receive on each of 100,000 idle connections) need no bound.
    if (options.max_in_flight)
        max_inflight_ = options.max_in_flight;
    else
        max_inflight_ = features_.nodrop ? std::numeric_limits<std::size_t>::max() : features_.cq_entries / 2;
    if (features_.buf_ring) {
        stream_buffer_count_ = options.stream_buffers;
        stream_buffer_size_ = options.stream_buffer_size;
    }
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) throw make_system_error(errno, "ringio: eventfd for the loop's wake-up");
    wake_req_.loop = this;
    wake_req_.prep = [](detail::io_request* r, io_uring_sqe* sqe) noexcept {
        event_loop* loop = static_cast<wake_request*>(r)->loop;
        io_uring_prep_read(sqe, loop->wake_fd_, &loop->wake_buf_, sizeof loop->wake_buf_, 0);
    };
    wake_req_.complete = [](detail::io_request* r, int, std::uint32_t) noexcept {
        event_loop* loop = static_cast<wake_request*>(r)->loop;
        loop->wake_armed_ = false;
        loop->inbox_ready_ = true;
    };
    now_ = detail::clock::now();
    tls_loop = this;
}

event_loop::~event_loop() {
    // run_until_complete leaves nothing in flight; a loop that never ran may still have its
    // wake-up read armed, so cancel it and wait for its completion before the ring goes away.
    if (wake_armed_) {
        stopping_ = true;
        cancel_io(&wake_req_);
        while (inflight_ > 0) wait_for_completions(true);
    }
    while (posters_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    // Callbacks posted after the loop stopped are dropped (freed, not run).
    for (auto* item = inbox_.exchange(nullptr); item;) {
        auto* next = item->next;
        item->run(item, false);
        item = next;
    }
    // Streams that outlive the loop may still hold the ring: it stays valid memory for them.
    if (stream_buffers_) stream_buffers_->detach();
    stream_buffers_.reset();
    if (saved_sigmask_) pthread_sigmask(SIG_SETMASK, reinterpret_cast<sigset_t*>(saved_sigmask_.get()), nullptr);
    ::close(wake_fd_);
    ring_.reset();
    tls_loop = nullptr;
}

event_loop* event_loop::current() noexcept { return tls_loop; }

const std::shared_ptr<detail::buffer_ring>& event_loop::stream_buffers() {
    if (!stream_buffers_ && stream_buffer_count_ > 0) {
        unsigned count = std::exchange(stream_buffer_count_, 0);
        try {
            stream_buffers_ = std::make_shared<detail::buffer_ring>(*this, count, stream_buffer_size_, true);
        } catch (const std::exception& e) {
            // Streams then receive into their own memory: slower and larger, but correct.
            log(log_level::warning, "stream receive buffers unavailable ({}); using one receive per read", e.what());
        }
    }
    return stream_buffers_;
}

void detail::defer_resume(std::coroutine_handle<> h) noexcept { tls_loop->inline_next_ = h; }

event_loop& event_loop::running() {
    if (!tls_loop) throw invalid_state_error("ringio: no event loop in this thread (call this inside ringio::run)");
    return *tls_loop;
}

detail::task_base* event_loop::start_task(std::coroutine_handle<> body, detail::promise_base* promise) {
    detail::task_base* t = detail::task_base::make(body, promise);  // destroys body if it throws
    t->add_ref();
    try {
        wake(t, body);  // first: may grow the ready queue, which may throw
    } catch (...) {
        t->release();
        t->release();  // the last: destroys the coroutine
        throw;
    }
    live_.push_back(t);
    ++live_count_;
    return t;
}

// ---- submission ----

io_uring_sqe* event_loop::get_sqe() {
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

void event_loop::push_sqe(detail::io_request* r) {
    io_uring_sqe* sqe = get_sqe();
    r->prep(r, sqe);
    io_uring_sqe_set_data(sqe, r);
    ++inflight_;
}

void event_loop::submit(detail::io_request* r) {
    // In-flight work stays below what the CQ holds; the rest waits in order.
    if (inflight_ >= max_inflight_ || !overflow_.empty()) {
        overflow_.push_back(r);
        return;
    }
    push_sqe(r);
}

void event_loop::cancel_io(detail::io_request* r) {
    if (r->linked()) {  // never reached the kernel
        detail::intrusive_list<detail::io_request>::erase(r);
        r->complete(r, -ECANCELED, 0);
        return;
    }
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel(sqe, r, 0);
    io_uring_sqe_set_data64(sqe, ignored_udata);
    ++inflight_;
}

void event_loop::cancel_fd(int fd) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, ignored_udata);
    ++inflight_;
}

void event_loop::flush_overflow() {
    while (inflight_ < max_inflight_ && !overflow_.empty()) push_sqe(overflow_.pop_front());
}

// ---- completion ----

void event_loop::reap() noexcept {
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
        auto* req = reinterpret_cast<detail::io_request*>(static_cast<std::uintptr_t>(udata));
        req->complete(req, cqe->res, cqe->flags);
    }
    io_uring_cq_advance(r, count);
}

bool event_loop::kernel_has_work() const noexcept {
    io_uring* r = &ring_->raw;
    if (!features_.taskrun_flag || io_uring_sq_ready(r) > 0) return true;
    unsigned flags = IO_URING_READ_ONCE(*r->sq.kflags);
    return flags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW);
}

void event_loop::wait_for_completions(bool block) {
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
        auto wait = timers_.top()->deadline - detail::clock::now();
        if (wait <= detail::clock::duration::zero()) {
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

void event_loop::fire_timers() noexcept {
    while (!timers_.empty() && timers_.top()->deadline <= now_) {
        detail::timer_node* n = timers_.pop();
        n->fire(n);
    }
}

void event_loop::post(detail::remote_item* item) noexcept {
    // TRICKY: once the item is published the loop may run it, finish and start destroying
    // itself while this thread still has the eventfd write to do; the destructor waits for
    // posters_ to drop to zero before closing the fd and freeing the loop.
    posters_.fetch_add(1, std::memory_order_acquire);
    detail::remote_item* head = inbox_.load(std::memory_order_relaxed);
    do {
        item->next = head;
    } while (!inbox_.compare_exchange_weak(head, item, std::memory_order_release, std::memory_order_relaxed));
    // Only the post that finds the inbox empty needs to wake the loop: later ones ride along.
    if (head == nullptr) {
        std::uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
    }
    posters_.fetch_sub(1, std::memory_order_release);
}

void event_loop::drain_inbox() {
    inbox_ready_ = false;
    detail::remote_item* list = inbox_.exchange(nullptr, std::memory_order_acquire);
    detail::remote_item* fifo = nullptr;  // the inbox is a stack: reverse it to keep post order
    while (list) {
        detail::remote_item* next = list->next;
        list->next = fifo;
        fifo = list;
        list = next;
    }
    while (fifo) {
        detail::remote_item* next = fifo->next;
        fifo->run(fifo, true);
        fifo = next;
    }
}

void event_loop::arm_wakeup() {
    if (wake_armed_ || stopping_) return;
    wake_armed_ = true;
    push_sqe(&wake_req_);  // bypasses the overflow queue: the loop must always hear other threads
}

namespace {
struct callback_item : detail::remote_item {
    std::function<void()> fn;
};
}  // namespace

void event_loop::call_soon_threadsafe(std::function<void()> fn) {
    auto* item = new callback_item;
    item->fn = std::move(fn);
    item->run = [](detail::remote_item* i, bool live) noexcept {
        std::unique_ptr<callback_item> self(static_cast<callback_item*>(i));
        if (!live) return;
        try {
            self->fn();
        } catch (...) {
            log(log_level::error, "exception in call_soon_threadsafe callback: {}", describe(std::current_exception()));
        }
    };
    post(item);
}

// ---- passes ----

void event_loop::run_ready() {
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

bool event_loop::finished() const noexcept { return root_ ? root_->done() : live_count_ == 0; }

void event_loop::run_pass() {
    run_ready();
    if (inbox_ready_) drain_inbox();
    arm_wakeup();
    flush_overflow();  // including sends queued by this pass's writes
    // Block only when nothing is ready and the goal is not reached yet.
    wait_for_completions(ready_.empty() && !finished());
    now_ = detail::clock::now();
    fire_timers();
}

void event_loop::run_until(detail::task_base* root) {
    root_ = root;
    while (!root->done()) run_pass();
    root_ = nullptr;
    shutdown();
}

void event_loop::shutdown() {
    // Cancel what is left (each task once, like asyncio.run), including tasks that the
    // cancelled ones start while they unwind, and run until every one has finished.
    while (live_count_ > 0) {
        live_.for_each([](detail::task_base* t) {
            if (!t->shutdown_cancelled) {
                t->shutdown_cancelled = true;
                t->cancel();
            }
        });
        run_pass();
    }
    stopping_ = true;
    if (wake_armed_) cancel_io(&wake_req_);
    // Every task is done; what is still in flight or queued belongs to no one who will wait for
    // it (a background flush to a peer that does not read, say). Cancel all of it, repeatedly
    // if completions queue more, so that the loop can end.
    bool cancel_any_pending = false;
    struct flag_request : detail::io_request {
        bool* flag;
    } req;
    req.flag = &cancel_any_pending;
    req.prep = [](detail::io_request*, io_uring_sqe* sqe) noexcept {
        io_uring_prep_cancel(sqe, nullptr, IORING_ASYNC_CANCEL_ANY);
    };
    req.complete = [](detail::io_request* r, int, std::uint32_t) noexcept { *static_cast<flag_request*>(r)->flag = false; };
    while (inflight_ > 0 || !ready_.empty() || !overflow_.empty()) {
        while (detail::io_request* r = overflow_.pop_front()) r->complete(r, -ECANCELED, 0);
        if (inflight_ > 0 && !cancel_any_pending) {
            cancel_any_pending = true;
            push_sqe(&req);
        }
        run_ready();
        while (detail::io_request* r = overflow_.pop_front()) r->complete(r, -ECANCELED, 0);
        wait_for_completions(ready_.empty() && inflight_ > 0);
    }
    if (inbox_ready_ || inbox_.load()) drain_inbox();
    stopping_ = false;
}

void event_loop::block_signals(const void* set) {
    auto* add = static_cast<const sigset_t*>(set);
    if (!saved_sigmask_) {
        saved_sigmask_ = std::make_unique<unsigned char[]>(sizeof(sigset_t));
        pthread_sigmask(SIG_BLOCK, add, reinterpret_cast<sigset_t*>(saved_sigmask_.get()));
    } else {
        pthread_sigmask(SIG_BLOCK, add, nullptr);
    }
}

}  // namespace ringio

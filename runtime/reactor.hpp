// The epoll backend: runs the loop's operations where io_uring is unavailable. Private to the
// runtime (docs/runtime.md, "The epoll backend").
//
// An operation is still an io_request whose prep() fills an io_uring SQE: the SQE is the
// operation's description (opcode, fd, buffer, length, flags), so streams, sockets and servers
// need no second code path. The reactor reads that description and performs the operation with
// the matching non-blocking system call, at the end of the pass it was submitted in (as the ring
// would); one that would block waits for its fd's readiness. Every socket fd is registered once,
// edge-triggered, for reading and writing, and an fd's readiness is remembered, so that an
// operation on an fd known not to be ready waits without a system call; other fds (pipes, a
// signalfd) are registered one-shot per wait.
#pragma once

#include <sys/epoll.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "ringio/event_loop.hpp"

namespace ringio::detail {

class reactor {
public:
    /// Makes the epoll instance; throws std::system_error.
    reactor();
    ~reactor();
    reactor(const reactor&) = delete;
    reactor& operator=(const reactor&) = delete;

    /// Takes `r` (the loop counted it in flight); it is performed at the next flush().
    void submit(io_request* r) noexcept { pending_.push_back(r); }
    /// Performs what was submitted: each operation completes (through `done`) or waits for its fd.
    void flush() noexcept;
    /// Waits for readiness (at most `timeout_ns`; -1: without limit, 0: not at all) and performs
    /// the operations whose fds became ready. Throws std::system_error if epoll_wait fails.
    void wait(long long timeout_ns);

    // Cancellation, as on io_uring: asynchronous (the operation completes at the next flush,
    // never inside the call), and in submission order (an operation submitted earlier in the
    // pass is performed first, and keeps its result if it completes; else -ECANCELED).

    /// Cancels `r` if it has not completed yet.
    void cancel(io_request* r) noexcept;
    /// Cancels every operation on `fd`.
    void cancel_fd(int fd) noexcept;
    /// Cancels every operation (shutdown).
    void cancel_all() noexcept;

    /// Registers a socket fd for good (edge-triggered, in and out) and makes it non-blocking.
    /// False (errno set) if epoll refuses it: it is then registered per wait.
    bool try_watch(int fd) noexcept;
    /// The fd is about to be closed (or handed away): it is no longer watched.
    void forget(int fd) noexcept;

    /// Called when an operation ends (the loop counts it out and runs its completion).
    void (*done)(void* ctx, io_request* r, int res) noexcept = nullptr;
    void* done_ctx = nullptr;

private:
    struct fd_entry {
        intrusive_list<io_request> waiting;  // operations waiting for this fd's readiness
        bool watched = false;                // registered for good (a socket)
        bool registered = false;             // known to epoll (watched, or one-shot)
        bool readable = true;                // readiness as last seen (edge-triggered fds)
        bool writable = true;
        bool connecting = false;             // a connect() is in progress
    };

    fd_entry& entry(int fd);            // made on first use (may throw std::bad_alloc)
    fd_entry* find(int fd) noexcept;    // null if never used
    /// Performs r now: its result, or -EAGAIN (then it waits, parked on its fd).
    void attempt(io_request* r) noexcept;
    void park(io_request* r, int fd, std::uint32_t events) noexcept;
    void rearm_oneshot(int fd, fd_entry& e) noexcept;
    void finish(io_request* r, int res) noexcept;
    void on_ready(int fd, std::uint32_t events) noexcept;
    static bool in(const intrusive_list<io_request>& list, const io_request* r) noexcept;

    int epfd_ = -1;
    intrusive_list<io_request> pending_;           // submitted, not tried yet
    intrusive_list<io_request> cancel_untried_;    // cancelled before being tried: tried once
    intrusive_list<io_request> cancelled_;         // waited, cancelled: -ECANCELED at the flush
    std::vector<std::unique_ptr<fd_entry>> fds_;
    std::vector<epoll_event> events_;
};

}  // namespace ringio::detail

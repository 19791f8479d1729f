// The epoll backend: runs the loop's operations where io_uring is unavailable. Private to the
// runtime (docs/runtime.md, "Backends").
//
// An operation is still an io_request whose prep() fills an io_uring SQE: the SQE is the
// operation's description (opcode, fd, buffer, length, flags), so streams, sockets and servers
// need no second code path. The reactor reads that description and performs the operation with
// the matching non-blocking system call, at the end of the pass it was submitted in (as the ring
// would); one that would block waits for its fd's readiness.
//
// Socket fds are registered once, edge-triggered, for reading (and for writing only while a
// writer waits: an event per ACK otherwise), and an fd's readiness is remembered, so that an
// operation on an fd known not to be ready waits without a system call; a short read of a
// stream socket or a short send also means "not ready" (a later arrival raises a new edge).
// A receive that selects a provided buffer (IOSQE_BUFFER_SELECT) takes a free one from the
// loop's stream buffers, kept in userspace, only when data is there to fill it (so an idle
// connection holds none, as on io_uring). Other fds (pipes, a signalfd, a tty) are registered
// one-shot per wait; regular files, which epoll cannot watch, are read and written with plain
// calls on the loop's thread.
//
// Every request carries its place in the reactor (io_request::reactor_state), so cancelling one
// is O(1). Cancellation is asynchronous, as on io_uring: the operation completes at the next
// flush, never inside the call; one cancelled before it was tried is tried once first (as it
// would reach the kernel before its cancel) and keeps a result it gets at once.
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
    void submit(io_request* r) noexcept;
    /// Performs what was submitted before the call: each operation completes (through `done`)
    /// or waits for its fd. What their completions submit waits for the next flush.
    void flush() noexcept;
    /// Something waits for the next flush (the loop must not block before it).
    [[nodiscard]] bool has_work() const noexcept { return !pending_.empty() || !cancelled_.empty(); }
    /// Waits for readiness (at most `timeout_ns`; -1: without limit, 0: not at all) and performs
    /// the operations whose fds became ready, at most events_per_pass fds' worth (the others
    /// stay ready in the kernel for the next call), so that the tasks woken first run, and their
    /// sends leave, before the next fds are read. Throws std::system_error if epoll_wait fails.
    void wait(long long timeout_ns);

    void cancel(io_request* r) noexcept;
    /// Cancels every operation on `fd`: those waiting, and those submitted and not tried yet
    /// (tried once first).
    void cancel_fd(int fd) noexcept;
    /// Cancels every operation (shutdown).
    void cancel_all() noexcept;

    /// Registers a socket fd (edge-triggered) and makes it non-blocking; `*made_nonblocking`
    /// says whether it was blocking before. False (errno set) if epoll refuses it: it is then
    /// registered per wait.
    bool try_watch(int fd, bool* made_nonblocking) noexcept;
    /// The fd is about to be closed, or handed away (`handed_back`: what the reactor set on it,
    /// TCP_INQ, is undone): it is no longer watched.
    void forget(int fd, bool handed_back) noexcept;

    /// Called when an operation completes (flags: IORING_CQE_F_MORE while a multishot accept
    /// goes on); the loop counts it out and runs its completion.
    void (*done)(void* ctx, io_request* r, int res, std::uint32_t flags) noexcept = nullptr;
    void* done_ctx = nullptr;
    /// The loop's stream buffers, in userspace: a receive with IOSQE_BUFFER_SELECT takes a free
    /// one, as the kernel does from a registered ring (-ENOBUFS when none is free).
    buffer_ring* buffers = nullptr;

private:
    // io_request::reactor_state
    enum place : std::uint8_t {
        idle,                 // not here (completed, or never submitted)
        pending,              // in pending_: not tried yet
        pending_cancelled,    // in pending_, cancelled: tried once, then -ECANCELED
        parked,               // in an fd's waiting list (or retry_)
        cancelled,            // in cancelled_: -ECANCELED at the next flush
        running,              // being performed right now (in no list)
        running_cancelled,    // cancelled while being performed (a multishot accept)
    };

    struct fd_entry {
        intrusive_list<io_request> waiting;  // operations waiting for this fd's readiness
        bool watched = false;                // a socket, registered for good
        bool registered = false;             // known to epoll (watched, or one-shot)
        bool stream = false;                 // SOCK_STREAM: a short read means drained...
        bool hung_up = false;                // ... unless the peer's FIN (or an error) was seen
        bool inq = false;                    // TCP_INQ on: a receive tells what it left queued
        bool inq_tried = false;              // (set at the first receive)
        bool readable = true;                // readiness as last seen (watched fds)
        bool writable = true;
        bool out_registered = false;         // EPOLLOUT registered (a writer waits)
        bool connecting = false;             // a connect() is in progress
        bool cancel_untried = false;         // cancel_fd(): pending operations on it, tried once
    };

    fd_entry& entry(int fd);            // made on first use (may throw std::bad_alloc)
    fd_entry* find(int fd) noexcept;    // null if never used
    static void reset(fd_entry& e) noexcept;
    /// Performs r (state running); completes it, or parks it (cancel_once: cancels instead).
    void attempt(io_request* r, bool cancel_once) noexcept;
    void park(io_request* r, int fd, std::uint32_t events) noexcept;
    void rearm_oneshot(int fd, fd_entry& e) noexcept;
    void finish(io_request* r, int res, std::uint32_t flags = 0) noexcept;
    void on_ready(int fd, std::uint32_t events) noexcept;
    static bool wants(fd_entry& e, std::uint32_t events) noexcept;  // a waiter waits for these

    int epfd_ = -1;
    bool have_pwait2_ = true;  // epoll_pwait2 (5.11), unless refused (ENOSYS, or a seccomp EPERM)
    intrusive_list<io_request> pending_;    // submitted, not tried yet
    intrusive_list<io_request> cancelled_;  // -ECANCELED at the next flush
    intrusive_list<io_request> retry_;      // no readiness to wait for (a Unix connect to a full backlog)
    std::vector<int> cancel_fds_;           // entries whose cancel_untried is set
    std::vector<std::unique_ptr<fd_entry>> fds_;
    // Replying to a batch before reading the next keeps the peers busy rather than waiting for
    // a whole pass's reads (bench/README.md, "Backends": the 1,000-connection case).
    static constexpr std::size_t events_per_pass = 32;
    epoll_event events_[events_per_pass];
};

}  // namespace ringio::detail

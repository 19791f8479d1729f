// socket: an owning BSD socket whose blocking calls are awaitables on the ring (Python's
// socket module plus loop.sock_*). Errors are std::system_error naming the operation and the
// peer, e.g. "connect to 127.0.0.1:9: Connection refused".
//
//   auto s = ringio::socket::create(AF_INET, SOCK_STREAM);
//   co_await s.connect(*ringio::endpoint::parse("127.0.0.1:8080"));
//   co_await s.send(std::as_bytes(std::span(msg)));
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include "ringio/endpoint.hpp"
#include "ringio/event.hpp"
#include "ringio/io.hpp"
#include "ringio/task.hpp"

namespace ringio {

namespace detail {

/// The fd and its in-flight operations. Freed (and the fd closed) only when the owner is gone
/// and the last operation has completed.
struct socket_state : op_tracker {
    // 56 bytes, and every connection has one: the fd next to the flags, and what only a close()
    // in progress needs lives in that close()'s frame (closer), not here.
    int fd = -1;
    bool orphaned : 1 = false;      // the owning socket is gone: close when idle
    bool closing : 1 = false;       // close() has begun: no new operation may start
    bool cancel_sent : 1 = false;
    bool watched : 1 = false;       // registered with `loop`'s epoll backend (see attach)
    bool nonblocking_set : 1 = false;  // the epoll backend made the fd non-blocking
    loop_core* loop = nullptr;  // where operations were last submitted
    struct closer;
    closer* closed_by = nullptr;  // the close() in progress (set with `closing`)
    void (*idle_hook)(void*) noexcept = nullptr;  // called last when inflight drops to 0; may free *this
    void* idle_ctx = nullptr;

    /// Binds to the loop that runs its operations (before each one starts); on the epoll
    /// backend the fd is registered with that loop (again, when it moved to another loop).
    void attach(loop_core* l) noexcept {
        if (l != loop) watched = false;  // (the other loop meets the number afresh when it comes back)
        loop = l;
        if (!watched && l && l->backend() == backend_kind::epoll) {
            bool made = false;
            watched = l->watch_fd(fd, &made);
            nonblocking_set = nonblocking_set || made;
        }
    }
    /// Cancels every operation on the fd (IORING_ASYNC_CANCEL_FD where the kernel has it, or
    /// the epoll backend; else shutdown(2), which ends blocked reads and writes just as well).
    void cancel_all() noexcept;
    /// The fd is about to be closed or handed away (`handed_back`): the loop's epoll backend
    /// forgets it (only from that loop's own thread while it lives; closing the fd takes it out
    /// of epoll anyway).
    void unwatch(bool handed_back = false) noexcept {
        if (watched && loop && loop == loop_core::current()) loop->forget_fd(fd, handed_back);
        watched = false;
    }
    /// Closes the fd now (no operation may be in flight).
    void close_now() noexcept;
    static void idle(op_tracker* t) noexcept;
};

}  // namespace detail

/// An owning socket. Move-only. Destroying it closes the fd, after any operation still in
/// flight has been cancelled and has completed, so the fd number is never reused under a live
/// operation. Its awaitables must be used from the loop thread.
class socket {
public:
    socket() noexcept = default;
    /// Adopts `fd` (an open socket); if this throws (out of memory), `fd` is closed.
    explicit socket(int fd);
    socket(socket&& o) noexcept : st_(std::exchange(o.st_, nullptr)) {}
    socket& operator=(socket&& o) noexcept {
        if (this != &o) {
            reset();
            st_ = std::exchange(o.st_, nullptr);
        }
        return *this;
    }
    ~socket() { reset(); }

    /// socket(2) with SOCK_CLOEXEC. Throws std::system_error.
    static socket create(int family, int type, int protocol = 0);

    [[nodiscard]] bool valid() const noexcept { return st_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }
    [[nodiscard]] int fd() const noexcept { return st_ ? st_->fd : -1; }
    /// Operations in flight on this socket.
    [[nodiscard]] std::size_t in_flight() const noexcept { return st_ ? st_->inflight : 0; }

    // ---- options (throw std::system_error) ----
    // const: they change the kernel's socket, not this object (a stream's transport() is a
    // const socket&: options yes, ownership no).
    void set_reuse_address(bool on) const;
    void set_reuse_port(bool on) const;
    void set_nodelay(bool on) const;
    void set_keepalive(bool on) const;
    void set_recv_buffer_size(int bytes) const;
    void set_send_buffer_size(int bytes) const;
    /// SO_LINGER: nullopt = off; 0s = close resets the connection (RST).
    void set_linger(std::optional<std::chrono::seconds> timeout) const;
    void set_v6only(bool on) const;
    void set_broadcast(bool on) const;
    template <class T>
    void set_option(int level, int name, const T& value) const {
        set_option_raw(level, name, &value, sizeof value);
    }
    template <class T>
    [[nodiscard]] T get_option(int level, int name) const {
        T value{};
        get_option_raw(level, name, &value, sizeof value);
        return value;
    }
    void set_option_raw(int level, int name, const void* value, socklen_t size) const;
    void get_option_raw(int level, int name, void* value, socklen_t size) const;

    // ---- setup (synchronous: they never block) ----
    void bind(const endpoint& local);
    void listen(int backlog = 100);
    [[nodiscard]] endpoint local_endpoint() const;
    /// The peer (getpeername); throws std::system_error(ENOTCONN) if not connected.
    [[nodiscard]] endpoint remote_endpoint() const;

    // ---- operations through the ring ----
    // Cancel safety, all of them: cancelling the task cancels the kernel operation and waits
    // for its completion; if it had already completed, the result is kept and the cancellation
    // is raised at the next suspension point (see docs/runtime.md).

    /// Connects. Throws std::system_error("connect to EP: ...").
    task<> connect(endpoint remote);
    /// Waits for a connection; returns it with the peer's address.
    task<std::pair<socket, endpoint>> accept();
    /// Receives up to buf.size() bytes (at most 1 GiB at once); 0 means the peer closed (EOF).
    task<std::size_t> recv(std::span<std::byte> buf, int flags = 0);
    /// Sends every byte of buf (MSG_NOSIGNAL: a reset peer is an exception, never SIGPIPE), in
    /// sends of at most 1 GiB.
    task<> send(std::span<const std::byte> buf, int flags = 0);
    /// One send(2) call of at most 1 GiB; returns how many bytes the kernel took.
    task<std::size_t> send_some(std::span<const std::byte> buf, int flags = 0);
    /// recvmsg(2)/sendmsg(2); the msghdr and what it points to must outlive the call.
    task<std::size_t> recvmsg(msghdr& msg, int flags = 0);
    task<std::size_t> sendmsg(const msghdr& msg, int flags = 0);
    /// shutdown(2): SHUT_RD, SHUT_WR or SHUT_RDWR.
    task<> shutdown(int how);
    /// Cancels what is in flight, waits for it, then closes the fd. The operations it ends, and
    /// any started after close() began, throw std::system_error(EBADF). Idempotent; concurrent calls all return
    /// once the fd is closed. Not a cancellation point: the fd is always closed.
    task<> close();

    /// The raw awaitable for an operation on this socket, tracked so close() waits for it.
    template <class Prep>
    [[nodiscard]] detail::io_awaiter<Prep> op(Prep prep) {
        return detail::io_awaiter<Prep>(std::move(prep), true, state());
    }

    /// Detaches and returns the fd; the caller must close it. Requires nothing in flight.
    int release() noexcept;

    /// The shared state (for the stream layer).
    [[nodiscard]] detail::socket_state* state_ptr() const noexcept { return st_; }

private:
    detail::socket_state* state() const;
    void reset() noexcept;
    [[noreturn]] void fail(int err, const char* what) const;

    detail::socket_state* st_ = nullptr;
};

}  // namespace ringio

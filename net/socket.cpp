#include "ringio/socket.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>

namespace ringio {

namespace detail {

// What a close() in progress needs: it waits for the operations in flight to end, and other
// tasks closing the same socket wait for it. In the closing coroutine's frame.
struct socket_state::closer {
    event closed;                      // set when the fd is closed (for concurrent closers)
    suspension* idle_waiter = nullptr;  // the closer, waiting for the last completion
};

void socket_state::cancel_all() noexcept {
    if (inflight == 0 || cancel_sent) return;
    cancel_sent = true;
    if (loop && loop->can_cancel_fd())
        loop->cancel_fd(fd);
    else
        ::shutdown(fd, SHUT_RDWR);
}

void socket_state::close_now() noexcept {
    unwatch();
    if (fd >= 0) ::close(fd);
    fd = -1;
}

void socket_state::idle(op_tracker* t) noexcept {
    auto* s = static_cast<socket_state*>(t);
    s->cancel_sent = false;
    if (s->orphaned) {
        s->close_now();
        delete s;
        return;
    }
    if (closer* c = s->closed_by; c && c->idle_waiter) std::exchange(c->idle_waiter, nullptr)->wake();
    if (s->idle_hook) s->idle_hook(s->idle_ctx);  // last: it may free s
}

}  // namespace detail

socket::socket(int fd) {
    try {
        st_ = new detail::socket_state;
    } catch (...) {
        ::close(fd);  // adopted: not leaked when the state cannot be made
        throw;
    }
    st_->fd = fd;
    st_->on_idle = &detail::socket_state::idle;
}

socket socket::create(int family, int type, int protocol) {
    int fd = ::socket(family, type | SOCK_CLOEXEC, protocol);
    if (fd < 0) throw make_system_error(errno, "ringio: socket()");
    return socket(fd);
}

void socket::reset() noexcept {
    detail::socket_state* s = std::exchange(st_, nullptr);
    if (!s) return;
    if (s->inflight == 0) {
        s->close_now();
        delete s;
        return;
    }
    // Operations still in flight: cancel them; the last completion closes and frees.
    s->orphaned = true;
    s->cancel_all();
}

int socket::release() noexcept {
    detail::socket_state* s = std::exchange(st_, nullptr);
    if (!s) return -1;
    s->unwatch(true);
    int fd = s->fd;
    if (s->nonblocking_set) {  // handed back as it came: blocking (the epoll backend changed it)
        int flags = ::fcntl(fd, F_GETFL);
        if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    }
    s->fd = -1;
    if (s->inflight == 0)
        delete s;
    else
        s->orphaned = true;
    return fd;
}

detail::socket_state* socket::state() const {
    if (!st_) throw invalid_state_error("ringio: operation on a closed socket");
    if (st_->closing) throw make_system_error(EBADF, "ringio: operation on a socket being closed");
    st_->attach(detail::loop_core::current());
    return st_;
}

void socket::fail(int err, const char* what) const {
    // An operation ended by close() in another task (IORING_ASYNC_CANCEL_FD) reports EBADF,
    // the same as one started after the close; the task's own cancellation never gets here.
    if (err == ECANCELED) throw make_system_error(EBADF, fmt::format("ringio: {}: socket closed", what));
    throw make_system_error(err, fmt::format("ringio: {}", what));
}

void socket::set_option_raw(int level, int name, const void* value, socklen_t size) const {
    if (::setsockopt(state()->fd, level, name, value, size) != 0) fail(errno, "setsockopt");
}

void socket::get_option_raw(int level, int name, void* value, socklen_t size) const {
    socklen_t len = size;
    if (::getsockopt(state()->fd, level, name, value, &len) != 0) fail(errno, "getsockopt");
}

void socket::set_reuse_address(bool on) const { set_option<int>(SOL_SOCKET, SO_REUSEADDR, on); }
void socket::set_reuse_port(bool on) const { set_option<int>(SOL_SOCKET, SO_REUSEPORT, on); }
void socket::set_nodelay(bool on) const { set_option<int>(IPPROTO_TCP, TCP_NODELAY, on); }
void socket::set_keepalive(bool on) const { set_option<int>(SOL_SOCKET, SO_KEEPALIVE, on); }
void socket::set_recv_buffer_size(int bytes) const { set_option<int>(SOL_SOCKET, SO_RCVBUF, bytes); }
void socket::set_send_buffer_size(int bytes) const { set_option<int>(SOL_SOCKET, SO_SNDBUF, bytes); }
void socket::set_v6only(bool on) const { set_option<int>(IPPROTO_IPV6, IPV6_V6ONLY, on); }
void socket::set_broadcast(bool on) const { set_option<int>(SOL_SOCKET, SO_BROADCAST, on); }
void socket::set_linger(std::optional<std::chrono::seconds> timeout) const {
    linger l{};
    l.l_onoff = timeout.has_value();
    l.l_linger = timeout ? static_cast<int>(timeout->count()) : 0;
    set_option(SOL_SOCKET, SO_LINGER, l);
}

void socket::bind(const endpoint& local) {
    if (::bind(state()->fd, local.data(), local.size()) != 0)
        throw make_system_error(errno, fmt::format("ringio: bind to {}", local));
}

void socket::listen(int backlog) {
    if (::listen(state()->fd, backlog) != 0) fail(errno, "listen");
}

endpoint socket::local_endpoint() const {
    endpoint ep;
    socklen_t len = endpoint::capacity();
    if (::getsockname(state()->fd, ep.data(), &len) != 0) fail(errno, "getsockname");
    ep.resize(len);
    return ep;
}

endpoint socket::remote_endpoint() const {
    endpoint ep;
    socklen_t len = endpoint::capacity();
    if (::getpeername(state()->fd, ep.data(), &len) != 0) fail(errno, "getpeername");
    ep.resize(len);
    return ep;
}

task<> socket::connect(endpoint remote) {
    int fd = state()->fd;
    io_result r = co_await op([&](io_uring_sqe* s) noexcept { io_uring_prep_connect(s, fd, remote.data(), remote.size()); });
    if (!r) throw make_system_error(-r.res, fmt::format("ringio: connect to {}", remote));
}

task<std::pair<socket, endpoint>> socket::accept() {
    int fd = state()->fd;
    endpoint peer;
    socklen_t len = endpoint::capacity();
    io_result r = co_await op([&](io_uring_sqe* s) noexcept { io_uring_prep_accept(s, fd, peer.data(), &len, SOCK_CLOEXEC); });
    if (!r) fail(-r.res, "accept");
    peer.resize(len);
    co_return std::pair<socket, endpoint>{socket(r.res), peer};
}

task<std::size_t> socket::recv(std::span<std::byte> buf, int flags) {
    detail::socket_state* st = state();
    int fd = st->fd;
    // MSG_WAITALL on the epoll backend (whose receives never block): receive until the buffer
    // is full, as io_uring does, or EOF.
    const bool wait_all = (flags & MSG_WAITALL) && st->loop && st->loop->backend() == backend_kind::epoll;
    std::size_t got = 0;
    do {
        std::span<std::byte> rest = buf.subspan(got);
        io_result r = co_await op([&](io_uring_sqe* s) noexcept { io_uring_prep_recv(s, fd, rest.data(), detail::io_length(rest.size()), flags); });
        if (!r) {
            if (got > 0) break;  // what came before the error is returned (it was consumed)
            fail(-r.res, "recv");
        }
        got += r.value();
        if (r.value() == 0) break;
    } while (wait_all && got < buf.size());
    co_return got;
}

task<std::size_t> socket::send_some(std::span<const std::byte> buf, int flags) {
    int fd = state()->fd;
    io_result r = co_await op(
        [&](io_uring_sqe* s) noexcept { io_uring_prep_send(s, fd, buf.data(), detail::io_length(buf.size()), flags | MSG_NOSIGNAL); });
    if (!r) fail(-r.res, "send");
    co_return r.value();
}

task<> socket::send(std::span<const std::byte> buf, int flags) {
    while (!buf.empty()) {
        std::size_t n = co_await send_some(buf, flags);
        // A send that took nothing of a non-empty buffer would be asked again forever.
        if (n == 0) throw make_system_error(EIO, "ringio: send took no bytes");
        buf = buf.subspan(n);
    }
}

task<std::size_t> socket::recvmsg(msghdr& msg, int flags) {
    int fd = state()->fd;
    io_result r = co_await op([&](io_uring_sqe* s) noexcept { io_uring_prep_recvmsg(s, fd, &msg, static_cast<unsigned>(flags)); });
    if (!r) fail(-r.res, "recvmsg");
    co_return r.value();
}

task<std::size_t> socket::sendmsg(const msghdr& msg, int flags) {
    int fd = state()->fd;
    io_result r = co_await op(
        [&](io_uring_sqe* s) noexcept { io_uring_prep_sendmsg(s, fd, &msg, static_cast<unsigned>(flags | MSG_NOSIGNAL)); });
    if (!r) fail(-r.res, "sendmsg");
    co_return r.value();
}

task<> socket::shutdown(int how) {
    int fd = state()->fd;
    io_result r = co_await op([&](io_uring_sqe* s) noexcept { io_uring_prep_shutdown(s, fd, how); });
    if (!r && r.res != -ENOTCONN) fail(-r.res, "shutdown");
}

task<> socket::close() {
    detail::socket_state* s = st_;
    if (!s) co_return;
    if (s->closing) {  // another task is closing it: wait for the same end
        co_await s->closed_by->closed.wait();
        co_return;
    }
    detail::socket_state::closer self;
    s->closing = true;
    s->closed_by = &self;
    if (s->inflight > 0) {
        s->cancel_all();
        // Not a cancellation point: the fd must be closed whatever happens.
        struct idle_awaiter : detail::suspension {
            detail::socket_state* st;
            explicit idle_awaiter(detail::socket_state* s) noexcept : st(s) {}
            bool await_ready() const noexcept { return st->inflight == 0; }
            void await_suspend(std::coroutine_handle<> h) {
                begin(h, detail::cancel_kind::none);
                st->closed_by->idle_waiter = this;
            }
            void await_resume() { resume(); }
        };
        co_await idle_awaiter(s);
    }
    st_ = nullptr;
    s->close_now();
    delete s;
    self.closed.set();  // wakes concurrent closers; they no longer touch s
}

}  // namespace ringio

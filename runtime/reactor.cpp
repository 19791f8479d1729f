#include "reactor.hpp"

#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "ringio/errors.hpp"

namespace ringio::detail {
namespace {

constexpr std::uint32_t in_events = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR;
constexpr std::uint32_t out_events = EPOLLOUT | EPOLLHUP | EPOLLERR;

// The readiness an operation waits for, from its description.
std::uint32_t events_of(const io_uring_sqe& sqe) noexcept {
    switch (sqe.opcode) {
    case IORING_OP_SEND:
    case IORING_OP_SENDMSG:
    case IORING_OP_CONNECT:
    case IORING_OP_WRITE:
        return EPOLLOUT;
    case IORING_OP_POLL_ADD:
        return sqe.poll32_events & (EPOLLIN | EPOLLOUT | EPOLLPRI | EPOLLRDHUP);
    default:
        return EPOLLIN;
    }
}

int fail() noexcept { return errno == EWOULDBLOCK ? -EAGAIN : -errno; }

}  // namespace

reactor::reactor() {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) throw make_system_error(errno, "ringio: epoll_create1");
    events_.resize(256);
}

reactor::~reactor() { ::close(epfd_); }

reactor::fd_entry* reactor::find(int fd) noexcept {
    auto i = static_cast<std::size_t>(fd);
    return fd >= 0 && i < fds_.size() ? fds_[i].get() : nullptr;
}

reactor::fd_entry& reactor::entry(int fd) {
    auto i = static_cast<std::size_t>(fd);
    if (i >= fds_.size()) fds_.resize(std::max(i + 1, fds_.size() * 2));
    if (!fds_[i]) fds_[i] = std::make_unique<fd_entry>();
    return *fds_[i];
}

bool reactor::try_watch(int fd) noexcept {
    fd_entry* ep;
    try {
        ep = &entry(fd);
    } catch (const std::bad_alloc&) {
        errno = ENOMEM;
        return false;
    }
    fd_entry& e = *ep;
    if (e.watched) return true;
    int flags = ::fcntl(fd, F_GETFL);
    if (flags >= 0 && !(flags & O_NONBLOCK)) ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.fd = fd;
    int op = e.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (::epoll_ctl(epfd_, op, fd, &ev) != 0) {
        // The number was registered one-shot before (and is still), or was closed behind our
        // back and now names another file: whichever it is, make the registration this one.
        int err = errno;
        if (err == EEXIST) err = ::epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) == 0 ? 0 : errno;
        else if (err == ENOENT) err = ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : errno;
        if (err != 0) {
            errno = err;
            return false;
        }
    }
    e.watched = e.registered = true;
    e.readable = e.writable = true;  // not known yet: the first operation tries
    e.connecting = false;
    return true;
}

void reactor::forget(int fd) noexcept {
    auto i = static_cast<std::size_t>(fd);
    if (fd < 0 || i >= fds_.size() || !fds_[i]) return;
    fd_entry& e = *fds_[i];
    if (e.registered) ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
    e.watched = e.registered = e.connecting = false;
    e.readable = e.writable = true;
}

void reactor::finish(io_request* r, int res) noexcept { done(done_ctx, r, res); }

void reactor::flush() noexcept {
    // Operations submitted while these run (a completion that submits again) wait for the next
    // flush, as they would for the next io_uring_enter.
    intrusive_list<io_request> now;
    while (io_request* r = pending_.pop_front()) now.push_back(r);
    intrusive_list<io_request> untried;
    while (io_request* r = cancel_untried_.pop_front()) untried.push_back(r);
    intrusive_list<io_request> cancelled;
    while (io_request* r = cancelled_.pop_front()) cancelled.push_back(r);
    while (io_request* r = now.pop_front()) attempt(r);
    while (io_request* r = untried.pop_front()) {
        // Cancelled before it was tried: it still goes first (as it would reach the kernel before
        // its cancel), and keeps a result it gets at once.
        attempt(r);
        if (r->linked() && !in(pending_, r)) {  // it waits (not resubmitted by its completion): cancelled
            intrusive_list<io_request>::erase(r);
            finish(r, -ECANCELED);
        }
    }
    while (io_request* r = cancelled.pop_front()) finish(r, -ECANCELED);
}

void reactor::attempt(io_request* r) noexcept {
    io_uring_sqe sqe{};
    r->prep(r, &sqe);
    const int fd = sqe.fd;
    auto* addr = reinterpret_cast<void*>(static_cast<std::uintptr_t>(sqe.addr));
    int res = -EAGAIN;  // a case that breaks without a result: the fd is known not to be ready
    switch (sqe.opcode) {
    case IORING_OP_NOP:
        finish(r, 0);
        return;
    case IORING_OP_RECV:
    case IORING_OP_RECVMSG: {
        // No provided buffers (the loop has none on this backend) and no multishot.
        if ((sqe.flags & IOSQE_BUFFER_SELECT) || (sqe.ioprio & IORING_RECV_MULTISHOT)) {
            finish(r, -EINVAL);
            return;
        }
        fd_entry* e = find(fd);
        if (e && e->watched && !e->readable) break;  // known empty: wait for the edge, no system call
        ssize_t n;
        do {
            n = sqe.opcode == IORING_OP_RECV ? ::recv(fd, addr, sqe.len, static_cast<int>(sqe.msg_flags) | MSG_DONTWAIT)
                                             : ::recvmsg(fd, static_cast<msghdr*>(addr), static_cast<int>(sqe.msg_flags) | MSG_DONTWAIT);
        } while (n < 0 && errno == EINTR);
        res = n >= 0 ? static_cast<int>(n) : fail();
        if (res == -EAGAIN && e) e->readable = false;
        break;
    }
    case IORING_OP_SEND:
    case IORING_OP_SENDMSG: {
        fd_entry* e = find(fd);
        if (e && e->watched && !e->writable) break;
        ssize_t n;
        int flags = static_cast<int>(sqe.msg_flags) | MSG_DONTWAIT | MSG_NOSIGNAL;
        do {
            n = sqe.opcode == IORING_OP_SEND ? ::send(fd, addr, sqe.len, flags)
                                             : ::sendmsg(fd, static_cast<const msghdr*>(addr), flags);
        } while (n < 0 && errno == EINTR);
        res = n >= 0 ? static_cast<int>(n) : fail();
        if (res == -EAGAIN && e) e->writable = false;
        break;
    }
    case IORING_OP_ACCEPT: {
        if (sqe.ioprio & IORING_ACCEPT_MULTISHOT) {
            finish(r, -EINVAL);
            return;
        }
        fd_entry* e = find(fd);
        if (e && e->watched && !e->readable) break;
        auto* len = reinterpret_cast<socklen_t*>(static_cast<std::uintptr_t>(sqe.off));
        int c;
        do {
            c = ::accept4(fd, static_cast<sockaddr*>(addr), len, static_cast<int>(sqe.accept_flags) | SOCK_NONBLOCK);
        } while (c < 0 && errno == EINTR);
        res = c >= 0 ? c : fail();
        if (res == -EAGAIN && e) e->readable = false;
        break;
    }
    case IORING_OP_CONNECT: {
        // A socket's fd is watched before its first operation, so it has an entry.
        fd_entry* e = find(fd);
        if (!e || !e->connecting) {
            if (::connect(fd, static_cast<const sockaddr*>(addr), static_cast<socklen_t>(sqe.off)) == 0) {
                res = 0;
            } else if (errno == EINPROGRESS || errno == EAGAIN) {
                if (!e) {
                    res = -EINVAL;  // (not a watched socket: cannot tell when it connects)
                    break;
                }
                e->connecting = true;
                e->writable = false;
                res = -EAGAIN;
            } else {
                res = -errno;
            }
            break;
        }
        // In progress: the outcome is the socket's error, or being connected.
        int err = 0;
        socklen_t n = sizeof err;
        if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &n) != 0) err = errno;
        if (err == 0) {
            sockaddr_storage peer{};
            socklen_t pn = sizeof peer;
            if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pn) != 0) {
                res = -EAGAIN;  // not yet
                break;
            }
        }
        e->connecting = false;
        res = -err;
        break;
    }
    case IORING_OP_SHUTDOWN:
        res = ::shutdown(fd, static_cast<int>(sqe.len)) == 0 ? 0 : -errno;
        break;
    case IORING_OP_CLOSE:
        forget(fd);
        res = ::close(fd) == 0 ? 0 : -errno;
        break;
    case IORING_OP_READ:
    case IORING_OP_WRITE: {
        iovec iov{addr, sqe.len};
        auto off = static_cast<off_t>(sqe.off);  // -1: the file's position
        ssize_t n;
        do {
            n = sqe.opcode == IORING_OP_READ ? ::preadv2(fd, &iov, 1, off, RWF_NOWAIT) : ::pwritev2(fd, &iov, 1, off, RWF_NOWAIT);
        } while (n < 0 && errno == EINTR);
        if (n < 0 && errno == EOPNOTSUPP)  // (a file without RWF_NOWAIT: a plain call, it does not block long)
            n = sqe.opcode == IORING_OP_READ ? ::preadv(fd, &iov, 1, off) : ::pwritev(fd, &iov, 1, off);
        res = n >= 0 ? static_cast<int>(n) : fail();
        break;
    }
    case IORING_OP_POLL_ADD: {
        pollfd p{fd, static_cast<short>(events_of(sqe)), 0};
        int n = ::poll(&p, 1, 0);
        res = n > 0 ? p.revents : n == 0 ? -EAGAIN : -errno;
        break;
    }
    default:
        // Not an operation ringio performs on this backend (io::make and kernel_timeout are
        // io_uring's; they refuse before submitting).
        finish(r, -EOPNOTSUPP);
        return;
    }
    if (res == -EAGAIN) {
        park(r, fd, events_of(sqe));
        return;
    }
    finish(r, res);
}

void reactor::park(io_request* r, int fd, std::uint32_t) noexcept {
    fd_entry* ep;
    try {
        ep = &entry(fd);
    } catch (const std::bad_alloc&) {
        finish(r, -ENOMEM);
        return;
    }
    fd_entry& e = *ep;
    e.waiting.push_back(r);
    if (!e.watched) rearm_oneshot(fd, e);  // a watched fd's registration covers every wait
}

void reactor::rearm_oneshot(int fd, fd_entry& e) noexcept {
    std::uint32_t want = 0;
    e.waiting.for_each([&want](io_request* w) {
        io_uring_sqe sqe{};
        w->prep(w, &sqe);
        want |= events_of(sqe);
    });
    epoll_event ev{};
    ev.events = want | EPOLLONESHOT;
    ev.data.fd = fd;
    int err = 0;
    if (::epoll_ctl(epfd_, e.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) != 0) {
        err = errno;
        // Closed and reopened behind our back (MOD: ENOENT), or registered before (ADD: EEXIST).
        if (err == ENOENT) err = ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : errno;
        else if (err == EEXIST) err = ::epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) == 0 ? 0 : errno;
    }
    if (err == 0) {
        e.registered = true;
        return;
    }
    // Not pollable (EPERM: a regular file, always "ready"), or no fd at all (EBADF): do the
    // operations the plain way, which for a file does not block for long, or fails.
    while (io_request* w = e.waiting.pop_front()) {
        io_uring_sqe sqe{};
        w->prep(w, &sqe);
        iovec iov{reinterpret_cast<void*>(static_cast<std::uintptr_t>(sqe.addr)), sqe.len};
        ssize_t n = -1;
        if (err == EPERM && sqe.opcode == IORING_OP_READ)
            n = ::preadv(fd, &iov, 1, static_cast<off_t>(sqe.off));
        else if (err == EPERM && sqe.opcode == IORING_OP_WRITE)
            n = ::pwritev(fd, &iov, 1, static_cast<off_t>(sqe.off));
        else if (err == EPERM && sqe.opcode == IORING_OP_POLL_ADD)
            n = static_cast<ssize_t>(events_of(sqe));  // a file is always ready
        else
            errno = err;
        finish(w, n >= 0 ? static_cast<int>(n) : -errno);
    }
}

void reactor::on_ready(int fd, std::uint32_t events) noexcept {
    auto i = static_cast<std::size_t>(fd);
    if (i >= fds_.size() || !fds_[i]) return;
    fd_entry& e = *fds_[i];
    if (events & in_events) e.readable = true;
    if (events & out_events) e.writable = true;
    // Every waiter tries again, in order; those that would block wait again.
    intrusive_list<io_request> now;
    while (io_request* r = e.waiting.pop_front()) now.push_back(r);
    while (io_request* r = now.pop_front()) attempt(r);
    if (!e.watched && !e.waiting.empty()) rearm_oneshot(fd, e);
}

void reactor::wait(long long timeout_ns) {
    int n;
    if (timeout_ns < 0) {
        n = ::epoll_wait(epfd_, events_.data(), static_cast<int>(events_.size()), -1);
    } else {
        // epoll_pwait2 (5.11) waits to the nanosecond; else milliseconds, rounded up so that a
        // timer never fires early.
        timespec ts{static_cast<time_t>(timeout_ns / 1'000'000'000), static_cast<long>(timeout_ns % 1'000'000'000)};
        static bool have_pwait2 = true;
        n = -1;
        if (have_pwait2) {
            n = ::epoll_pwait2(epfd_, events_.data(), static_cast<int>(events_.size()), &ts, nullptr);
            if (n < 0 && errno == ENOSYS) have_pwait2 = false;
        }
        if (!have_pwait2) {
            long long ms = (timeout_ns + 999'999) / 1'000'000;
            n = ::epoll_wait(epfd_, events_.data(), static_cast<int>(events_.size()), static_cast<int>(std::min<long long>(ms, INT_MAX)));
        }
    }
    if (n < 0) {
        if (errno == EINTR) return;
        throw make_system_error(errno, "ringio: epoll_wait");
    }
    for (int k = 0; k < n; ++k) on_ready(events_[static_cast<std::size_t>(k)].data.fd, events_[static_cast<std::size_t>(k)].events);
    if (static_cast<std::size_t>(n) == events_.size() && events_.size() < 65536) events_.resize(events_.size() * 2);
}

bool reactor::in(const intrusive_list<io_request>& list, const io_request* r) noexcept {
    bool found = false;
    const_cast<intrusive_list<io_request>&>(list).for_each([&found, r](io_request* x) { found |= x == r; });
    return found;
}

void reactor::cancel(io_request* r) noexcept {
    if (!r->linked()) return;  // completed already (its completion is on its way)
    if (in(cancelled_, r) || in(cancel_untried_, r)) return;  // cancelled already
    bool untried = in(pending_, r);
    intrusive_list<io_request>::erase(r);
    (untried ? cancel_untried_ : cancelled_).push_back(r);
}

void reactor::cancel_fd(int fd) noexcept {
    pending_.for_each([this, fd](io_request* r) {
        io_uring_sqe sqe{};
        r->prep(r, &sqe);
        if (sqe.fd == fd) {
            intrusive_list<io_request>::erase(r);
            cancel_untried_.push_back(r);
        }
    });
    if (fd_entry* e = find(fd)) {
        while (io_request* r = e->waiting.pop_front()) cancelled_.push_back(r);
        e->connecting = false;
    }
}

void reactor::cancel_all() noexcept {
    while (io_request* r = pending_.pop_front()) cancel_untried_.push_back(r);
    for (auto& e : fds_)
        if (e)
            while (io_request* r = e->waiting.pop_front()) cancelled_.push_back(r);
}

}  // namespace ringio::detail

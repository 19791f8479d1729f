#include "reactor.hpp"

#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "ringio/detail/buffer_ring.hpp"
#include "ringio/errors.hpp"

namespace ringio::detail {
namespace {

constexpr std::uint32_t in_events = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR;
constexpr std::uint32_t out_events = EPOLLOUT | EPOLLHUP | EPOLLERR;
// A watched socket: reading always (edge-triggered); writing only while a writer waits.
constexpr std::uint32_t watched_events = EPOLLIN | EPOLLRDHUP | EPOLLET;
// How often an operation with nothing to wait for is tried again (a Unix connect to a full
// backlog: the kernel offers no readiness event for it).
constexpr long long retry_ns = 10'000'000;

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

// Receive flags after which the socket's readiness says nothing about its data.
constexpr unsigned keeps_readiness = MSG_PEEK | MSG_ERRQUEUE | MSG_OOB;

// read()/write() for offset -1 (the file's position), pread()/pwrite() otherwise: the plain
// call, for files epoll cannot watch and fds without RWF_NOWAIT.
ssize_t plain_rw(bool read, int fd, const iovec& iov, std::uint64_t off) noexcept {
    ssize_t n;
    do {
        if (off == static_cast<std::uint64_t>(-1))
            n = read ? ::readv(fd, &iov, 1) : ::writev(fd, &iov, 1);
        else
            n = read ? ::preadv(fd, &iov, 1, static_cast<off_t>(off)) : ::pwritev(fd, &iov, 1, static_cast<off_t>(off));
    } while (n < 0 && errno == EINTR);
    return n;
}

// A receive on a TCP socket with TCP_INQ on: the bytes it leaves queued come back in a control
// message (no extra call), so a read that fills the buffer exactly need not be followed by one
// that finds nothing. *left is -1 when the kernel said nothing.
ssize_t recv_inq(int fd, void* into, unsigned len, int flags, int* left) noexcept {
    iovec iov{into, len};
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))];
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl;
    mh.msg_controllen = sizeof ctl;
    ssize_t n;
    do {
        n = ::recvmsg(fd, &mh, flags);
    } while (n < 0 && errno == EINTR);
    *left = -1;
    if (n > 0)
        for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_TCP && c->cmsg_type == TCP_CM_INQ) std::memcpy(left, CMSG_DATA(c), sizeof *left);
    return n;
}

}  // namespace

reactor::reactor() {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) throw make_system_error(errno, "ringio: epoll_create1");
    // epoll_pwait2 waits to the nanosecond (5.11); a seccomp profile that does not know it
    // refuses it (EPERM), an older kernel lacks it (ENOSYS): then epoll_wait, in milliseconds.
    timespec zero{};
    if (::epoll_pwait2(epfd_, events_, 1, &zero, nullptr) < 0 && errno != EINTR) have_pwait2_ = false;
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

void reactor::reset(fd_entry& e) noexcept {
    e.watched = e.registered = e.stream = e.inq = e.inq_tried = e.out_registered = e.connecting = e.cancel_untried = e.hung_up = false;
    e.readable = e.writable = true;
}

bool reactor::try_watch(int fd, bool* made_nonblocking) noexcept {
    fd_entry* ep;
    try {
        ep = &entry(fd);
    } catch (const std::bad_alloc&) {
        errno = ENOMEM;
        return false;
    }
    fd_entry& e = *ep;
    // Always registered afresh: the number may have been another file's (closed behind this
    // loop's back, or watched by another loop), whose state must not carry over.
    bool was_registered = e.registered;
    reset(e);
    int flags = ::fcntl(fd, F_GETFL);
    *made_nonblocking = flags >= 0 && !(flags & O_NONBLOCK) && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
    int type = 0;
    socklen_t len = sizeof type;
    e.stream = ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM;
    epoll_event ev{};
    ev.events = watched_events;
    ev.data.fd = fd;
    int err = 0;
    if (::epoll_ctl(epfd_, was_registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) != 0) {
        err = errno;
        if (err == EEXIST) err = ::epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) == 0 ? 0 : errno;
        else if (err == ENOENT) err = ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : errno;
    }
    if (err != 0) {
        errno = err;
        return false;
    }
    e.watched = e.registered = true;
    return true;
}

void reactor::forget(int fd, bool handed_back) noexcept {
    fd_entry* e = find(fd);
    if (!e) return;
    if (e->registered) ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
    if (handed_back && e->inq) {  // (its new owner's recvmsg must see no control message of ours)
        const int off = 0;
        ::setsockopt(fd, IPPROTO_TCP, TCP_INQ, &off, sizeof off);
    }
    // (nothing should wait on an fd being closed; whatever does is cancelled, not lost)
    while (io_request* r = e->waiting.pop_front()) {
        r->reactor_state = cancelled;
        cancelled_.push_back(r);
    }
    reset(*e);
}

void reactor::submit(io_request* r) noexcept {
    r->reactor_state = pending;
    pending_.push_back(r);
}

void reactor::finish(io_request* r, int res, std::uint32_t flags) noexcept {
    if (!(flags & IORING_CQE_F_MORE)) r->reactor_state = idle;
    done(done_ctx, r, res, flags);
}

void reactor::flush() noexcept {
    // Only what is here now: what the completions submit waits for the next flush, as for the
    // next io_uring_enter (the loop does not block while some waits: has_work()). The requests
    // stay in their lists until their turn, so that a cancel reaches them meanwhile.
    std::size_t n = 0;
    pending_.for_each([&n](io_request*) { ++n; });
    for (; n > 0; --n) {
        io_request* r = pending_.pop_front();
        if (!r) break;
        bool cancel_once = r->reactor_state == pending_cancelled;
        r->reactor_state = running;
        attempt(r, cancel_once);
    }
    n = 0;
    cancelled_.for_each([&n](io_request*) { ++n; });
    for (; n > 0; --n) {
        io_request* r = cancelled_.pop_front();
        if (!r) break;
        finish(r, -ECANCELED);
    }
    for (int fd : cancel_fds_)
        if (fd_entry* e = find(fd)) e->cancel_untried = false;
    cancel_fds_.clear();
}

void reactor::attempt(io_request* r, bool cancel_once) noexcept {
    io_uring_sqe sqe{};
    r->prep(&sqe);
    const int fd = sqe.fd;
    auto* addr = reinterpret_cast<void*>(static_cast<std::uintptr_t>(sqe.addr));
    fd_entry* e = find(fd);
    if (e && e->cancel_untried) cancel_once = true;
    int res = -EAGAIN;  // a case that breaks without a result: the fd is known not to be ready
    switch (sqe.opcode) {
    case IORING_OP_NOP:
        res = 0;
        break;
    case IORING_OP_RECV:
    case IORING_OP_RECVMSG: {
        // No multishot; a provided buffer only for a plain receive, from the loop's stream buffers.
        const bool select = sqe.flags & IOSQE_BUFFER_SELECT;
        if ((sqe.ioprio & IORING_RECV_MULTISHOT) ||
            (select && (sqe.opcode != IORING_OP_RECV || !buffers || buffers->group() != sqe.buf_group))) {
            res = -EINVAL;
            break;
        }
        const bool plain = !(sqe.msg_flags & keeps_readiness);
        if (plain && e && e->watched && !e->readable) break;  // known empty: wait for the edge
        int bid = -1;
        void* into = addr;
        unsigned len = sqe.len;
        if (select) {
            bid = buffers->take_free();
            if (bid < 0) {
                res = -ENOBUFS;  // every buffer is taken: the stream waits for one to come back
                break;
            }
            into = buffers->buffer(static_cast<std::uint16_t>(bid));
            len = static_cast<unsigned>(buffers->buffer_size());
        }
        const int flags = static_cast<int>(sqe.msg_flags) | MSG_DONTWAIT;
        if (e && e->stream && !e->inq_tried && sqe.opcode == IORING_OP_RECV) {
            // TCP (not Unix) sockets say how much a receive left queued (see recv_inq); set at
            // the first receive, so a listener (whose accepted sockets would inherit it) never
            // has it. Turned off again when the fd is handed back (forget), and around
            // every recvmsg of the user's, so that nobody sees a control message not asked for.
            e->inq_tried = true;
            const int one = 1;
            e->inq = ::setsockopt(fd, IPPROTO_TCP, TCP_INQ, &one, sizeof one) == 0;
        }
        const bool inq = plain && e && e->inq && sqe.opcode == IORING_OP_RECV;
        int left = -1;
        ssize_t n;
        if (inq) {
            n = recv_inq(fd, into, len, flags, &left);
        } else if (sqe.opcode == IORING_OP_RECV) {
            do {
                n = ::recv(fd, into, len, flags);
            } while (n < 0 && errno == EINTR);
        } else {
            auto* mh = static_cast<msghdr*>(addr);
            const bool quiet = e && e->inq;  // no TCP_CM_INQ (nor MSG_CTRUNC for it) for the caller
            const int off = 0, on = 1;
            if (quiet) ::setsockopt(fd, IPPROTO_TCP, TCP_INQ, &off, sizeof off);
            do {
                n = ::recvmsg(fd, mh, flags);
            } while (n < 0 && errno == EINTR);
            int err = errno;
            if (quiet) ::setsockopt(fd, IPPROTO_TCP, TCP_INQ, &on, sizeof on);
            errno = err;
        }
        res = n >= 0 ? static_cast<int>(n) : fail();
        if (plain && e && e->watched) {
            // Drained: EAGAIN, or a stream socket that gave less than asked for or said it left
            // nothing queued (any later arrival raises a new edge). A datagram says nothing
            // about the next one. (Not once the peer's FIN or an error was seen: a FIN queued
            // behind the data read raised its edge before this read, and the next read must
            // return it.)
            if (res == -EAGAIN ||
                (e->stream && !e->hung_up && sqe.opcode == IORING_OP_RECV && res > 0 &&
                 (static_cast<unsigned>(res) < len || left == 0)))
                e->readable = false;
        }
        if (bid >= 0) {
            if (res > 0) {  // the buffer is the stream's now, as the kernel would hand it over
                finish(r, res, IORING_CQE_F_BUFFER | (static_cast<std::uint32_t>(bid) << IORING_CQE_BUFFER_SHIFT));
                return;
            }
            buffers->untake(static_cast<std::uint16_t>(bid));  // EOF, an error, or nothing yet
        }
        break;
    }
    case IORING_OP_SEND:
    case IORING_OP_SENDMSG: {
        if (e && e->watched && !e->writable) break;
        ssize_t n;
        int flags = static_cast<int>(sqe.msg_flags) | MSG_DONTWAIT | MSG_NOSIGNAL;
        do {
            n = sqe.opcode == IORING_OP_SEND ? ::send(fd, addr, sqe.len, flags)
                                             : ::sendmsg(fd, static_cast<const msghdr*>(addr), flags);
        } while (n < 0 && errno == EINTR);
        res = n >= 0 ? static_cast<int>(n) : fail();
        // Full: EAGAIN, or a short send (the rest would get EAGAIN).
        std::size_t asked = sqe.len;
        if (sqe.opcode == IORING_OP_SENDMSG) {
            const auto* mh = static_cast<const msghdr*>(addr);
            asked = 0;
            for (std::size_t i = 0; i < mh->msg_iovlen; ++i) asked += mh->msg_iov[i].iov_len;
        }
        if (e && e->watched && (res == -EAGAIN || (res >= 0 && static_cast<std::size_t>(res) < asked)))
            e->writable = false;
        break;
    }
    case IORING_OP_ACCEPT: {
        if (e && e->watched && !e->readable) break;
        auto* len = reinterpret_cast<socklen_t*>(static_cast<std::uintptr_t>(sqe.off));
        const bool multishot = sqe.ioprio & IORING_ACCEPT_MULTISHOT;
        // A multishot accept takes every connection waiting (until EAGAIN), each a completion
        // with IORING_CQE_F_MORE, then waits for more; a single one takes one.
        while (true) {
            int c;
            do {
                c = ::accept4(fd, static_cast<sockaddr*>(addr), len, static_cast<int>(sqe.accept_flags));
            } while (c < 0 && errno == EINTR);
            res = c >= 0 ? c : fail();
            if (res == -EAGAIN && e && e->watched) e->readable = false;
            if (!multishot || res < 0) break;
            finish(r, res, IORING_CQE_F_MORE);
            if (r->reactor_state == running_cancelled) {  // cancelled by that completion
                res = -ECANCELED;
                break;
            }
        }
        break;
    }
    case IORING_OP_CONNECT: {
        if (!e || !e->connecting) {
            if (::connect(fd, static_cast<const sockaddr*>(addr), static_cast<socklen_t>(sqe.off)) == 0) {
                res = 0;
            } else if (errno == EINPROGRESS && e) {
                e->connecting = true;
                e->writable = false;
                res = -EAGAIN;
            } else if (errno == EAGAIN) {
                // A Unix socket whose listener's backlog is full: nothing is in progress and no
                // event will say when there is room. Tried again in a moment, as a blocking
                // connect would wait.
                r->reactor_state = cancel_once ? running : parked;
                if (cancel_once) {
                    finish(r, -ECANCELED);
                } else {
                    retry_.push_back(r);
                }
                return;
            } else {
                res = errno == EINPROGRESS ? -EINVAL : -errno;  // (not a watched socket: cannot wait)
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
            if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pn) != 0) break;  // not yet
        }
        e->connecting = false;
        res = -err;
        break;
    }
    case IORING_OP_SHUTDOWN:
        res = ::shutdown(fd, static_cast<int>(sqe.len)) == 0 ? 0 : -errno;
        break;
    case IORING_OP_CLOSE:
        forget(fd, false);
        res = ::close(fd) == 0 ? 0 : -errno;
        break;
    case IORING_OP_READ:
    case IORING_OP_WRITE: {
        const bool read = sqe.opcode == IORING_OP_READ;
        iovec iov{addr, sqe.len};
        // Offset -1 is the file's position; on a pipe, socket or tty the offset means nothing
        // (io_uring ignores it), so ESPIPE asks again without it.
        auto off = static_cast<off_t>(sqe.off);
        ssize_t n;
        do {
            n = read ? ::preadv2(fd, &iov, 1, off, RWF_NOWAIT) : ::pwritev2(fd, &iov, 1, off, RWF_NOWAIT);
            if (n < 0 && errno == ESPIPE && off != -1) {
                off = -1;
                continue;
            }
        } while (n < 0 && errno == EINTR);
        if (n < 0 && errno == EOPNOTSUPP) {
            // No RWF_NOWAIT for this file (a tty, an older kernel): the plain call, but only once
            // it would not block; else wait for readiness and come back.
            pollfd p{fd, static_cast<short>(read ? POLLIN : POLLOUT), 0};
            n = ::poll(&p, 1, 0) > 0 ? plain_rw(read, fd, iov, static_cast<std::uint64_t>(off)) : (errno = EAGAIN, -1);
        }
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
        res = -EOPNOTSUPP;
        break;
    }
    if (res != -EAGAIN) {
        finish(r, res);
        return;
    }
    if (cancel_once || r->reactor_state == running_cancelled) {
        finish(r, -ECANCELED);
        return;
    }
    park(r, fd, events_of(sqe));
}

void reactor::park(io_request* r, int fd, std::uint32_t events) noexcept {
    fd_entry* ep;
    try {
        ep = &entry(fd);
    } catch (const std::bad_alloc&) {
        finish(r, -ENOMEM);
        return;
    }
    fd_entry& e = *ep;
    r->reactor_state = parked;
    e.waiting.push_back(r);
    if (!e.watched) {
        rearm_oneshot(fd, e);
    } else if ((events & EPOLLOUT) && !e.out_registered) {
        // Writability, edge-triggered, for as long as a writer waits. If the socket is writable
        // already, the kernel reports it at once (no lost wake-up).
        epoll_event ev{};
        ev.events = watched_events | EPOLLOUT;
        ev.data.fd = fd;
        if (::epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) == 0) {
            e.out_registered = true;
        } else {
            intrusive_list<io_request>::erase(r);
            finish(r, -errno);
        }
    }
}

void reactor::rearm_oneshot(int fd, fd_entry& e) noexcept {
    std::uint32_t want = 0;
    e.waiting.for_each([&want](io_request* w) {
        io_uring_sqe sqe{};
        w->prep(&sqe);
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
    // operations the plain way (file I/O on the loop's thread, as the kernel would do it for a
    // non-blocking read of a file), or fail them.
    while (io_request* w = e.waiting.pop_front()) {
        io_uring_sqe sqe{};
        w->prep(&sqe);
        iovec iov{reinterpret_cast<void*>(static_cast<std::uintptr_t>(sqe.addr)), sqe.len};
        ssize_t n = -1;
        if (err == EPERM && (sqe.opcode == IORING_OP_READ || sqe.opcode == IORING_OP_WRITE))
            n = plain_rw(sqe.opcode == IORING_OP_READ, fd, iov, sqe.off);
        else if (err == EPERM && sqe.opcode == IORING_OP_POLL_ADD)
            n = static_cast<ssize_t>(events_of(sqe));  // a file is always ready
        else
            errno = err;
        finish(w, n >= 0 ? static_cast<int>(n) : -errno);
    }
}

void reactor::on_ready(int fd, std::uint32_t events) noexcept {
    fd_entry* ep = find(fd);
    if (!ep) return;
    fd_entry& e = *ep;
    if (events & in_events) e.readable = true;
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) e.hung_up = true;
    if (events & out_events) e.writable = true;
    // Every waiter there now tries again, in order (those that would block wait again, at the
    // back); they stay listed until their turn, so that a cancel reaches them meanwhile.
    std::size_t n = 0;
    e.waiting.for_each([&n](io_request*) { ++n; });
    for (; n > 0; --n) {
        io_request* r = e.waiting.pop_front();
        if (!r) break;
        r->reactor_state = running;
        attempt(r, false);
    }
    if (!e.watched) {
        if (!e.waiting.empty()) rearm_oneshot(fd, e);
    } else if (e.out_registered && !wants(e, EPOLLOUT)) {
        epoll_event ev{};
        ev.events = watched_events;
        ev.data.fd = fd;
        if (::epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) == 0) e.out_registered = false;
    }
}

bool reactor::wants(fd_entry& e, std::uint32_t events) noexcept {
    bool any = false;
    e.waiting.for_each([&any, events](io_request* w) {
        io_uring_sqe sqe{};
        w->prep(&sqe);
        any |= (events_of(sqe) & events) != 0;
    });
    return any;
}

void reactor::wait(long long timeout_ns) {
    if (!retry_.empty() && (timeout_ns < 0 || timeout_ns > retry_ns)) timeout_ns = retry_ns;
    int n;
    if (timeout_ns < 0) {
        n = ::epoll_wait(epfd_, events_, static_cast<int>(events_per_pass), -1);
    } else if (have_pwait2_) {
        timespec ts{static_cast<time_t>(timeout_ns / 1'000'000'000), static_cast<long>(timeout_ns % 1'000'000'000)};
        n = ::epoll_pwait2(epfd_, events_, static_cast<int>(events_per_pass), &ts, nullptr);
    } else {
        // Milliseconds, rounded up, so that a timer never fires early.
        long long ms = (timeout_ns + 999'999) / 1'000'000;
        n = ::epoll_wait(epfd_, events_, static_cast<int>(events_per_pass), static_cast<int>(std::min<long long>(ms, INT_MAX)));
    }
    if (n < 0) {
        if (errno == EINTR) return;
        throw make_system_error(errno, "ringio: epoll_wait");
    }
    for (int k = 0; k < n; ++k) on_ready(events_[k].data.fd, events_[k].events);
    // Operations with nothing to wait for try again (they stay parked in retry_ until then).
    std::size_t again = 0;
    retry_.for_each([&again](io_request*) { ++again; });
    for (; again > 0; --again) {
        io_request* r = retry_.pop_front();
        if (!r) break;
        r->reactor_state = running;
        attempt(r, false);
    }
}

void reactor::cancel(io_request* r) noexcept {
    switch (r->reactor_state) {
    case pending:
        r->reactor_state = pending_cancelled;  // tried once at the flush, in its turn
        break;
    case parked:
        intrusive_list<io_request>::erase(r);
        r->reactor_state = cancelled;
        cancelled_.push_back(r);
        break;
    case running:
        r->reactor_state = running_cancelled;
        break;
    default:  // completed, or already on its way to -ECANCELED
        break;
    }
}

void reactor::cancel_fd(int fd) noexcept {
    fd_entry* e = find(fd);
    if (!e) return;
    while (io_request* r = e->waiting.pop_front()) {
        r->reactor_state = cancelled;
        cancelled_.push_back(r);
    }
    // Operations submitted and not tried yet are tried once at the next flush (their fd is
    // only known then); a connect in progress is abandoned.
    if (!e->cancel_untried) {
        try {
            cancel_fds_.push_back(fd);
            e->cancel_untried = true;
        } catch (const std::bad_alloc&) {  // (they are then tried and wait as usual)
        }
    }
    e->connecting = false;
    retry_.for_each([this, fd](io_request* r) {
        io_uring_sqe sqe{};
        r->prep(&sqe);
        if (sqe.fd == fd) cancel(r);
    });
}

void reactor::cancel_all() noexcept {
    pending_.for_each([](io_request* r) { r->reactor_state = pending_cancelled; });
    for (auto& e : fds_)
        if (e)
            while (io_request* r = e->waiting.pop_front()) {
                r->reactor_state = cancelled;
                cancelled_.push_back(r);
            }
    while (io_request* r = retry_.pop_front()) {
        r->reactor_state = cancelled;
        cancelled_.push_back(r);
    }
}

}  // namespace ringio::detail

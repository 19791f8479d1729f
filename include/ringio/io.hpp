// Low-level io_uring operations as awaitables (the ring's counterpart of loop.sock_* and
// os.read). Each returns an io_result carrying the raw kernel result; the stream and socket
// layers turn failures into exceptions.
//
//   ringio::io_result r = co_await ringio::io::read(fd, std::as_writable_bytes(std::span(buf)));
//   if (!r) throw std::system_error(r.error(), "read");
#pragma once

#include <liburing.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <span>
#include <system_error>
#include <utility>

#include "ringio/errors.hpp"
#include "ringio/detail/suspension.hpp"
#include "ringio/event_loop.hpp"

namespace ringio {

/// A completion: res >= 0 is the operation's value (bytes, fd, ...), res < 0 is -errno.
struct io_result {
    int res = 0;
    std::uint32_t flags = 0;  // the CQE's flags (IORING_CQE_F_*)

    explicit operator bool() const noexcept { return res >= 0; }
    [[nodiscard]] std::size_t value() const noexcept { return static_cast<std::size_t>(res); }
    [[nodiscard]] std::error_code error() const noexcept {
        return res < 0 ? std::error_code(-res, std::system_category()) : std::error_code();
    }
};

namespace detail {

/// An SQE's length (32 bits) for a buffer of n bytes: at most 1 GiB, so that a 4 GiB buffer is
/// never sent or read as 0 bytes and the kernel's INT_MAX limit is never hit.
inline unsigned io_length(std::size_t n) noexcept { return static_cast<unsigned>(std::min<std::size_t>(n, std::size_t{1} << 30)); }

/// Counts the operations in flight on one file descriptor, so that its owner closes it only
/// after the last completion (no fd-number reuse race) and can wait for that moment.
struct op_tracker {
    std::uint32_t inflight = 0;
    void (*on_idle)(op_tracker*) noexcept = nullptr;  // called when inflight drops to 0

    void begin() noexcept { ++inflight; }
    void end() noexcept {
        if (--inflight == 0 && on_idle) on_idle(this);
    }
};

/// The awaiter behind every single-shot operation. `Prep` fills the SQE; it is stored here
/// because the SQE may be taken later than the co_await (when the CQ is full).
///
/// Cancel safety: cancelling the task submits IORING_OP_ASYNC_CANCEL and the task resumes only
/// after the operation's own completion. If the kernel finished the operation before the cancel
/// took effect, its result is returned (no data is lost) and the cancellation stays pending
/// for the task's next suspension point; otherwise cancelled_error is thrown. A cancelled
/// operation ends with -ECANCELED, or -EINTR when the kernel interrupted it in a worker thread.
template <class Prep>
class io_awaiter : io_request, suspension {
public:
    /// `raw`: `fill` is the user's (io::make), whatever io_uring opcode it wants; ringio's own
    /// operations are among those the epoll backend performs too.
    explicit io_awaiter(Prep fill, bool cancellable = true, op_tracker* tracker = nullptr, bool raw = false) noexcept(
        std::is_nothrow_move_constructible_v<Prep>)
        : prep_fn_(std::move(fill)), tracker_(tracker), cancellable_(cancellable), raw_(raw) {}

    bool await_ready() const noexcept { return false; }

    bool await_suspend(std::coroutine_handle<> h) {
        if (raw_ && loop_core::running().backend() == backend_kind::epoll)
            throw make_system_error(EOPNOTSUPP, "ringio: io::make runs raw io_uring operations; this loop runs on epoll");
        if (!begin(h, cancellable_ ? cancel_kind::interrupt : cancel_kind::none)) return false;
        static constexpr io_ops table{
            [](io_request* r, io_uring_sqe* sqe) noexcept { static_cast<io_awaiter*>(r)->prep_fn_(sqe); },
            [](io_request* r, int res, std::uint32_t flags) noexcept {
                auto* self = static_cast<io_awaiter*>(r);
                self->result_ = io_result{res, flags};
                op_tracker* tracker = self->tracker_;
                self->wake(self->cancelling() && (res == -ECANCELED || res == -EINTR));
                if (tracker) tracker->end();  // last: may free what the tracker belongs to
            }};
        io_request::ops = &table;
        loop_core::running().submit(this);  // may throw (the ring failed): nothing started then
        if (tracker_) tracker_->begin();
        if (cancellable_)
            arm([](suspension* sp) noexcept { loop_core::current()->cancel_io(static_cast<io_awaiter*>(sp)); });
        return true;
    }

    io_result await_resume() {
        resume();
        return result_;
    }

    /// The request, for the loop's cancel_io (a stream's close() ends its receive this way).
    [[nodiscard]] io_request* request() noexcept { return this; }

private:
    Prep prep_fn_;
    op_tracker* tracker_;
    io_result result_;
    bool cancellable_;
    bool raw_;
};

}  // namespace detail

namespace detail {
/// ringio's own operations: one of the opcodes both backends perform.
template <class Prep>
[[nodiscard]] io_awaiter<Prep> op(Prep prep) {
    return io_awaiter<Prep>(std::move(prep));
}
}  // namespace detail

namespace io {

/// An awaitable operation from any SQE-filling function: prep(io_uring_sqe*). The function
/// and whatever it points to must stay valid until the co_await finishes. io_uring only, by
/// nature: on a loop running on epoll the co_await throws std::system_error(EOPNOTSUPP). The
/// operations below (read, write, poll, close, nop) work on both backends.
///
///   co_await ringio::io::make([&](io_uring_sqe* s) { io_uring_prep_fsync(s, fd, 0); });
template <class Prep>
[[nodiscard]] detail::io_awaiter<Prep> make(Prep prep) {
    return detail::io_awaiter<Prep>(std::move(prep), true, nullptr, true);
}


/// Does nothing in the kernel; completes with 0. Useful to measure the ring itself.
[[nodiscard]] inline auto nop() {
    return detail::op([](io_uring_sqe* s) noexcept { io_uring_prep_nop(s); });
}

/// read(2) at the file's position (offset -1), through the ring. Reads at most 1 GiB at once
/// (an SQE's length is 32 bits): a larger buffer gets a short read, never a wrong length.
[[nodiscard]] inline auto read(int fd, std::span<std::byte> buf) {
    return detail::op([fd, buf](io_uring_sqe* s) noexcept {
        io_uring_prep_read(s, fd, buf.data(), detail::io_length(buf.size()), static_cast<std::uint64_t>(-1));
    });
}

/// write(2) at the file's position; may write fewer bytes than given (at most 1 GiB at once).
[[nodiscard]] inline auto write(int fd, std::span<const std::byte> buf) {
    return detail::op([fd, buf](io_uring_sqe* s) noexcept {
        io_uring_prep_write(s, fd, buf.data(), detail::io_length(buf.size()), static_cast<std::uint64_t>(-1));
    });
}

/// Waits until fd is ready for `events` (POLLIN, POLLOUT, ...); completes with the revents.
[[nodiscard]] inline auto poll(int fd, unsigned events) {
    return detail::op([fd, events](io_uring_sqe* s) noexcept { io_uring_prep_poll_add(s, fd, events); });
}

/// close(2) through the ring. Not a cancellation point: the fd is always closed, and a
/// cancellation that arrives meanwhile is raised at the task's next suspension point.
[[nodiscard]] inline auto close(int fd) {
    return detail::io_awaiter([fd](io_uring_sqe* s) noexcept { io_uring_prep_close(s, fd); }, false);
}

/// A kernel timeout (IORING_OP_TIMEOUT): completes with -ETIME after `d`. sleep() is cheaper
/// (a userspace timer); this one exists to exercise and measure the ring, so it is io_uring
/// only (on epoll it throws as io::make does).
class kernel_timeout {
public:
    explicit kernel_timeout(std::chrono::nanoseconds d) noexcept {
        ts_.tv_sec = d.count() / 1'000'000'000;
        ts_.tv_nsec = d.count() % 1'000'000'000;
    }
    auto operator co_await() noexcept {
        return make([this](io_uring_sqe* s) noexcept { io_uring_prep_timeout(s, &ts_, 0, 0); });
    }

private:
    __kernel_timespec ts_{};
};

}  // namespace io
}  // namespace ringio

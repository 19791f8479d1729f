// stream_reader: the read algorithms (read, read_some, read_exactly, read_until, read_line).
#include "ringio/stream.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "ringio/errors.hpp"
#include "stream_state.hpp"

#include "ringio/wait_for.hpp"

namespace ringio {

incomplete_read_error::incomplete_read_error(std::string partial, std::size_t expected)
    : std::runtime_error(expected ? fmt::format("ringio: {} bytes read on a total of {} expected bytes", partial.size(), expected)
                                  : fmt::format("ringio: {} bytes read before EOF, separator not found", partial.size())),
      partial_(std::move(partial)),
      expected_(expected) {}

limit_overrun_error::limit_overrun_error(const std::string& message, std::size_t consumed)
    : std::runtime_error(message), consumed_(consumed) {}

namespace detail {

task<std::string> stream_state::read_until(std::string_view sep) {
    if (sep.empty()) throw std::invalid_argument("ringio: read_until needs a non-empty separator");
    // asyncio's algorithm: search only what was not searched before; past the limit, stop.
    std::size_t offset = 0;
    std::size_t isep;
    while (true) {
        std::string_view data = rbuf.view();
        if (data.size() >= offset + sep.size()) {
            isep = data.find(sep, offset);
            if (isep != std::string_view::npos) break;
            offset = data.size() + 1 - sep.size();
            if (offset > limit)
                throw limit_overrun_error("ringio: separator is not found, and chunk exceed the limit", offset);
        }
        if (eof_) {
            std::string partial(data);
            rbuf.clear();
            throw incomplete_read_error(std::move(partial), 0);
        }
        if (has_buffer_ring())
            (void)co_await arrived(rbuf.size(), true);
        else
            (void)co_await fill(min_chunk);
    }
    if (isep > limit)
        throw limit_overrun_error("ringio: separator is found, but chunk is longer than limit", isep);
    std::string out(rbuf.view().substr(0, isep + sep.size()));
    rbuf.consume(out.size());
    co_return out;
}

}  // namespace detail

// ---- stream_reader ----

namespace {
struct read_guard {
    detail::stream_state* s;
    explicit read_guard(detail::stream_state* st) : s(st) {
        if (!s) throw invalid_state_error("ringio: use of an empty stream_reader");
        s->begin_read();
    }
    ~read_guard() { s->end_read(); }
    read_guard(const read_guard&) = delete;
    read_guard& operator=(const read_guard&) = delete;
};

}  // namespace

stream_reader::stream_reader(detail::stream_state* s) noexcept : s_(s) {}
stream_reader& stream_reader::operator=(stream_reader&& o) noexcept {
    if (this != &o) {
        if (s_) s_->release();
        s_ = std::exchange(o.s_, nullptr);
    }
    return *this;
}
stream_reader::~stream_reader() {
    if (s_) s_->release();
}

namespace {

task<std::string> do_read(detail::stream_state* s, std::size_t n) {
    read_guard g(s);
    if (n == 0) co_return std::string();
    if (s->rbuf.empty() && s->has_buffer_ring()) {
        bool more = co_await s->arrived(0, false);
        co_return more ? s->take(n) : std::string();
    }
    if (s->rbuf.empty() && !co_await s->fill(n)) co_return std::string();
    co_return s->take(n);  // (with the ring: what waits in ring buffers goes behind rbuf first)
}

task<std::string> do_read_all(detail::stream_state* s, std::size_t max_size) {
    read_guard g(s);
    // Everything into the buffer, so that a limit overrun or a cancellation leaves it there.
    while (true) {
        if (s->rbuf.size() > max_size)
            throw limit_overrun_error(fmt::format("ringio: read_all: more than {} bytes before EOF", max_size),
                                      s->rbuf.size());
        bool more = co_await s->fill(detail::max_chunk);
        if (!more) break;
    }
    std::string out(s->rbuf.view());
    s->rbuf.clear();
    co_return out;
}

task<std::size_t> do_read_some(detail::stream_state* s, std::span<std::byte> buf) {
    read_guard g(s);
    if (buf.empty()) co_return 0;
    detail::byte_buffer& b = s->rbuf;
    if (b.empty()) co_return co_await s->recv_into(buf);  // straight into buf where it can
    co_return s->take_into(buf);
}

task<std::string> do_read_exactly(detail::stream_state* s, std::size_t n) {
    read_guard g(s);
    detail::byte_buffer& b = s->rbuf;
    if (b.size() < n && n - b.size() >= detail::direct_threshold) {
        // Large: the rest goes straight into the result. If this is cancelled or fails, what
        // was read goes back into the buffer: nothing is lost.
        std::string out(n, '\0');
        std::size_t have = b.size();
        if (have > 0) std::memcpy(out.data(), b.data(), have);
        b.consume(have);
        auto dest = std::as_writable_bytes(std::span(out));
        std::exception_ptr failure;
        try {
            while (have < n) {
                std::size_t got = co_await s->recv_into(dest.subspan(have));
                if (got == 0) break;
                have += got;
            }
        } catch (...) {
            failure = std::current_exception();
        }
        if (failure) {
            s->unread(dest.first(have));
            std::rethrow_exception(failure);
        }
        if (have < n) {
            out.resize(have);
            throw incomplete_read_error(std::move(out), n);
        }
        co_return out;
    }
    // Small: gather in the buffer, take when complete (a cancellation leaves it all there).
    while (b.size() < n) {
        if (!co_await s->fill(n - b.size())) {
            std::string partial(b.view());
            b.clear();
            throw incomplete_read_error(std::move(partial), n);
        }
    }
    co_return b.take(n);
}

task<> do_read_exactly_into(detail::stream_state* s, std::span<std::byte> buf) {
    read_guard g(s);
    detail::byte_buffer& b = s->rbuf;
    if (buf.size() - std::min(buf.size(), b.size()) < detail::direct_threshold) {
        // Small: gather in the buffer (where a cancellation leaves it), copy when complete.
        while (b.size() < buf.size()) {
            if (!co_await s->fill(buf.size() - b.size())) {
                std::string partial(b.view());
                b.clear();
                throw incomplete_read_error(std::move(partial), buf.size());
            }
        }
        if (!buf.empty()) std::memcpy(buf.data(), b.data(), buf.size());
        b.consume(buf.size());
        co_return;
    }
    // Large: straight into the caller's memory; on failure what was read goes back.
    std::size_t have = std::min(buf.size(), b.size());
    if (have > 0) std::memcpy(buf.data(), b.data(), have);
    b.consume(have);
    std::exception_ptr failure;
    try {
        while (have < buf.size()) {
            std::size_t got = co_await s->recv_into(buf.subspan(have));
            if (got == 0) break;
            have += got;
        }
    } catch (...) {
        failure = std::current_exception();
    }
    if (failure) {  // cancelled or failed: what was read goes back, nothing is lost
        s->unread(buf.first(have));
        std::rethrow_exception(failure);
    }
    if (have < buf.size())
        throw incomplete_read_error(std::string(reinterpret_cast<const char*>(buf.data()), have), buf.size());
}

task<std::string> do_read_until(detail::stream_state* s, std::string_view separator) {
    read_guard g(s);
    co_return co_await s->read_until(separator);
}

task<std::string> do_read_line(detail::stream_state* s) {
    read_guard g(s);
    try {
        co_return co_await s->read_until("\n");
    } catch (incomplete_read_error& e) {
        co_return std::string(e.partial());
    } catch (const limit_overrun_error& e) {
        // asyncio: drop the over-long line through its newline if buffered, else all of it.
        detail::byte_buffer& b = s->rbuf;
        std::string_view data = b.view();
        if (data.size() > e.consumed() && data[e.consumed()] == '\n')
            b.consume(e.consumed() + 1);
        else
            b.clear();
        throw;
    }
}

}  // namespace

// With a read timeout, each call as a whole must finish in time (a slowloris peer sending a
// byte a second never completes a line); the read is cancel-safe, so nothing is lost.
template <class T>
task<T> stream_reader::timed(task<T> t) {
    if (s_ && s_->read_timeout != detail::stream_state::no_timeout) return wait_for(std::move(t), s_->read_timeout);
    return t;
}

stream_reader::read_op stream_reader::read(std::size_t n) {
    // The frameless path is the shared buffers' one without a deadline; anything else (no
    // stream, no ring, a read timeout) is the coroutine's.
    if (s_ && s_->has_buffer_ring() && s_->read_timeout == detail::stream_state::no_timeout) return read_op(s_, n, {});
    return read_op(s_, n, timed(do_read(s_, n)));
}

stream_reader::read_op::~read_op() {
    if (step_ != step::fresh) s_->end_read();  // (awaited, and its frame destroyed before it resumed)
}

bool stream_reader::read_op::await_ready() {
    if (slow_.valid()) return false;
    s_->begin_read();  // throws if another task is reading
    if (n_ == 0) {
        step_ = step::nothing;
        return true;
    }
    if (!s_->rbuf.empty()) {
        step_ = step::buffered;
        return true;
    }
    step_ = step::waiting;
    return s_->arrived(0, false).await_ready();
}

std::coroutine_handle<> stream_reader::read_op::await_suspend(std::coroutine_handle<> h) {
    if (slow_.valid()) return std::move(slow_).operator co_await().await_suspend(h);
    auto a = s_->arrived(0, false);
    return a.await_suspend(h) ? std::noop_coroutine() : h;  // (false: cancelled before it waited)
}

std::string stream_reader::read_op::await_resume() {
    if (slow_.valid()) return std::move(slow_).operator co_await().await_resume();
    struct done {
        read_op* op;
        ~done() {
            op->s_->end_read();
            op->step_ = step::fresh;
        }
    } end{this};
    switch (step_) {
    case step::nothing:
        return std::string();
    case step::buffered:
        return s_->take(n_);  // (what waits in ring buffers goes behind rbuf first)
    default:
        return s_->arrived(0, false).await_resume() ? s_->take(n_) : std::string();
    }
}
task<std::string> stream_reader::read() { return read_all(); }
task<std::string> stream_reader::read_all(std::size_t max_size) { return timed(do_read_all(s_, max_size)); }
task<std::size_t> stream_reader::read_some(std::span<std::byte> buf) { return timed(do_read_some(s_, buf)); }
task<std::string> stream_reader::read_exactly(std::size_t n) { return timed(do_read_exactly(s_, n)); }
task<> stream_reader::read_exactly(std::span<std::byte> buf) { return timed(do_read_exactly_into(s_, buf)); }
task<std::string> stream_reader::read_until(std::string_view separator) {
    return timed(do_read_until(s_, separator));
}
task<std::string> stream_reader::read_line() { return timed(do_read_line(s_)); }

bool stream_reader::at_eof() const noexcept { return s_ && s_->at_eof(); }
std::size_t stream_reader::buffered() const noexcept { return s_ ? s_->buffered() : 0; }
std::size_t stream_reader::limit() const noexcept { return s_ ? s_->limit : 0; }

}  // namespace ringio

#include "ringio/stream.hpp"

#include <algorithm>
#include <cerrno>

#include <fmt/format.h>

#include "ringio/errors.hpp"
#include "ringio/wait_for.hpp"
#include "stream_state.hpp"

namespace ringio {

incomplete_read_error::incomplete_read_error(std::string partial, std::size_t expected)
    : std::runtime_error(expected ? fmt::format("ringio: {} bytes read on a total of {} expected bytes", partial.size(), expected)
                                  : fmt::format("ringio: {} bytes read before EOF, separator not found", partial.size())),
      partial_(std::move(partial)),
      expected_(expected) {}

limit_overrun_error::limit_overrun_error(const std::string& message, std::size_t consumed)
    : std::runtime_error(message), consumed_(consumed) {}

namespace detail {
namespace {
// How much a read asks the kernel for when filling the internal buffer.
constexpr std::size_t min_chunk = 16 * 1024;
constexpr std::size_t max_chunk = 256 * 1024;
// read_exactly receives straight into the caller's memory from this size on.
constexpr std::size_t direct_threshold = 64 * 1024;
// Write buffers larger than this are freed once empty rather than kept for reuse.
constexpr std::size_t keep_capacity = 256 * 1024;

// Set when this thread's pool is destroyed (thread exit, or exit() for the main thread): a
// loop still running after that, from a static destructor say, must not touch the pool.
constinit thread_local bool pool_gone = false;

// The write buffers of connections that have nothing left to send, for the next write() of any
// connection on this thread (a loop's connections all live on its thread). So an idle
// connection holds no write buffer, and a busy loop does not hand its buffers back to malloc,
// which would return the memory to the kernel and fault it in again: freeing them cost 4 us per
// 4 KiB round trip at 1,000 connections (bench/README.md).
class write_buffer_pool {
public:
    write_buffer_pool() = default;
    write_buffer_pool(const write_buffer_pool&) = delete;
    write_buffer_pool& operator=(const write_buffer_pool&) = delete;
    ~write_buffer_pool() { pool_gone = true; }

    /// Takes v's memory (v is left empty without capacity).
    void put(std::vector<std::byte>& v) noexcept {
        if (v.capacity() == 0) return;
        if (!pool_gone && v.capacity() <= max_capacity && bytes_ + v.capacity() <= max_bytes) {
            if (spare_.capacity() == 0) {
                try {
                    spare_.reserve(max_buffers);
                } catch (const std::bad_alloc&) {
                }
            }
            if (spare_.size() < spare_.capacity()) {
                v.clear();
                bytes_ += v.capacity();
                spare_.push_back(std::move(v));  // no allocation: reserved
                v = std::vector<std::byte>();
                return;
            }
        }
        std::vector<std::byte>().swap(v);
    }
    [[nodiscard]] std::size_t bytes() const noexcept { return pool_gone ? 0 : bytes_; }
    /// Gives an empty v (no capacity) a spare buffer, if there is one.
    void get(std::vector<std::byte>& v) noexcept {
        if (pool_gone || v.capacity() != 0 || spare_.empty()) return;
        v = std::move(spare_.back());
        spare_.pop_back();
        bytes_ -= v.capacity();
    }

private:
    // At most 256 buffers and 8 MiB per thread, kept for the thread's life; a buffer above
    // keep_capacity is freed, as it would be while a connection is busy.
    static constexpr std::size_t max_buffers = 256;
    static constexpr std::size_t max_bytes = 8 * 1024 * 1024;
    static constexpr std::size_t max_capacity = keep_capacity;
    std::vector<std::vector<std::byte>> spare_;
    std::size_t bytes_ = 0;
};

thread_local write_buffer_pool spare_write_buffers;
}  // namespace

std::size_t spare_write_buffer_bytes() noexcept { return spare_write_buffers.bytes(); }

stream_state::stream_state(socket s, std::size_t lim) : sock(std::move(s)), limit(lim), loop_(&event_loop::running()) {
    if (limit == 0) throw std::invalid_argument("ringio: stream limit must be positive");
    send_req().prep = [](io_request* r, io_uring_sqe* sqe) noexcept {
        stream_state* st = of(static_cast<stream_send_request*>(r));
        int fd = st->sock.fd();
        // TRICKY: filled at submit time, so every write() of this pass goes out in one send.
        if (st->send_off_ == st->sending_.size()) {
            st->sending_.clear();
            st->send_off_ = 0;
            std::swap(st->sending_, st->pending_);
        }
        if (st->aborted_) {
            st->kind_ = send_kind::nop;
            io_uring_prep_nop(sqe);
        } else if (!st->sending_.empty()) {
            st->kind_ = send_kind::send;
            io_uring_prep_send(sqe, fd, st->sending_.data() + st->send_off_, st->sending_.size() - st->send_off_,
                               MSG_NOSIGNAL);
        } else if (st->eof_requested_ && !st->eof_sent_) {
            st->kind_ = send_kind::shutdown;
            io_uring_prep_shutdown(sqe, fd, SHUT_WR);
        } else {
            st->kind_ = send_kind::nop;
            io_uring_prep_nop(sqe);
        }
    };
    send_req().complete = [](io_request* r, int res, std::uint32_t) noexcept {
        of(static_cast<stream_send_request*>(r))->on_sent(res);
    };
    bufs_ = loop_->stream_buffers();
    if (bufs_) {
        recv_req().prep = [](io_request* r, io_uring_sqe* sqe) noexcept {
            stream_state* st = of(static_cast<stream_recv_request*>(r));
            st->recycled_mark_ = st->bufs_->recycled();
            io_uring_prep_recv(sqe, st->sock.fd(), nullptr, 0, 0);
            sqe->flags |= IOSQE_BUFFER_SELECT;
            sqe->buf_group = st->bufs_->group();
        };
        recv_req().complete = [](io_request* r, int res, std::uint32_t flags) noexcept {
            of(static_cast<stream_recv_request*>(r))->on_recv(res, flags);
        };
        buffers_back().ready = [](buffer_waiter* w) noexcept {
            stream_state* st = of(static_cast<stream_buffers_back*>(w));
            st->arm_recv();  // even if its reader left: the next buffer returned must wake someone
        };
    }
    socket_state* ss = sock.state_ptr();
    ss->idle_hook = &stream_state::on_socket_idle;
    ss->idle_ctx = this;
    // Recorded now: after a reset or a close, getpeername can no longer tell, and error
    // messages and peername() must still name the peer.
    try {
        endpoint e = sock.remote_endpoint();
        if (e.size() <= sizeof peer_addr_) {
            std::memcpy(&peer_addr_, e.data(), e.size());
            peer_len_ = e.size();
        } else {
            peer_big_ = std::make_unique<endpoint>(e);
        }
    } catch (const std::system_error&) {
    }
}

stream_state::~stream_state() {
    if (bufs_) {
        buffer_ring::cancel_wait(&buffers_back());
        for (; chunk_count_ > 0; --chunk_count_, chunk_head_ = (chunk_head_ + 1) % max_chunks)
            bufs_->recycle(chunks_[chunk_head_].bid);
    }
}

void stream_state::release() noexcept {
    if (--refs_ != 0) return;
    // Both halves are gone. An abandoned connection is flushed and closed, never leaked; the
    // state lives on while that happens (the send holds its own reference).
    if (!closing) close();
    if (closed && !send_queued_ && sock.in_flight() == 0) delete this;
}

endpoint stream_state::peer() const noexcept {
    if (peer_big_) return *peer_big_;
    endpoint e;  // byte for byte what getpeername gave, whatever the family (as remote_endpoint())
    std::memcpy(e.data(), &peer_addr_, peer_len_);
    e.resize(peer_len_);
    return e;
}

endpoint stream_state::local() const {
    // Not cached: rarely asked for, and 144 bytes in every connection's state.
    return sock.valid() ? sock.local_endpoint() : endpoint{};
}

std::system_error stream_state::io_error(int err, const char* what) {
    return make_system_error(err, fmt::format("ringio: {} {}", what, peer()));
}

// ---- reading ----

void stream_state::begin_read() {
    if (reading_)
        throw invalid_state_error("ringio: another task is already reading from this stream");
    reading_ = true;
}

// ---- receiving on the shared buffer ring ----
//
// A read that finds nothing buffered arms one receive that selects its buffer from the loop's
// ring (IOSQE_BUFFER_SELECT): the kernel takes a buffer only when data arrives, the reader
// copies straight out of it and gives it back, so a buffer is held only from the data's
// arrival to its reading, never by an idle connection. Data is taken only when a reader asks,
// so a fast peer cannot fill the server's memory (no pause_reading needed).
//
// Why not a multishot receive (one SQE for many arrivals)? It needs cancelling to pause a slow
// reader, and on the 6.18 kernel measured a multishot receive cancelled and armed again can
// miss the peer's EOF: reproduced with plain liburing, and by tests/stress_shutdown.cpp
// (connections that never close). See docs/net.md.

void stream_state::arm_recv() {
    if (armed_ || recv_done()) return;
    armed_ = true;
    // No reference: the socket's in-flight count keeps this state alive until the receive
    // ends, and the reader and writer going away must still close the connection.
    socket_state* ss = sock.state_ptr();
    ss->loop = loop_;
    ss->begin();
    loop_->submit_later(&recv_req());
}

void stream_state::push_chunk(std::uint16_t bid, std::uint32_t len) noexcept {
    if (chunk_count_ == max_chunks) spill_front();
    chunks_[(chunk_head_ + chunk_count_) % max_chunks] = chunk{bid, 0, len};
    ++chunk_count_;
}

void stream_state::spill_front() noexcept {
    chunk& c = chunks_[chunk_head_];
    std::size_t n = c.len - c.off;
    try {
        std::memcpy(rbuf.prepare(n).data(), bufs_->buffer(c.bid) + c.off, n);
        rbuf.commit(n);
    } catch (const std::bad_alloc&) {
        // Out of memory for the data: fail the connection rather than lose bytes silently.
        if (recv_error_ == 0) recv_error_ = ENOMEM;
    }
    bufs_->recycle(c.bid);
    chunk_head_ = (chunk_head_ + 1) % max_chunks;
    --chunk_count_;
}

void stream_state::spill_all() noexcept {
    while (chunk_count_ > 0) spill_front();
}

std::size_t stream_state::copy_received(std::span<std::byte> out) noexcept {
    std::size_t done = 0;
    while (chunk_count_ > 0 && done < out.size()) {
        chunk& c = chunks_[chunk_head_];
        std::size_t n = std::min<std::size_t>(c.len - c.off, out.size() - done);
        std::memcpy(out.data() + done, bufs_->buffer(c.bid) + c.off, n);
        done += n;
        c.off += static_cast<std::uint32_t>(n);
        if (c.off == c.len) {
            bufs_->recycle(c.bid);
            chunk_head_ = (chunk_head_ + 1) % max_chunks;
            --chunk_count_;
        }
    }
    // The rest goes to rbuf: a buffer is never held while the reader's caller runs (it may
    // wait on something that needs this very buffer back, e.g. its own drain()).
    spill_all();
    return done;
}

void stream_state::on_recv(int res, std::uint32_t flags) noexcept {
    if (flags & IORING_CQE_F_BUFFER) {
        auto bid = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
        bufs_->taken();
        if (res > 0 && !closing)
            push_chunk(bid, static_cast<std::uint32_t>(res));
        else
            bufs_->recycle(bid);
    }
    if (res == 0)
        eof_received_ = true;
    else if (res < 0 && res != -ENOBUFS && res != -ECANCELED && recv_error_ == 0)
        recv_error_ = -res;
    // Nobody to hand the buffer to (the reader left, or the receive was armed when a buffer
    // came back): it goes back now.
    if (!reader_ && !reader_woken_) spill_all();
    armed_ = false;
    if (reader_ && chunk_count_ == 0 && !recv_done()) {
        // Out of buffers (ENOBUFS) while a reader waits. If no buffer came back since the
        // receive was armed, wait for one (every taken buffer is about to be read and given
        // back); otherwise try again at once.
        if (res == -ENOBUFS && bufs_->recycled() == recycled_mark_)
            bufs_->wait(&buffers_back());
        else
            arm_recv();
    }
    if (reader_ && (chunk_count_ > 0 || recv_done())) wake_reader();
    sock.state_ptr()->end();  // last: may finish a close and free this
}

void stream_state::wake_reader() noexcept {
    if (!reader_) return;
    reader_woken_ = true;  // until it runs, what arrives stays in the ring's buffers for it
    loop_->wake(reader_task_, std::exchange(reader_, {}));
}

// What a read awaits on the buffer ring path. Not a coroutine, so a reader waiting on an idle
// connection costs no frame of its own. Wake-ups come only with data, EOF, an error, the
// close or a cancellation, so one suspension settles it. It lives in the reading coroutine's
// frame for as long as the connection waits, so its flags live in the stream (one reader at a
// time) and it is three words.
struct stream_state::arrival : suspend_point {
    stream_state* st;
    std::size_t had;  // rbuf bytes already there: wait for more than these

    [[nodiscard]] bool ready() const noexcept {
        return st->rbuf.size() > had || st->chunk_count_ > 0 || st->recv_done();
    }
    bool await_ready() const noexcept { return ready(); }
    bool await_suspend(std::coroutine_handle<> h) {
        task_base* t = st->loop_->current_task();
        if (t->take_cancel()) {
            st->read_cancelled_ = true;
            return false;
        }
        st->reader_ = h;
        st->reader_task_ = t;
        on_cancel = [](suspend_point* sp) noexcept {
            stream_state* s = static_cast<arrival*>(sp)->st;
            s->read_cancelled_ = true;
            buffer_ring::cancel_wait(&s->buffers_back());
            s->wake_reader();  // the receive stays armed: what arrives waits in rbuf
        };
        t->suspended_at = this;
        if (!st->buffers_back().linked()) st->arm_recv();
        return true;
    }
    bool await_resume() {
        st->reader_woken_ = false;
        if (std::exchange(st->read_cancelled_, false)) {
            st->loop_->current_task()->take_cancel();
            throw cancelled_error();
        }
        if (st->spill_on_arrival_) st->spill_all();
        if (st->rbuf.size() > had || st->chunk_count_ > 0) return true;
        if (st->recv_error_ != 0) throw st->io_error(st->recv_error_, "read from");
        st->eof = true;  // EOF, or the stream was closed
        return false;
    }
};

stream_state::arrival stream_state::received(std::size_t had, bool spill) noexcept {
    spill_on_arrival_ = spill;
    read_cancelled_ = false;
    return arrival{{}, this, had};
}

std::size_t stream_state::take_into(std::span<std::byte> buf) noexcept {
    if (rbuf.empty()) return copy_received(buf);
    std::size_t n = std::min(buf.size(), rbuf.size());  // spilled while the reader waited to run
    std::memcpy(buf.data(), rbuf.data(), n);
    rbuf.consume(n);
    return n;
}

std::string stream_state::take(std::size_t n) {
    if (!rbuf.empty()) {
        std::string out(rbuf.view().substr(0, n));
        rbuf.consume(out.size());
        return out;
    }
    std::string out(std::min(n, received()), '\0');
    copy_received(std::as_writable_bytes(std::span(out)));
    return out;
}

// After close() the stream reads nothing more (as asyncio's transport stops reading): that is
// its EOF, so read_until/read_line end instead of asking again.
task<std::size_t> stream_state::recv_into(std::span<std::byte> buf) {
    if (bufs_) {
        bool more = co_await received(0, false);
        co_return more ? take_into(buf) : 0;
    }
    if (eof || closing) {
        eof = true;
        co_return 0;
    }
    int fd = sock.fd();
    io_result r = co_await sock.op([&](io_uring_sqe* s) noexcept { io_uring_prep_recv(s, fd, buf.data(), buf.size(), 0); });
    if (r.res == 0 || (r.res == -ECANCELED && closing)) {  // EOF, or our own close() ended the read
        eof = true;
        co_return 0;
    }
    if (!r) throw io_error(-r.res, "read from");
    co_return r.value();
}

task<bool> stream_state::fill(std::size_t hint) {
    if (bufs_) co_return co_await received(rbuf.size(), true);
    std::span<std::byte> room = rbuf.prepare(std::clamp(hint, min_chunk, max_chunk));
    std::size_t n = co_await recv_into(room);
    rbuf.commit(n);
    co_return n > 0;
}

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
        if (eof) {
            std::string partial(data);
            rbuf.clear();
            throw incomplete_read_error(std::move(partial), 0);
        }
        if (bufs_)
            (void)co_await received(rbuf.size(), true);
        else
            (void)co_await fill(min_chunk);
    }
    if (isep > limit)
        throw limit_overrun_error("ringio: separator is found, but chunk is longer than limit", isep);
    std::string out(rbuf.view().substr(0, isep + sep.size()));
    rbuf.consume(out.size());
    co_return out;
}

// ---- writing ----

void stream_state::queue_send() {
    if (send_queued_) return;
    send_queued_ = true;
    add_ref();
    sock.state_ptr()->begin();
    sock.state_ptr()->loop = loop_;
    loop_->submit_later(&send_req());
}

void stream_state::write(std::span<const std::byte> data) {
    if (write_errno_ != 0) throw make_system_error(write_errno_, fmt::format("ringio: write to {}", peer()));
    if (closing) throw invalid_state_error("ringio: write() after close()");
    if (eof_requested_) throw invalid_state_error("ringio: write() after write_eof()");
    if (data.empty()) return;
    spare_write_buffers.get(pending_);
    pending_.insert(pending_.end(), data.begin(), data.end());
    queue_send();
}

void stream_state::on_sent(int res) noexcept {
    send_queued_ = false;
    if (res < 0) {
        if (kind_ == send_kind::shutdown) {
            eof_sent_ = true;  // ENOTCONN and friends: the peer is gone; reads will say so
        } else if (write_errno_ == 0) {
            write_errno_ = res == -ECANCELED ? EPIPE : -res;
        }
    } else if (kind_ == send_kind::send) {
        send_off_ += static_cast<std::size_t>(res);
    } else if (kind_ == send_kind::shutdown) {
        eof_sent_ = true;
    }
    if (write_errno_ != 0 || aborted_) {  // nothing more will be sent: drop the data
        pending_.clear();
        sending_.clear();
        send_off_ = 0;
    }
    if (send_off_ == sending_.size()) {
        sending_.clear();
        send_off_ = 0;
        if (pending_.empty()) {
            // Everything written has gone: an idle connection keeps no write buffer (one large
            // response would otherwise stay allocated for the connection's life).
            spare_write_buffers.put(sending_);
            spare_write_buffers.put(pending_);
        } else if (sending_.capacity() > keep_capacity) {
            sending_.shrink_to_fit();
        }
    }
    bool more = write_errno_ == 0 && !aborted_ &&
                (send_off_ < sending_.size() || !pending_.empty() || (eof_requested_ && !eof_sent_));
    socket_state* ss = sock.state_ptr();
    if (more) {
        send_queued_ = true;  // keeps the reference and the in-flight count
        loop_->submit_later(&send_req());
        wake_drainer();
        return;
    }
    wake_drainer();
    ss->end();                          // may run the idle hook, which may finish a close
    if (closing) maybe_finish_close();  // e.g. end a read still in flight
    release();                          // queue_send()'s reference; may free this
}

void stream_state::wake_drainer() noexcept {
    if (drainer_ && (write_buffered() <= low || write_errno_ != 0 || closed))
        loop_->wake(drain_task_, std::exchange(drainer_, {}));
}

task<> stream_state::drain() {
    if (write_errno_ != 0) throw make_system_error(write_errno_, fmt::format("ringio: drain to {}", peer()));
    if (write_buffered() <= high || closed) co_return;
    if (drainer_) throw invalid_state_error("ringio: another task is already draining this stream");
    struct awaiter : suspend_point {
        stream_state* st;
        bool cancelled = false;
        bool await_ready() const noexcept { return false; }
        bool await_suspend(std::coroutine_handle<> h) {
            task_base* t = st->loop_->current_task();
            if (t->take_cancel()) {
                cancelled = true;
                return false;
            }
            st->drainer_ = h;
            st->drain_task_ = t;
            on_cancel = [](suspend_point* sp) noexcept {
                auto* a = static_cast<awaiter*>(sp);
                a->cancelled = true;
                a->st->loop_->wake(a->st->drain_task_, std::exchange(a->st->drainer_, {}));
            };
            t->suspended_at = this;
            return true;
        }
        void await_resume() {
            if (cancelled) {
                st->loop_->current_task()->take_cancel();
                throw cancelled_error();
            }
        }
    };
    co_await awaiter{{}, this};
    if (write_errno_ != 0) throw make_system_error(write_errno_, fmt::format("ringio: drain to {}", peer()));
}

void stream_state::write_eof() {
    if (closing || eof_requested_) return;
    eof_requested_ = true;
    queue_send();
}

void stream_state::close() {
    if (closing) return;
    closing = true;
    maybe_finish_close();
}

void stream_state::abort() {
    if (closed) return;
    aborted_ = true;
    closing = true;
    pending_.clear();
    if (sock.valid()) {
        try {
            sock.set_linger(std::chrono::seconds(0));  // close() then sends RST
        } catch (const std::system_error&) {
        }
    }
    maybe_finish_close();
}

void stream_state::maybe_finish_close() noexcept {
    if (!closing || closed) return;
    socket_state* ss = sock.state_ptr();
    if (send_queued_ && !aborted_) return;  // still flushing; on_sent() calls again
    if (recv_req().linked()) {
        // TRICKY: a receive armed this pass still waits in the loop's queue; a cancel sent to
        // the kernel now would go first and miss it. Take it back instead (its begin() too,
        // without the idle hook: the close is being finished right here).
        intrusive_list<io_request>::erase(&recv_req());
        armed_ = false;
        --ss->inflight;
    }
    if (ss->inflight > 0) {
        ss->cancel_all();  // a pending read ends as EOF; the idle hook finishes the close
        return;
    }
    finish_close();
}

void stream_state::finish_close() noexcept {
    closed = true;
    if (bufs_) {
        buffer_ring::cancel_wait(&buffers_back());
        spill_all();  // what arrived before the close stays readable
        wake_reader();
    }
    ::close(sock.release());
    closed_event_.set();
    wake_drainer();
}

void stream_state::on_socket_idle(void* self) noexcept {
    auto* st = static_cast<stream_state*>(self);
    if (st->closing && !st->closed) st->maybe_finish_close();
    if (st->closed && st->refs_ == 0 && !st->send_queued_) delete st;
}

task<> stream_state::wait_closed() {
    add_ref();
    struct releaser {
        stream_state* s;
        ~releaser() { s->release(); }
    } guard{this};
    co_await closed_event_.wait();
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

std::string take(detail::byte_buffer& b, std::size_t n) {
    std::string out(b.view().substr(0, n));
    b.consume(out.size());
    return out;
}
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
        bool more = co_await s->received(0, false);
        co_return more ? s->take(n) : std::string();
    }
    if (s->rbuf.empty() && !co_await s->fill(n)) co_return std::string();
    co_return take(s->rbuf, n);
}

task<std::size_t> do_read_some(detail::stream_state* s, std::span<std::byte> buf) {
    read_guard g(s);
    if (buf.empty()) co_return 0;
    detail::byte_buffer& b = s->rbuf;
    if (b.empty() && s->has_buffer_ring()) {
        bool more = co_await s->received(0, false);
        co_return more ? s->take_into(buf) : 0;
    }
    if (b.empty()) co_return co_await s->recv_into(buf);  // straight into the caller's memory
    std::size_t n = std::min(buf.size(), b.size());
    std::memcpy(buf.data(), b.data(), n);
    b.consume(n);
    co_return n;
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
    co_return take(b, n);
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

task<std::string> stream_reader::read(std::size_t n) { return timed(do_read(s_, n)); }
task<std::size_t> stream_reader::read_some(std::span<std::byte> buf) { return timed(do_read_some(s_, buf)); }
task<std::string> stream_reader::read_exactly(std::size_t n) { return timed(do_read_exactly(s_, n)); }
task<> stream_reader::read_exactly(std::span<std::byte> buf) { return timed(do_read_exactly_into(s_, buf)); }
task<std::string> stream_reader::read_until(std::string_view separator) {
    return timed(do_read_until(s_, separator));
}
task<std::string> stream_reader::read_line() { return timed(do_read_line(s_)); }

bool stream_reader::at_eof() const noexcept { return s_ && s_->eof && s_->rbuf.empty(); }
std::size_t stream_reader::buffered() const noexcept { return s_ ? s_->rbuf.size() + s_->received() : 0; }
std::size_t stream_reader::limit() const noexcept { return s_ ? s_->limit : 0; }

// ---- stream_writer ----

stream_writer::stream_writer(detail::stream_state* s) noexcept : s_(s) {}
stream_writer& stream_writer::operator=(stream_writer&& o) noexcept {
    if (this != &o) {
        if (s_) s_->release();
        s_ = std::exchange(o.s_, nullptr);
    }
    return *this;
}
stream_writer::~stream_writer() {
    if (s_) s_->release();
}

namespace {
detail::stream_state* need(detail::stream_state* s) {
    if (!s) throw invalid_state_error("ringio: use of an empty stream_writer");
    return s;
}
}  // namespace

void stream_writer::write(std::span<const std::byte> data) { need(s_)->write(data); }
task<> stream_writer::drain() { return need(s_)->drain(); }
void stream_writer::set_write_buffer_limits(std::size_t high, std::optional<std::size_t> low) {
    std::size_t lo = low.value_or(high / 4);
    if (lo > high) throw std::invalid_argument("ringio: low water mark above the high one");
    need(s_)->high = high;
    s_->low = lo;
}
std::size_t stream_writer::buffered() const noexcept { return s_ ? s_->write_buffered() : 0; }
void stream_writer::write_eof() { need(s_)->write_eof(); }
void stream_writer::close() { need(s_)->close(); }
void stream_writer::abort() { need(s_)->abort(); }
task<> stream_writer::wait_closed() { return need(s_)->wait_closed(); }
bool stream_writer::is_closing() const noexcept { return s_ && s_->closing; }
endpoint stream_writer::peername() const { return need(s_)->peer(); }
endpoint stream_writer::sockname() const { return need(s_)->local(); }
socket& stream_writer::transport() const { return need(s_)->sock; }

// ---- construction ----

std::pair<stream_reader, stream_writer> make_streams(socket connected, stream_options options) {
    auto* st = new detail::stream_state(std::move(connected), options.limit);
    st->read_timeout = options.read_timeout.value_or(detail::stream_state::no_timeout);
    st->add_ref();
    st->add_ref();
    return {stream_reader(st), stream_writer(st)};
}

namespace {

task<std::pair<stream_reader, stream_writer>> connect_any(std::vector<endpoint> targets, connect_options options) {
    std::string errors;
    int last_error = ECONNREFUSED;
    for (const endpoint& ep : targets) {
        socket s = socket::create(ep.family(), SOCK_STREAM);
        int err = 0;
        std::string what;
        try {
            if (options.nodelay && ep.is_ip()) s.set_nodelay(true);
            if (options.local_address) s.bind(*options.local_address);
            if (options.timeout)
                co_await wait_for(s.connect(ep), *options.timeout);
            else
                co_await s.connect(ep);
        } catch (const timeout_error&) {
            err = ETIMEDOUT;
            what = fmt::format("ringio: connect to {}: timed out", ep);
        } catch (const std::system_error& e) {
            err = e.code().value();
            what = e.what();
        }
        if (err == 0) co_return make_streams(std::move(s), stream_options{options.limit, options.read_timeout});
        last_error = err;
        if (!errors.empty()) errors += "; ";
        errors += what;
    }
    throw std::system_error(last_error, std::system_category(), errors);
}

}  // namespace

task<std::pair<stream_reader, stream_writer>> open_connection(std::string host, std::uint16_t port,
                                                              connect_options options) {
    std::vector<endpoint> targets = co_await resolve(host, port);
    co_return co_await connect_any(std::move(targets), std::move(options));
}

task<std::pair<stream_reader, stream_writer>> open_unix_connection(std::string path, connect_options options) {
    std::vector<endpoint> targets{endpoint::unix_path(path)};
    co_return co_await connect_any(std::move(targets), std::move(options));
}

}  // namespace ringio

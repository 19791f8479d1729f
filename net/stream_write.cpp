// Writing: the per-thread pool of spare write buffers, the one background send per stream, drain() and
// stream_writer.
#include "ringio/stream.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <new>

#include <fmt/format.h>

#include "ringio/detail/frame_cache.hpp"
#include "ringio/errors.hpp"
#include "stream_state.hpp"

namespace ringio {
namespace detail {
namespace {
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
    // At most 4,096 buffers and 8 MiB per thread, kept for the thread's life; a buffer above
    // keep_capacity is freed, as it would be while a connection is busy.
    static constexpr std::size_t max_buffers = 4096;
    static constexpr std::size_t max_bytes = 8 * 1024 * 1024;
    static constexpr std::size_t max_capacity = keep_capacity;
    std::vector<std::vector<std::byte>> spare_;
    std::size_t bytes_ = 0;
};

thread_local write_buffer_pool spare_write_buffers;
}  // namespace

std::size_t spare_write_buffer_bytes() noexcept { return spare_write_buffers.bytes(); }

stream_state::write_side& stream_state::out() {
    if (!ws_) {
        // The send request: one background send per stream, filled at submit time.
        static constexpr io_ops send_ops{
            [](io_request* r, io_uring_sqe* sqe) noexcept { prep_send(r, sqe); },
            [](io_request* r, int res, std::uint32_t) noexcept { static_cast<write_side*>(r)->owner->on_sent(res); }};
        ws_ = new (frame_alloc(sizeof(write_side))) write_side(this);
        ws_->ops = &send_ops;
    }
    return *ws_;
}

void stream_state::drop_write_side() noexcept {
    if (!ws_ || send_queued_ || ws_->drainer || write_buffered() != 0) return;
    free_write_side();
}

void stream_state::free_write_side() noexcept {
    write_side* w = std::exchange(ws_, nullptr);
    if (!w) return;
    // The buffers go to the thread's spare ones (an idle connection keeps no write buffer), the
    // write side to the frame cache.
    spare_write_buffers.put(w->sending);
    spare_write_buffers.put(w->pending);
    w->~write_side();
    frame_free(w, sizeof(write_side));
}

void stream_state::prep_send(io_request* r, io_uring_sqe* sqe) noexcept {
    write_side& w = *static_cast<write_side*>(r);
    stream_state* st = w.owner;
    int fd = st->sock.fd();
    // TRICKY: filled at submit time, so every write() of this pass goes out in one send.
    if (w.send_off == w.sending.size()) {
        w.sending.clear();
        w.send_off = 0;
        std::swap(w.sending, w.pending);  // (pending is empty while adopted is set)
    }
    if (st->aborted_) {
        st->kind_ = send_kind::nop;
        io_uring_prep_nop(sqe);
    } else if (!w.sending.empty()) {
        st->kind_ = send_kind::send;
        io_uring_prep_send(sqe, fd, w.sending.data() + w.send_off, io_length(w.sending.size() - w.send_off), MSG_NOSIGNAL);
    } else if (w.adopted && w.adopted->head < w.adopted->items.size()) {
        st->kind_ = send_kind::sendmsg;
        st->prep_sendmsg(fd, sqe);
    } else if (st->fin_ == fin::requested) {
        st->kind_ = send_kind::shutdown;
        io_uring_prep_shutdown(sqe, fd, SHUT_WR);
    } else {
        st->kind_ = send_kind::nop;
        io_uring_prep_nop(sqe);
    }
}

void stream_state::queue_send() {
    write_side& w = out();  // (first: may throw, with nothing changed)
    if (send_queued_) return;
    send_queued_ = true;
    add_ref();
    sock.state_ptr()->begin();
    loop_->submit_later(&w);
}

void stream_state::check_writable() const {
    if (write_errno_ != 0) throw make_system_error(write_errno_, fmt::format("ringio: write to {}", peer()));
    if (phase_ != phase::open) throw invalid_state_error("ringio: write() after close()");
    if (fin_ != fin::none) throw invalid_state_error("ringio: write() after write_eof()");
}

void stream_state::write(std::span<const std::byte> data) {
    check_writable();
    if (data.empty()) return;
    write_side& w = out();
    try {
        if (w.adopted) {
            queue_copy(data);
        } else {
            spare_write_buffers.get(w.pending);
            w.pending.insert(w.pending.end(), data.begin(), data.end());
        }
    } catch (...) {
        drop_write_side();  // (made for this write, and holding nothing)
        throw;
    }
    queue_send();
}

void stream_state::write_owned(std::variant<std::vector<std::byte>, std::string> data) {
    out_queue::item it{std::move(data)};
    std::span<const std::byte> bytes = it.bytes();
    // Small: a copy costs less than a buffer of its own in the queue, and keeps the common path.
    if (bytes.size() < adopt_min) {
        write(bytes);
        return;
    }
    check_writable();
    write_side& w = out();
    try {
        if (!w.adopted) {
            auto q = std::make_unique<out_queue>();
            q->items.reserve(4);
            if (!w.pending.empty()) {  // written before: goes first
                q->items.push_back(out_queue::item{std::move(w.pending), 0, true});
                q->bytes = std::get<0>(q->items.back().owner).size();
                w.pending = std::vector<std::byte>();
            }
            w.adopted = std::move(q);
        }
        w.adopted->items.push_back(std::move(it));
    } catch (...) {
        drop_write_side();
        throw;
    }
    w.adopted->bytes += bytes.size();
    queue_send();
}

void stream_state::queue_copy(std::span<const std::byte> data) {
    out_queue& q = *ws_->adopted;
    // Appended to the last buffer of copies unless the kernel has it (in the send in flight).
    if (q.items.size() > q.head + q.in_flight && q.items.back().copied) {
        auto& v = std::get<0>(q.items.back().owner);
        v.insert(v.end(), data.begin(), data.end());
    } else {
        std::vector<std::byte> v;
        spare_write_buffers.get(v);
        v.assign(data.begin(), data.end());
        q.items.push_back(out_queue::item{std::move(v), 0, true});
    }
    q.bytes += data.size();
}

void stream_state::prep_sendmsg(int fd, io_uring_sqe* sqe) noexcept {
    out_queue& q = *ws_->adopted;
    // As many buffers as fit in one sendmsg, at most 1 GiB in all (as every send).
    std::size_t n = 0;
    std::size_t total = 0;
    for (std::size_t i = q.head; i < q.items.size() && n < out_queue::max_iov && total < io_length(~std::size_t{0}); ++i) {
        std::span<const std::byte> b = q.items[i].bytes().subspan(q.items[i].off);
        std::size_t len = std::min<std::size_t>(b.size(), io_length(~std::size_t{0}) - total);
        q.iov[n++] = iovec{const_cast<std::byte*>(b.data()), len};
        total += len;
    }
    q.in_flight = n;
    q.msg = msghdr{};
    q.msg.msg_iov = q.iov.data();
    q.msg.msg_iovlen = n;
    io_uring_prep_sendmsg(sqe, fd, &q.msg, MSG_NOSIGNAL);
}

void stream_state::sent_from_queue(std::size_t n) noexcept {
    out_queue& q = *ws_->adopted;
    q.in_flight = 0;
    q.bytes -= n;
    while (n > 0 && q.head < q.items.size()) {
        out_queue::item& it = q.items[q.head];
        std::size_t left = it.bytes().size() - it.off;
        std::size_t take = std::min(n, left);
        it.off += take;
        n -= take;
        if (it.off < it.bytes().size()) break;
        if (it.copied) spare_write_buffers.put(std::get<0>(it.owner));
        it.owner = std::vector<std::byte>();  // an adopted buffer is freed as soon as it is sent
        ++q.head;
    }
    if (q.head == q.items.size()) {
        ws_->adopted.reset();  // all sent: back to plain writes
    } else if (q.head >= 32 && 2 * q.head >= q.items.size()) {
        // A stream that always has something queued never empties the queue: drop what was
        // sent. (No send is in flight here, and moving an item moves no bytes of its buffer.)
        q.items.erase(q.items.begin(), q.items.begin() + static_cast<std::ptrdiff_t>(q.head));
        q.head = 0;
    }
}

void stream_state::on_sent(int res) noexcept {
    write_side& w = *ws_;  // (it stays while send_queued_)
    send_queued_ = false;
    if (res < 0) {
        if (kind_ == send_kind::shutdown) {
            fin_ = fin::sent;  // ENOTCONN and friends: the peer is gone; reads will say so
        } else if (write_errno_ == 0) {
            write_errno_ = static_cast<std::uint16_t>(res == -ECANCELED || res == -EINTR ? EPIPE : -res);
        }
    } else if (kind_ == send_kind::send || kind_ == send_kind::sendmsg) {
        // A send of a non-empty buffer that took nothing would be asked again forever.
        if (res == 0 && write_errno_ == 0) write_errno_ = EIO;
        if (kind_ == send_kind::send)
            w.send_off += static_cast<std::size_t>(res);
        else
            sent_from_queue(static_cast<std::size_t>(res));
    } else if (kind_ == send_kind::shutdown) {
        fin_ = fin::sent;
    }
    if (w.adopted) w.adopted->in_flight = 0;  // (a failed or cancelled sendmsg)
    if (write_errno_ != 0 || aborted_) {  // nothing more will be sent: drop the data
        w.pending.clear();
        w.sending.clear();
        w.send_off = 0;
        w.adopted.reset();
    }
    if (w.send_off == w.sending.size()) {
        w.sending.clear();
        w.send_off = 0;
        if (w.pending.empty()) {
            // Everything copied has gone (adopted buffers or a FIN may follow): the buffers need
            // not wait for the write side's end.
            spare_write_buffers.put(w.sending);
            spare_write_buffers.put(w.pending);
        } else if (w.sending.capacity() > keep_capacity) {
            w.sending.shrink_to_fit();
        }
    }
    bool more = write_errno_ == 0 && !aborted_ &&
                (w.send_off < w.sending.size() || !w.pending.empty() || w.adopted || fin_ == fin::requested);
    socket_state* ss = sock.state_ptr();
    if (more) {
        send_queued_ = true;  // keeps the reference and the in-flight count
        loop_->submit_later(&w);
        wake_drainer();
        return;
    }
    wake_drainer();
    drop_write_side();                  // everything written has gone
    ss->end();                          // may run the idle hook, which may finish a close
    maybe_finish_close();               // if closing: the flush is done
    release();                          // queue_send()'s reference; may free this
}

void stream_state::wake_drainer() noexcept {
    if (ws_ && ws_->drainer && (write_buffered() <= low || write_errno_ != 0 || phase_ == phase::closed))
        std::exchange(ws_->drainer, nullptr)->wake();
}

task<> stream_state::drain() {
    if (write_errno_ != 0) throw make_system_error(write_errno_, fmt::format("ringio: drain to {}", peer()));
    if (write_buffered() <= high || phase_ == phase::closed) co_return;
    if (ws_->drainer) throw invalid_state_error("ringio: another task is already draining this stream");
    // An interrupt point: a cancelled drain leaves at once; the data stays buffered and is sent.
    struct awaiter : suspension {
        stream_state* st;
        explicit awaiter(stream_state* s) noexcept : st(s) {}
        bool await_ready() const noexcept { return false; }
        bool await_suspend(std::coroutine_handle<> h) {
            if (!begin(h)) return false;
            st->ws_->drainer = this;  // (something is buffered: the write side is there)
            arm([](suspension* sp) noexcept {
                auto* a = static_cast<awaiter*>(sp);
                a->st->ws_->drainer = nullptr;
                a->wake(true);
                a->st->drop_write_side();  // (if everything went meanwhile)
            });
            return true;
        }
        void await_resume() { resume(); }
    };
    co_await awaiter(this);
    if (write_errno_ != 0) throw make_system_error(write_errno_, fmt::format("ringio: drain to {}", peer()));
}

void stream_state::write_eof() {
    if (phase_ != phase::open || fin_ != fin::none) return;
    (void)out();  // (may throw: before anything changed)
    fin_ = fin::requested;
    queue_send();
}
}  // namespace detail

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
void stream_writer::write(std::string&& data) { need(s_)->write_owned(std::move(data)); }
void stream_writer::write(std::vector<std::byte>&& data) { need(s_)->write_owned(std::move(data)); }
void stream_writer::writelines(std::vector<std::string> parts) {
    detail::stream_state* s = need(s_);
    for (std::string& p : parts) s->write_owned(std::move(p));
}
task<> stream_writer::drain() { return need(s_)->drain(); }
void stream_writer::set_write_buffer_limits(std::size_t high, std::optional<std::size_t> low) {
    std::size_t lo = low.value_or(high / 4);
    if (lo > high) throw std::invalid_argument("ringio: low water mark above the high one");
    constexpr std::size_t most = std::numeric_limits<std::uint32_t>::max();
    need(s_)->high = static_cast<std::uint32_t>(std::min(high, most));
    s_->low = static_cast<std::uint32_t>(std::min(lo, most));
}
std::size_t stream_writer::buffered() const noexcept { return s_ ? s_->write_buffered() : 0; }
void stream_writer::write_eof() { need(s_)->write_eof(); }
void stream_writer::close() { need(s_)->close(); }
void stream_writer::abort() { need(s_)->abort(); }
task<> stream_writer::wait_closed() { return need(s_)->wait_closed(); }
bool stream_writer::is_closing() const noexcept { return s_ && s_->is_closing(); }
endpoint stream_writer::peername() const { return need(s_)->peer(); }
endpoint stream_writer::sockname() const { return need(s_)->local(); }
const socket& stream_writer::transport() const { return need(s_)->sock; }

}  // namespace ringio

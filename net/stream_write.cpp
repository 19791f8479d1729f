// Writing: the per-thread pool of spare write buffers, the one background send per stream, drain() and
// stream_writer.
#include "ringio/stream.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

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

void stream_state::queue_send() {
    if (send_queued_) return;
    send_queued_ = true;
    add_ref();
    sock.state_ptr()->begin();
    loop_->submit_later(&send_req());
}

void stream_state::write(std::span<const std::byte> data) {
    if (write_errno_ != 0) throw make_system_error(write_errno_, fmt::format("ringio: write to {}", peer()));
    if (phase_ != phase::open) throw invalid_state_error("ringio: write() after close()");
    if (fin_ != fin::none) throw invalid_state_error("ringio: write() after write_eof()");
    if (data.empty()) return;
    spare_write_buffers.get(pending_);
    pending_.insert(pending_.end(), data.begin(), data.end());
    queue_send();
}

void stream_state::on_sent(int res) noexcept {
    send_queued_ = false;
    if (res < 0) {
        if (kind_ == send_kind::shutdown) {
            fin_ = fin::sent;  // ENOTCONN and friends: the peer is gone; reads will say so
        } else if (write_errno_ == 0) {
            write_errno_ = res == -ECANCELED || res == -EINTR ? EPIPE : -res;
        }
    } else if (kind_ == send_kind::send) {
        // A send of a non-empty buffer that took nothing would be asked again forever.
        if (res == 0 && write_errno_ == 0) write_errno_ = EIO;
        send_off_ += static_cast<std::size_t>(res);
    } else if (kind_ == send_kind::shutdown) {
        fin_ = fin::sent;
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
                (send_off_ < sending_.size() || !pending_.empty() || fin_ == fin::requested);
    socket_state* ss = sock.state_ptr();
    if (more) {
        send_queued_ = true;  // keeps the reference and the in-flight count
        loop_->submit_later(&send_req());
        wake_drainer();
        return;
    }
    wake_drainer();
    ss->end();                          // may run the idle hook, which may finish a close
    maybe_finish_close();               // if closing: the flush is done
    release();                          // queue_send()'s reference; may free this
}

void stream_state::wake_drainer() noexcept {
    if (drainer_ && (write_buffered() <= low || write_errno_ != 0 || phase_ == phase::closed))
        std::exchange(drainer_, nullptr)->wake();
}

task<> stream_state::drain() {
    if (write_errno_ != 0) throw make_system_error(write_errno_, fmt::format("ringio: drain to {}", peer()));
    if (write_buffered() <= high || phase_ == phase::closed) co_return;
    if (drainer_) throw invalid_state_error("ringio: another task is already draining this stream");
    // An interrupt point: a cancelled drain leaves at once; the data stays buffered and is sent.
    struct awaiter : suspension {
        stream_state* st;
        explicit awaiter(stream_state* s) noexcept : st(s) {}
        bool await_ready() const noexcept { return false; }
        bool await_suspend(std::coroutine_handle<> h) {
            if (!begin(h)) return false;
            st->drainer_ = this;
            arm([](suspension* sp) noexcept {
                auto* a = static_cast<awaiter*>(sp);
                a->st->drainer_ = nullptr;
                a->wake(true);
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
bool stream_writer::is_closing() const noexcept { return s_ && s_->is_closing(); }
endpoint stream_writer::peername() const { return need(s_)->peer(); }
endpoint stream_writer::sockname() const { return need(s_)->local(); }
const socket& stream_writer::transport() const { return need(s_)->sock; }

}  // namespace ringio

// The state a stream_reader and stream_writer share. Private to net/.
#pragma once

#include <array>
#include <chrono>
#include <cstring>
#include <optional>
#include <memory>
#include <netinet/in.h>
#include <system_error>
#include <vector>

#include "ringio/detail/buffer_ring.hpp"
#include "ringio/event.hpp"
#include "ringio/stream.hpp"

namespace ringio::detail {

// How much a read asks the kernel for when filling the internal buffer.
inline constexpr std::size_t min_chunk = 16 * 1024;
inline constexpr std::size_t max_chunk = 256 * 1024;
// read_exactly receives straight into the caller's memory from this size on.
inline constexpr std::size_t direct_threshold = 64 * 1024;

/// A byte buffer consumed from the front and filled at the back; compacts before growing.
class byte_buffer {
public:
    [[nodiscard]] std::size_t size() const noexcept { return end_ - begin_; }
    [[nodiscard]] bool empty() const noexcept { return begin_ == end_; }
    [[nodiscard]] const std::byte* data() const noexcept { return data_.get() + begin_; }
    [[nodiscard]] std::string_view view() const noexcept {
        return {reinterpret_cast<const char*>(data()), size()};
    }

    void consume(std::size_t n) noexcept {
        begin_ += n;
        if (begin_ == end_) begin_ = end_ = 0;
    }
    void clear() noexcept { begin_ = end_ = 0; }

    /// Room for at least n more bytes at the back.
    std::span<std::byte> prepare(std::size_t n) {
        if (cap_ - end_ < n) {
            if (size() + n <= cap_ && begin_ > 0) {
                std::memmove(data_.get(), data(), size());
            } else {
                std::size_t cap = std::max(cap_ * 2, size() + n);
                auto bigger = std::make_unique_for_overwrite<std::byte[]>(cap);
                if (!empty()) std::memcpy(bigger.get(), data(), size());
                data_ = std::move(bigger);
                cap_ = cap;
            }
            end_ = size();
            begin_ = 0;
        }
        return {data_.get() + end_, cap_ - end_};
    }
    void commit(std::size_t n) noexcept { end_ += n; }

    /// Inserts data in front of what is buffered.
    void prepend(std::span<const std::byte> data) {
        if (data.empty()) return;
        if (begin_ >= data.size()) {
            begin_ -= data.size();
            std::memcpy(data_.get() + begin_, data.data(), data.size());
            return;
        }
        std::size_t total = data.size() + size();
        auto bigger = std::make_unique_for_overwrite<std::byte[]>(std::max(total, cap_));
        std::memcpy(bigger.get(), data.data(), data.size());
        if (!empty()) std::memcpy(bigger.get() + data.size(), this->data(), size());
        cap_ = std::max(total, cap_);
        data_ = std::move(bigger);
        begin_ = 0;
        end_ = total;
    }

    /// Frees the memory of an empty buffer that grew large.
    void trim(std::size_t keep) noexcept {
        if (empty() && cap_ > keep) {
            data_.reset();
            cap_ = begin_ = end_ = 0;
        }
    }

private:
    std::unique_ptr<std::byte[]> data_;
    std::size_t cap_ = 0;
    std::size_t begin_ = 0;
    std::size_t end_ = 0;
};

// The receive, send and buffer-wait requests are bases rather than members, so a completion
// finds its stream with a static_cast instead of a back pointer in each (24 bytes in every
// connection; see the layout note below).
struct stream_recv_request : io_request {};
struct stream_send_request : io_request {};
struct stream_buffers_back : buffer_waiter {};

class stream_state : stream_recv_request, stream_send_request, stream_buffers_back {
public:
    stream_state(socket s, std::size_t limit);
    stream_state(const stream_state&) = delete;
    stream_state& operator=(const stream_state&) = delete;

    void add_ref() noexcept { ++refs_; }
    void release() noexcept;

    // ---- reading ----
    /// Receives more data into rbuf (at least one byte); false at EOF.
    task<bool> fill(std::size_t hint);
    /// Receives straight into buf; 0 at EOF.
    task<std::size_t> recv_into(std::span<std::byte> buf);
    /// Buffer ring only: waits until rbuf holds more than `had` bytes or received buffers are
    /// queued (true), or EOF (false); throws the receive error. With `spill` the received
    /// buffers move into rbuf (what fill() does). An awaitable, not a coroutine.
    struct arrival;
    arrival received(std::size_t had, bool spill) noexcept;
    /// After received(): up to n bytes from rbuf, else from the received buffers (one copy).
    std::string take(std::size_t n);
    std::size_t take_into(std::span<std::byte> buf) noexcept;
    /// Bytes received into the shared buffer ring and not yet read (they follow rbuf).
    [[nodiscard]] std::size_t received() const noexcept {
        std::size_t n = 0;
        for (unsigned i = 0; i < chunk_count_; ++i) {
            const chunk& c = chunks_[(chunk_head_ + i) % max_chunks];
            n += c.len - c.off;
        }
        return n;
    }
    [[nodiscard]] bool has_buffer_ring() const noexcept { return bufs_ != nullptr; }
    task<std::string> read_until(std::string_view sep);
    void begin_read();
    void end_read() noexcept { reading_ = false; }

    // ---- writing ----
    void write(std::span<const std::byte> data);
    task<> drain();
    void write_eof();
    void close();
    void abort();
    task<> wait_closed();
    [[nodiscard]] std::size_t write_buffered() const noexcept { return pending_.size() + sending_.size() - send_off_; }

    [[nodiscard]] endpoint peer() const noexcept;
    /// Puts bytes a cancelled read had taken back in front of the buffer.
    void unread(std::span<const std::byte> data) { rbuf.prepend(data); }
    [[nodiscard]] endpoint local() const;
    [[nodiscard]] std::system_error io_error(int err, const char* what);

    socket sock;
    byte_buffer rbuf;
    std::size_t limit;
    static constexpr std::chrono::nanoseconds no_timeout = std::chrono::nanoseconds::min();
    std::chrono::nanoseconds read_timeout = no_timeout;  // (an optional would take 8 bytes more)
    std::size_t high = 64 * 1024;
    std::size_t low = 16 * 1024;
    bool eof = false;
    bool closing = false;
    bool closed = false;

private:
    ~stream_state();

    // ---- receiving into the loop's shared buffer ring, where the kernel has one ----
    // Received data is, in order: rbuf, then chunks_ (buffers still in the ring's memory).
    struct chunk {
        std::uint16_t bid;
        std::uint32_t off;
        std::uint32_t len;
    };
    static constexpr unsigned max_chunks = 2;  // more arriving before the reader runs go to rbuf
    io_request& recv_req() noexcept { return static_cast<stream_recv_request&>(*this); }
    io_request& send_req() noexcept { return static_cast<stream_send_request&>(*this); }
    buffer_waiter& buffers_back() noexcept { return static_cast<stream_buffers_back&>(*this); }
    static stream_state* of(stream_recv_request* r) noexcept { return static_cast<stream_state*>(r); }
    static stream_state* of(stream_send_request* r) noexcept { return static_cast<stream_state*>(r); }
    static stream_state* of(stream_buffers_back* w) noexcept { return static_cast<stream_state*>(w); }
    void arm_recv();
    void on_recv(int res, std::uint32_t flags) noexcept;
    void push_chunk(std::uint16_t bid, std::uint32_t len) noexcept;
    void spill_front() noexcept;  // the first chunk into rbuf
    void spill_all() noexcept;
    std::size_t copy_received(std::span<std::byte> out) noexcept;
    void wake_reader() noexcept;
    [[nodiscard]] bool recv_done() const noexcept { return eof_received_ || recv_error_ != 0 || closing; }

    enum class send_kind : std::uint8_t { send, shutdown, nop };
    void queue_send();
    void on_sent(int res) noexcept;
    void wake_drainer() noexcept;
    void maybe_finish_close() noexcept;
    void finish_close() noexcept;
    static void on_socket_idle(void* self) noexcept;

    // Layout: every idle connection pays for every byte here, so the one-byte flags sit
    // together after the public ones, and the four-byte fields in pairs (no padding holes).
    std::uint8_t chunk_head_ = 0;
    std::uint8_t chunk_count_ = 0;
    bool armed_ = false;
    bool eof_received_ = false;
    bool reader_woken_ = false;
    bool reading_ = false;
    send_kind kind_ = send_kind::nop;
    bool send_queued_ = false;  // queued or in flight (holds a reference)
    bool eof_requested_ = false;
    bool eof_sent_ = false;
    bool aborted_ = false;
    bool read_cancelled_ = false;    // the waiting read was cancelled (see arrival)
    bool spill_on_arrival_ = false;  // the waiting read wants the received buffers in rbuf

    std::shared_ptr<buffer_ring> bufs_;  // null: one receive per read, into rbuf or the caller's memory
    std::array<chunk, max_chunks> chunks_{};
    std::uint32_t recycled_mark_ = 0;  // the ring's recycled() when the receive was submitted
    int recv_error_ = 0;
    std::uint32_t refs_ = 0;
    int write_errno_ = 0;  // a send failed: every later write()/drain() throws it
    std::coroutine_handle<> reader_;
    task_base* reader_task_ = nullptr;
    event_loop* loop_;

    std::vector<std::byte> sending_;  // owned by the kernel while a send is in flight
    std::vector<std::byte> pending_;  // appended to by write()
    std::size_t send_off_ = 0;

    std::coroutine_handle<> drainer_;
    task_base* drain_task_ = nullptr;
    event closed_event_;

    // The peer's address, recorded at creation. An IP address (or an unnamed Unix peer) fits
    // here; a named Unix peer goes to the heap. A whole endpoint would be 144 bytes in every
    // connection, most of it unused.
    union {
        sockaddr sa;
        sockaddr_in in;
        sockaddr_in6 in6;
    } peer_addr_{};
    socklen_t peer_len_ = 0;  // 0: unknown
    std::unique_ptr<endpoint> peer_big_;
};

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

struct stream_access {
    static stream_state* state(const stream_writer& w) noexcept { return w.s_; }
};


}  // namespace ringio::detail

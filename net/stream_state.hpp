// The state a stream_reader and stream_writer share. Private to net/.
#pragma once

#include <array>
#include <chrono>
#include <cstring>
#include <optional>
#include <memory>
#include <new>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <sys/uio.h>
#include <system_error>
#include <variant>
#include <vector>

#include "ringio/detail/buffer_ring.hpp"
#include "ringio/detail/suspension.hpp"
#include "ringio/event.hpp"
#include "ringio/stream.hpp"

namespace ringio::detail {

// How much a read asks the kernel for when filling the internal buffer.
inline constexpr std::size_t min_chunk = 16 * 1024;
inline constexpr std::size_t max_chunk = 256 * 1024;
// read_exactly receives straight into the caller's memory from this size on.
inline constexpr std::size_t direct_threshold = 64 * 1024;
// A multishot receive is paused when more than this waits for a reader that is not reading.
inline constexpr std::size_t pause_mark = 64 * 1024;
// A write that hands over its buffer keeps it (no copy) from this size on; smaller ones are copied.
inline constexpr std::size_t adopt_min = 16 * 1024;

/// A byte buffer consumed from the front and filled at the back; compacts before growing. One
/// pointer in the stream state (every connection has one): the offsets live in the block with
/// the bytes, and a stream gives the block back when its reader waits with nothing buffered.
class byte_buffer {
public:
    byte_buffer() noexcept = default;
    byte_buffer(const byte_buffer&) = delete;
    byte_buffer& operator=(const byte_buffer&) = delete;
    ~byte_buffer() { ::operator delete(h_); }

    [[nodiscard]] std::size_t size() const noexcept { return h_ ? h_->end - h_->begin : 0; }
    [[nodiscard]] bool empty() const noexcept { return size() == 0; }
    [[nodiscard]] const std::byte* data() const noexcept { return h_ ? bytes() + h_->begin : nullptr; }
    [[nodiscard]] std::string_view view() const noexcept {
        return {reinterpret_cast<const char*>(data()), size()};
    }

    /// Removes and returns up to n bytes from the front.
    std::string take(std::size_t n) {
        std::string out(view().substr(0, n));
        consume(out.size());
        return out;
    }

    void consume(std::size_t n) noexcept {
        if (n == 0) return;
        h_->begin += n;
        if (h_->begin == h_->end) h_->begin = h_->end = 0;
    }
    void clear() noexcept {
        if (h_) h_->begin = h_->end = 0;
    }

    /// Room for at least n more bytes at the back.
    std::span<std::byte> prepare(std::size_t n) {
        const std::size_t cap = h_ ? h_->cap : 0;
        const std::size_t sz = size();
        if (!h_ || cap - h_->end < n) {
            if (h_ && sz + n <= cap && h_->begin > 0) {
                std::memmove(bytes(), data(), sz);
            } else {
                header* bigger = make(std::max(cap * 2, sz + n));
                if (sz != 0) std::memcpy(reinterpret_cast<std::byte*>(bigger + 1), data(), sz);
                ::operator delete(h_);
                h_ = bigger;
            }
            h_->end = sz;
            h_->begin = 0;
        }
        return {bytes() + h_->end, h_->cap - h_->end};
    }
    void commit(std::size_t n) noexcept {
        if (n != 0) h_->end += n;
    }

    /// Inserts data in front of what is buffered.
    void prepend(std::span<const std::byte> data) {
        if (data.empty()) return;
        if (h_ && h_->begin >= data.size()) {
            h_->begin -= data.size();
            std::memcpy(bytes() + h_->begin, data.data(), data.size());
            return;
        }
        const std::size_t sz = size();
        const std::size_t total = data.size() + sz;
        header* bigger = make(std::max(total, h_ ? h_->cap : 0));
        auto* to = reinterpret_cast<std::byte*>(bigger + 1);
        std::memcpy(to, data.data(), data.size());
        if (sz != 0) std::memcpy(to + data.size(), this->data(), sz);
        ::operator delete(h_);
        h_ = bigger;
        h_->end = total;
    }

    /// Gives the memory back if nothing is buffered (and it holds more than `keep` bytes).
    void release_if_empty(std::size_t keep = 0) noexcept {
        if (h_ && h_->begin == h_->end && h_->cap > keep) {
            ::operator delete(h_);
            h_ = nullptr;
        }
    }

private:
    struct header {
        std::size_t cap;
        std::size_t begin;
        std::size_t end;
    };
    static header* make(std::size_t cap) { return new (::operator new(sizeof(header) + cap)) header{cap, 0, 0}; }
    [[nodiscard]] std::byte* bytes() const noexcept { return reinterpret_cast<std::byte*>(h_ + 1); }

    header* h_ = nullptr;
};

// The receive and buffer-wait requests and the reader's wait are bases rather than members, so
// a completion finds its stream with a static_cast instead of a back pointer in each (every
// connection pays for every byte; see the layout note below). The send request lives in the
// write side, made only while something is being written.
struct stream_recv_request : io_request {};
struct stream_buffers_back : buffer_waiter {};
struct stream_reader_wait : suspension {};

class stream_state : stream_recv_request, stream_buffers_back, stream_reader_wait {
    enum class send_kind : std::uint8_t { send, sendmsg, shutdown, nop };
    /// write_eof()'s progress: FIN not asked for, asked for (after the buffered data), sent.
    enum class fin : std::uint8_t { none, requested, sent };

public:
    /// open -> closing (close() or abort(): reading stops at once, writing flushes unless
    /// aborted) -> closed (the fd is closed, every operation on it has completed).
    enum class phase : std::uint8_t { open, closing, closed };

private:
    // Layout: every idle connection pays for every byte here. The one-byte fields come first,
    // so that they fill the tail padding of the reader's suspension (a base); the four-byte
    // fields below sit in pairs (no padding holes).
    std::uint8_t chunk_head_ = 0;
    std::uint8_t chunk_count_ = 0;
    phase phase_ = phase::open;
    bool armed_ = false;         // the receive is queued or in the kernel
    bool eof_received_ = false;  // the kernel reported the peer's FIN
    bool eof_ = false;           // a reader was given EOF
    bool reading_ = false;       // a read call is in progress (one at a time)
    bool spill_on_arrival_ = false;  // the waiting read wants the received buffers in rbuf
    send_kind kind_ = send_kind::nop;  // of the send in flight
    bool send_queued_ = false;   // the send request is queued or in flight (holds a reference)
    fin fin_ = fin::none;
    bool aborted_ = false;
    bool direct_ = false;        // with the ring: a receive straight into a reader's memory is in flight
    bool pausing_ = false;       // the multishot receive is being cancelled: its reader lags


public:
    stream_state(socket s, std::size_t limit);
    stream_state(const stream_state&) = delete;
    stream_state& operator=(const stream_state&) = delete;

    void add_ref() noexcept { ++refs_; }
    void release() noexcept;

    // ---- reading ----
    /// Receives more data into rbuf (at least one byte); false at EOF.
    task<bool> fill(std::size_t hint);
    /// Receives into buf; 0 at EOF. Straight into buf (no copy) without the ring, or with it
    /// when buf is larger than a ring buffer and nothing received waits in the ring's buffers.
    task<std::size_t> recv_into(std::span<std::byte> buf);
    /// Buffer ring only: waits until rbuf holds more than `had` bytes or received buffers are
    /// queued (true), or EOF (false); throws the receive error. With `spill` the received
    /// buffers move into rbuf (what fill() does). An awaitable, not a coroutine.
    struct arrival;
    arrival arrived(std::size_t had, bool spill) noexcept;
    /// After arrived(): up to n bytes from rbuf, else from the received buffers (one copy).
    std::string take(std::size_t n);
    std::size_t take_into(std::span<std::byte> buf) noexcept;
    /// Bytes buffered and not yet read: rbuf, then the ring's buffers received for this stream.
    [[nodiscard]] std::size_t buffered() const noexcept {
        std::size_t n = rbuf.size();
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
    /// EOF was returned to a reader and nothing is buffered.
    [[nodiscard]] bool at_eof() const noexcept { return eof_ && buffered() == 0; }

    // ---- writing ----
    void write(std::span<const std::byte> data);
    /// Takes the buffer instead of copying it (one under adopt_min is copied).
    void write_owned(std::variant<std::vector<std::byte>, std::string> data);
    task<> drain();
    void write_eof();
    void close();
    void abort();
    task<> wait_closed();
    [[nodiscard]] std::size_t write_buffered() const noexcept {
        if (!ws_) return 0;
        return ws_->pending.size() + ws_->sending.size() - ws_->send_off + (ws_->adopted ? ws_->adopted->bytes : 0);
    }

    // ---- the stream's life ----
    [[nodiscard]] bool is_closing() const noexcept { return phase_ != phase::open; }
    [[nodiscard]] bool is_closed() const noexcept { return phase_ == phase::closed; }

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
    std::uint32_t high = 64 * 1024;  // (32 bits: set_write_buffer_limits caps them at 4 GiB - 1)
    std::uint32_t low = 16 * 1024;

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
    buffer_waiter& buffers_back() noexcept { return static_cast<stream_buffers_back&>(*this); }
    suspension& reader_wait() noexcept { return static_cast<stream_reader_wait&>(*this); }
    static stream_state* of(stream_recv_request* r) noexcept { return static_cast<stream_state*>(r); }
    static stream_state* of(stream_buffers_back* w) noexcept { return static_cast<stream_state*>(w); }
    static stream_state* of(suspension* w) noexcept {
        return static_cast<stream_state*>(static_cast<stream_reader_wait*>(w));
    }
    void arm_recv();
    void on_recv(int res, std::uint32_t flags) noexcept;
    void push_chunk(std::uint16_t bid, std::uint32_t len) noexcept;
    void spill_front() noexcept;  // the first chunk into rbuf
    void spill_all() noexcept;
    std::size_t copy_received(std::span<std::byte> out) noexcept;
    void wake_reader() noexcept;
    /// A reader is suspended in arrived() (not yet woken).
    [[nodiscard]] bool reader_waiting() const noexcept {
        return static_cast<const stream_reader_wait&>(*this).current_state() == suspension::state::waiting;
    }
    /// No more data will be received: EOF or an error came, or the stream is closing.
    [[nodiscard]] bool recv_done() const noexcept { return eof_received_ || recv_error_ != 0 || phase_ != phase::open; }
    void stop_receiving() noexcept;
    /// One receive straight into buf (after rbuf, which it does not look at); 0 at EOF.
    task<std::size_t> recv_direct(std::span<std::byte> buf);
    /// With the ring: a receive may go straight into `n` bytes of the reader's memory (more
    /// than a ring buffer, nothing received waiting, no ring receive armed or about to be).
    [[nodiscard]] bool direct_fits(std::size_t n) const noexcept {
        return n > bufs_->buffer_size() && chunk_count_ == 0 && !armed_ &&
               !static_cast<const stream_buffers_back&>(*this).linked() && !recv_done();
    }

    void queue_send();
    void on_sent(int res) noexcept;
    void wake_drainer() noexcept;
    void maybe_finish_close() noexcept;
    void finish_close() noexcept;
    static void on_socket_idle(void* self) noexcept;

    std::shared_ptr<buffer_ring> bufs_;  // null: one receive per read, into rbuf or the caller's memory
    // The receive straight into a reader's memory in flight (for close()) shares the chunks'
    // room: with the ring it is made only while no chunk is held (direct_ says which is live).
    union {
        std::array<chunk, max_chunks> chunks_{};  // with the ring
        io_request* direct_recv_;                 // without it, or with it while direct_
    };
    std::uint32_t recycled_mark_ = 0;  // the ring's recycled() when the receive was submitted
    std::uint32_t refs_ = 0;
    std::uint16_t recv_error_ = 0;   // (an errno: 16 bits hold every one)
    std::uint16_t write_errno_ = 0;  // a send failed: every later write()/drain() throws it
    // The peer's address, recorded at creation (its length follows from the family). An IP
    // address or an unnamed Unix peer fits here; any other goes to peer_big_. A whole endpoint
    // would be 144 bytes in every connection, most of it unused.
    union {
        sockaddr sa;
        sockaddr_in in;
        sockaddr_in6 in6;
    } peer_addr_{};
    loop_core* loop_;

    // Writes that gave the stream their buffer (write(std::string&&) and friends) and every
    // write behind one, in order; sent with sendmsg, several buffers at once. Null while none
    // is queued: the common case copies into pending_ and sends it with one send per pass.
    struct out_queue {
        struct item {
            std::variant<std::vector<std::byte>, std::string> owner;
            std::size_t off = 0;
            bool copied = false;  // a buffer of copied writes (from the pool): appended to until sent
            [[nodiscard]] std::span<const std::byte> bytes() const noexcept {
                return std::visit([](const auto& b) { return std::as_bytes(std::span(b.data(), b.size())); }, owner);
            }
        };
        static constexpr std::size_t max_iov = 64;
        std::vector<item> items;
        std::size_t head = 0;       // items before it are sent
        std::size_t in_flight = 0;  // items from head in the send in flight (not appended to)
        std::size_t bytes = 0;      // not yet sent
        msghdr msg{};
        std::array<iovec, max_iov> iov{};
    };
    // What only a stream with something to send needs: made at its first write (from the
    // thread's frame cache, so a busy connection's make and give-back are two pointer moves),
    // given back once everything written has gone, nothing is in flight and nobody drains. An
    // idle connection carries one pointer for it instead of 104 bytes (bench/README.md).
    struct write_side : io_request {
        stream_state* owner;
        std::vector<std::byte> sending;  // owned by the kernel while a send is in flight
        std::vector<std::byte> pending;  // appended to by write()
        std::size_t send_off = 0;
        // Writes that gave the stream their buffer and every write behind one (see out_queue).
        std::unique_ptr<out_queue> adopted;
        suspension* drainer = nullptr;  // the task waiting in drain()
        explicit write_side(stream_state* o) noexcept : owner(o) {}
    };
    write_side* ws_ = nullptr;
    write_side& out();                // ws_, made if there is none (std::bad_alloc)
    void drop_write_side() noexcept;  // gives ws_ back if it holds nothing and nothing is in flight
    void free_write_side() noexcept;  // gives ws_ back, whatever it holds
    static void prep_send(io_request* r, io_uring_sqe* sqe) noexcept;
    void check_writable() const;  // throws what a write() now would
    void queue_copy(std::span<const std::byte> data);
    void prep_sendmsg(int fd, io_uring_sqe* sqe) noexcept;
    void sent_from_queue(std::size_t n) noexcept;

    std::unique_ptr<event> closed_event_;  // made by the first wait_closed() before the close

    std::unique_ptr<endpoint> peer_big_;  // a peer address that does not fit peer_addr_
    [[nodiscard]] socklen_t peer_len() const noexcept;  // of peer_addr_ (0: unknown)
};

// What a read awaits on the buffer ring path. Not a coroutine, so a reader waiting on an idle
// connection costs no frame of its own. Wake-ups come only with data, EOF, an error, the
// close or a cancellation, so one suspension settles it. It lives in the reading coroutine's
// frame for as long as the connection waits, so the suspension it uses is the stream's own
// (one reader at a time) and it is three words.
//
// Cancel safety: an interrupt point. The receive stays armed; what it brings goes into the
// stream's own buffer for the next read (nothing lost, no ring buffer pinned by a reader that
// left).
struct stream_state::arrival {
    stream_state* st;
    std::size_t had;  // rbuf bytes already there: wait for more than these

    [[nodiscard]] bool ready() const noexcept {
        return st->rbuf.size() > had || st->chunk_count_ > 0 || st->recv_done();
    }
    bool await_ready() const noexcept { return ready(); }
    bool await_suspend(std::coroutine_handle<> h) {
        suspension& w = st->reader_wait();
        if (!w.begin(h)) return false;
        st->rbuf.release_if_empty();  // a connection waiting for data holds no memory for it
        st->pausing_ = false;  // (if that cancel did not end the receive, the next pause cancels again)
        if (!st->buffers_back().linked()) st->arm_recv();
        w.arm([](suspension* sp) noexcept {
            stream_state* s = of(sp);
            buffer_ring::cancel_wait(&s->buffers_back());
            sp->wake(true);  // the receive stays armed: what arrives goes to rbuf
        });
        return true;
    }
    bool await_resume() {
        try {
            st->reader_wait().resume();
        } catch (...) {
            // Cancelled: what arrived meanwhile moves to rbuf, so that no ring buffer stays
            // taken until this stream reads again (other connections need them).
            st->spill_all();
            throw;
        }
        if (st->spill_on_arrival_) st->spill_all();
        if (st->rbuf.size() > had || st->chunk_count_ > 0) return true;
        if (st->recv_error_ != 0) throw st->io_error(st->recv_error_, "read from");
        st->eof_ = true;  // EOF, or the stream was closed
        return false;
    }
};

struct stream_access {
    static stream_state* state(const stream_writer& w) noexcept { return w.s_; }
};


}  // namespace ringio::detail

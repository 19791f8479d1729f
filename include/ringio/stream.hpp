// stream_reader / stream_writer: asyncio streams over a connected socket (TCP or Unix).
//
//   auto [reader, writer] = co_await ringio::open_connection("127.0.0.1", 8888);
//   writer.write("hello\n");
//   co_await writer.drain();
//   std::string line = co_await reader.read_line();
//   writer.close();
//   co_await writer.wait_closed();
#pragma once

#include <chrono>
#include <coroutine>
#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ringio/endpoint.hpp"
#include "ringio/socket.hpp"
#include "ringio/task.hpp"

namespace ringio {

/// read_exactly() hit EOF first (asyncio.IncompleteReadError). partial() holds what was read
/// (it is no longer in the stream); expected() is the size asked for (0 for read_until).
class incomplete_read_error : public std::runtime_error {
public:
    incomplete_read_error(std::string partial, std::size_t expected);
    [[nodiscard]] const std::string& partial() const noexcept { return partial_; }
    [[nodiscard]] std::size_t expected() const noexcept { return expected_; }

private:
    std::string partial_;
    std::size_t expected_;
};

/// read_until()/read_line() found no separator within the limit (asyncio.LimitOverrunError).
/// consumed() is how many bytes were examined (read_until leaves them in the stream).
class limit_overrun_error : public std::runtime_error {
public:
    limit_overrun_error(const std::string& message, std::size_t consumed);
    [[nodiscard]] std::size_t consumed() const noexcept { return consumed_; }

private:
    std::size_t consumed_;
};

inline constexpr std::size_t default_stream_limit = 64 * 1024;

namespace detail {
class stream_state;
struct stream_access;
/// Bytes of write buffers this thread keeps for reuse once their streams have sent everything
/// (for tests and diagnostics; at most 8 MiB).
std::size_t spare_write_buffer_bytes() noexcept;
}

/// The reading half of a connection. Move-only. One task may read at a time: a second
/// concurrent read throws invalid_state_error instead of corrupting the stream.
/// Every read's cancel safety: cancelling loses nothing; bytes the kernel delivered stay in the
/// reader's buffer for the next read.
class stream_reader {
public:
    stream_reader() noexcept = default;
    explicit stream_reader(detail::stream_state* s) noexcept;  // adopts a reference
    stream_reader(stream_reader&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
    stream_reader& operator=(stream_reader&& o) noexcept;
    ~stream_reader();

    class read_op;
    /// Up to n bytes (at least 1), or "" at EOF. Awaitable (`co_await reader.read(n)`), and
    /// accepted where a task is (wait_for, create_task, as_task()); with the shared receive
    /// buffers and no read timeout it is not a coroutine, so a connection waiting in read()
    /// holds no frame of its own.
    read_op read(std::size_t n);
    /// Everything until EOF (asyncio's read() with no size, or -1): read_all() without a limit.
    task<std::string> read();
    /// Everything until EOF, at most max_size bytes: past that, limit_overrun_error, and what
    /// was read stays buffered (asyncio's read() has no such protection; a peer that never
    /// stops sending would fill the memory). "" at EOF.
    task<std::string> read_all(std::size_t max_size = std::numeric_limits<std::size_t>::max());
    /// Reads into buf: up to buf.size() bytes, 0 at EOF. When nothing is buffered and buf is
    /// larger than one of the loop's shared receive buffers (4 KiB; or always, with
    /// loop_options::stream_buffers = 0), the kernel writes straight into buf (no copy) and one
    /// call returns whatever it has queued, up to buf.size(); but not once an earlier read of
    /// this stream went through the shared buffers (its receive stays armed): then a call
    /// returns at most what two shared buffers hold, copied.
    task<std::size_t> read_some(std::span<std::byte> buf);
    /// Exactly n bytes; at EOF first throws incomplete_read_error with the partial bytes.
    task<std::string> read_exactly(std::size_t n);
    /// Fills buf exactly (from 64 KiB, the kernel writes straight into buf); incomplete_read_error
    /// at EOF.
    task<> read_exactly(std::span<std::byte> buf);
    /// Data up to and including `separator`. At EOF without it: incomplete_read_error holding
    /// what was left. Past the limit: limit_overrun_error, and the data stays in the buffer.
    task<std::string> read_until(std::string_view separator = "\n");
    /// One line including "\n"; at EOF the partial last line, then "". Past the limit:
    /// limit_overrun_error, and the over-long line is discarded (through its newline when one
    /// is buffered), so the next read_line() starts at the following line.
    task<std::string> read_line();
    /// True once EOF was received and the buffer is empty.
    [[nodiscard]] bool at_eof() const noexcept;
    /// Bytes buffered and not yet read.
    [[nodiscard]] std::size_t buffered() const noexcept;
    [[nodiscard]] std::size_t limit() const noexcept;

private:
    template <class T>
    task<T> timed(task<T> t);
    detail::stream_state* s_ = nullptr;
};

/// What read(n) returns: awaited once, in the caller's frame. Either the read itself, waiting on
/// the stream's own suspension (the shared receive buffers' path), or a task doing it (a read
/// timeout, or a stream without the shared buffers). Cancel safety as every read's.
class [[nodiscard]] stream_reader::read_op {
public:
    read_op(read_op&& o) noexcept
        : s_(std::exchange(o.s_, nullptr)), slow_(std::move(o.slow_)), n_(o.n_), step_(std::exchange(o.step_, step::fresh)) {}
    read_op& operator=(read_op&&) = delete;
    ~read_op();

    bool await_ready();
    std::coroutine_handle<> await_suspend(std::coroutine_handle<> h);
    std::string await_resume();

    /// The read as a task of its own (what create_task takes).
    task<std::string> as_task() && { return run(std::move(*this)); }

private:
    friend class stream_reader;
    read_op(detail::stream_state* s, std::size_t n, task<std::string> slow) noexcept
        : s_(s), slow_(std::move(slow)), n_(static_cast<std::uint32_t>(std::min<std::size_t>(n, max_n))) {}

    static task<std::string> run(read_op op) { co_return co_await op; }

    enum class step : std::uint8_t { fresh, buffered, waiting, nothing };  // (after await_ready)
    // 24 bytes in the reading coroutine's frame: a read returns at most what has arrived, so
    // taking at most 4 GiB - 1 in one call changes nothing a caller can rely on.
    static constexpr std::size_t max_n = 0xffffffff;
    detail::stream_state* s_;
    task<std::string> slow_;  // valid: the read is this task
    std::uint32_t n_;
    step step_ = step::fresh;
};

/// The writing half. Move-only. write() only buffers (and starts sending in the background);
/// drain() is the backpressure point. When both halves are gone the connection is flushed and
/// closed, never leaked.
class stream_writer {
public:
    stream_writer() noexcept = default;
    explicit stream_writer(detail::stream_state* s) noexcept;  // adopts a reference
    stream_writer(stream_writer&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
    stream_writer& operator=(stream_writer&& o) noexcept;
    ~stream_writer();

    /// Buffers data for sending; never blocks or suspends. Throws the connection's error
    /// (std::system_error ECONNRESET/EPIPE) if an earlier send failed, and
    /// invalid_state_error after close() or write_eof().
    void write(std::span<const std::byte> data);
    void write(std::string_view data) { write(std::as_bytes(std::span(data.data(), data.size()))); }
    void write(const char* data) { write(std::string_view(data)); }
    /// The same, without copying: the stream takes the buffer and frees it once the kernel has
    /// sent it (one under 16 KiB is copied, which costs less). For large responses:
    ///   writer.write(std::move(body));   // body is left empty
    void write(std::string&& data);
    void write(std::vector<std::byte>&& data);
    /// Several buffers at once (asyncio's writelines), each taken as write(std::string&&)
    /// takes it; they leave together with the pass's other writes, in one sendmsg.
    void writelines(std::vector<std::string> parts);

    /// Waits while more than the high-water mark is buffered, until it drops to the low mark.
    /// Throws the connection's error if sending failed. One task at a time (invalid_state_error
    /// otherwise). Cancel safety: safe; buffered data stays buffered and is still sent.
    task<> drain();
    /// Default 64 KiB / 16 KiB (low = high / 4 when not given); either is capped at 4 GiB - 1.
    void set_write_buffer_limits(std::size_t high, std::optional<std::size_t> low = std::nullopt);
    /// Bytes buffered and not yet taken by the kernel.
    [[nodiscard]] std::size_t buffered() const noexcept;

    /// Sends FIN after the buffered data (shutdown(SHUT_WR)); reading goes on.
    void write_eof();
    [[nodiscard]] bool can_write_eof() const noexcept { return true; }
    /// Flushes what is buffered, then closes the connection. Returns at once; see wait_closed().
    void close();
    /// Closes at once with a reset (RST); buffered data is dropped (transport.abort()).
    void abort();
    /// Waits until the connection is closed and every operation on it has completed.
    /// Cancel safety: safe; the close goes on regardless.
    task<> wait_closed();
    [[nodiscard]] bool is_closing() const noexcept;

    [[nodiscard]] endpoint peername() const;
    [[nodiscard]] endpoint sockname() const;
    /// The underlying socket, for options (nodelay, keepalive, ...) and addresses; const, so
    /// that nothing can close, move or release the stream's own socket (close the stream with
    /// close() or abort(), as asyncio's transport.close() and transport.abort() do).
    [[nodiscard]] const socket& transport() const;

private:
    friend struct detail::stream_access;
    detail::stream_state* s_ = nullptr;
};

struct stream_options {
    std::size_t limit = default_stream_limit;  // read_until / read_line limit
    /// When set, every read call (read, read_some, read_exactly, read_until, read_line) must
    /// finish within this time, else it throws timeout_error; what it had received stays
    /// buffered. Defends a server against peers that send slowly or not at all.
    std::optional<std::chrono::nanoseconds> read_timeout{};
};

/// Wraps a connected socket into a reader and a writer that share it.
std::pair<stream_reader, stream_writer> make_streams(socket connected, stream_options options = {});

struct connect_options {
    std::size_t limit = default_stream_limit;
    std::optional<std::chrono::nanoseconds> read_timeout{};  // see stream_options
    std::optional<endpoint> local_address;             // bind before connecting
    std::optional<std::chrono::nanoseconds> timeout;   // per address tried
    bool nodelay = true;                               // TCP_NODELAY, as asyncio
    /// Happy eyeballs (RFC 8305; asyncio's happy_eyeballs_delay, which suggests 250 ms). Unset:
    /// the addresses are tried one after another, each once the previous has failed. Set: the
    /// next attempt also starts when the previous one has not connected within this delay, so
    /// that an address that never answers costs only the delay; the attempts then run side by
    /// side, the first to connect wins and the others are cancelled and their sockets closed.
    std::optional<std::chrono::nanoseconds> happy_eyeballs_delay{};
    /// asyncio's interleave: the addresses are reordered by family, this many of the first
    /// family first, then one of each family in turn ([a1 a2 b1 b2] -> [a1 b1 a2 b2] with 1);
    /// 0 keeps the order. Unset: 1 with happy_eyeballs_delay, 0 without (as asyncio).
    std::optional<std::size_t> interleave{};
};

/// Connects to host:port (asyncio.open_connection). The resolved addresses (reordered by
/// options.interleave) are tried in turn, or staggered with options.happy_eyeballs_delay; the
/// first that connects wins. An address whose socket cannot even be made (EAFNOSUPPORT,
/// EMFILE) counts as a failed attempt, and the next one is tried.
/// Errors: if every attempt fails, std::system_error carrying the errno of the last address
/// tried; what() names every address once and each errno's text once, the addresses that
/// failed alike together and the last one's errno at the end ("ringio: connect to [::1]:1,
/// 127.0.0.1:1: Connection refused"; "ringio: connect to [::1]:80 (socket()): Address family
/// not supported by protocol; 127.0.0.1:80: Connection timed out"). A connect that exceeds
/// options.timeout counts as failed with ETIMEDOUT. A name that does not resolve throws
/// resolve_error.
/// Cancel safety: safe. Cancelling it cancels every attempt in progress and waits until each
/// has ended and closed its socket; no socket is left open.
task<std::pair<stream_reader, stream_writer>> open_connection(std::string host, std::uint16_t port,
                                                              connect_options options = {});

/// Connects to the first of `addresses` that accepts, tried as open_connection(host, port)
/// tries the addresses a name resolves to: for addresses resolved beforehand, or a list of
/// one's own (IP or Unix endpoints). Throws std::invalid_argument if the list is empty;
/// otherwise as open_connection(host, port). (Build the vector before the co_await: a braced
/// list inside a coroutine is an initializer_list, which GCC 12 miscompiles there.)
task<std::pair<stream_reader, stream_writer>> open_connection(std::vector<endpoint> addresses,
                                                              connect_options options = {});

/// Connects to a Unix socket path ('@name' for an abstract one).
task<std::pair<stream_reader, stream_writer>> open_unix_connection(std::string path, connect_options options = {});

}  // namespace ringio

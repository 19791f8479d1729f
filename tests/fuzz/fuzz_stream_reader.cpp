// fuzz_stream_reader: stream_reader's reads over a real connected socket pair, against a model.
//
// Input (every field optional: a short input just ends the lists early):
//   byte 0       the reader's limit: 1 + (b % 64)
//   bytes 1-2    L, the stream's length (big-endian, modulo 4097); then L bytes of stream
//   1 byte       C, the number of chunk sizes (C % 16; 0: the stream goes in one send)
//   C bytes      chunk sizes, used in turn until the stream is sent: 1 + (b & 0x7f) bytes per
//                send; bit 0x80: after this send, wait until the reader has received it
//   the rest     reader operations, up to 64, each an opcode byte (b % 8) and its arguments:
//                0 n: read(n), n = 255 means read() with the default size
//                1 k: read_some(k bytes)
//                2 n: read_exactly(n) (string); n >= 250 picks a size around the 64 KiB
//                     threshold above which the bytes land straight in the result
//                3 n: read_exactly(span of n bytes), n as for 2
//                4 s sep: read_until(sep), with 1 + (s % 3) bytes of separator following
//                5: read_line()
//                6: at_eof() and buffered() checked, then yield to the writer
//                7: read() (64 KiB)
// Then the rest of the stream is read with read() until "", and at EOF every read must say so.
//
// A writer task sends the chunks on the other end with send(2) (and shutdown(SHUT_WR) at the
// end); the reader runs the operations concurrently, so data arrives in pieces.
//
// The model is the set of positions in the stream the reader may be at (usually one; a
// read_line() that overruns the limit can leave two, depending on whether the newline was
// already buffered). Every read must return the bytes of the stream at such a position; a
// partial read (incomplete_read_error) the rest of the stream; a limit_overrun_error must be
// justified by the bytes (no separator within the limit) and read_until leaves the data
// unconsumed while read_line drops the long line. At the end the reader must be at the end of
// the stream: no byte lost, none duplicated, none reordered.
#include <ringio/ringio.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <span>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "fuzz_check.hpp"

namespace {

using fuzz::fail;
using fuzz::show;

struct chunk {
    std::size_t size;
    bool wait;
};

struct op {
    std::uint8_t code;
    std::size_t n = 0;
    std::string sep;
};

struct scenario {
    std::size_t limit = 1;
    std::string stream;
    std::vector<chunk> chunks;
    std::vector<op> ops;
};

struct input_reader {
    std::string_view rest;
    [[nodiscard]] bool empty() const { return rest.empty(); }
    std::uint8_t byte() {
        if (rest.empty()) return 0;
        auto b = static_cast<std::uint8_t>(rest.front());
        rest.remove_prefix(1);
        return b;
    }
};

std::size_t exact_size(std::uint8_t b) {
    constexpr std::size_t big[] = {64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 70'000, 100'000, 4096};
    return b >= 250 ? big[b - 250] : b;
}

scenario decode(std::string_view data) {
    input_reader in{data};
    scenario s;
    s.limit = 1 + in.byte() % 64;
    std::size_t len = static_cast<std::size_t>(in.byte()) << 8;
    len = (len | in.byte()) % 4097;
    len = std::min(len, in.rest.size());
    s.stream = std::string(in.rest.substr(0, len));
    in.rest.remove_prefix(len);
    std::size_t nchunks = in.byte() % 16;
    for (std::size_t i = 0; i < nchunks && !in.empty(); ++i) {
        std::uint8_t b = in.byte();
        s.chunks.push_back({1u + (b & 0x7fu), (b & 0x80) != 0});
    }
    while (!in.empty() && s.ops.size() < 64) {
        op o;
        o.code = in.byte() % 8;
        switch (o.code) {
            case 0: {
                std::uint8_t n = in.byte();
                o.n = n == 255 ? ringio::default_stream_limit : n;
                break;
            }
            case 1: o.n = in.byte(); break;
            case 2:
            case 3: o.n = exact_size(in.byte()); break;
            case 4: {
                std::size_t seplen = 1 + in.byte() % 3;
                for (std::size_t i = 0; i < seplen; ++i) o.sep += static_cast<char>(in.byte());
                break;
            }
            default: break;
        }
        s.ops.push_back(std::move(o));
    }
    return s;
}

/// Where the reader may be in the stream.
class model {
public:
    explicit model(const scenario& s) : s_(s), at_{0} {}

    /// `out` was returned by `what`: it must be the stream's bytes at one of the positions.
    void advance(std::string_view out, std::string_view what) {
        std::vector<std::size_t> next;
        for (std::size_t p : at_)
            if (s_.stream.size() - p >= out.size() && std::string_view(s_.stream).substr(p, out.size()) == out)
                add(next, p + out.size());
        if (next.empty())
            fail("{} returned {} ({} bytes), not the stream's bytes at {}; the stream: {}", what, show(out), out.size(),
                 positions(), show(s_.stream, 400));
        at_ = std::move(next);
    }

    /// The reader says it is at EOF: the whole stream must have been read.
    void at_end(std::string_view what) {
        std::vector<std::size_t> next;
        for (std::size_t p : at_)
            if (p == s_.stream.size()) next.push_back(p);
        if (next.empty())
            fail("{}: EOF reported at {} of a {}-byte stream: bytes lost", what, positions(), s_.stream.size());
        at_ = std::move(next);
    }

    /// read_until(sep) threw limit_overrun_error(consumed): justified only if no separator
    /// starts within the first `consumed` bytes at the reader's position; the data stays.
    void until_overrun(std::string_view sep, std::size_t consumed) {
        if (consumed <= s_.limit)
            fail("read_until({}): limit_overrun_error with consumed() {} within the limit {}", show(sep), consumed, s_.limit);
        std::vector<std::size_t> next;
        for (std::size_t p : at_) {
            std::size_t f = s_.stream.find(sep, p);
            if (p + consumed <= s_.stream.size() && (f == std::string::npos || f - p >= consumed)) next.push_back(p);
        }
        if (next.empty())
            fail("read_until({}): limit_overrun_error (consumed {}, limit {}) at {}, but the stream there is {}", show(sep),
                 consumed, s_.limit, positions(), show(std::string_view(s_.stream).substr(at_.front()), 400));
        at_ = std::move(next);
    }

    /// read_line() threw limit_overrun_error(consumed): no newline within `consumed` bytes; the
    /// line is dropped through its newline if that was buffered, else what was buffered.
    void line_overrun(std::size_t consumed) {
        if (consumed <= s_.limit)
            fail("read_line: limit_overrun_error with consumed() {} within the limit {}", consumed, s_.limit);
        std::vector<std::size_t> next;
        for (std::size_t p : at_) {
            if (p + consumed > s_.stream.size()) continue;
            if (std::string_view(s_.stream).substr(p, consumed).find('\n') != std::string_view::npos) continue;
            add(next, p + consumed);
            if (p + consumed < s_.stream.size() && s_.stream[p + consumed] == '\n') add(next, p + consumed + 1);
        }
        if (next.empty())
            fail("read_line: limit_overrun_error (consumed {}, limit {}) at {}, but the stream there is {}", consumed,
                 s_.limit, positions(), show(std::string_view(s_.stream).substr(at_.front()), 400));
        at_ = std::move(next);
    }

    /// The furthest the reader may have got (for the writer's waits).
    [[nodiscard]] std::size_t furthest() const { return at_.back(); }
    [[nodiscard]] std::size_t nearest() const { return at_.front(); }
    [[nodiscard]] std::size_t limit() const { return s_.limit; }
    [[nodiscard]] const std::string& stream() const { return s_.stream; }

private:
    static void add(std::vector<std::size_t>& v, std::size_t p) {
        auto it = std::lower_bound(v.begin(), v.end(), p);
        if (it == v.end() || *it != p) v.insert(it, p);
    }
    std::string positions() const {
        std::string out;
        for (std::size_t p : at_) out += (out.empty() ? "" : " or ") + std::to_string(p);
        return out;
    }

    const scenario& s_;
    std::vector<std::size_t> at_;
};

struct shared {
    const scenario& s;
    model m;
    ringio::stream_reader* reader = nullptr;
    bool reader_done = false;
};

/// Sends the chunks with send(2) on `fd`, then shutdown(SHUT_WR).
ringio::task<> write_chunks(int fd, shared& sh) {
    const std::string& data = sh.s.stream;
    std::size_t sent = 0;
    std::size_t i = 0;
    while (sent < data.size()) {
        chunk c = sh.s.chunks.empty() ? chunk{data.size(), false} : sh.s.chunks[i++ % sh.s.chunks.size()];
        std::size_t end = std::min(data.size(), sent + c.size);
        while (sent < end) {
            ssize_t n = ::send(fd, data.data() + sent, end - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                fail("send to the reader's socket failed: {}", std::strerror(errno));
            if (n > 0)
                sent += static_cast<std::size_t>(n);
            else
                co_await ringio::yield_now();
        }
        co_await ringio::yield_now();
        // Give the reader the chance to take this chunk alone (bounded: a read that lands
        // straight in the caller's memory does not show in buffered()).
        for (int spins = 0; c.wait && spins < 64 && !sh.reader_done; ++spins) {
            if (sh.m.nearest() + sh.reader->buffered() >= sent) break;
            co_await ringio::yield_now();
        }
    }
    if (::shutdown(fd, SHUT_WR) != 0) fail("shutdown(SHUT_WR): {}", std::strerror(errno));
}

std::string describe(const op& o) {
    switch (o.code) {
        case 0: return fmt::format("read({})", o.n);
        case 1: return fmt::format("read_some({} bytes)", o.n);
        case 2: return fmt::format("read_exactly({})", o.n);
        case 3: return fmt::format("read_exactly(span of {} bytes)", o.n);
        case 4: return fmt::format("read_until({})", show(o.sep));
        case 5: return "read_line()";
        case 6: return "at_eof()";
        default: return "read()";
    }
}

/// One operation, checked against the model.
ringio::task<> run_op(const op& o, ringio::stream_reader& r, model& m, std::size_t index) {
    const std::string what = fmt::format("operation {} {}", index, describe(o));
    try {
        switch (o.code) {
            case 0:
            case 7: {
                std::size_t n = o.code == 7 ? ringio::default_stream_limit : o.n;
                std::string out = co_await r.read(n);
                if (out.size() > n) fail("{} returned {} bytes", what, out.size());
                if (out.empty() && n > 0) {
                    m.at_end(what);
                    if (!r.at_eof()) fail("{} returned \"\" but at_eof() is false", what);
                }
                m.advance(out, what);
                break;
            }
            case 1: {
                std::vector<std::byte> buf(o.n);
                std::size_t got = co_await r.read_some(buf);
                if (got > buf.size()) fail("{} returned {}", what, got);
                std::string_view out(reinterpret_cast<const char*>(buf.data()), got);
                if (got == 0 && !buf.empty()) {
                    m.at_end(what);
                    if (!r.at_eof()) fail("{} returned 0 but at_eof() is false", what);
                }
                m.advance(out, what);
                break;
            }
            case 2: {
                std::string out = co_await r.read_exactly(o.n);
                if (out.size() != o.n) fail("{} returned {} bytes", what, out.size());
                m.advance(out, what);
                break;
            }
            case 3: {
                std::vector<std::byte> buf(o.n);
                co_await r.read_exactly(std::span<std::byte>(buf));
                m.advance(std::string_view(reinterpret_cast<const char*>(buf.data()), buf.size()), what);
                break;
            }
            case 4: {
                std::string out = co_await r.read_until(o.sep);
                if (out.size() < o.sep.size() || out.find(o.sep) != out.size() - o.sep.size())
                    fail("{} returned {}, which does not end at the first separator", what, show(out));
                if (out.size() - o.sep.size() > m.limit())
                    fail("{} returned {} bytes before the separator, above the limit {}", what,
                         out.size() - o.sep.size(), m.limit());
                m.advance(out, what);
                break;
            }
            case 5: {
                std::string out = co_await r.read_line();
                std::size_t nl = out.find('\n');
                if (nl != std::string::npos && nl + 1 != out.size())
                    fail("{} returned {}, with a newline before its end", what, show(out));
                if (nl != std::string::npos && nl > m.limit())
                    fail("{} returned a line of {} bytes, above the limit {}", what, nl, m.limit());
                m.advance(out, what);
                if (nl == std::string::npos) {  // "" or the partial last line: only at EOF
                    m.at_end(what);
                    if (out.empty() && !r.at_eof()) fail("{} returned \"\" but at_eof() is false", what);
                }
                break;
            }
            case 6: {
                if (r.at_eof()) m.at_end(what);
                if (m.nearest() + r.buffered() > m.stream().size())
                    fail("{}: buffered() is {} at {} of a {}-byte stream", what, r.buffered(), m.nearest(),
                         m.stream().size());
                co_await ringio::yield_now();
                break;
            }
        }
    } catch (const ringio::incomplete_read_error& e) {
        if (o.code != 2 && o.code != 3 && o.code != 4) fail("{} threw incomplete_read_error: {}", what, e.what());
        std::size_t expected = o.code == 4 ? 0 : o.n;
        if (e.expected() != expected) fail("{}: incomplete_read_error expected() is {}", what, e.expected());
        if (o.code != 4 && e.partial().size() >= o.n)
            fail("{}: incomplete_read_error with {} of {} bytes", what, e.partial().size(), o.n);
        if (o.code == 4 && e.partial().find(o.sep) != std::string::npos)
            fail("{}: incomplete_read_error, but its partial() {} holds the separator", what, show(e.partial()));
        m.advance(e.partial(), what + " (partial)");
        m.at_end(what + " (incomplete_read_error)");
        if (!r.at_eof()) fail("{}: incomplete_read_error, but at_eof() is false", what);
    } catch (const ringio::limit_overrun_error& e) {
        if (o.code == 4)
            m.until_overrun(o.sep, e.consumed());
        else if (o.code == 5)
            m.line_overrun(e.consumed());
        else
            fail("{} threw limit_overrun_error: {}", what, e.what());
    }
}

ringio::task<> run_scenario(const scenario& s) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) fail("socketpair: {}", std::strerror(errno));
    auto [reader, writer] = ringio::make_streams(ringio::socket(fds[0]), ringio::stream_options{s.limit});
    if (reader.limit() != s.limit) fail("limit() is {}, not {}", reader.limit(), s.limit);
    shared sh{s, model(s)};
    sh.reader = &reader;
    auto sending = ringio::create_task(write_chunks(fds[1], sh));
    try {
        for (std::size_t i = 0; i < s.ops.size(); ++i) co_await run_op(s.ops[i], reader, sh.m, i);
        // The rest of the stream, then EOF, said every way.
        while (true) {
            std::string out = co_await reader.read(4096);
            if (out.empty()) break;
            sh.m.advance(out, "the final read(4096)");
        }
        sh.m.at_end("the final read() returning \"\"");
        if (!reader.at_eof()) fail("at EOF (read() returned \"\") but at_eof() is false");
        if (reader.buffered() != 0) fail("at EOF but buffered() is {}", reader.buffered());
        std::string again = co_await reader.read();
        if (!again.empty()) fail("read() after EOF returned {}", show(again));
        std::string line = co_await reader.read_line();
        if (!line.empty()) fail("read_line() after EOF returned {}", show(line));
        bool threw = false;
        try {
            co_await reader.read_exactly(1);
        } catch (const ringio::incomplete_read_error& e) {
            threw = e.partial().empty() && e.expected() == 1;
        }
        if (!threw) fail("read_exactly(1) after EOF did not throw incomplete_read_error with nothing read");
        threw = false;
        try {
            co_await reader.read_until("\n");
        } catch (const ringio::incomplete_read_error& e) {
            threw = e.partial().empty();
        }
        if (!threw) fail("read_until() after EOF did not throw incomplete_read_error with nothing read");
    } catch (const std::exception& e) {
        fail("undocumented exception {} from the reader: {}", typeid(e).name(), e.what());
    }
    sh.reader_done = true;
    co_await sending;
    writer.close();
    co_await writer.wait_closed();
    ::close(fds[1]);
}

ringio::event_loop& loop() {
    // One loop for every input: setting up an io_uring per input would be most of the time.
    static ringio::event_loop instance;
    return instance;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    scenario s = decode(std::string_view(reinterpret_cast<const char*>(data), size));
    loop().run_until_complete(run_scenario(s));
    return 0;
}
